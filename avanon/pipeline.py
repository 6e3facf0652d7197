"""What `avanon run` does with a recipe: build the dataset adapter, then write one mirror per anonymize entry."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from dataset_adapters import build_adapter
from avanon.mirror.imageio import atomic_write_bytes
from avanon.mirror import MirrorError, MirrorSummary, check_tools, make_jobs, write_mirror


def format_summary(name: str, s: MirrorSummary) -> str:
    rate = (s.images - s.resumed) / s.seconds if s.seconds > 0 else 0.0
    head = "plan" if s.dry_run else "done"
    lines = [f"{name}: {head}: {s.images} images ({s.anonymized} anonymized, {s.copied} copied unchanged, "
             f"{s.failed} failed, {s.resumed} already done), {s.instances_anonymized} instances anonymized, "
             f"{s.tree_files_copied} other files {'to copy' if s.dry_run else 'copied'}, {s.seconds:.1f} s "
             f"({rate:.2f} img/s)"]
    if s.skip_reasons:
        lines.append("  instances left alone: " + ", ".join(f"{k} {v}" for k, v in sorted(s.skip_reasons.items())))
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


def run_recipe(recipe: dict, *, workers: Optional[int] = None, shard=(0, 1), dry_run: bool = False,
               only: Optional[list[str]] = None, progress: bool = True, test_only: bool = False,
               anonymize_only: bool = False) -> int:
    """Write every mirror of the recipe; then, when it has a study section, train and evaluate on them."""
    from avanon.study.config import study_enabled
    from avanon.study.runner import run_study

    ds = recipe["dataset"]
    adapter = build_adapter(ds["adapter"], ds["root"], ds["split"], **ds["options"])
    jobs = make_jobs(recipe, adapter, only)
    if not jobs and not study_enabled(recipe):
        print(f"{recipe['name']}: the recipe names no anonymize entries; nothing to do")
        return 0
    for entry, job in jobs:  # every mirror's method must be able to run before any of them starts
        try:
            check_tools(job)
        except MirrorError as exc:
            if not dry_run:
                raise
            print(f"{entry['name']}: WARNING: {exc}")
    dataset_info = dict(ds, root=str(Path(ds["root"]).resolve()))
    failed = 0
    for entry, job in jobs:
        run_info = {"dataset": dataset_info, "recipe": {k: v for k, v in recipe.items() if k != "_source"},
                    "recipe_file": recipe.get("_source"), "mirror": entry["name"],
                    "copy_unannotated": recipe["output"]["copy_unannotated"], "link": recipe["output"]["link"]}
        summary = write_mirror(adapter, job, workers=workers or recipe["workers"],
                               shard=shard, dry_run=dry_run, copy_unannotated=recipe["output"]["copy_unannotated"],
                               run_info=run_info, progress=progress)
        print(format_summary(entry["name"], summary), flush=True)
        failed += summary.failed + len(summary.tree_failures)
        if not dry_run:
            name = "summary.json" if shard[1] == 1 else f"summary-{shard[0]}of{shard[1]}.json"
            atomic_write_bytes(Path(job.out_dir) / name,
                               (json.dumps(summary.to_dict(), indent=2, default=str) + "\n").encode())
    if failed:
        print(f"{failed} files failed and are not in the mirrors (privacy first); the study is not run on "
              "incomplete mirrors. Fix them (see the FAILED lines) and re-run the same command.")
        return 1
    if study_enabled(recipe) and not anonymize_only and shard[1] == 1:
        run_study(recipe, [(entry, Path(job.out_dir)) for entry, job in jobs], test_only=test_only, dry_run=dry_run)
    return 0
