"""The `avanon` command line: run, anonymize, inspect, verify, merge, report, regress, weights.

Exit codes: 0 success; 1 finished but not clean (failed images, a mirror that does not verify);
2 bad input (recipe, dataset, paths) or a run that had to stop (full disk).
"""
from __future__ import annotations

import argparse
import json
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
        sp.add_argument("--workers", type=int, help="parallel worker processes (default: recipe's workers)")
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
    v.add_argument("--sample", type=int, help="check a random sample of N images only")
    v.add_argument("--json", help="write the report as JSON here")

    m = sub.add_parser("merge", help="merge the shard manifests of a mirror written with --shard")
    m.add_argument("mirror")

    t = sub.add_parser("train", help="one training run (python -m avanon.training.engine): --config, --out, "
                       "--resume, --test-only", add_help=False)
    t.add_argument("engine_args", nargs=argparse.REMAINDER)

    from avanon.regress import add_regress_arguments
    from avanon.report import add_report_arguments

    add_report_arguments(sub.add_parser("report", help="Paper-F style tables and plots of a run's results"))
    add_regress_arguments(sub.add_parser("regress", help="compare a run's AP deltas with a committed baseline"))
    from avanon.weights import add_weights_arguments

    add_weights_arguments(sub)
    from avanon.show import add_show_arguments

    add_show_arguments(sub.add_parser("show", help="PNG grid of random original / anonymized pairs of mirrors"))
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from avanon.recipe import RecipeError
    from avanon.mirror import MirrorError
    from dataset_adapters import DatasetError

    try:
        from avanon.regress import cmd_regress
        from avanon.report import cmd_report
        from avanon.weights import cmd_weights
        from avanon.show import cmd_show

        return {"run": cmd_run, "anonymize": cmd_anonymize, "inspect": cmd_inspect, "verify": cmd_verify,
                "merge": cmd_merge, "report": cmd_report, "regress": cmd_regress,
                "weights": cmd_weights, "train": cmd_train, "show": cmd_show}[args.command](args)
    except (RecipeError, DatasetError, MirrorError) as exc:
        print(f"avanon: error: {exc}", file=sys.stderr)
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
    from avanon.dataset_stats import collect_stats, format_stats, plot_box_sizes
    from avanon.regions import build_region_selector

    adapter = build_adapter(args.dataset, args.root, args.split, **_kv_list(args.option, "--option"))
    # min_size 0: keep every instance so the expanded-box size distribution is complete.
    selector = build_region_selector("body", {"min_size": 0}, _kv_list(args.filter, "--filter"), Path(args.root),
                                     adapter.target_categories)
    if args.keypoints:
        from avanon.keypoints import KeypointConfigError, build_keypoint_provider

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
    from avanon.verify import VerifyError, verify_mirror

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
    from avanon.training.engine import main as engine_main

    return engine_main(args.engine_args)


def cmd_merge(args) -> int:
    from avanon.mirror import compact_manifest, read_manifest

    path = compact_manifest(args.mirror)
    print(f"{path}: {len(read_manifest(args.mirror))} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
