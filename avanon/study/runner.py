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

import inspect
import json
import logging
import math
import shlex
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

from avanon.mirror.imageio import atomic_write_bytes
from avanon.progress import format_seconds, progress as progress_bar
from avanon.study.config import RESULTS, resolved_study, run_config, study_dir

log = logging.getLogger("avanon.study")


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


def _finished(results_path: Path) -> set[tuple[str, int]]:
    done = set()
    if results_path.is_file():
        for text in results_path.read_text().splitlines():
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            done.add((line["mirror"], int(line["seed"])))
    return done


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
    """Train and evaluate every (mirror, seed); append results.jsonl; write the report and log the closing summary
    (study_summary). Returns the study dir.
    progress_print: where the per-run lines go (default: the "avanon.study" logger), "study run k of N: ...".
    progress: bars on a terminal (the study's runs, each run's iterations, its predictions; avanon.progress).
    Unless study.keep_checkpoints, a run's resume checkpoint is deleted once its result is in results.jsonl (also
    the leftovers of runs finished earlier); an unfinished run keeps it and resumes from it."""
    progress_print = progress_print or log.info
    from avanon.study.training.config import CHECKPOINT
    from avanon.study.training.trainers import TRAINERS

    study = resolved_study(recipe)
    sdir = study_dir(recipe)
    results_path = sdir / RESULTS
    done = set() if test_only else _finished(results_path)
    trainer = TRAINERS.get(study["trainer"])
    extra = {"progress": progress} if _accepts_progress(trainer) else {}
    keep = study.get("keep_checkpoints", False)
    depths = study["depths"] or [int(study["config"].get("model", {}).get("depth", 50))]
    dataset_name = recipe["dataset"]["adapter"]
    runs = []
    for depth, (name, region, method, variant, mirror_dir), seed in (
            (d, r, s) for d in depths for r in _runs(recipe, mirrors) for s in study["seeds"]):
        key = name if not study["depths"] else f"{name}@r{depth}"
        out = sdir / "runs" / name / (f"seed{seed}" if not study["depths"] else f"r{depth}_seed{seed}")
        runs.append((depth, name, region, method, variant, mirror_dir, int(seed), key, out))
    earlier = sum((r[7], r[6]) in done for r in runs)
    freed = [drop_checkpoint(r[8]) for r in runs if (r[7], r[6]) in done] if not (keep or dry_run) else []
    if runs and earlier == len(runs):
        progress_print(f"study: nothing to do; {earlier} runs done earlier ({sdir / 'runs'})")
    bar = progress_bar(len(runs), "study", progress and not dry_run, initial=earlier, unit="run", leave=True)
    run_seconds: list[float] = []
    for k, (depth, name, region, method, variant, mirror_dir, seed, key, out) in enumerate(runs, 1):
        label = f"study run {k} of {len(runs)}: {key} seed {seed}"
        if (key, seed) in done:
            if earlier < len(runs):
                progress_print(f"{label}: done earlier ({out})")
            continue
        cfg = run_config(recipe, mirror_dir, seed, out)
        cfg.setdefault("model", {})["depth"] = depth
        if dry_run:
            progress_print(f"{label}: would train on {cfg['data']['image_root']} -> {out}")
            continue
        resume = (out / CHECKPOINT).is_file() and not test_only
        progress_print(f"{label}: {'evaluating' if test_only else 'resuming' if resume else 'training'} -> {out}")
        t0 = time.perf_counter()
        trainer(cfg, out, resume=resume, test_only=test_only, **extra)
        evaluation = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else None
        metrics = result_metrics(evaluation)
        if not metrics:
            raise RuntimeError(f"run {out} produced no metrics (see {out / 'log.jsonl'})")
        line = {"dataset": dataset_name, "task": study["task"], "model": study["model"], "depth": depth,
                "region": region, "method": method, "variant": variant, "mirror": key, "seed": int(seed),
                "metrics": metrics, "paper_table": study["paper_table"], "run_dir": str(out)}
        if mirror_dir is not None:
            line["privacy"] = mirror_privacy(mirror_dir)
        sdir.mkdir(parents=True, exist_ok=True)
        with open(results_path, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
        if not keep:  # finished: results.jsonl + metrics.json; model_final.pth stays for --test-only
            freed.append(drop_checkpoint(out))
        run_seconds.append(time.perf_counter() - t0)
        left = sum((r[7], r[6]) not in done for r in runs[k:])
        eta = f"; {left} left, about {format_seconds(left * sum(run_seconds) / len(run_seconds))}" if left else ""
        bar.update(1)
        progress_print(f"{label}: " + ", ".join(f"{m} {v:.1f}" for m, v in metrics.items()
                                                if isinstance(v, (int, float)))
                       + f" ({format_seconds(run_seconds[-1])}{eta})")
    bar.close()
    if any(freed):
        progress_print(f"study: removed {sum(1 for b in freed if b)} resume checkpoints of finished runs "
                       f"({sum(freed) / 2**20:.0f} MiB; study.keep_checkpoints: true keeps them)")
    if not dry_run:
        from avanon.study.report import write_report

        paths = write_report(sdir, metrics=study["metrics"] or None, paper_table=study["paper_table"])
        atomic_write_bytes(sdir / "recipe.json", (json.dumps({k: v for k, v in recipe.items() if not k.startswith("_")},
                                                             indent=2, default=str) + "\n").encode())
        log.info(study_summary(sdir, paths, [r[5] for r in runs if r[5] is not None], study["metrics"]))
    return sdir


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
