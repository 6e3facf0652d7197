"""The prediction format and the id conventions shared by training and evaluation (the single source of truth).

A prediction is a COCO result dict:

    {"image_id": int, "category_id": int, "score": float, "bbox": [x, y, w, h],
     "segmentation": {"size": [h, w], "counts": str},   # compressed RLE, optional
     "keypoints": [x1, y1, v1, ..., x17, y17, v17]}      # 51 floats, optional

- image ids: `coco_image_ids(records)`: `int(record.image_id)` when every image id of the split is a plain
  decimal number (real COCO: the JSON's ids, so results are valid for the official annotation file too), otherwise
  the 1-based position of the image in the adapter's stable order (Cityscapes, BDD100K);
- category ids: `category_ids(thing_classes)`: 1-based position in the adapter's `thing_classes`. This is also
  torchvision's label convention (0 = background), so a model built with `num_classes=len(thing_classes) + 1`
  outputs category ids directly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from dataset_adapters.base import DatasetAdapter, ImageRecord, thing_classes_of

__all__ = [
    "coco_image_ids", "category_ids", "thing_classes_of", "encode_mask", "decode_mask", "xyxy_to_xywh",
    "prediction", "results_from_detections", "results_from_ground_truth", "save_predictions", "load_predictions",
    "check_predictions",
]


def _is_decimal(text: str) -> bool:
    return isinstance(text, str) and text.isascii() and text.isdigit()


def coco_image_ids(records: Iterable[ImageRecord]) -> dict[str, int]:
    """{record.file_name: integer image id} for the records of one split, in the adapter's order.

    Numeric ids are kept when every record has one and they are unique (real COCO); otherwise images are numbered
    1, 2, ... in the order given (the adapter's stable, sorted order)."""
    records = list(records)
    names = [r.file_name for r in records]
    if len(set(names)) != len(names):
        raise ValueError("coco_image_ids: two records have the same file_name")
    if records and all(_is_decimal(r.image_id) for r in records):
        ids = [int(r.image_id) for r in records]
        if len(set(ids)) == len(ids):
            return dict(zip(names, ids))
    return {name: i for i, name in enumerate(names, start=1)}


def category_ids(thing_classes: Sequence[str] | DatasetAdapter) -> dict[str, int]:
    """{class name: 1-based category id} for a tuple of thing classes (or an adapter)."""
    if isinstance(thing_classes, DatasetAdapter):
        thing_classes = thing_classes_of(thing_classes)
    return {name: i for i, name in enumerate(thing_classes, start=1)}


# ------------------------------------------------------------------------------------------------------ masks


def encode_mask(mask: np.ndarray) -> dict:
    """Full-image bool/uint8 mask (H, W) -> compressed COCO RLE with `counts` as str (JSON-ready)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_mask: expected a 2-D mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: Mapping) -> np.ndarray:
    """Compressed RLE (counts str or bytes) -> bool mask (H, W)."""
    counts = rle["counts"]
    if isinstance(counts, list):
        h, w = rle["size"]
        return mask_utils.decode(mask_utils.frPyObjects(dict(rle), h, w)).astype(bool)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return mask_utils.decode({"size": list(rle["size"]), "counts": counts}).astype(bool)


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


# ------------------------------------------------------------------------------------------------ predictions


def prediction(image_id: int, category_id: int, score: float, bbox_xywh: Sequence[float],
               mask: Optional[np.ndarray] = None, keypoints: Optional[np.ndarray] = None) -> dict:
    """One result dict; `mask` is a full-image bool mask, `keypoints` (17, 3) or 51 numbers."""
    out = {"image_id": int(image_id), "category_id": int(category_id), "score": float(score),
           "bbox": [float(v) for v in bbox_xywh]}
    if mask is not None:
        out["segmentation"] = encode_mask(mask)
    if keypoints is not None:
        kps = np.asarray(keypoints, dtype=np.float64).reshape(-1)
        if kps.size != 51:
            raise ValueError(f"keypoints: {kps.size} values, expected 17 x 3 = 51")
        out["keypoints"] = [float(v) for v in kps]
    return out


def results_from_detections(image_id: int, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                            masks: Optional[np.ndarray] = None, keypoints: Optional[np.ndarray] = None,
                            mask_threshold: float = 0.5) -> list[dict]:
    """Detections of one image (numpy arrays, e.g. a torchvision detection model's output moved to CPU) -> result
    dicts.

    boxes (N, 4) xyxy in image pixels; labels (N,) 1-based category ids; scores (N,); masks (N, H, W) or
    (N, 1, H, W) probabilities (thresholded at `mask_threshold`, i.e. `> 0.5` like torchvision's and detectron2's
    paste) or bools; keypoints (N, 17, 3)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(boxes)
    if len(labels) != n or len(scores) != n:
        raise ValueError(f"results_from_detections: {n} boxes, {len(labels)} labels, {len(scores)} scores")
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim == 4:
            masks = masks[:, 0]
        if len(masks) != n:
            raise ValueError(f"results_from_detections: {n} boxes but {len(masks)} masks")
        if masks.dtype != bool:
            masks = masks > mask_threshold
    if keypoints is not None:
        keypoints = np.asarray(keypoints, dtype=np.float64).reshape(n, -1)
    return [prediction(image_id, int(labels[i]), float(scores[i]), xyxy_to_xywh(boxes[i]),
                       None if masks is None else masks[i], None if keypoints is None else keypoints[i])
            for i in range(n)]


def results_from_ground_truth(gt: Mapping, score: float = 1.0, include_crowd: bool = False,
                              min_keypoints: int = 0) -> list[dict]:
    """The ground truth of a COCO-format dict as predictions ("perfect predictions"): for tests, benchmarks and
    sanity checks. Crowd annotations are left out unless asked for, and so are annotations that carry keypoints
    but fewer than `min_keypoints` labelled ones (keypoint evaluation ignores those; 1 gives a perfect keypoint
    result)."""
    out = []
    images = {im["id"]: im for im in gt["images"]}
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0) and not include_crowd:
            continue
        if ann.get("keypoints") is not None and ann.get("num_keypoints", 0) < min_keypoints:
            continue
        res = {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": float(score),
               "bbox": [float(v) for v in ann["bbox"]]}
        segm = ann.get("segmentation")
        if segm is not None:
            im = images[ann["image_id"]]
            if isinstance(segm, list):
                segm = mask_utils.merge(mask_utils.frPyObjects(segm, im["height"], im["width"]))
            elif isinstance(segm.get("counts"), list):
                segm = mask_utils.frPyObjects(segm, *segm["size"])
            counts = segm["counts"]
            res["segmentation"] = {"size": [int(v) for v in segm["size"]],
                                   "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
        if ann.get("keypoints") is not None:
            res["keypoints"] = [float(v) for v in ann["keypoints"]]
        out.append(res)
    return out


def check_predictions(predictions: Sequence[Mapping], image_ids: Optional[Iterable[int]] = None,
                      category_ids: Optional[Iterable[int]] = None, need: Sequence[str] = ()) -> None:
    """Raise ValueError naming the first malformed prediction: missing keys, unknown image / category ids, or a
    missing field that an iou type needs ("segmentation", "keypoints", "bbox")."""
    image_ids = None if image_ids is None else set(image_ids)
    category_ids = None if category_ids is None else set(category_ids)
    for i, p in enumerate(predictions):
        for key in ("image_id", "category_id", "score", *need):
            if key not in p or p[key] is None:
                raise ValueError(f"prediction #{i} has no {key!r}: {_short(p)}")
        if image_ids is not None and p["image_id"] not in image_ids:
            raise ValueError(f"prediction #{i} has image_id {p['image_id']!r}, which is not an image of the ground "
                             f"truth (ids come from avanon.study.evaluation.coco_image_ids)")
        if category_ids is not None and p["category_id"] not in category_ids:
            raise ValueError(f"prediction #{i} has category_id {p['category_id']!r}; the ground truth has "
                             f"{sorted(category_ids)} (1-based positions in thing_classes)")
        if "keypoints" in need and len(p["keypoints"]) != 51:
            raise ValueError(f"prediction #{i} has {len(p['keypoints'])} keypoint values, expected 51")


def _short(p: Mapping) -> str:
    return json.dumps({k: v for k, v in p.items() if k not in ("segmentation", "keypoints")})[:200]


# ---------------------------------------------------------------------------------------------------- storage


def save_predictions(predictions: Sequence[Mapping], path: str | Path) -> Path:
    """Write predictions as a COCO results JSON (a list of result dicts), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(list(predictions), default=_json_default))
    tmp.replace(path)
    return path


def load_predictions(path: str | Path) -> list[dict]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path} is not a COCO results file (a JSON list of result dicts)")
    return data


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, bytes):
        return o.decode("ascii")
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
