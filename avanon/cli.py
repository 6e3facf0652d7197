"""The `avanon` command line: run, anonymize, inspect, verify, merge, report, regress, weights.

Exit codes: 0 success; 1 finished but not clean (failed images, a mirror that does not verify);
2 bad input (recipe, dataset, paths) or a run that had to stop (full disk).
"""
from __future__ import annotations

import argparse
import errno
import io
import json
import os
import sys
from pathlib import Path
from typing import Optional

from avanon import __version__


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard expects k/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= k < n):
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= k < N")
    return k, n


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


class _PipeSafe(io.TextIOBase):
    """stdout/stderr that survive a reader that went away (`avanon verify M | head -1`): once the pipe is closed,
    output goes to /dev/null and the work goes on to its normal end (manifests compacted, exit code kept)."""

    def __init__(self, stream):
        self._stream = stream
        self._closed_pipe = False

    def write(self, text):
        if not self._closed_pipe:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._to_devnull()
        return len(text)

    def flush(self):
        if not self._closed_pipe:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._to_devnull()

    def _to_devnull(self):
        self._closed_pipe = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # the interpreter's final flush must not fail either
        except (OSError, ValueError):
            pass

    def isatty(self):
        return not self._closed_pipe and self._stream.isatty()

    def fileno(self):
        return self._stream.fileno()

    @property
    def encoding(self):
        return self._stream.encoding


def _kv_list(items: Optional[list[str]], flag: str) -> dict:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"avanon: {flag} {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avanon", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"avanon {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common_run(sp):
        sp.add_argument("--workers", type=_positive_int, help="parallel worker processes (default: recipe's workers)")
        sp.add_argument("--shard", type=_parse_shard, default=(0, 1), help="k/N: process every N-th image from k")
        sp.add_argument("--dry-run", action="store_true", help="plan and count; write nothing")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    r = sub.add_parser("run", help="run a recipe: every mirror it names")
    r.add_argument("recipe", help="recipe YAML file")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    r.add_argument("--only", action="append", help="only the anonymize entries with these names")
    r.add_argument("--anonymize-only", action="store_true", help="write the mirrors, skip the study")
    r.add_argument("--test-only", action="store_true", help="study: re-evaluate trained models, train nothing")
    common_run(r)

    a = sub.add_parser("anonymize", help="write one anonymized mirror of a dataset split")
    a.add_argument("--dataset", required=True, help="adapter: coco, cityscapes, bdd100k, synthetic")
    a.add_argument("--root", required=True, help="dataset root")
    a.add_argument("--split", default="train")
    a.add_argument("--option", action="append", metavar="KEY=VALUE", help="dataset adapter option")
    a.add_argument("--region", required=True, choices=["body", "face"])
    a.add_argument("--region-param", action="append", metavar="KEY=VALUE",
                   help="region parameter, e.g. min_size=32, provider=file, file=face_boxes_train.json")
    a.add_argument("--filter", action="append", metavar="KEY=VALUE", help="filter, e.g. require_keypoints=true")
    a.add_argument("--method", required=True, help="blur, mask_out, pixelate")
    a.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter, e.g. fill=0")
    a.add_argument("--name", help="mirror directory name (default REGION_TAG, e.g. body_mask_out)")
    a.add_argument("--out", required=True, help="output root; the mirror goes to OUT/DATASET/NAME")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--link", choices=["copy", "hardlink"], default="copy")
    a.add_argument("--exif-frame", choices=["auto", "oriented", "raw"], default="auto")
    common_run(a)

    i = sub.add_parser("inspect", help="instance counts, skip reasons, box-size histogram of a dataset split")
    i.add_argument("--dataset", required=True)
    i.add_argument("--root", required=True)
    i.add_argument("--split", default="train")
    i.add_argument("--option", action="append", metavar="KEY=VALUE", help="dataset adapter option")
    i.add_argument("--filter", action="append", metavar="KEY=VALUE")
    i.add_argument("--plot", help="PNG path for the box-size histogram (default inspect_DATASET_SPLIT.png)")
    i.add_argument("--json", help="also write the statistics as JSON here")
    i.add_argument("--keypoints", metavar="PROVIDER", help="apply a keypoint provider (annotations, file, "
                   "estimator) and report the share of target instances with keypoints after it")
    i.add_argument("--keypoints-param", action="append", metavar="KEY=VALUE",
                   help="keypoint provider parameter, e.g. weights=PATH.pth, file=annotated_keypoints_train.json")

    v = sub.add_parser("verify", help="audit a mirror against its source")
    v.add_argument("mirror")
    v.add_argument("--source", help="source dataset root, if it moved since the mirror was made")
    v.add_argument("--sample", type=_positive_int, help="check a random sample of N images only")
    v.add_argument("--json", help="write the report as JSON here")

    m = sub.add_parser("merge", help="merge the shard manifests of a mirror written with --shard")
    m.add_argument("mirror")

    t = sub.add_parser("train", help="one training run (python -m avanon.study.training.engine): --config, --out, "
                       "--resume, --test-only", add_help=False)
    t.add_argument("engine_args", nargs=argparse.REMAINDER)

    from avanon.study.regress import add_regress_arguments
    from avanon.study.report import add_report_arguments

    add_report_arguments(sub.add_parser("report", help="Paper-F style tables and plots of a run's results"))
    add_regress_arguments(sub.add_parser("regress", help="compare a run's AP deltas with a committed baseline"))
    from avanon.generators.weights.cli import add_weights_arguments

    add_weights_arguments(sub)
    from avanon.mirror.show import add_show_arguments

    add_show_arguments(sub.add_parser("show", help="PNG grid of random original / anonymized pairs of mirrors"))
    return p


def main(argv: Optional[list[str]] = None) -> int:
    if not isinstance(sys.stdout, _PipeSafe):
        sys.stdout, sys.stderr = _PipeSafe(sys.stdout), _PipeSafe(sys.stderr)
    args = build_parser().parse_args(argv)
    from avanon.recipe import RecipeError
    from avanon.mirror import MirrorError
    from dataset_adapters import DatasetError

    try:
        from avanon.study.regress import cmd_regress
        from avanon.study.report import cmd_report
        from avanon.generators.weights.cli import cmd_weights
        from avanon.mirror.show import cmd_show

        return {"run": cmd_run, "anonymize": cmd_anonymize, "inspect": cmd_inspect, "verify": cmd_verify,
                "merge": cmd_merge, "report": cmd_report, "regress": cmd_regress,
                "weights": cmd_weights, "train": cmd_train, "show": cmd_show}[args.command](args)
    except (RecipeError, DatasetError, MirrorError) as exc:
        print(f"avanon: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the command was pointed at: unreadable, unwritable, full disk
        what = f"{exc.filename}: " if exc.filename else ""
        print(f"avanon: error: {what}{exc.strerror or exc} ({errno.errorcode.get(exc.errno, 'OSError')})",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avanon: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def cmd_run(args) -> int:
    from avanon.recipe import load_recipe
    from avanon.pipeline import run_recipe

    recipe = load_recipe(args.recipe, args.set)
    return run_recipe(recipe, workers=args.workers, shard=args.shard, dry_run=args.dry_run, only=args.only,
                      progress=not args.no_progress, test_only=args.test_only, anonymize_only=args.anonymize_only)


def cmd_anonymize(args) -> int:
    from avanon.recipe import validate
    from avanon.pipeline import run_recipe

    raw = {
        "name": f"anonymize-{args.dataset}-{args.region}-{args.method}",
        "seed": args.seed,
        "dataset": {"adapter": args.dataset, "root": args.root, "split": args.split,
                    "options": _kv_list(args.option, "--option")},
        "regions": {args.region: _kv_list(args.region_param, "--region-param")},
        "filters": _kv_list(args.filter, "--filter"),
        "anonymize": [{"region": args.region, "method": args.method, "params": _kv_list(args.param, "--param"),
                       **({"name": args.name} if args.name else {})}],
        "output": {"root": args.out, "link": args.link, "exif_frame": args.exif_frame},
    }
    recipe = validate(raw, "command line")
    return run_recipe(recipe, workers=args.workers, shard=args.shard, dry_run=args.dry_run, only=None,
                      progress=not args.no_progress)


def cmd_inspect(args) -> int:
    from dataset_adapters import build_adapter
    from avanon.mirror.inspect import collect_stats, format_stats, plot_box_sizes
    from avanon.regions import build_region_selector

    adapter = build_adapter(args.dataset, args.root, args.split, **_kv_list(args.option, "--option"))
    # min_size 0: keep every instance so the expanded-box size distribution is complete.
    selector = build_region_selector("body", {"min_size": 0}, _kv_list(args.filter, "--filter"), Path(args.root),
                                     adapter.target_categories)
    if args.keypoints:
        from avanon.regions.keypoints import KeypointConfigError, build_keypoint_provider

        try:
            provider = build_keypoint_provider(args.keypoints, _kv_list(args.keypoints_param, "--keypoints-param"),
                                               Path(args.root), split=args.split,
                                               target_categories=adapter.target_categories)
            stats = collect_stats(adapter, selector, args.dataset, provider)
        except KeypointConfigError as exc:
            print(f"avanon: error: {exc}", file=sys.stderr)
            return 2
    else:
        stats = collect_stats(adapter, selector, args.dataset)
    d = stats.to_dict()
    print(format_stats(d))
    plot = Path(args.plot or f"inspect_{args.dataset}_{args.split}.png")
    plot_box_sizes([stats], plot)
    print(f"  box-size histogram: {plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(d, indent=2) + "\n")
    return 0


def cmd_verify(args) -> int:
    from avanon.mirror.verify import VerifyError, verify_mirror

    try:
        report = verify_mirror(args.mirror, args.source, args.sample)
    except VerifyError as exc:
        print(f"avanon: error: {exc}", file=sys.stderr)
        return 2
    for e in report.errors[:50]:
        print(f"ERROR {e}")
    for w in report.warnings[:20]:
        print(f"warning {w}")
    status = "CLEAN" if report.clean else f"NOT CLEAN ({len(report.errors)} errors)"
    print(f"{args.mirror}: {status}: {report.images_checked} images, {report.instances_checked} instances, "
          f"{report.tree_files_checked} other files checked; {len(report.warnings)} warnings")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.clean else 1


def cmd_train(args) -> int:
    from avanon.study.training.cli import main as engine_main

    return engine_main(args.engine_args)


def cmd_merge(args) -> int:
    from avanon.mirror import merge_shards, read_manifest
    from avanon.mirror.verify import VerifyError, load_run

    if not Path(args.mirror).is_dir():
        print(f"avanon: error: {args.mirror} does not exist or is not a directory", file=sys.stderr)
        return 2
    path, images, missing = merge_shards(args.mirror)
    if missing:
        print(f"avanon: error: {args.mirror}: shards {', '.join(missing)} never ran (no manifest); run them with "
              "--shard and merge again. Nothing was merged.", file=sys.stderr)
        return 1
    print(f"{path}: {images} images")
    try:  # every image of the split must have a line: an interrupted shard leaves the mirror incomplete
        run = load_run(Path(args.mirror))
        from dataset_adapters import build_adapter

        ds = run["dataset"]
        adapter = build_adapter(ds["adapter"], run["source_root"], ds["split"], **ds.get("options", {}))
        index = adapter.image_index()
    except (VerifyError, KeyError, OSError) as exc:
        print(f"warning: cannot check that every image has a manifest line ({exc})", file=sys.stderr)
        return 0
    done = read_manifest(args.mirror)
    absent = [f for f, _ in index if f not in done]
    if absent:
        print(f"avanon: error: {len(absent)} of {len(index)} images of the split have no manifest line (e.g. "
              f"{absent[0]}): a shard was interrupted; re-run it with the same --shard, then merge again",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
