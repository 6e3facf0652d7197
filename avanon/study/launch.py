"""Many runs on the GPUs of one machine (`avanon run RECIPE --gpus 0,1,2,3 [--gpus-per-run k]`).

- Mirrors: one `avanon run RECIPE --anonymize-only --shard k/N` process per GPU (CUDA_VISIBLE_DEVICES set to that
  GPU, so a recipe's `device: cuda` means it), then every mirror's shard manifests merged as `avanon merge` does.
- Study: the (mirror, seed) runs of avanon.study.runner as concurrent training processes, one per group of
  `gpus_per_run` GPUs: `python -m avanon.study.training --config RUN/launch_config.json --out RUN [--resume]`,
  or with k > 1 the same module under `python -m torch.distributed.run --standalone --nproc_per_node k` (DDP).
  Each process writes its output to RUN/train.log. This process appends each finished run's results.jsonl line
  (under the file lock of avanon.study.runner.append_result) and writes the report once, at the end.

Resumable as the in-process study: finished runs are skipped, an interrupted one resumes from its checkpoint. A
failed process does not stop the others; once they are done, LaunchError names each failure and its log.
Interrupted (Ctrl-C, SIGTERM), every process started here is terminated (its process group) before returning.
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import functools
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from avanon.mirror.imageio import atomic_write_bytes
from avanon.progress import format_seconds
from avanon.study.config import resolved_study, study_dir
from avanon.study.runner import (
    StudyRun, drop_checkpoint, finish_study, format_metrics, plan_runs, record_result, run_engine_config,
    start_study,
)

log = logging.getLogger("avanon.study")

CLI = [sys.executable, "-m", "avanon.cli"]  # `avanon`, with this interpreter (the venv's)
TRAIN_LOG = "train.log"  # a run's stdout and stderr, in its run directory
LAUNCH_CONFIG = "launch_config.json"  # the engine config the training process is given (it writes config.json)
STOP_GRACE_S = 30.0


class LaunchError(RuntimeError):
    """Processes that failed; the message names each one and its log."""


RUN_LOCK = ".run.lock"  # in a run directory: flock'ed by the process training it
SKIPPED, BUSY = -1000, -1001  # run_pool's codes for a task not started: prepare() said no; its lock is held


@dataclass
class Task:
    """One process of a launch: its name in messages, its command line (or prepare(), called at launch, gives it,
    or None to skip the task), its log file, and a lock file the process holds while it runs."""
    name: str
    argv: Optional[list[str]]
    log: Path
    env: dict = field(default_factory=dict)
    data: object = None
    lock: Optional[Path] = None
    prepare: Optional[Callable[[], Optional[list[str]]]] = None


def try_lock(path: Path) -> Optional[int]:
    """An fd holding an exclusive flock on path, or None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def gpu_groups(gpus: Sequence[int], per_run: int = 1) -> list[list[int]]:
    """The device list cut into groups of per_run GPUs, one run per group at a time."""
    if per_run < 1 or not gpus or len(gpus) % per_run:
        raise ValueError(f"--gpus-per-run {per_run} does not divide the {len(gpus)} GPUs of --gpus")
    return [list(gpus[i:i + per_run]) for i in range(0, len(gpus), per_run)]


def device_names(ids: Sequence[int], environ=None) -> list[str]:
    """CUDA_VISIBLE_DEVICES entries for device ids as this process sees them: through this process's own
    CUDA_VISIBLE_DEVICES when it has one (a Slurm allocation "2,3": --gpus 0,1 means devices 2 and 3; UUIDs and MIG
    names pass through), else the ids themselves. ValueError for an id beyond that list."""
    parent = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES", "")
    items = [x.strip() for x in parent.split(",") if x.strip()]
    if not items:
        return [str(i) for i in ids]
    bad = [i for i in ids if i >= len(items)]
    if bad:
        raise ValueError(f"device {bad[0]} does not exist here: CUDA_VISIBLE_DEVICES={parent} shows {len(items)} "
                         f"device{'s' if len(items) != 1 else ''} (ids 0 to {len(items) - 1})")
    return [items[i] for i in ids]


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, indented, for an error message."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join("    | " + t for t in text)


# ------------------------------------------------------------------------------------------------ the pool
class _Stop(BaseException):
    """SIGTERM while processes run: stop them, then end as on Ctrl-C."""


def _raise_stop(signum, frame):
    raise _Stop()


def _stop_all(running: dict) -> None:
    """Terminate every running process group (SIGTERM, then SIGKILL after STOP_GRACE_S) and wait for it."""
    for proc in running:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    for proc, (task, _g, _t0, fh) in running.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        fh.close()


def run_pool(tasks: Sequence[Task], groups: Sequence[Sequence[int]], *,
             on_start: Optional[Callable[[Task, list[int]], None]] = None,
             on_done: Optional[Callable[[Task, int, float], None]] = None,
             poll_s: float = 0.2) -> list[tuple[Task, int]]:
    """Run the tasks as subprocesses, in order, each on the first free group of GPUs (CUDA_VISIBLE_DEVICES=the
    group, mapped through this process's own CUDA_VISIBLE_DEVICES: device_names), one task per group at a time;
    stdout and stderr are appended to the task's log. on_start(task, group)
    and on_done(task, exit code, seconds) run in this process. Returns (task, exit code) in the order they ended;
    SKIPPED for a task whose prepare() returned None, BUSY for one whose lock another process holds (the process of
    a task inherits its lock, so that it stays held while the process lives, even if this one dies).
    With more than one group and no OMP_NUM_THREADS set, each process gets an equal share of the CPU cores."""
    pending, free = list(tasks), list(range(len(groups)))
    running: dict[subprocess.Popen, tuple] = {}
    results: list[tuple[Task, int]] = []
    threads = {} if len(groups) < 2 or "OMP_NUM_THREADS" in os.environ else \
        {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // len(groups)))}
    parent_env = dict(os.environ)
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _raise_stop) if main_thread else None
    try:
        while pending or running:
            while pending and free:
                task, g = pending.pop(0), free.pop(0)
                fd = try_lock(task.lock) if task.lock else None
                argv = None if task.lock and fd is None else task.prepare() if task.prepare else task.argv
                if argv is None:
                    if fd is not None:
                        os.close(fd)
                    free = sorted(free + [g])
                    code = BUSY if task.lock and fd is None else SKIPPED
                    results.append((task, code))
                    if on_done:
                        on_done(task, code, 0.0)
                    continue
                task.argv = argv
                visible = ",".join(device_names(groups[g], parent_env))
                env = dict(os.environ, **threads, **task.env, CUDA_VISIBLE_DEVICES=visible)
                task.log.parent.mkdir(parents=True, exist_ok=True)
                fh = open(task.log, "ab")
                fh.write(f"# avanon {datetime.datetime.now().isoformat(timespec='seconds')} "
                         f"CUDA_VISIBLE_DEVICES={visible}: {shlex.join(task.argv)}\n".encode())
                fh.flush()
                try:
                    proc = subprocess.Popen(task.argv, stdout=fh, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                            pass_fds=() if fd is None else (fd,))
                finally:
                    if fd is not None:
                        os.close(fd)  # the process holds the lock now
                running[proc] = (task, g, time.perf_counter(), fh)
                if on_start:
                    on_start(task, list(groups[g]))
            time.sleep(poll_s)
            for proc in [p for p in running if p.poll() is not None]:
                task, g, t0, fh = running.pop(proc)
                fh.close()
                free = sorted(free + [g])
                results.append((task, proc.returncode))
                if on_done:
                    on_done(task, proc.returncode, time.perf_counter() - t0)
    except (KeyboardInterrupt, _Stop):
        log.warning(f"interrupted: stopping {len(running)} running processes; re-run the same command to resume")
        _stop_all(running)
        raise KeyboardInterrupt from None
    except BaseException:
        _stop_all(running)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old)
    return results


# --------------------------------------------------------------------------------------------- anonymization
def plugin_imports(recipe: dict, plugins: Sequence[str] = ()) -> list[str]:
    """Modules a process must import before it reads the recipe: the given plugins and the module of a study trainer
    registered outside avanon (recipe validation and the training processes look the trainer up by name)."""
    from avanon.study.training.trainers import TRAINERS

    out = list(plugins)
    if recipe.get("study") is not None:
        module = getattr(TRAINERS.get(resolved_study(recipe)["trainer"]), "__module__", "") or ""
        if module and module != "__main__" and not module.startswith("avanon."):
            out.append(module)
    return list(dict.fromkeys(out))


def cli_argv(imports: Sequence[str] = ()) -> list[str]:
    """`avanon [--import MODULE ...]` with this interpreter."""
    return [*CLI, *(x for m in imports for x in ("--import", m))]


def anonymize_on_gpus(run_args: Sequence[str], gpus: Sequence[int], mirror_dirs: Sequence[Path], log_dir: Path,
                      progress_print=None, imports: Sequence[str] = ()) -> int:
    """Write the mirrors as one `avanon run ... --anonymize-only --shard k/N` process per GPU (run_args: the
    recipe and its --set/--only/--workers arguments; imports: plugin modules, plugin_imports), then merge each
    mirror's shard manifests (`avanon merge`). Returns the exit code: 0, or 1 when a shard failed (named with its
    log) or a mirror has failed files."""
    from avanon.mirror.cli import cmd_merge

    progress_print = progress_print or log.info
    n = len(gpus)
    tasks = [Task(f"anonymize shard {k}/{n}",
                  [*cli_argv(imports), "run", *run_args, "--anonymize-only", "--no-progress", "--shard", f"{k}/{n}"],
                  Path(log_dir) / f"anonymize-shard-{k}.log") for k in range(n)]
    t0 = time.perf_counter()

    def started(task, group):
        progress_print(f"{task.name} on GPU {group[0]} (log: {task.log})")

    def ended(task, code, seconds):
        progress_print(f"{task.name}: {'done' if code == 0 else f'FAILED (exit code {code})'} "
                       f"in {format_seconds(seconds)}")

    results = run_pool(tasks, [[g] for g in gpus], on_start=started, on_done=ended)
    failed = [(t, code) for t, code in results if code]
    if failed:
        for t, code in sorted(failed, key=lambda x: x[0].name):
            log.error(f"{t.name} failed (exit code {code}); log: {t.log}\n{tail(t.log)}")
        log.error(f"{len(failed)} of {n} anonymization shards failed; the mirrors are not merged. Fix the cause and "
                  "re-run the same command (finished images are kept).")
        return 1
    progress_print(f"anonymized on {n} GPUs in {format_seconds(time.perf_counter() - t0)}; merging the shards")
    code = 0
    for mirror in mirror_dirs:
        code = max(code, cmd_merge(argparse.Namespace(mirror=str(mirror))))
    return min(code, 1)


# ------------------------------------------------------------------------------------------------- training
def training_argv(recipe: dict, run: StudyRun, nproc: int = 1, test_only: bool = False,
                  imports: Optional[Sequence[str]] = None) -> list[str]:
    """Write RUN/launch_config.json (the run's engine config, as the in-process study gives its trainer) and return
    the command line that trains it: the training module, under torch.distributed.run when nproc > 1. --resume when
    the run has a checkpoint (an interrupted run); --import for each plugin module (default: plugin_imports)."""
    from avanon.study.training.config import CHECKPOINT

    trainer = resolved_study(recipe)["trainer"]
    run.out.mkdir(parents=True, exist_ok=True)
    config = run.out / LAUNCH_CONFIG
    atomic_write_bytes(config, (json.dumps(run_engine_config(recipe, run), indent=2, default=str) + "\n").encode())
    args = ["--config", str(config), "--out", str(run.out), "--trainer", trainer]
    for module in plugin_imports(recipe) if imports is None else imports:
        args += ["--import", module]
    if test_only:
        args.append("--test-only")
    elif (run.out / CHECKPOINT).is_file():
        args.append("--resume")
    head = [sys.executable, "-m", "avanon.study.training"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         "-m", "avanon.study.training"]
    return head + args


def _prepare(recipe, run, nproc, test_only, imports) -> Optional[list[str]]:
    """At launch: None when the run finished meanwhile (another launcher), else its command line."""
    from avanon.study.config import RESULTS
    from avanon.study.runner import finished_runs

    if not test_only and (run.key, run.seed) in finished_runs(study_dir(recipe) / RESULTS):
        return None
    return training_argv(recipe, run, nproc, test_only, imports)


def run_study_on_gpus(recipe: dict, mirrors: list[tuple[dict, Path]], gpus: Sequence[int], gpus_per_run: int = 1,
                      *, test_only: bool = False, dry_run: bool = False, progress_print=None,
                      imports: Optional[Sequence[str]] = None) -> Path:
    """The study of avanon.study.runner.run_study with its runs as concurrent processes, one per group of
    gpus_per_run GPUs. Same run directories, results.jsonl lines, checkpoint clean-up, report and closing summary.
    Raises LaunchError (after the other runs finished) when a run failed; the report is then not written."""
    progress_print = progress_print or log.info
    groups = gpu_groups(gpus, gpus_per_run)
    keep = resolved_study(recipe).get("keep_checkpoints", False)
    runs = plan_runs(recipe, mirrors)
    done, earlier, freed = start_study(recipe, runs, test_only, dry_run, progress_print)
    tasks = []
    for k, run in enumerate(runs, 1):
        label = f"study run {k} of {len(runs)}: {run.key} seed {run.seed}"
        if (run.key, run.seed) in done:
            if earlier < len(runs):
                progress_print(f"{label}: done earlier ({run.out})")
            continue
        if dry_run:
            cfg = run_engine_config(recipe, run)
            progress_print(f"{label}: would train on {cfg['data']['image_root']} -> {run.out}")
            continue
        tasks.append(Task(label, None, run.out / TRAIN_LOG, data=run, lock=run.out / RUN_LOCK,
                          prepare=functools.partial(_prepare, recipe, run, gpus_per_run, test_only, imports)))
    how = (f"{len(groups)} at a time ({f'DDP over {gpus_per_run} GPUs each, ' if gpus_per_run > 1 else ''}GPUs "
           + " | ".join(",".join(map(str, g)) for g in groups) + ")")
    if dry_run:
        progress_print(f"study: would run {len(runs) - earlier} runs, {how}")
        return study_dir(recipe)
    if tasks:
        progress_print(f"study: {len(tasks)} runs, {how}; each run's output: RUN/{TRAIN_LOG}")
    failures: list[str] = []
    seconds: list[float] = []
    ended_n = [0]

    def started(task, group):
        resume = "--resume" in task.argv
        progress_print(f"{task.name}: {'evaluating' if test_only else 'resuming' if resume else 'training'} "
                       f"on GPU {','.join(map(str, group))} -> {task.data.out}")

    def ended(task, code, secs):
        run = task.data
        ended_n[0] += 1
        if code == SKIPPED:
            progress_print(f"{task.name}: done meanwhile by another process")
            return
        if code == BUSY:
            code, why = 1, f"another process is training it ({run.out / RUN_LOCK} is locked)"
        elif code == 0:
            try:
                metrics = record_result(recipe, run)
            except (RuntimeError, OSError, ValueError) as exc:
                code, why = 1, str(exc)
        else:
            why = f"exit code {code}"
        if code:
            failures.append(f"{task.name}: {why}; log: {task.log}")
            log.error(f"{task.name}: FAILED ({why}); log: {task.log}\n{tail(task.log)}")
            return
        if not keep:
            freed.append(drop_checkpoint(run.out))
        seconds.append(secs)
        left = len(tasks) - ended_n[0]
        eta = (f"; {left} left, about {format_seconds(-(-left // len(groups)) * sum(seconds) / len(seconds))}"
               if left else "")
        progress_print(f"{task.name}: {format_metrics(metrics)} ({format_seconds(secs)}{eta})")

    run_pool(tasks, groups, on_start=started, on_done=ended)
    if failures:
        raise LaunchError(f"study: {len(failures)} of {len(tasks)} runs failed (the others finished and are in "
                          "results.jsonl; the report is written once every run is):\n  " + "\n  ".join(failures)
                          + "\nFix the cause and re-run the same command: finished runs are skipped, interrupted "
                          "ones resume from their checkpoint.")
    finish_study(recipe, runs, freed, progress_print)
    return study_dir(recipe)


def run_one(recipe: dict, run: StudyRun, nproc: int = 1, test_only: bool = False,
            imports: Optional[Sequence[str]] = None) -> dict:
    """One run as a training process on the GPUs this process sees (a Slurm job's allocation), its output appended
    to RUN/train.log; then its results.jsonl line. Returns the metrics ({} when the run was done earlier)."""
    fd = try_lock(run.out / RUN_LOCK)
    if fd is None:
        raise LaunchError(f"{run.key} seed {run.seed}: another process is training it ({run.out / RUN_LOCK} is "
                          "locked)")
    try:
        return _run_one_locked(recipe, run, nproc, test_only, imports)
    finally:
        os.close(fd)


def _run_one_locked(recipe, run, nproc, test_only, imports) -> dict:
    argv = _prepare(recipe, run, nproc, test_only, imports)
    if argv is None:
        return {}
    with open(run.out / TRAIN_LOG, "ab") as fh:
        fh.write(f"# avanon {datetime.datetime.now().isoformat(timespec='seconds')} "
                 f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}: {shlex.join(argv)}\n".encode())
        fh.flush()
        code = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if code:
        raise LaunchError(f"{run.key} seed {run.seed} failed (exit code {code}); log: {run.out / TRAIN_LOG}\n"
                          f"{tail(run.out / TRAIN_LOG)}")
    metrics = record_result(recipe, run)
    if not resolved_study(recipe).get("keep_checkpoints", False):
        drop_checkpoint(run.out)
    return metrics
