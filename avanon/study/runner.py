"""The study of Paper F: train on every mirror (and on the original) with each seed, evaluate every model on the
ORIGINAL validation split, collect the results and write the report.

Layout under OUTPUT_ROOT/ADAPTER/study/RECIPE_NAME/:
    runs/MIRROR/seedK/     one training run (avanon.study.training.engine: config.json, log.jsonl, checkpoint.pth,
                           model_final.pth, predictions_val.json, metrics.json)
    results.jsonl          one line per finished (mirror, seed): the contract of avanon.study.report / avanon.study.regress
    report/                Markdown, CSV and plots (avanon.study.report)
Resumable: a finished run (metrics.json present and in results.jsonl) is not redone; an interrupted one resumes
from its checkpoint. A finished run's checkpoint.pth is deleted (model_final.pth stays) unless
study.keep_checkpoints.
"""
from __future__ import annotations

import contextlib
import fcntl
import inspect
import json
import logging
import math
import os
import shlex
import time
import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from avanon.mirror.imageio import atomic_write_bytes
from avanon.progress import format_seconds, progress as progress_bar
from avanon.study.config import RESULTS, resolved_study, run_config, study_dir

log = logging.getLogger("avanon.study")


class StudyRun(NamedTuple):
    """One (mirror, depth, seed) of a study: where it trains from and where its run directory is."""
    depth: int
    name: str  # the mirror's name ("original" for the source dataset)
    region: str
    method: str
    variant: str
    mirror_dir: Optional[Path]  # None: the original
    seed: int
    key: str  # the results' "mirror": name, or name@rDEPTH when the study sweeps depths
    out: Path


def _runs(recipe: dict, mirrors: list[tuple[dict, Path]]) -> list[tuple[str, str, str, str, Optional[Path]]]:
    """(mirror name, region, method, variant, mirror dir or None for the original), in report order."""
    study = resolved_study(recipe)
    out = []
    if study["original"]:
        out.append(("original", "none", "original", study["variant"], None))
    for entry, path in mirrors:
        if study["mirrors"] and entry["name"] not in study["mirrors"]:
            continue
        variant = "_".join(v for v in (study["variant"], entry.get("variant") or "") if v)
        out.append((entry["name"], entry["region"], report_method(entry), variant, path))
    return out


def plan_runs(recipe: dict, mirrors: list[tuple[dict, Path]]) -> list[StudyRun]:
    """Every run of the study in order: depths, then mirrors (report order), then seeds."""
    study = resolved_study(recipe)
    sdir = study_dir(recipe)
    depths = study["depths"] or [int(study["config"].get("model", {}).get("depth", 50))]
    runs = []
    for depth, (name, region, method, variant, mirror_dir), seed in (
            (d, r, s) for d in depths for r in _runs(recipe, mirrors) for s in study["seeds"]):
        key = name if not study["depths"] else f"{name}@r{depth}"
        out = sdir / "runs" / name / (f"seed{seed}" if not study["depths"] else f"r{depth}_seed{seed}")
        runs.append(StudyRun(depth, name, region, method, variant, mirror_dir, int(seed), key, out))
    return runs


def run_engine_config(recipe: dict, run: StudyRun) -> dict:
    """The engine config of one run (what the trainer gets; the trainer writes it resolved to OUT/config.json)."""
    cfg = run_config(recipe, run.mirror_dir, run.seed, run.out)
    cfg.setdefault("model", {})["depth"] = run.depth
    return cfg


def report_method(entry: dict) -> str:
    """The method's name in results and reports, as Paper F's rows: realistic, realistic_hm, realistic_hmlo,
    realistic_hr_faces; other methods by their registry name."""
    method, params = entry["method"], entry.get("params") or {}
    if method == "realistic":
        if params.get("hr_faces"):
            return "realistic_hr_faces"
        if params.get("histogram") in ("hm", "hmlo"):
            return f"realistic_{params['histogram']}"
    return method


@contextlib.contextmanager
def _locked(path: Path, mode: str, exclusive: bool):
    """The file open and flock'ed (exclusive for appends, shared for reads): results.jsonl is appended by
    concurrent runs (`--gpus`, Slurm jobs), each line whole."""
    with open(path, mode) as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield f
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def finished_runs(results_path: Path) -> set[tuple[str, int]]:
    """(mirror, seed) of every line of results.jsonl (read under the lock; a torn line is skipped)."""
    done = set()
    if Path(results_path).is_file():
        with _locked(Path(results_path), "rb", exclusive=False) as f:
            text = f.read().decode("utf-8", errors="replace")
        for row in text.splitlines():
            try:
                line = json.loads(row)
            except json.JSONDecodeError:
                continue
            done.add((line["mirror"], int(line["seed"])))
    return done


def append_result(results_path: Path, line: dict) -> None:
    """Append one line to results.jsonl under an exclusive flock, so that concurrent writers (runs on other GPUs,
    other nodes' Slurm jobs) never lose or interleave lines; a torn last line (a writer killed mid-write) is ended
    first, so it cannot swallow this one."""
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    results_path = Path(results_path)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(results_path, "ab", exclusive=True) as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            with open(results_path, "rb") as r:
                r.seek(end - 1)
                if r.read(1) != b"\n":
                    data = b"\n" + data
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def record_result(recipe: dict, run: StudyRun) -> dict:
    """After a run: its metrics (from OUT/metrics.json) as one results.jsonl line, appended under the lock.
    Returns the metrics; raises RuntimeError when the run produced none."""
    study = resolved_study(recipe)
    out = run.out
    evaluation = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else None
    metrics = result_metrics(evaluation)
    if not metrics:
        raise RuntimeError(f"run {out} produced no metrics (see {out / 'log.jsonl'})")
    line = {"dataset": recipe["dataset"]["adapter"], "task": study["task"], "model": study["model"],
            "depth": run.depth, "region": run.region, "method": run.method, "variant": run.variant,
            "mirror": run.key, "seed": int(run.seed), "metrics": metrics, "paper_table": study["paper_table"],
            "run_dir": str(out)}
    if run.mirror_dir is not None:
        line["privacy"] = mirror_privacy(run.mirror_dir)
    append_result(study_dir(recipe) / RESULTS, line)
    return metrics


def format_metrics(metrics: dict) -> str:
    return ", ".join(f"{m} {v:.1f}" for m, v in metrics.items() if isinstance(v, (int, float)))


def result_metrics(evaluation: Optional[dict]) -> dict:
    """The paper's metrics of a run plus the COCO-style box metrics (box_AP, box_AP50, box_AP_<class>)."""
    if not evaluation or not evaluation.get("paper"):
        return {}
    def number(v):  # classes absent from the val split give NaN: left out, not reported as a number
        return isinstance(v, (int, float)) and math.isfinite(v)

    metrics = {k: v for k, v in evaluation["paper"].items() if number(v)}
    bbox = (evaluation.get("coco") or {}).get("bbox") or {}
    for k, v in bbox.items():
        if number(v) and (k in ("AP", "AP50") or k.startswith("AP_")):
            metrics.setdefault(f"box_{k}", v)
    return metrics


def mirror_privacy(mirror_dir: Path) -> dict:
    """What the mirror's summary says about privacy, for the report's privacy-utility view: the median share of
    the source's fine detail kept in the anonymized instances, and the face recall of face mirrors."""
    path = Path(mirror_dir) / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    return {"detail_kept": (summary.get("detail_kept") or {}).get("median"), "face_recall": summary.get("face_recall")}


def _accepts_progress(trainer) -> bool:
    """Whether a registered trainer takes `progress` (the built-in ones do; a plugin's may not)."""
    try:
        params = inspect.signature(trainer).parameters
    except (TypeError, ValueError):
        return False
    return "progress" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def drop_checkpoint(run_dir: Path) -> int:
    """Delete the resume checkpoint of a FINISHED run (metrics.json and model_final.pth present: --test-only
    re-evaluates from model_final.pth); returns the bytes freed (0: nothing deleted)."""
    from avanon.study.training.config import CHECKPOINT, MODEL_FINAL

    ckpt = Path(run_dir) / CHECKPOINT
    if not (ckpt.is_file() and (Path(run_dir) / MODEL_FINAL).is_file() and (Path(run_dir) / "metrics.json").is_file()):
        return 0
    size = ckpt.stat().st_size
    ckpt.unlink()
    return size


def run_study(recipe: dict, mirrors: list[tuple[dict, Path]], *, test_only: bool = False, dry_run: bool = False,
              progress_print=None, progress: bool = False) -> Path:
    """Train and evaluate every (mirror, seed) in this process, one after another; append results.jsonl; write the
    report and log the closing summary (study_summary). Returns the study dir. (On several GPUs:
    avanon.study.launch runs the same runs as concurrent processes.)
    progress_print: where the per-run lines go (default: the "avanon.study" logger), "study run k of N: ...".
    progress: bars on a terminal (the study's runs, each run's iterations, its predictions; avanon.progress).
    Unless study.keep_checkpoints, a run's resume checkpoint is deleted once its result is in results.jsonl (also
    the leftovers of runs finished earlier); an unfinished run keeps it and resumes from it."""
    progress_print = progress_print or log.info
    from avanon.study.training.config import CHECKPOINT
    from avanon.study.training.trainers import TRAINERS

    study = resolved_study(recipe)
    sdir = study_dir(recipe)
    trainer = TRAINERS.get(study["trainer"])
    extra = {"progress": progress} if _accepts_progress(trainer) else {}
    keep = study.get("keep_checkpoints", False)
    runs = plan_runs(recipe, mirrors)
    done, earlier, freed = start_study(recipe, runs, test_only, dry_run, progress_print)
    bar = progress_bar(len(runs), "study", progress and not dry_run, initial=earlier, unit="run", leave=True)
    run_seconds: list[float] = []
    for k, run in enumerate(runs, 1):
        out = run.out
        label = f"study run {k} of {len(runs)}: {run.key} seed {run.seed}"
        if (run.key, run.seed) in done:
            if earlier < len(runs):
                progress_print(f"{label}: done earlier ({out})")
            continue
        cfg = run_engine_config(recipe, run)
        if dry_run:
            progress_print(f"{label}: would train on {cfg['data']['image_root']} -> {out}")
            continue
        resume = (out / CHECKPOINT).is_file() and not test_only
        progress_print(f"{label}: {'evaluating' if test_only else 'resuming' if resume else 'training'} -> {out}")
        t0 = time.perf_counter()
        trainer(cfg, out, resume=resume, test_only=test_only, **extra)
        metrics = record_result(recipe, run)
        if not keep:  # finished: results.jsonl + metrics.json; model_final.pth stays for --test-only
            freed.append(drop_checkpoint(out))
        run_seconds.append(time.perf_counter() - t0)
        left = sum((r.key, r.seed) not in done for r in runs[k:])
        eta = f"; {left} left, about {format_seconds(left * sum(run_seconds) / len(run_seconds))}" if left else ""
        bar.update(1)
        progress_print(f"{label}: {format_metrics(metrics)} ({format_seconds(run_seconds[-1])}{eta})")
    bar.close()
    if not dry_run:
        finish_study(recipe, runs, freed, progress_print)
    return sdir


def start_study(recipe: dict, runs: list[StudyRun], test_only: bool, dry_run: bool, progress_print):
    """What is done already: ((mirror, seed) set, how many of `runs` are done, bytes freed by deleting the resume
    checkpoints of runs finished earlier)."""
    study = resolved_study(recipe)
    sdir = study_dir(recipe)
    done = set() if test_only else finished_runs(sdir / RESULTS)
    earlier = sum((r.key, r.seed) in done for r in runs)
    keep = study.get("keep_checkpoints", False)
    freed = [drop_checkpoint(r.out) for r in runs if (r.key, r.seed) in done] if not (keep or dry_run) else []
    if runs and earlier == len(runs):
        progress_print(f"study: nothing to do; {earlier} runs done earlier ({sdir / 'runs'})")
    return done, earlier, freed


def finish_study(recipe: dict, runs: list[StudyRun], freed: Sequence[int] = (), progress_print=None) -> dict:
    """The end of a study, once every run is in results.jsonl: the checkpoint clean-up line, the report, recipe.json
    and the closing summary. Returns the report's paths."""
    from avanon.study.report import write_report

    progress_print = progress_print or log.info
    study = resolved_study(recipe)
    sdir = study_dir(recipe)
    if any(freed):
        progress_print(f"study: removed {sum(1 for b in freed if b)} resume checkpoints of finished runs "
                       f"({sum(freed) / 2**20:.0f} MiB; study.keep_checkpoints: true keeps them)")
    paths = write_report(sdir, metrics=study["metrics"] or None, paper_table=study["paper_table"])
    atomic_write_bytes(sdir / "recipe.json", (json.dumps({k: v for k, v in recipe.items() if not k.startswith("_")},
                                                         indent=2, default=str) + "\n").encode())
    log.info(study_summary(sdir, paths, [r.mirror_dir for r in runs if r.mirror_dir is not None], study["metrics"]))
    return paths


def study_summary(sdir: Path, paths: dict, mirrors: Sequence[Path], metrics: Optional[Sequence[str]] = None,
                  decimals: int = 1) -> str:
    """The closing summary of `avanon run`: per table of the study's results.jsonl, one row per (region, method):
    mean ± se over the seeds and Δ vs the Original (avanon.study.report's summarize and fmt_cell), in columns
    AP_person first, then the study's other `metrics` (none present: the first three metrics of the results);
    then where the report, its Δ plot and the contact sheet of the mirrors are."""
    from avanon.study.report import ReportWarning, fmt_cell, load_results, metric_columns, summarize

    with warnings.catch_warnings():  # write_report has shown them
        warnings.simplefilter("ignore", ReportWarning)
        df = load_results(Path(sdir) / RESULTS)
        have = metric_columns(df)
        columns = [m for m in dict.fromkeys(["AP_person", *(metrics or [])]) if m in have] or have[:3]
        s = summarize(df, columns)
    seeds = int(s["n"].max()) if len(s) else 0
    lines = [f"study done: {len(df)} runs in {sdir}; mean ± se over {seeds} seed{'s' if seeds != 1 else ''} "
             f"(Δ vs original):"]
    group = ["dataset", "task", "model", "depth", "table_variant"]
    for g, part in s.groupby(group, sort=False):
        dataset, task, model, depth, variant = g
        lines.append(f"  {dataset} · {task} · {model} · R-{depth}" + (f" · variant {variant}" if variant else ""))
        rows = [["region", "method", *columns]]
        for (region, method, v), r in part.groupby(["region", "method", "variant"], sort=False):
            cells = {x["metric"]: fmt_cell(x["mean"], x["se"], x["n"], x["delta"], method == "original", decimals)
                     for _, x in r.iterrows()}
            rows.append([region, method + (f" [{v}]" if v != variant else ""),
                         *(cells.get(m, "–") for m in columns)])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += ["    " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    for what, key in (("report", "markdown"), ("Δ plot", "delta_png")):
        if paths.get(key):
            lines.append(f"  {what}: {paths[key]}")
    if mirrors:
        lines.append("  contact sheet (original | each mirror): avanon show "
                     + " ".join(shlex.quote(str(m)) for m in dict.fromkeys(mirrors)))
    return "\n".join(lines)
