"""`avanon slurm RECIPE`: what `avanon run RECIPE` does, as a graph of Slurm jobs submitted through submitit (the
optional extra `slurm`):

    anonymize   job array of N tasks, 1 GPU each: `avanon run RECIPE --anonymize-only --shard $SLURM_ARRAY_TASK_ID/N`
    merge       after every array task succeeded (afterok): `avanon merge MIRROR` for each mirror
    train       one job per (mirror, seed) run not finished yet, after the merge (afterok), K GPUs each: the
                training module (under torch.distributed.run when K > 1), then the run's results.jsonl line
                (appended under the file lock of avanon.study.runner.append_result)
    report      after every training job ended (afterany): checks that every run is in results.jsonl, writes the
                report and the closing summary

Dependent jobs carry --kill-on-invalid-dep=yes, so a failed stage cancels what waits for it. `dry_run` prints every
job (command, resources, dependencies) and needs no submitit. The `local` executor (submitit's LocalExecutor, for
tests and a machine without Slurm) cannot express dependencies: there the stages run one after another, each waited
for with `.result()`. Re-submitting the same command skips finished runs; an interrupted run resumes from its
checkpoint (the training jobs always pass --resume when a checkpoint exists).
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from avanon.study.config import RESULTS, resolved_study, study_dir
from avanon.study.launch import CLI, LAUNCH_CONFIG, TRAIN_LOG, cli_argv, plugin_imports, run_one
from avanon.study.runner import StudyRun, finish_study, finished_runs, plan_runs

log = logging.getLogger("avanon.study")

SLURM_INSTALL = 'pip install -c constraints.txt "avanon[slurm]"'


class SlurmError(RuntimeError):
    """submitit missing, or a job that failed (the message names it and its log)."""


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise SlurmError("avanon slurm needs submitit, the optional extra 'slurm': "
                         f"{SLURM_INSTALL} (in a checkout: pip install -c constraints.txt -e \".[slurm]\")") from None
    return submitit


@dataclass
class SlurmOptions:
    shards: int = 4  # anonymization array tasks (one GPU each)
    gpus_per_run: int = 1  # GPUs of one training job (DDP over them when > 1)
    partition: Optional[str] = None
    account: Optional[str] = None
    time_min: int = 24 * 60  # the time limit of every job
    cpus_per_task: Optional[int] = None  # training jobs (default: (data.workers + 1) per GPU)
    mem_gb: Optional[float] = None
    executor: str = "slurm"  # slurm | local
    sbatch: dict = field(default_factory=dict)  # more #SBATCH options, e.g. {"qos": "high"}
    test_only: bool = False
    anonymize_only: bool = False


@dataclass
class JobSpec:
    """One job (or job array) of the graph."""
    key: str  # anonymize, merge, train:MIRROR:SEED, report
    name: str  # the Slurm job name
    command: str  # what it runs, for --dry-run
    fn: Callable
    resources: dict
    after: list = field(default_factory=list)  # keys of the jobs it waits for
    dependency: str = "afterok"
    array: Optional[int] = None  # job array of this many tasks; fn(k) for task k


# ------------------------------------------------------------------------------------------------ the jobs
class AnonymizeShard:
    """Array task k: `avanon run RECIPE --anonymize-only --shard k/N` (k from SLURM_ARRAY_TASK_ID on Slurm)."""

    def __init__(self, run_args: Sequence[str], shards: int, imports: Sequence[str] = ()):
        self.run_args, self.shards, self.imports = list(run_args), shards, list(imports)

    def argv(self, k: Any) -> list[str]:
        return [*cli_argv(self.imports), "run", *self.run_args, "--anonymize-only", "--no-progress",
                "--shard", f"{k}/{self.shards}"]

    def __call__(self, k: int) -> int:
        k = int(os.environ.get("SLURM_ARRAY_TASK_ID", k))
        code = subprocess.run(self.argv(k), stdin=subprocess.DEVNULL).returncode
        if code:
            raise SlurmError(f"anonymize shard {k}/{self.shards} failed (exit code {code})")
        return k


class MergeMirrors:
    """`avanon merge MIRROR` for each mirror; fails when a shard is missing or files failed."""

    def __init__(self, mirror_dirs: Sequence[Path]):
        self.mirror_dirs = [str(m) for m in mirror_dirs]

    def __call__(self) -> int:
        import argparse

        from avanon.mirror.cli import cmd_merge

        bad = [m for m in self.mirror_dirs if cmd_merge(argparse.Namespace(mirror=m))]
        if bad:
            raise SlurmError(f"merge: {', '.join(bad)} incomplete or with failed files (see above)")
        return len(self.mirror_dirs)


class TrainRun:
    """One (mirror, seed) run on the job's GPUs, then its results.jsonl line (avanon.study.launch.run_one)."""

    def __init__(self, recipe: dict, run: StudyRun, nproc: int, test_only: bool, imports: Sequence[str]):
        self.recipe, self.run, self.nproc, self.test_only, self.imports = recipe, run, nproc, test_only, list(imports)

    def __call__(self) -> dict:
        return run_one(self.recipe, self.run, self.nproc, self.test_only, self.imports)


class Report:
    """Every run in results.jsonl (else an error naming the missing runs and their logs), then the report and the
    closing summary, as `avanon run` ends."""

    def __init__(self, recipe: dict, runs: Sequence[StudyRun]):
        self.recipe, self.runs = recipe, list(runs)

    def __call__(self) -> str:
        root = logging.getLogger("avanon")
        if not root.handlers:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("%(message)s"))
            root.addHandler(handler)
            root.setLevel(logging.INFO)
        done = finished_runs(study_dir(self.recipe) / RESULTS)
        missing = [r for r in self.runs if (r.key, r.seed) not in done]
        if missing:
            raise SlurmError(f"report: {len(missing)} runs are not in results.jsonl: "
                             + "; ".join(f"{r.key} seed {r.seed} (log {r.out / TRAIN_LOG})" for r in missing)
                             + ". Re-submit the same command: finished runs are skipped.")
        paths = finish_study(self.recipe, self.runs)
        return str(paths.get("markdown", study_dir(self.recipe)))


# ------------------------------------------------------------------------------------------------ the graph
def plan_jobs(recipe: dict, run_args: Sequence[str], mirrors: list[tuple[dict, Path]], opts: SlurmOptions,
              workers: Optional[int] = None, plugins: Sequence[str] = ()) -> list[JobSpec]:
    """The job graph in submission order (every job after the jobs it waits for). run_args: the recipe file and
    its --set/--only/--workers arguments, as the anonymization tasks are given them; plugins: `avanon --import`."""
    name = recipe["name"]
    imports = plugin_imports(recipe, plugins)
    base = {"timeout_min": opts.time_min, "tasks_per_node": 1, "nodes": 1}
    jobs: list[JobSpec] = []
    if recipe["anonymize"] and mirrors:
        shard = AnonymizeShard(run_args, opts.shards, imports)
        shown = (shlex.join(["avanon", *shard.argv("K")[len(CLI):-2], "--shard"])
                 + f" $SLURM_ARRAY_TASK_ID/{opts.shards}")
        jobs.append(JobSpec("anonymize", f"{name}-anonymize", shown, shard,
                            dict(base, gpus_per_node=1, cpus_per_task=workers or recipe["workers"]),
                            array=opts.shards))
        merge = MergeMirrors([m for _, m in mirrors])
        jobs.append(JobSpec("merge", f"{name}-merge", " && ".join(shlex.join(["avanon", "merge", m])
                                                                  for m in merge.mirror_dirs), merge,
                            dict(base, gpus_per_node=0, cpus_per_task=1), after=["anonymize"]))
    if recipe.get("study") is None or opts.anonymize_only:
        return jobs
    study = resolved_study(recipe)
    runs = plan_runs(recipe, mirrors)
    done = set() if opts.test_only else finished_runs(study_dir(recipe) / RESULTS)
    k = opts.gpus_per_run
    cpus = opts.cpus_per_task or k * (int(study["config"].get("data", {}).get("workers", 2)) + 1)
    trains = []
    for run in runs:
        if (run.key, run.seed) in done:
            continue
        head = ["python", "-m", "avanon.study.training"] if k == 1 else \
            ["python", "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={k}", "-m",
             "avanon.study.training"]
        cmd = shlex.join([*head, "--config", str(run.out / LAUNCH_CONFIG), "--out", str(run.out),
                          "--trainer", study["trainer"], *(x for m in imports for x in ("--import", m)),
                          *(["--test-only"] if opts.test_only else [])])
        cmd += "" if opts.test_only else " [--resume]"
        key = f"train:{run.key}:{run.seed}"
        trains.append(key)
        jobs.append(JobSpec(key, f"{name}-{run.key}-s{run.seed}".replace("@", "-"),
                            f"{cmd} > {run.out / TRAIN_LOG}; then its line in {study_dir(recipe) / RESULTS}",
                            TrainRun(recipe, run, k, opts.test_only, imports),
                            dict(base, gpus_per_node=k, cpus_per_task=cpus, **({"mem_gb": opts.mem_gb}
                                                                               if opts.mem_gb else {})),
                            after=[j.key for j in jobs if j.key == "merge"]))
    jobs.append(JobSpec("report", f"{name}-report",
                        f"check results.jsonl, write {study_dir(recipe) / 'report'} and the closing summary",
                        Report(recipe, runs), dict(base, gpus_per_node=0, cpus_per_task=1),
                        after=trains or [j.key for j in jobs if j.key == "merge"], dependency="afterany"))
    return jobs


def format_plan(jobs: Sequence[JobSpec], opts: SlurmOptions) -> str:
    """--dry-run: every job with its command, resources and dependencies."""
    common = {"partition": opts.partition, "account": opts.account, **opts.sbatch}
    shared = ", ".join(f"{k}={v}" for k, v in common.items() if v is not None)
    lines = [f"{len(jobs)} jobs ({opts.executor} executor)" + (f"; every job: {shared}" if shared else "")]
    for n, job in enumerate(jobs, 1):
        res = ", ".join(f"{k}={v}" for k, v in job.resources.items())
        after = f"{job.dependency}: {', '.join(job.after)}" if job.after else "none"
        lines.append(f"[{n}] {job.key}: job {job.name}" + (f" (array of {job.array})" if job.array else ""))
        lines.append(f"    command: {job.command}")
        lines.append(f"    resources: {res}")
        lines.append(f"    depends on: {after}")
    return "\n".join(lines)


def _parameters(job: JobSpec, opts: SlurmOptions, ids: dict) -> dict:
    params = dict(job.resources, name=job.name)
    sbatch = dict(opts.sbatch)
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.account:
        params["slurm_account"] = opts.account
    if job.array:
        params["slurm_array_parallelism"] = job.array
    if job.after:
        params["slurm_dependency"] = f"{job.dependency}:" + ":".join(ids[a] for a in job.after)
        sbatch.setdefault("kill_on_invalid_dep", "yes")
    if sbatch:
        params["slurm_additional_parameters"] = sbatch
    return params


def submit_jobs(jobs: Sequence[JobSpec], opts: SlurmOptions, folder: Path, progress_print=None) -> dict:
    """Submit the graph; returns {job key: Slurm job id}. On the local executor, run it stage by stage here and
    raise SlurmError naming the jobs that failed and their logs."""
    progress_print = progress_print or log.info
    submitit = import_submitit()
    executor = submitit.AutoExecutor(folder=str(folder), cluster=opts.executor)
    ids: dict[str, str] = {}
    handles: dict[str, list] = {}
    local = opts.executor == "local"
    failed: list[str] = []
    for job in jobs:
        if local and job.after:  # no dependencies on the local executor: wait for what this job waits for
            for key in job.after:
                _wait(handles.get(key, []), key, job.dependency == "afterok", failed)
            if failed and job.dependency == "afterok":
                break
        executor.update_parameters(**_parameters(job, opts, ids))
        if job.array:
            handles[job.key] = executor.map_array(job.fn, list(range(job.array)))
            ids[job.key] = handles[job.key][0].job_id.split("_")[0]
        else:
            handles[job.key] = [executor.submit(job.fn)]
            ids[job.key] = handles[job.key][0].job_id
        progress_print(f"submitted {job.key}: job {ids[job.key]}"
                       + (f" (array of {job.array})" if job.array else "")
                       + (f", {job.dependency} {', '.join(ids[a] for a in job.after)}" if job.after and not local
                          else ""))
    if local:
        for job in jobs:
            if job.key in handles:
                _wait(handles[job.key], job.key, True, failed)
        if failed:
            raise SlurmError("local executor: jobs failed:\n  " + "\n  ".join(dict.fromkeys(failed)))
    return ids


def _wait(handles: list, key: str, strict: bool, failed: list) -> None:
    """Wait for jobs (local executor); a failure is recorded with its log (and ends the graph when strict)."""
    for h in handles:
        try:
            h.result()
        except Exception as exc:  # submitit re-raises the job's exception (FailedJobError)
            first = str(exc).strip().splitlines()
            failed.append(f"{key} (job {h.job_id}): {first[-1] if first else type(exc).__name__}; "
                          f"log: {h.paths.stdout} / {h.paths.stderr}")
            if strict:
                return
