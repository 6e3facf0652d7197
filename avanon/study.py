"""The study of Paper F: train on every mirror (and on the original) with each seed, evaluate every model on the
ORIGINAL validation split, collect the results and write the report.

Layout under OUTPUT_ROOT/ADAPTER/study/RECIPE_NAME/:
    runs/MIRROR/seedK/     one training run (avanon.training.engine: config.json, log.jsonl, checkpoint.pth,
                           model_final.pth, predictions_val.json, metrics.json)
    results.jsonl          one line per finished (mirror, seed): the contract of avanon.report / avanon.regress
    report/                Markdown, CSV and plots (avanon.report)
Resumable: a finished run (metrics.json present and in results.jsonl) is not redone; an interrupted one resumes
from its checkpoint.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Optional

from avanon.imageio import atomic_write_bytes
from avanon.recipe import RecipeError, _Field, _dict, _int_range, _is, _list, _one_of, _str, register_section

RESULTS = "results.jsonl"
TASKS = ("instance_segmentation", "keypoints")

STUDY_SCHEMA = {
    "trainer": _Field(_str, default="torchvision"),
    "task": _Field(_one_of(*TASKS), default="instance_segmentation"),
    "model": _Field(_str, default="mask_rcnn_r50_fpn"),  # the name in the report (Paper F's model column)
    "seeds": _Field(_list, default=[0, 1, 2]),
    "original": _Field(_is(bool, "true or false"), default=True),  # also train on the original images
    "variant": _Field(_str, default=""),  # e.g. other_classes, minsize32 (report grouping)
    "paper_table": _Field(lambda v: None if v in (1, 2, 3, 4) else f"must be 1, 2, 3 or 4, got {v!r}", default=None),
    "metrics": _Field(_list, default=[]),  # report columns; empty: every metric the runs have
    "val_split": _Field(_str, default="val"),
    "depths": _Field(_list, default=[]),  # ResNet depth ablation (Paper F Fig. 8): one run per depth; empty: config's
    "mirrors": _Field(_list, default=[]),  # names of the anonymize entries to train on; empty: all of them
    "config": _Field(_dict, default={}),  # avanon.training.engine config (model, solver, data options...)
}


def _validate_study(recipe: dict, src: str) -> None:
    """Fill the study section's defaults and check it (an absent section means: anonymize only)."""
    from avanon.recipe import _validate

    if recipe.get("study") is None:
        return
    study = recipe["study"] = _validate(recipe["study"], STUDY_SCHEMA, "study", src)
    seeds = study["seeds"]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise RecipeError(f"{src}: study.seeds: must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise RecipeError(f"{src}: study.seeds: {seeds!r} repeats a seed")
    names = {e["name"] for e in recipe["anonymize"]}
    for m in study["mirrors"]:
        if m not in names:
            raise RecipeError(f"{src}: study.mirrors: {m!r} is not the name of an anonymize entry; have: {', '.join(sorted(names))}")
    from avanon.training.trainers import TRAINERS

    if study["trainer"] not in TRAINERS:
        raise RecipeError(f"{src}: study.trainer: unknown trainer {study['trainer']!r}; known: {', '.join(TRAINERS.names())}")
    from avanon.training.engine import resolve_config

    try:
        resolve_config(run_config(recipe, None, 0, Path("/nonexistent")))
    except Exception as exc:
        raise RecipeError(f"{src}: study.config: {exc}") from None


register_section("study", _Field(lambda v: None if isinstance(v, dict) else "must be a mapping", default=None),
                 _validate_study)


def study_enabled(recipe: dict) -> bool:
    return recipe.get("study") is not None


def resolved_study(recipe: dict) -> dict:
    """The study section, defaults filled at validation."""
    return recipe["study"]


def study_dir(recipe: dict) -> Path:
    return Path(recipe["output"]["root"]) / recipe["dataset"]["adapter"] / "study" / recipe["name"]


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def run_config(recipe: dict, mirror_dir: Optional[Path], seed: int, out_dir: Path) -> dict:
    """The engine config of one run: the recipe's study.config, the dataset (annotations and validation images
    from the original root, training images from the mirror), and the seed."""
    study = resolved_study(recipe)
    ds = recipe["dataset"]
    root = str(Path(ds["root"]).resolve())
    data = {"adapter": ds["adapter"], "root": root, "image_root": str(mirror_dir.resolve()) if mirror_dir else root,
            "options": dict(ds["options"]), "train_split": ds["split"], "val_split": study["val_split"],
            "val_root": root, "exif_frame": recipe["output"]["exif_frame"]}
    base = {"task": study["task"], "seed": int(seed), "data": data}
    return _deep_merge(base, study["config"]) | {"seed": int(seed), "task": study["task"]}


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


def run_study(recipe: dict, mirrors: list[tuple[dict, Path]], *, test_only: bool = False, dry_run: bool = False,
              progress_print=print) -> Path:
    """Train and evaluate every (mirror, seed); append results.jsonl; write the report. Returns the study dir."""
    from avanon.training.engine import CHECKPOINT
    from avanon.training.trainers import TRAINERS

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
        sdir.mkdir(parents=True, exist_ok=True)
        with open(results_path, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
        progress_print(f"study {name} seed {seed}: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items()
                                                                if isinstance(v, (int, float))))
    if not dry_run:
        from avanon.report import write_report

        paths = write_report(sdir, metrics=study["metrics"] or None, paper_table=study["paper_table"])
        progress_print(f"report: {paths.get('markdown')}")
        atomic_write_bytes(sdir / "recipe.json", (json.dumps({k: v for k, v in recipe.items() if k != "_source"},
                                                             indent=2, default=str) + "\n").encode())
    return sdir
