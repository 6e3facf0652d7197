"""What `avanon run` does with a recipe: build the dataset adapter, then write one mirror per anonymize entry."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from dataset_adapters import build_adapter
from avanon.imageio import atomic_write_bytes
from avanon.mirror import MirrorError, MirrorJob, MirrorSummary, check_tools, write_mirror
from avanon.recipe import RecipeError


def mirror_root(recipe: dict) -> Path:
    """Mirrors of a recipe live in OUTPUT_ROOT/ADAPTER/NAME (e.g. /data/anon/cityscapes/body_mask_out)."""
    return Path(recipe["output"]["root"]) / recipe["dataset"]["adapter"]


def region_identity(selector) -> dict:
    """The selector's description without absolute paths, so a dataset that moved still matches its mirror
    (the face-box file is identified by its sha256)."""
    d = selector.describe()
    if isinstance(d.get("provider"), dict):
        d = dict(d, provider={k: v for k, v in d["provider"].items() if k != "path"})
    return d


def check_categories(recipe: dict, adapter, src: str) -> None:
    """filters.categories may only name human categories this dataset has: a typo ("persn") would anonymize
    nobody and copy every image in the clear."""
    cats = (recipe.get("filters") or {}).get("categories")
    known = tuple(getattr(adapter, "human_categories", adapter.target_categories))
    if isinstance(cats, (list, tuple)):
        unknown = [c for c in cats if c not in known]
        if unknown:
            raise RecipeError(f"{src}: filters.categories: {unknown[0]!r} is not a human category of the "
                              f"{adapter.name} dataset; known: {', '.join(known)}")


def check_face_file_coverage(selector, adapter, recipe: dict, src: str) -> None:
    """A face-box file that names none of the split's images would leave every face in the clear (wrong split,
    wrong key format): refused unless filters.allow_empty is set."""
    provider = getattr(selector, "provider", None)
    entries = getattr(provider, "entries", None)
    if entries is None or (recipe.get("filters") or {}).get("allow_empty"):
        return
    if not any(key in entries for _, keys in adapter.image_index() for key in keys):
        raise RecipeError(f"{src}: regions.face.file: the face-box file {provider.path} names none of the "
                          f"{len(adapter)} images of split {adapter.split!r} (wrong split or file?); set "
                          "filters.allow_empty: true to accept a mirror without face regions")


def make_jobs(recipe: dict, adapter, only: Optional[list[str]] = None) -> list[tuple[dict, MirrorJob]]:
    """One MirrorJob per selected anonymize entry; region settings are validated here, naming the recipe key."""
    from avanon.regions import RegionConfigError, build_region_selector

    src = recipe.get("_source", "recipe")
    entries = recipe["anonymize"]
    if only:
        names = {e["name"] for e in entries}
        missing = [n for n in only if n not in names]
        if missing:
            raise RecipeError(f"{src}: --only {missing[0]}: no anonymize entry has that name; have: {', '.join(sorted(names))}")
        entries = [e for e in entries if e["name"] in only]
    check_categories(recipe, adapter, src)
    kp = recipe["keypoints"]
    if kp["provider"] != "annotations":
        from avanon.keypoints import build_keypoint_provider

        try:
            build_keypoint_provider(kp["provider"], kp["params"], adapter.root, split=recipe["dataset"]["split"],
                                    target_categories=adapter.target_categories)
        except Exception as exc:
            raise RecipeError(f"{src}: keypoints: {exc}") from None
    out = []
    for entry in entries:
        kind = entry["region"]
        try:
            selector = build_region_selector(kind, recipe["regions"][kind], recipe["filters"], adapter.root,
                                             adapter.target_categories)
        except RegionConfigError as exc:
            raise RecipeError(f"{src}: regions.{kind} / filters: {exc}") from None
        check_face_file_coverage(selector, adapter, recipe, src)
        job = MirrorJob(
            source_root=str(adapter.root.resolve()),
            out_dir=str(mirror_root(recipe) / entry["name"]),
            region=kind,
            region_params=recipe["regions"][kind],
            filters=recipe["filters"],
            target_categories=tuple(adapter.target_categories),
            method=entry["method"],
            method_params=entry["params"],
            seed=recipe["seed"],
            exif_frame=recipe["output"]["exif_frame"],
            jpeg_quality=recipe["output"]["jpeg_quality"],
            png_compression=recipe["output"]["png_compression"],
            region_description=region_identity(selector),
            link=recipe["output"]["link"],
            keypoints_provider=recipe["keypoints"]["provider"],
            keypoints_params=recipe["keypoints"]["params"],
            split=recipe["dataset"]["split"],
        )
        out.append((entry, job))
    return out


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
