"""The mirror stage's commands: `avanon inspect`, `verify`, `merge` and `show`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avanon.cliutil import kv_list, positive_int
from avanon.mirror.show import DEFAULT_CELL


def add_commands(sub) -> None:
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
    i.add_argument("--faces", metavar="PROVIDER", help="face audit: count persons whose head is visible by its "
                   "keypoints but who get no face region from this provider (file, keypoints, detector, union)")
    i.add_argument("--face-param", action="append", metavar="KEY=VALUE",
                   help="face provider parameter, e.g. file=face_boxes_train.json, min_face_size=20")
    i.add_argument("--no-progress", action="store_true", help="no progress bar")
    i.set_defaults(func=cmd_inspect)

    v = sub.add_parser("verify", help="audit a mirror against its source")
    v.add_argument("mirror")
    v.add_argument("--source", help="source dataset root, if it moved since the mirror was made")
    v.add_argument("--sample", type=positive_int, help="check a random sample of N images only")
    v.add_argument("--json", help="write the report as JSON here")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")
    v.set_defaults(func=cmd_verify)

    m = sub.add_parser("merge", help="merge the shard manifests of a mirror written with --shard")
    m.add_argument("mirror")
    m.set_defaults(func=cmd_merge)

    s = sub.add_parser("show", help="PNG grid of random original / anonymized pairs of mirrors")
    add_show_arguments(s)
    s.set_defaults(func=cmd_show)


def cmd_inspect(args) -> int:
    from dataset_adapters import build_adapter
    from avanon.mirror.inspect import collect_stats, format_stats, plot_box_sizes
    from avanon.regions import RegionConfigError, build_region_selector

    adapter = build_adapter(args.dataset, args.root, args.split, **kv_list(args.option, "--option"))
    try:
        # min_size 0: keep every instance so the expanded-box size distribution is complete.
        selector = build_region_selector("body", {"min_size": 0}, kv_list(args.filter, "--filter"), Path(args.root),
                                         adapter.target_categories)
        faces = None
        if args.faces:
            faces = build_region_selector("face", {"provider": args.faces, **kv_list(args.face_param, "--face-param")},
                                          kv_list(args.filter, "--filter"), Path(args.root),
                                          adapter.target_categories)
    except RegionConfigError as exc:
        print(f"avanon: error: {exc}", file=sys.stderr)
        return 2
    if args.keypoints:
        from avanon.regions.keypoints import KeypointConfigError, build_keypoint_provider

        try:
            provider = build_keypoint_provider(args.keypoints, kv_list(args.keypoints_param, "--keypoints-param"),
                                               Path(args.root), split=args.split,
                                               target_categories=adapter.target_categories)
            stats = collect_stats(adapter, selector, args.dataset, provider, faces, progress=not args.no_progress)
        except KeypointConfigError as exc:
            print(f"avanon: error: {exc}", file=sys.stderr)
            return 2
    else:
        stats = collect_stats(adapter, selector, args.dataset, face_selector=faces, progress=not args.no_progress)
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
        report = verify_mirror(args.mirror, args.source, args.sample, progress=not args.no_progress)
    except VerifyError as exc:
        print(f"avanon: error: {exc}", file=sys.stderr)
        return 2
    for e in report.errors[:50]:
        print(f"ERROR {e}")
    for w in report.warnings[:20]:
        print(f"warning {w}")
    kept = report.to_dict()["detail_kept"]
    if kept.get("count"):
        print(f"detail kept in the anonymized instances: median {kept['median']:.2f}, p90 {kept['p90']:.2f}, "
              f"max {kept['max']:.2f} (0 = none of the source's fine detail survives, 1 = all)")
    status = "CLEAN" if report.clean else f"NOT CLEAN ({len(report.errors)} errors)"
    print(f"{args.mirror}: {status}: {report.images_checked} images, {report.instances_checked} instances, "
          f"{report.tree_files_checked} other files checked; {len(report.warnings)} warnings")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.clean else 1


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
    from avanon.mirror.imageio import atomic_write_bytes
    from avanon.mirror.writer import mirror_state

    mirror = Path(args.mirror)
    state = mirror_state(adapter, mirror, bool(run.get("copy_unannotated", False)))
    atomic_write_bytes(mirror / "summary.json", (json.dumps(state.to_dict(), indent=2, default=str) + "\n").encode())
    for shard_summary in mirror.glob("summary-*of*.json"):
        shard_summary.unlink()
    print(f"{mirror / 'summary.json'}: {state.images} images ({state.anonymized} anonymized, {state.copied} copied "
          f"unchanged, {state.failed} failed)")
    return 1 if state.failed else 0


def add_show_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("mirrors", nargs="+", metavar="MIRROR", help="mirror directories (holding run.json); one column "
                   "each")
    p.add_argument("--n", type=int, default=8, help="number of images (rows), default 8")
    p.add_argument("--seed", type=int, default=0, help="which random images, default 0")
    p.add_argument("--out", help="PNG path (default show_<first mirror name>.png)")
    p.add_argument("--cell", type=int, nargs=2, metavar=("H", "W"), default=list(DEFAULT_CELL),
                   help=f"panel size, default {DEFAULT_CELL[0]} {DEFAULT_CELL[1]}")
    p.add_argument("--pad", type=float, default=0.5, help="context around the people, fraction of their box")
    p.add_argument("--source", help="source dataset root, if it moved since the mirrors were made")
    return p


def cmd_show(args) -> int:
    """0 written; 2 bad input."""
    from dataset_adapters import DatasetError

    if args.n < 1 or min(args.cell) < 16:
        print("avanon: error: --n must be >= 1 and --cell at least 16 16", file=sys.stderr)
        return 2
    try:
        from avanon.mirror.show import ShowError, make_grid, write_grid

        canvas, files = make_grid(args.mirrors, args.n, args.seed, tuple(args.cell), args.pad, args.source)
        out = write_grid(canvas, args.out or f"show_{Path(args.mirrors[0]).resolve().name}.png")
    except (ShowError, DatasetError) as exc:
        print(f"avanon: error: {exc}", file=sys.stderr)
        return 2
    print(f"{out}: {len(files)} images x {1 + len(args.mirrors)} columns ({canvas.shape[1]}x{canvas.shape[0]} px)")
    return 0
