"""The study of Paper F: train on every mirror (and on the original) with each seed, evaluate every model on the
ORIGINAL validation split, collect the results and write the report.

Layout under OUTPUT_ROOT/ADAPTER/study/RECIPE_NAME/:
    runs/MIRROR/seedK/     one training run (avanon.study.training.engine: config.json, log.jsonl, checkpoint.pth,
                           model_final.pth, predictions_val.json, metrics.json)
    results.jsonl          one line per finished (mirror, seed): the contract of avanon.study.report / avanon.study.regress
    report/                Markdown, CSV and plots (avanon.study.report)
Resumable: a finished run (metrics.json present and in results.jsonl) is not redone; an interrupted one resumes
from its checkpoint.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

from avanon.mirror.imageio import atomic_write_bytes
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


def run_study(recipe: dict, mirrors: list[tuple[dict, Path]], *, test_only: bool = False, dry_run: bool = False,
              progress_print=None) -> Path:
    """Train and evaluate every (mirror, seed); append results.jsonl; write the report. Returns the study dir.
    progress_print: where the per-run lines go (default: the "avanon.study" logger)."""
    progress_print = progress_print or log.info
    from avanon.study.training.config import CHECKPOINT
    from avanon.study.training.trainers import TRAINERS

    study = resolved_study(recipe)
    sdir = study_dir(recipe)
    results_path = sdir / RESULTS
    done = set() if test_only else _finished(results_path)
    trainer = TRAINERS.get(study["trainer"])
    depths = study["depths"] or [int(study["config"].get("model", {}).get("depth", 50))]
    dataset_name = recipe["dataset"]["adapter"]
    for depth, (name, region, method, variant, mirror_dir), seed in (
            (d, r, s) for d in depths for r in _runs(recipe, mirrors) for s in study["seeds"]):
        key = name if not study["depths"] else f"{name}@r{depth}"
        out = sdir / "runs" / name / (f"seed{seed}" if not study["depths"] else f"r{depth}_seed{seed}")
        if (key, int(seed)) in done:
            progress_print(f"study {key} seed {seed}: done earlier ({out})")
            continue
        cfg = run_config(recipe, mirror_dir, seed, out)
        cfg.setdefault("model", {})["depth"] = depth
        if dry_run:
            progress_print(f"study {name} seed {seed}: would train on {cfg['data']['image_root']} -> {out}")
            continue
        resume = (out / CHECKPOINT).is_file() and not test_only
        progress_print(f"study {name} seed {seed}: {'resuming' if resume else 'training'} -> {out}")
        trainer(cfg, out, resume=resume, test_only=test_only)
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
        progress_print(f"study {name} seed {seed}: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items()
                                                                if isinstance(v, (int, float))))
    if not dry_run:
        from avanon.study.report import write_report

        paths = write_report(sdir, metrics=study["metrics"] or None, paper_table=study["paper_table"])
        progress_print(f"report: {paths.get('markdown')}")
        atomic_write_bytes(sdir / "recipe.json", (json.dumps({k: v for k, v in recipe.items() if not k.startswith("_")},
                                                             indent=2, default=str) + "\n").encode())
    return sdir
