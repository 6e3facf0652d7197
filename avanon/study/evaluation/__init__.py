"""Evaluation on the original validation split: COCO-style AP (bbox / segm / keypoints) and the official
Cityscapes instance-level AP, from predictions in the COCO results format (see `results.py` for the format and the
image / category id conventions).

`evaluate(dataset_name, gt_adapter, predictions, task, out_dir)` picks what Paper F reports per dataset:

| dataset | task | evaluations | `paper` metrics (names as in paper_f_tables.csv) |
|---|---|---|---|
| cityscapes | instance_segmentation | official cityscapesscripts (segm) + COCO-style bbox, segm | AP, AP50, AP_person (official) |
| bdd100k, synthetic | instance_segmentation | COCO-style bbox, segm | AP, AP50, AP_person (segm; person = the target class) |
| coco (or any) | keypoints | COCO-style bbox, keypoints | box_AP, kp_AP |
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from dataset_adapters.base import DatasetAdapter, innermost_adapter, thing_classes_of
from avanon.study.evaluation.cityscapes_eval import evaluate_cityscapes, official_thing_classes
from avanon.study.evaluation.coco_eval import (
    evaluate_coco, faster_available, ground_truth_coco, resolve_backend, save_ground_truth,
)
from avanon.study.evaluation.results import (
    category_ids, check_predictions, coco_image_ids, decode_mask, encode_mask, load_predictions, prediction,
    results_from_detections, results_from_ground_truth, save_predictions, xyxy_to_xywh,
)

__all__ = [
    "evaluate", "evaluate_coco", "evaluate_cityscapes", "ground_truth_coco", "coco_image_ids", "category_ids",
    "thing_classes_of", "prediction", "results_from_detections", "results_from_ground_truth", "encode_mask",
    "decode_mask", "xyxy_to_xywh", "save_predictions", "load_predictions", "check_predictions", "save_ground_truth",
    "faster_available", "resolve_backend", "official_thing_classes", "TASKS",
]

TASKS = ("instance_segmentation", "keypoints")
_TASK_ALIASES = {"instance_segmentation": "instance_segmentation", "segm": "instance_segmentation",
                 "keypoints": "keypoints", "keypoint_detection": "keypoints", "pose": "keypoints"}


def _dataset_format(dataset_name: str, adapter: DatasetAdapter) -> str:
    if dataset_name == "synthetic":
        return getattr(adapter, "format", innermost_adapter(adapter).name)
    return dataset_name


def evaluate(dataset_name: str, gt_adapter: DatasetAdapter, predictions: Sequence[Mapping], task: str,
             out_dir: Optional[str | Path] = None, *, classes: Optional[Iterable[str]] = None,
             backend: str = "auto", official_cityscapes: Optional[bool] = None,
             gt: Optional[dict] = None) -> dict:
    """Evaluate predictions on the ground truth of `gt_adapter` (the ORIGINAL validation split, opened with
    categories="all") the way Paper F reports `dataset_name`.

    task: "instance_segmentation" or "keypoints". classes: restrict every average to these class names (e.g. all
    but the person class for the "other classes only" variant). official_cityscapes: run cityscapesscripts'
    evaluation (default: only for dataset "cityscapes"; True also works for synthetic data in Cityscapes format).
    gt: a ground-truth dict from `ground_truth_coco(gt_adapter)` to reuse across calls (it is not modified).

    Returns {"paper": {metric: value}, "coco": {iou_type: {...}}, "cityscapes": {...} (when run), "meta": {...}};
    all numbers in percent. With out_dir, also writes out_dir/metrics.json (and the official evaluation's files
    under out_dir/cityscapes_eval/)."""
    if task not in _TASK_ALIASES:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    task = _TASK_ALIASES[task]
    fmt = _dataset_format(dataset_name, gt_adapter)
    classes = None if classes is None else list(classes)
    backend = resolve_backend(backend)
    if gt is None:
        gt = ground_truth_coco(gt_adapter)
    target = _target_class(gt_adapter)
    out: dict[str, Any] = {"meta": {"dataset": dataset_name, "format": fmt, "task": task, "split": gt_adapter.split,
                                    "num_images": len(gt["images"]), "num_predictions": len(predictions),
                                    "coco_backend": backend, "classes": classes}}
    if task == "keypoints":
        coco = evaluate_coco(gt, predictions, ("bbox", "keypoints"), backend=backend, classes=classes)
        out["coco"] = coco
        out["paper"] = {"box_AP": coco["bbox"]["AP"], "kp_AP": coco["keypoints"]["AP"]}
    else:
        coco = evaluate_coco(gt, predictions, ("bbox", "segm"), backend=backend, classes=classes)
        out["coco"] = coco
        segm = coco["segm"]
        out["paper"] = {"AP": segm["AP"], "AP50": segm["AP50"], "AP_person": segm.get(f"AP_{target}", math.nan)}
        if official_cityscapes is None:
            official_cityscapes = fmt == "cityscapes" and dataset_name == "cityscapes"
        if official_cityscapes:
            if fmt != "cityscapes":
                raise ValueError(f"official_cityscapes needs a dataset in Cityscapes format, not {fmt}")
            cs = evaluate_cityscapes(innermost_adapter(gt_adapter).root, gt_adapter.split, predictions,
                                     gt_adapter, out_dir, classes=classes)
            out["cityscapes"] = cs
            out["paper"] = {"AP": cs["AP"], "AP50": cs["AP50"], "AP_person": cs.get(f"AP_{target}", math.nan)}
    if out_dir is not None:
        path = Path(out_dir) / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2, default=str))
    return out


def _target_class(adapter: DatasetAdapter) -> str:
    """The class Paper F calls "person": the adapter's anonymization target (person; pedestrian for BDD100K)."""
    targets = tuple(getattr(innermost_adapter(adapter), "target_categories", ()) or ())
    classes = thing_classes_of(adapter)
    for t in targets:
        if t in classes:
            return t
    return "person"
