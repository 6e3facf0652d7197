"""What `avanon run` does with a recipe: build the dataset adapter, then write one mirror per anonymize entry."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

from dataset_adapters import build_adapter
from avanon.cliutil import kv_list, parse_shard, positive_int
from avanon.mirror.imageio import atomic_write_bytes
from avanon.mirror import MirrorError, MirrorSummary, check_tools, make_jobs, write_mirror

log = logging.getLogger("avanon.pipeline")


def format_summary(name: str, s: MirrorSummary) -> str:
    """The console summary: the mirror's state (as summary.json, from the manifest), then what this run did."""
    if s.dry_run:
        head = (f"{name}: plan: {s.images} images ({s.anonymized} to anonymize, {s.copied} to copy unchanged, "
                f"{s.failed} failing), {s.instances_anonymized} instances, {s.tree_files_copied} other files to copy")
    else:
        rate = s.processed / s.seconds if s.seconds > 0 else 0.0
        now = (f"nothing to do: {s.resumed} already done" if not s.processed and s.resumed else
               f"this run {s.processed} images in {s.seconds:.1f} s ({rate:.2f} img/s), {s.resumed} already done")
        head = (f"{name}: done: {s.images} images ({s.anonymized} anonymized, {s.copied} copied unchanged, "
                f"{s.failed} failed), {s.instances_anonymized} instances anonymized, {s.tree_files} other files; "
                f"{now}, {s.tree_files_copied} other files copied")
    lines = [head]
    if s.skip_reasons:
        lines.append("  instances left alone (reasons: README, 'Skip reasons'): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(s.skip_reasons.items())))
    if s.face_visible:
        lines.append(f"  face audit: {s.face_missed} of {s.face_visible} persons with a visible head got no face "
                     f"region (recall {100 * s.face_recall:.1f} %)" + (" -- see face_missed in manifest.jsonl"
                                                                     if s.face_missed else ""))
    if s.detail_kept.get("count"):
        d = s.detail_kept
        lines.append(f"  detail kept in anonymized instances: median {d['median']:.2f}, p90 {d['p90']:.2f}, "
                     f"max {d['max']:.2f} (0 = none of the source's fine detail survives, 1 = all)")
    if s.unannotated:
        lines.append(f"  {s.unannotated} images of the split have no annotation and were left out of the mirror")
    for p in s.dataset_problems[:5]:
        lines.append(f"  dataset problem: {p}")
    if s.stale_temp_files_removed:
        lines.append(f"  removed {s.stale_temp_files_removed} temp files an interrupted run had left")
    for f, err in s.failures[:10]:
        lines.append(f"  FAILED {f}: {err}")
    if len(s.failures) > 10:
        lines.append(f"  ... and {len(s.failures) - 10} more failures (see manifest.jsonl)")
    for f, err in s.tree_failures[:10]:
        lines.append(f"  FAILED to copy {f}: {err}")
    if not s.dry_run:
        lines.append(f"  mirror: {s.out_dir}")
    return "\n".join(lines)


def write_mirrors(recipe: dict, *, workers: Optional[int] = None, shard=(0, 1), dry_run: bool = False,
                  only: Optional[list[str]] = None, progress: bool = True) -> list[tuple[dict, object, MirrorSummary]]:
    """Write (or plan) every mirror of the recipe: (entry, job, summary) per anonymize entry, summaries logged and
    written beside each mirror."""
    ds = recipe["dataset"]
    adapter = build_adapter(ds["adapter"], ds["root"], ds["split"], **ds["options"])
    jobs = make_jobs(recipe, adapter, only)
    for entry, job in jobs:  # every mirror's method must be able to run before any of them starts
        try:
            check_tools(job)
        except MirrorError as exc:
            if not dry_run:
                raise
            log.warning(f"{entry['name']}: {exc}")
    dataset_info = dict(ds, root=str(Path(ds["root"]).resolve()))
    out = []
    for entry, job in jobs:
        run_info = {"dataset": dataset_info, "recipe": {k: v for k, v in recipe.items() if not k.startswith("_")},
                    "recipe_file": recipe.get("_source"), "recipe_files": recipe.get("_sources"), "mirror": entry["name"],
                    "copy_unannotated": recipe["output"]["copy_unannotated"], "link": recipe["output"]["link"]}
        summary = write_mirror(adapter, job, workers=workers or recipe["workers"],
                               shard=shard, dry_run=dry_run, copy_unannotated=recipe["output"]["copy_unannotated"],
                               run_info=run_info, progress=progress)
        log.info(format_summary(entry["name"], summary))
        if not dry_run:
            name = "summary.json" if shard[1] == 1 else f"summary-{shard[0]}of{shard[1]}.json"
            atomic_write_bytes(Path(job.out_dir) / name,
                               (json.dumps(summary.to_dict(), indent=2, default=str) + "\n").encode())
        out.append((entry, job, summary))
    return out


def run_recipe(recipe: dict, *, workers: Optional[int] = None, shard=(0, 1), dry_run: bool = False,
               only: Optional[list[str]] = None, progress: bool = True, test_only: bool = False,
               anonymize_only: bool = False) -> int:
    """Write every mirror of the recipe; then, when it has a study section, train and evaluate on them. Returns the
    command line's exit code: 0 done, 1 files failed (the study is not run on incomplete mirrors). Ends with the
    command's wall time. progress: bars on a terminal (avanon.progress; never in a log file or a CI log)."""
    from avanon.progress import default_enabled, format_seconds, logging_above_bars

    t0 = time.perf_counter()
    with default_enabled(progress), logging_above_bars(progress):
        code = _run_recipe(recipe, workers, shard, dry_run, only, progress, test_only, anonymize_only)
        if code is not None:
            log.info(f"{recipe['name']}: {'planned' if dry_run else 'finished'} in "
                     f"{format_seconds(time.perf_counter() - t0)} (wall time)")
    return code or 0


def _run_recipe(recipe, workers, shard, dry_run, only, progress, test_only, anonymize_only) -> Optional[int]:
    """run_recipe's work; None when there was nothing to do."""
    from avanon.study.config import study_enabled
    from avanon.study.runner import run_study

    if not recipe["anonymize"] and not study_enabled(recipe):
        log.info(f"{recipe['name']}: the recipe names no anonymize entries; nothing to do")
        return None
    written = write_mirrors(recipe, workers=workers, shard=shard, dry_run=dry_run, only=only, progress=progress)
    failed = sum(s.failed + len(s.tree_failures) for _, _, s in written)
    if failed:
        log.info(f"{failed} files failed and are not in the mirrors (privacy first); the study is not run on "
                 "incomplete mirrors. Fix them (see the FAILED lines) and re-run the same command.")
        return 1
    if study_enabled(recipe) and not anonymize_only and shard[1] == 1:
        run_study(recipe, [(entry, Path(job.out_dir)) for entry, job, _ in written], test_only=test_only,
                  dry_run=dry_run, progress=progress)
    return 0


# ------------------------------------------------------------------------------------------------ commands
def add_commands(sub) -> None:
    """`avanon run RECIPE` and `avanon anonymize` (a one-entry recipe from flags)."""
    def common_run(sp):
        sp.add_argument("--workers", type=positive_int, help="parallel worker processes (default: recipe's workers)")
        sp.add_argument("--shard", type=parse_shard, default=(0, 1), help="k/N: process every N-th image from k")
        sp.add_argument("--dry-run", action="store_true", help="plan and count; write nothing")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    r = sub.add_parser("run", help="run a recipe: every mirror it names, then its study")
    r.add_argument("recipe", help="recipe YAML file")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    r.add_argument("--only", action="append", help="only the anonymize entries with these names")
    r.add_argument("--anonymize-only", action="store_true", help="write the mirrors, skip the study")
    r.add_argument("--test-only", action="store_true", help="study: re-evaluate trained models, train nothing")
    common_run(r)
    r.set_defaults(func=cmd_run)

    a = sub.add_parser("anonymize", help="write one anonymized mirror of a dataset split")
    a.add_argument("--dataset", required=True, help="adapter: coco, cityscapes, bdd100k, synthetic")
    a.add_argument("--root", required=True, help="dataset root")
    a.add_argument("--split", default="train")
    a.add_argument("--option", action="append", metavar="KEY=VALUE", help="dataset adapter option")
    a.add_argument("--region", required=True, choices=["body", "face"])
    a.add_argument("--region-param", action="append", metavar="KEY=VALUE",
                   help="region parameter, e.g. min_size=32, provider=file, file=face_boxes_train.json")
    a.add_argument("--filter", action="append", metavar="KEY=VALUE", help="filter, e.g. require_keypoints=true")
    a.add_argument("--method", required=True, help="blur, mask_out, pixelate, realistic")
    a.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter, e.g. fill=0")
    a.add_argument("--name", help="mirror directory name (default REGION_TAG, e.g. body_mask_out)")
    a.add_argument("--out", required=True, help="output root; the mirror goes to OUT/DATASET/NAME")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--link", choices=["copy", "hardlink"], default="copy")
    a.add_argument("--exif-frame", choices=["auto", "oriented", "raw"], default="auto")
    common_run(a)
    a.set_defaults(func=cmd_anonymize)


def cmd_run(args) -> int:
    from avanon.recipe import load_recipe
    recipe = load_recipe(args.recipe, args.set)
    return run_recipe(recipe, workers=args.workers, shard=args.shard, dry_run=args.dry_run, only=args.only,
                      progress=not args.no_progress, test_only=args.test_only, anonymize_only=args.anonymize_only)


def cmd_anonymize(args) -> int:
    from avanon.recipe import validate
    raw = {
        "name": f"anonymize-{args.dataset}-{args.region}-{args.method}",
        "seed": args.seed,
        "dataset": {"adapter": args.dataset, "root": args.root, "split": args.split,
                    "options": kv_list(args.option, "--option")},
        "regions": {args.region: kv_list(args.region_param, "--region-param")},
        "filters": kv_list(args.filter, "--filter"),
        "anonymize": [{"region": args.region, "method": args.method, "params": kv_list(args.param, "--param"),
                       **({"name": args.name} if args.name else {})}],
        "output": {"root": args.out, "link": args.link, "exif_frame": args.exif_frame},
    }
    recipe = validate(raw, "command line")
    return run_recipe(recipe, workers=args.workers, shard=args.shard, dry_run=args.dry_run, only=None,
                      progress=not args.no_progress)
