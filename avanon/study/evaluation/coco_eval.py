"""COCO-style evaluation (bbox, segm, keypoints) with pycocotools or faster-coco-eval.

- `ground_truth_coco(adapter)`: a COCO-format ground-truth dict from an adapter opened with `categories="all"`
  (image ids from `coco_image_ids`, category ids = 1-based positions in `thing_classes`). For a COCO-format dataset
  the original annotation JSON is used by default (`source="auto"`), re-numbered to the same contiguous category
  ids, so that areas (the OKS scale and the small/medium/large ranges) and boxes are the official ones and the
  numbers equal an evaluation against the original file.
- `evaluate_coco(gt, predictions)`: AP, AP50, AP75, APs, APm, APl per iou type in percent, plus `AP_<class>` per
  class (mean of the precision array over IoU thresholds and recall points, area "all", the largest maxDets, as
  detectron2 computes it). Classes without ground truth get NaN.

Crowd: ground-truth annotations with `iscrowd=1` (Cityscapes groups, COCO crowds, BDD100K `crowd` *and* `ignored`)
are ignore regions in pycocotools' sense: a detection matching one is neither a true nor a false positive, and
they are never counted as misses.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from dataset_adapters.base import (
    COCO_KEYPOINT_NAMES, DatasetAdapter, categories_of, innermost_adapter, thing_classes_of,
)
from avanon.study.evaluation.results import category_ids, check_predictions, coco_image_ids, encode_mask


IOU_TYPES = ("bbox", "segm", "keypoints")
BACKENDS = ("auto", "pycocotools", "faster")
# COCO's person skeleton (1-based keypoint indices), as in person_keypoints_*.json.
COCO_PERSON_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
                        [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
# pycocotools' default per-keypoint OKS sigmas (COCO order).
COCO_KPT_OKS_SIGMAS = (np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87,
                                 .89, .89]) / 10.0)
# Which field of a prediction each iou type needs.
_NEEDS = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}


# ------------------------------------------------------------------------------------------------ ground truth


def ground_truth_coco(adapter: DatasetAdapter, source: str = "auto", strict: bool = True) -> dict:
    """COCO-format ground truth of the adapter's split.

    source: "adapter" (built from the decoded instances: masks -> compressed RLE, area = mask pixels, bbox = tight
    box of the mask, iscrowd = crowd or ignore, keypoints / num_keypoints when present); "json" (COCO-format
    datasets only: the original annotation JSON with its polygons, areas and boxes, category ids re-numbered to
    1-based positions in thing_classes); "auto" = "json" for COCO-format datasets, else "adapter".
    strict: an image whose annotations could not be decoded (record problems) raises ValueError; with False it is
    kept with the instances that could be decoded."""
    if source not in ("auto", "adapter", "json"):
        raise ValueError(f"ground_truth_coco: source must be auto, adapter or json, got {source!r}")
    inner = innermost_adapter(adapter)
    is_coco = getattr(inner, "name", None) == "coco" and hasattr(inner, "annotation_path")
    if source == "json" and not is_coco:
        raise ValueError(f"ground_truth_coco: source='json' needs a COCO-format dataset, not {inner.name}")
    if source == "json" or (source == "auto" and is_coco):
        return _ground_truth_from_coco_json(inner)
    return _ground_truth_from_adapter(adapter, strict)


def _categories(classes: Sequence[str], with_keypoints: Iterable[str]) -> list[dict]:
    with_keypoints = set(with_keypoints)
    out = []
    for cid, name in enumerate(classes, start=1):
        cat = {"id": cid, "name": name, "supercategory": name}
        if name in with_keypoints:
            cat.update(keypoints=list(COCO_KEYPOINT_NAMES), skeleton=[list(e) for e in COCO_PERSON_SKELETON])
        out.append(cat)
    return out


def _ground_truth_from_adapter(adapter: DatasetAdapter, strict: bool) -> dict:
    if categories_of(adapter) != "all":
        raise ValueError("ground_truth_coco: open the adapter with categories='all' (it was opened with "
                         f"categories={categories_of(adapter)!r}, which yields the human classes only)")
    classes = thing_classes_of(adapter)
    cat_ids = category_ids(classes)
    records = list(adapter.images())
    ids = coco_image_ids(records)
    images, annotations, keypoint_classes = [], [], set()
    for record in records:
        if record.problems and strict:
            raise ValueError(f"ground_truth_coco: {record.file_name} has annotation problems: "
                             f"{'; '.join(record.problems)} (strict=False keeps what could be decoded)")
        image_id = ids[record.file_name]
        images.append({"id": image_id, "file_name": record.file_name, "width": record.width,
                       "height": record.height})
        for inst in record.instances:
            if inst.category not in cat_ids or inst.area == 0:
                continue
            x0, y0, x1, y1 = inst.box
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_ids[inst.category],
                   "segmentation": encode_mask(inst.full_mask(record.height, record.width)),
                   "area": float(inst.area), "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                   "iscrowd": int(inst.iscrowd or inst.ignore), "ignore": int(inst.ignore)}
            if inst.keypoints is not None:
                ann["keypoints"] = [float(v) for v in np.asarray(inst.keypoints).reshape(-1)]
                ann["num_keypoints"] = inst.num_keypoints
                keypoint_classes.add(inst.category)
            annotations.append(ann)
    return {"info": {"description": f"avanon ground truth of {adapter.name} {adapter.split}"},
            "images": images, "annotations": annotations, "categories": _categories(classes, keypoint_classes)}


def _ground_truth_from_coco_json(inner) -> dict:
    from dataset_adapters.coco import load_json

    data = load_json(inner.annotation_path)
    classes, json_ids = inner.thing_classes, inner.category_json_ids
    remap = {jid: i for i, jid in enumerate(json_ids, start=1)}
    by_json_id = {c["id"]: c for c in data.get("categories", [])}
    categories = []
    for jid, name in zip(json_ids, classes):
        cat = {k: v for k, v in by_json_id[jid].items() if k in ("name", "supercategory", "keypoints", "skeleton")}
        categories.append({"id": remap[jid], **cat, "name": name})
    images = []
    for im in data["images"]:
        if isinstance(im["id"], bool) or not isinstance(im["id"], int):
            raise ValueError(f"{inner.annotation_path}: image id {im['id']!r} is not an integer")
        images.append({"id": im["id"], "file_name": f"{inner.images_dir}/{im['file_name']}",
                       "width": im["width"], "height": im["height"]})
    annotations = [dict(ann, category_id=remap[ann["category_id"]]) for ann in data.get("annotations", [])
                   if ann.get("category_id") in remap]
    return {"info": {"description": f"{inner.annotation_file} (category ids re-numbered 1..{len(classes)})"},
            "images": images, "annotations": annotations, "categories": categories}


# -------------------------------------------------------------------------------------------------- backends


def faster_available() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str = "auto") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "faster" if faster_available() else "pycocotools"
    if backend == "faster" and not faster_available():
        raise ImportError("backend='faster' needs faster-coco-eval: pip install 'avanon[faster-eval]'")
    return backend


def _noop(*args, **kwargs) -> None:
    pass


def _coco_api(backend: str, dataset: dict):
    """A COCO object over `dataset` (not copied: pass a dict the evaluation may modify)."""
    if backend == "faster":
        from faster_coco_eval import COCO
        return COCO(dataset, print_function=_noop)
    from pycocotools.coco import COCO
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _run_cocoeval(backend: str, gt: dict, dts: list[dict], iou_type: str, cat_ids: list[int],
                  kpt_oks_sigmas: Optional[Sequence[float]]):
    """evaluate() + accumulate(); returns (precision array [T, R, K, A, M], params)."""
    coco_gt = _coco_api(backend, gt)
    if dts:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(dts)
    else:  # both libraries' loadRes index anns[0]; an empty result set is built directly
        coco_dt = _coco_api(backend, {"images": list(gt["images"]), "categories": list(gt["categories"]),
                                      "annotations": []})
    if backend == "faster":
        from faster_coco_eval import COCOeval_faster
        evaluator = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=_noop,
                                    kpt_oks_sigmas=None if kpt_oks_sigmas is None else list(kpt_oks_sigmas))
    else:
        from pycocotools.cocoeval import COCOeval
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        if kpt_oks_sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(kpt_oks_sigmas, dtype=np.float64)
    evaluator.params.imgIds = sorted(coco_gt.getImgIds())
    evaluator.params.catIds = list(cat_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    return np.asarray(evaluator.eval["precision"], dtype=np.float64), evaluator.params


# ------------------------------------------------------------------------------------------------ evaluation


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) * 100.0 if valid.size else math.nan


def _summary(precision: np.ndarray, params, iou_type: str, cat_ids: list[int], names: dict[int, str]) -> dict:
    """AP numbers in percent from the precision array, the way COCOeval.summarize() computes them."""
    area = {label: i for i, label in enumerate(params.areaRngLbl)}
    m = len(params.maxDets) - 1  # the largest maxDets: 100 for boxes/masks, 20 for keypoints
    ious = np.asarray(params.iouThrs)

    def ap(iou: Optional[float] = None, rng: str = "all") -> float:
        p = precision[..., area[rng], m]
        if iou is not None:
            p = p[np.flatnonzero(np.isclose(ious, iou))]
        return _mean_valid(p)

    out = {"AP": ap(), "AP50": ap(0.5), "AP75": ap(0.75)}
    for label, key in (("small", "APs"), ("medium", "APm"), ("large", "APl")):
        if label in area:
            out[key] = ap(rng=label)
    for k, cid in enumerate(cat_ids):
        out[f"AP_{names[cid]}"] = _mean_valid(precision[:, :, k, area["all"], m])
    return out


def _resolve_classes(classes: Optional[Iterable[Any]], gt: dict) -> list[int]:
    by_name = {c["name"]: c["id"] for c in gt["categories"]}
    ids = {c["id"] for c in gt["categories"]}
    if classes is None:
        return sorted(ids)
    out = set()
    for c in classes:
        if isinstance(c, str):
            if c not in by_name:
                raise ValueError(f"classes: unknown class {c!r}; the ground truth has {sorted(by_name)}")
            out.add(by_name[c])
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and int(c) in ids:
            out.add(int(c))
        else:
            raise ValueError(f"classes: {c!r} is neither a class name nor a category id of the ground truth")
    if not out:
        raise ValueError("classes: empty selection")
    return sorted(out)


def _prepare_predictions(predictions: Sequence[Mapping], iou_type: str) -> list[dict]:
    """Shallow copies (loadRes writes into them). For segm the box is dropped so that the mask area (not the box
    area) decides small/medium/large, as detectron2 does."""
    out = []
    for p in predictions:
        d = dict(p)
        if iou_type == "segm":
            d.pop("bbox", None)
        out.append(d)
    return out


def _prepare_gt(gt: dict, iou_type: str) -> dict:
    """A per-evaluation copy: COCOeval writes 'ignore' (and for segm an RLE) into the annotations."""
    annotations = []
    for ann in gt["annotations"]:
        a = dict(ann)
        if iou_type == "keypoints" and "num_keypoints" not in a:
            a["num_keypoints"] = 0  # pycocotools needs it; no keypoints = ignored
        annotations.append(a)
    return {"info": gt.get("info", {}), "images": list(gt["images"]), "categories": list(gt["categories"]),
            "annotations": annotations}


def evaluate_coco(gt: dict, predictions: Sequence[Mapping], iou_types: Sequence[str] = ("bbox", "segm"),
                  backend: str = "auto", classes: Optional[Iterable[Any]] = None,
                  kpt_oks_sigmas: Optional[Sequence[float]] = None) -> dict:
    """COCO-style AP of `predictions` (COCO result dicts) against a COCO-format `gt` dict.

    Returns {iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP_<class>"...}} in percent (keypoints have no
    APs). `classes` (names or category ids) restricts the categories that count, e.g. every class but person for
    Paper F's "other classes only" variant. `kpt_oks_sigmas`: 17 sigmas, default COCO's. Keypoint AP covers the
    categories that declare keypoints in `gt` (person). Empty predictions give AP 0 for classes with ground
    truth."""
    backend = resolve_backend(backend)
    for t in iou_types:
        if t not in IOU_TYPES:
            raise ValueError(f"iou type {t!r}; choose from {IOU_TYPES}")
    cat_ids = _resolve_classes(classes, gt)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    image_ids = {im["id"] for im in gt["images"]}
    results = {}
    for iou_type in iou_types:
        check_predictions(predictions, image_ids, names, need=[_NEEDS[iou_type]])
        ids = cat_ids
        if iou_type == "keypoints":
            with_kps = {c["id"] for c in gt["categories"] if c.get("keypoints")}
            ids = [c for c in cat_ids if c in with_kps] if with_kps else cat_ids
            if not ids:
                raise ValueError("keypoints: none of the selected classes has keypoints in the ground truth")
        precision, params = _run_cocoeval(backend, _prepare_gt(gt, iou_type),
                                          _prepare_predictions(predictions, iou_type), iou_type, ids,
                                          kpt_oks_sigmas)
        results[iou_type] = _summary(precision, params, iou_type, ids, names)
    return results


def save_ground_truth(gt: dict, path: str | Path) -> Path:
    """Write a ground-truth dict as JSON (e.g. for an external evaluator)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(gt))
    return path
