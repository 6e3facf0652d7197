"""What `avanon run` does with a recipe: build the dataset adapter, then write one mirror per anonymize entry."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from dataset_adapters import build_adapter
from avanon.cliutil import kv_list, parse_gpus, parse_shard, positive_int
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
               anonymize_only: bool = False, gpus: Optional[list[int]] = None, gpus_per_run: int = 1,
               run_args: Optional[list[str]] = None, plugins: Sequence[str] = ()) -> int:
    """Write every mirror of the recipe; then, when it has a study section, train and evaluate on them. Returns the
    command line's exit code: 0 done, 1 files failed (the study is not run on incomplete mirrors) or a process of a
    --gpus run failed. Ends with the command's wall time. progress: bars on a terminal (avanon.progress; never in a
    log file or a CI log).
    gpus: CUDA device ids (avanon.study.launch): with more than one, the mirrors are written by one shard process
    per GPU (run_args: the recipe file and its --set/--only/--workers arguments, as the shards are given them) and
    merged; the study's runs are concurrent processes on groups of gpus_per_run GPUs."""
    from avanon.progress import default_enabled, format_seconds, logging_above_bars

    t0 = time.perf_counter()
    with default_enabled(progress), logging_above_bars(progress):
        code = _run_recipe(recipe, workers, shard, dry_run, only, progress, test_only, anonymize_only,
                           GpuPlan(gpus, gpus_per_run, run_args, tuple(plugins)) if gpus else None)
        if code is not None:
            log.info(f"{recipe['name']}: {'planned' if dry_run else 'finished'} in "
                     f"{format_seconds(time.perf_counter() - t0)} (wall time)")
    return code or 0


class GpuPlan(NamedTuple):
    """`--gpus`: the device ids, GPUs per training run, and the `run` arguments a shard process is given."""
    gpus: list[int]
    per_run: int = 1
    run_args: Optional[list[str]] = None
    plugins: tuple = ()  # `avanon --import MODULE`: passed on to every process


@contextlib.contextmanager
def _visible_devices(gpus: Optional[list[int]]):
    """CUDA_VISIBLE_DEVICES set to these GPUs for the duration (this process's own anonymization on one GPU)."""
    if not gpus:
        yield
        return
    from avanon.study.launch import device_names

    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(device_names(gpus))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


def logs_dir(recipe: dict) -> Path:
    """Where the processes of `--gpus` and `avanon slurm` log: OUT/ADAPTER/logs/RECIPE_NAME."""
    return Path(recipe["output"]["root"]) / recipe["dataset"]["adapter"] / "logs" / recipe["name"]


def planned_mirrors(recipe: dict, only: Optional[list[str]] = None, check: bool = True) -> list[tuple[dict, Path]]:
    """(entry, mirror dir) of every mirror the recipe writes, without writing (the dataset is indexed, and a
    synthetic one generated, here); check: every method can run (weights present)."""
    ds = recipe["dataset"]
    adapter = build_adapter(ds["adapter"], ds["root"], ds["split"], **ds["options"])
    jobs = make_jobs(recipe, adapter, only)
    if check:
        for _, job in jobs:
            check_tools(job)
    return [(entry, Path(job.out_dir)) for entry, job in jobs]


def _run_recipe(recipe, workers, shard, dry_run, only, progress, test_only, anonymize_only,
                plan: Optional[GpuPlan] = None) -> Optional[int]:
    """run_recipe's work; None when there was nothing to do."""
    from avanon.study.config import study_enabled
    from avanon.study.runner import run_study

    if not recipe["anonymize"] and not study_enabled(recipe):
        log.info(f"{recipe['name']}: the recipe names no anonymize entries; nothing to do")
        return None
    if plan and len(plan.gpus) > 1 and not dry_run and shard == (0, 1) and recipe["anonymize"]:
        from avanon.study.launch import anonymize_on_gpus, plugin_imports

        if plan.run_args is None:
            raise ValueError("run_recipe(gpus=[...]) with several GPUs needs run_args (the recipe file and its "
                             "--set/--only/--workers arguments) for the shard processes")
        mirrors = planned_mirrors(recipe, only)
        code = anonymize_on_gpus(plan.run_args, plan.gpus, [path for _, path in mirrors], logs_dir(recipe),
                                 imports=plugin_imports(recipe, plan.plugins))
        if code:
            log.info("the study is not run on incomplete mirrors. Fix them (see the messages above) and re-run the "
                     "same command.")
            return code
    else:
        with _visible_devices(plan.gpus[:1] if plan else None):
            written = write_mirrors(recipe, workers=workers, shard=shard, dry_run=dry_run, only=only,
                                    progress=progress)
        failed = sum(s.failed + len(s.tree_failures) for _, _, s in written)
        if failed:
            log.info(f"{failed} files failed and are not in the mirrors (privacy first); the study is not run on "
                     "incomplete mirrors. Fix them (see the FAILED lines) and re-run the same command.")
            return 1
        mirrors = [(entry, Path(job.out_dir)) for entry, job, _ in written]
    if study_enabled(recipe) and not anonymize_only and shard[1] == 1:
        if plan:
            from avanon.study.launch import LaunchError, plugin_imports, run_study_on_gpus

            try:
                run_study_on_gpus(recipe, mirrors, plan.gpus, plan.per_run, test_only=test_only, dry_run=dry_run,
                                  imports=plugin_imports(recipe, plan.plugins))
            except LaunchError as exc:
                log.error(str(exc))
                return 1
        else:
            run_study(recipe, mirrors, test_only=test_only, dry_run=dry_run, progress=progress)
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
    r.add_argument("--gpus", type=parse_gpus, metavar="IDS|N",
                   help="CUDA devices: a list (0,1,2,3; '3,' is device 3 alone) or a count (4 = 0,1,2,3). Mirrors: one "
                        "--shard process per GPU, then merged; study: concurrent runs, one per GPU (logs under "
                        "OUT/ADAPTER/logs/NAME and in each run's train.log)")
    r.add_argument("--gpus-per-run", type=positive_int, default=1, metavar="K",
                   help="with --gpus: each training run is a DDP job over K GPUs (torch.distributed.run); K must "
                        "divide the number of GPUs (default 1)")
    common_run(r)
    r.set_defaults(func=cmd_run, parser=r)

    add_slurm_command(sub)

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


def check_gpu_args(args, parser) -> None:
    """--gpus / --gpus-per-run that cannot work: argparse errors (exit 2 with the usage line)."""
    if args.gpus is None:
        if args.gpus_per_run != 1:
            parser.error("--gpus-per-run needs --gpus (the devices to run on)")
        return
    if len(args.gpus) % args.gpus_per_run:
        parser.error(f"--gpus-per-run {args.gpus_per_run} does not divide the {len(args.gpus)} GPUs of --gpus "
                     f"{','.join(map(str, args.gpus))}")
    if args.shard != (0, 1):
        parser.error("--gpus runs its own shards (one per GPU); give either --gpus or --shard")
    from avanon.study.launch import device_names

    try:
        device_names(args.gpus)
    except ValueError as exc:
        parser.error(f"--gpus {','.join(map(str, args.gpus))}: {exc}")


def relaunch_args(args) -> list[str]:
    """The recipe file and the --set/--only/--workers arguments of this command, for its shard processes."""
    out = [args.recipe]
    for s in args.set:
        out += ["--set", s]
    for name in args.only or []:
        out += ["--only", name]
    if args.workers:
        out += ["--workers", str(args.workers)]
    return out


def cmd_run(args) -> int:
    from avanon.recipe import load_recipe
    check_gpu_args(args, args.parser)
    recipe = load_recipe(args.recipe, args.set)
    return run_recipe(recipe, workers=args.workers, shard=args.shard, dry_run=args.dry_run, only=args.only,
                      progress=not args.no_progress, test_only=args.test_only, anonymize_only=args.anonymize_only,
                      gpus=args.gpus, gpus_per_run=args.gpus_per_run, run_args=relaunch_args(args),
                      plugins=getattr(args, "plugins", ()))


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


# ------------------------------------------------------------------------------------------------ slurm
def add_slurm_command(sub) -> None:
    """`avanon slurm RECIPE`: `avanon run` as Slurm jobs (avanon.study.slurm; submitit, the extra 'slurm')."""
    sl = sub.add_parser("slurm", help="submit a recipe as Slurm jobs: anonymization array, merge, one job per "
                        "training run, report (submitit; --dry-run prints them)")
    sl.add_argument("recipe", help="recipe YAML file")
    sl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    sl.add_argument("--only", action="append", help="only the anonymize entries with these names")
    sl.add_argument("--workers", type=positive_int, help="worker processes per anonymization task (default: "
                    "recipe's workers; also its CPUs)")
    sl.add_argument("--shards", type=positive_int, default=4, help="anonymization array tasks, 1 GPU each (default 4)")
    sl.add_argument("--gpus-per-run", type=positive_int, default=1, metavar="K",
                    help="GPUs of each training job; K > 1: DDP over them (torch.distributed.run)")
    sl.add_argument("--partition", help="Slurm partition")
    sl.add_argument("--account", help="Slurm account")
    sl.add_argument("--time", type=positive_int, default=24 * 60, metavar="MIN",
                    help="time limit of every job in minutes (default 1440)")
    sl.add_argument("--cpus-per-task", type=positive_int, help="CPUs of a training job (default: (data.workers + 1) "
                    "per GPU)")
    sl.add_argument("--mem-gb", type=float, help="memory of a training job")
    sl.add_argument("--sbatch", action="append", metavar="KEY=VALUE", help="another #SBATCH option, e.g. qos=high")
    sl.add_argument("--executor", choices=["slurm", "local"], default="slurm",
                    help="local: submitit's LocalExecutor on this machine, the stages run in order (tests, no "
                         "Slurm)")
    sl.add_argument("--test-only", action="store_true", help="study: re-evaluate trained models, train nothing")
    sl.add_argument("--anonymize-only", action="store_true", help="the mirrors only: anonymize and merge jobs")
    sl.add_argument("--dry-run", action="store_true", help="print every job (command, resources, dependencies); "
                    "submit nothing")
    sl.set_defaults(func=cmd_slurm)


def cmd_slurm(args) -> int:
    """0 submitted (or, on the local executor, done); 1 a job failed (local executor); 2 bad input or no submitit."""
    import sys

    from avanon.recipe import load_recipe
    from avanon.study.slurm import SlurmError, SlurmOptions, format_plan, import_submitit, plan_jobs, submit_jobs

    recipe = load_recipe(args.recipe, args.set)
    opts = SlurmOptions(shards=args.shards, gpus_per_run=args.gpus_per_run, partition=args.partition,
                        account=args.account, time_min=args.time, cpus_per_task=args.cpus_per_task,
                        mem_gb=args.mem_gb, executor=args.executor, sbatch=kv_list(args.sbatch, "--sbatch"),
                        test_only=args.test_only, anonymize_only=args.anonymize_only)
    try:
        if not args.dry_run:
            import_submitit()  # before any work
        mirrors = planned_mirrors(recipe, args.only, check=not args.dry_run) if recipe["anonymize"] else []
        jobs = plan_jobs(recipe, relaunch_args(args), mirrors, opts, args.workers, args.plugins)
        if args.dry_run:
            print(format_plan(jobs, opts))
            return 0
        folder = logs_dir(recipe) / "slurm" / "%j"
        ids = submit_jobs(jobs, opts, folder)
    except SlurmError as exc:
        print(f"avanon slurm: error: {exc}", file=sys.stderr)
        return 1 if args.executor == "local" and "failed" in str(exc) else 2
    if args.executor == "local":
        log.info(f"{recipe['name']}: done on the local executor ({len(ids)} jobs; logs in {folder.parent})")
    else:
        log.info(f"{recipe['name']}: submitted {len(ids)} jobs ({', '.join(ids.values())}); follow them with "
                 f"`squeue -u $USER`; job logs in {folder.parent}, each run's output in its train.log")
    return 0
