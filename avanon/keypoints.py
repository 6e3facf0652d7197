"""Keypoint providers: COCO keypoints (17, COCO order, image coordinates) for datasets that have none.

The realistic body generator is keypoint-guided; Cityscapes and BDD100K have no keypoint annotations, so the
reference (DeepPrivacy2, Paper F) ran ViTPose on each instance's mask box and shipped the result as
`annotated_keypoints_{split}.json`. Providers (registry `KEYPOINT_PROVIDERS`):

* ``annotations``: the dataset's own keypoints (COCO); a no-op.
* ``file``: the reference's JSON files, mapped to our instance ids (formats: deepprivacy2.md §1.4):

  - Cityscapes ``{image basename: [[[x, y, conf] * 17] per row]}``. Rows follow detectron2's
    ``load_cityscapes_instances`` (polygons from JSON) restricted to category 0: the polygons JSON read in
    *reverse* order, one row per ``person`` *and* ``persongroup`` polygon (groups are crowd and are skipped by the
    reference, but they advance the row index); deleted objects (detectron2: the key ``deleted`` present) and
    labels with id < 0 are skipped, and so is a polygon that later polygons cover completely (detectron2 drops an
    annotation whose ``poly.buffer(0.5) - union(later polygons)`` is empty; a person with no visible *pixel* is
    still a row as long as that difference is not empty). Row -> instance id: cityscapesscripts'
    ``createInstanceImage`` numbers the non-group ``person`` polygons in *file* order (deleted ones skipped),
    ``24000 + k``; the adapter's instance id is that pixel value.
  - BDD100K ``{str(cocofmt image id): {"keypoints": [[[x, y, conf] * 17] per row]}}``. Rows follow the
    COCO-format JSON's annotations of the image in file order, keeping ``category_id == 1`` (pedestrian) that are
    neither ``iscrowd`` nor ``ignore`` (the reference's ``bdd100k/anonymize_body.py``). Those annotations are
    matched to the record's pedestrians by mask IoU (>= ``min_iou``), so every label source (bitmask, Scalabel RLE,
    cocofmt) maps the same way.

  When an image's row count differs from the number of loader annotations, the image gets no keypoints (its
  people are anonymized with the unconditional generator) and a warning is recorded; never a wrong person's pose.
* ``estimator``: a top-down pose estimator run on each instance's mask box. Backend ``torchvision``: torchvision's
  Keypoint R-CNN (``keypointrcnn_resnet50_fpn``) with the given boxes as proposals (no RPN, no box head): backbone,
  keypoint RoIAlign, keypoint head and predictor, heatmaps decoded by torchvision's ``heatmaps_to_keypoints``; all
  instances of an image in one forward. Weights: the COCO keypoint file torchvision publishes
  (``TORCHVISION_KEYPOINT_URL``), from a local path, never downloaded. Backend ``mmpose`` (ViTPose, as the paper)
  when mmpose is importable.

Visibility: v = 2 where confidence >= ``threshold`` (0.3, as the reference), else 0.

    provider = build_keypoint_provider("file", {}, dataset_root, split="train")
    kps = provider.keypoints(record, image)      # {instance_id: (17, 3) float32 [x, y, confidence]}
    record = provider.apply(record, image)       # instances' keypoints filled where found, v in {0, 2}
    provider.describe()                          # resolved parameters, for the manifest
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import dataclasses
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from avanon.registry import Registry
from dataset_adapters.base import ImageRecord, Instance

__all__ = [
    "DEFAULT_THRESHOLD", "KEYPOINT_PROVIDERS", "KeypointConfigError", "KeypointProvider", "LoaderEntry",
    "TORCHVISION_KEYPOINT_URL", "build_keypoint_provider", "cityscapes_instance_values", "cityscapes_loader_order",
]

NUM_KEYPOINTS = 17
DEFAULT_THRESHOLD = 0.3
# torchvision.models.detection.KeypointRCNN_ResNet50_FPN_Weights.COCO_V1.url (box AP 55.0, keypoint AP 65.0).
TORCHVISION_KEYPOINT_URL = "https://download.pytorch.org/models/keypointrcnn_resnet50_fpn_coco-fc266e95.pth"
FILE_FORMATS = ("auto", "cityscapes", "bdd100k")
OVERLAP_MODES = ("auto", "shapely", "raster")
CONFIDENCE_MODES = ("local_softmax", "softmax", "logit")
BACKENDS = ("torchvision", "mmpose")
_MAX_WARNINGS = 200


class KeypointConfigError(ValueError):
    """A keypoint provider configuration that cannot be used (unknown key, missing file or weights...)."""


# ----------------------------------------------------------------------------------------------------- base
class KeypointProvider(ABC):
    """Keypoints for the instances of one image. Built once per run; `stats` and `warnings` accumulate."""

    name: ClassVar[str] = ""
    needs_image: ClassVar[bool] = False
    keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Optional[dict], dataset_root: Optional[str | Path], *, split: Optional[str] = None,
                 target_categories: Optional[Sequence[str]] = None):
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.keys) - {"threshold", "strict"})
        if unknown:
            known = ", ".join(sorted(set(self.keys) | {"threshold", "strict"}))
            raise KeypointConfigError(f"keypoints.{self.name}: unknown parameter(s) {', '.join(unknown)}; "
                                      f"known: {known}")
        self.params = params
        self.dataset_root = Path(dataset_root) if dataset_root is not None else None
        self.split = split
        self.target_categories = tuple(target_categories) if target_categories else None
        self.threshold = _number(self.name, "threshold", params.get("threshold", DEFAULT_THRESHOLD))
        self.strict = _flag(self.name, "strict", params.get("strict", False))
        self.stats: Counter = Counter()
        self.warnings: list[str] = []

    # -- interface
    @abstractmethod
    def keypoints(self, record: ImageRecord, image: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
        """{instance_id: (17, 3) float32 [x, y, confidence]} for the instances this provider found."""

    def apply(self, record: ImageRecord, image: Optional[np.ndarray] = None) -> ImageRecord:
        """A record whose instances carry the provider's keypoints where found (v = 2 if confidence passes the
        threshold, else 0); other instances are kept as they are. The input record is not modified (its
        `problems` list is shared, so problems found later on either record are seen on both)."""
        found = self.keypoints(record, image)
        if not found:
            return record
        instances = []
        for inst in record.instances:
            kp = found.get(inst.instance_id)
            if kp is not None:
                inst = dataclasses.replace(inst, keypoints=self.visibility(kp))
            instances.append(inst)
        return dataclasses.replace(record, instances=instances)

    def visibility(self, kp: np.ndarray) -> np.ndarray:
        """(17, 3) [x, y, confidence] -> [x, y, v] with v = 2 where the confidence passes the threshold, else 0."""
        out = np.array(kp, dtype=np.float32).reshape(NUM_KEYPOINTS, 3)
        conf = out[:, 2]
        visible = conf > self.threshold if self.strict else conf >= self.threshold
        out[:, 2] = np.where(visible, 2.0, 0.0)
        return out

    def describe(self) -> dict:
        return {"provider": self.name, "threshold": self.threshold, "strict": self.strict}

    # -- helpers
    def warn(self, message: str) -> None:
        self.stats["warnings"] += 1
        if len(self.warnings) < _MAX_WARNINGS:
            self.warnings.append(message)

    def _count(self, found: dict[str, np.ndarray]) -> None:
        self.stats["images"] += 1
        self.stats["instances"] += len(found)
        self.stats["instances_with_visible_keypoints"] += sum(
            int(self.visibility(kp)[:, 2].any()) for kp in found.values())


KEYPOINT_PROVIDERS: Registry[type[KeypointProvider]] = Registry("keypoint provider")


def build_keypoint_provider(name: str, params: Optional[dict], dataset_root: Optional[str | Path], *,
                            split: Optional[str] = None,
                            target_categories: Optional[Sequence[str]] = None) -> KeypointProvider:
    """The provider `name` ("annotations", "file", "estimator") with its parameters. `split` lets the file provider
    load `annotated_keypoints_{split}.json` up front (else on first use); `target_categories` limits the estimator
    to those categories (default: every non-crowd instance)."""
    try:
        cls = KEYPOINT_PROVIDERS.get(name)
    except KeyError as exc:
        raise KeypointConfigError(str(exc.args[0])) from None
    return cls(params, dataset_root, split=split, target_categories=target_categories)


def _number(provider: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise KeypointConfigError(f"keypoints.{provider}.{key}: expected a number, got {value!r}")
    return float(value)


def _flag(provider: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise KeypointConfigError(f"keypoints.{provider}.{key}: expected true or false, got {value!r}")
    return value


def _choice(provider: str, key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise KeypointConfigError(f"keypoints.{provider}.{key}: unknown value {value!r}; known: {', '.join(choices)}")
    return value


# ---------------------------------------------------------------------------------------------- annotations
@KEYPOINT_PROVIDERS.register("annotations")
class AnnotationKeypointProvider(KeypointProvider):
    """The dataset's own keypoints (COCO): nothing to add."""

    name = "annotations"

    def keypoints(self, record, image=None):
        return {inst.instance_id: np.array(inst.keypoints, dtype=np.float32)
                for inst in record.instances if inst.keypoints is not None}

    def apply(self, record, image=None):
        return record


# ------------------------------------------------------------------------------------- Cityscapes row order
@dataclass(frozen=True)
class LoaderEntry:
    """One category-0 (person) annotation of detectron2's Cityscapes loader, in its order."""

    object_index: int  # position in the polygons JSON "objects"
    iscrowd: bool  # a 'persongroup' polygon
    instance_value: Optional[int]  # the instanceIds value cityscapesscripts gives it (24000 + k); None for groups


def _cs_label(name: Any):
    """cityscapesscripts label of a polygon label and whether it is a group ('persongroup' -> person, True)."""
    from cityscapesscripts.helpers.labels import name2label

    if isinstance(name, str):
        if name in name2label:
            return name2label[name], False
        if name.endswith("group") and name[: -len("group")] in name2label:
            return name2label[name[: -len("group")]], True
    raise ValueError(f"unknown Cityscapes label {name!r}")


def cityscapes_instance_values(objects: Sequence[dict]) -> dict[int, int]:
    """{object index: instanceIds value} for the non-group instance polygons, numbered as cityscapesscripts'
    `createInstanceImage` does: label id * 1000 + k, k counting that label's polygons in file order; objects
    with a truthy 'deleted' are skipped without a number."""
    counts: Counter = Counter()
    out = {}
    for index, obj in enumerate(objects):
        if obj.get("deleted"):
            continue
        label, group = _cs_label(obj.get("label"))
        if label.hasInstances and not group:
            out[index] = label.id * 1000 + counts[label.name]
            counts[label.name] += 1
    return out


def _have_shapely() -> bool:
    try:
        import shapely  # noqa: F401
    except ImportError:
        return False
    return True


class _ShapelyUnion:
    """detectron2's overlap resolution, exactly: polygons + 0.5, buffered by 0.5 (resolution 4)."""

    def __init__(self, points: np.ndarray):
        from shapely.geometry import Polygon

        self._polygon = Polygon
        self.union = Polygon()

    def shape(self, points: np.ndarray):
        # detectron2: buffer(0.5, resolution=4); shapely >= 2 calls that argument quad_segs
        polygon = self._polygon(np.asarray(points, dtype="f4") + 0.5)
        try:
            return polygon.buffer(0.5, quad_segs=4)
        except TypeError:  # shapely 1.x
            return polygon.buffer(0.5, resolution=4)

    def add(self, shape) -> None:
        self.union = self.union.union(shape)

    def covered(self, shape) -> bool:
        return shape.difference(self.union).is_empty


class _RasterUnion:
    """The same test on a 4x supersampled raster (used when shapely is not installed): a polygon is 'empty' when
    none of its dilated sub-pixel samples lies outside the union of later polygons. Slivers thinner than a
    quarter pixel are missed; the row-count check then drops the image's keypoints rather than shift them."""

    S = 4
    MARGIN = 2

    def __init__(self, points: np.ndarray):
        import cv2

        self._cv2 = cv2
        s, m = self.S, self.MARGIN
        # The canvas spans every polygon (annotations may reach past the image border).
        lo = np.floor(points.min(axis=0)) if len(points) else np.zeros(2)
        hi = np.ceil(points.max(axis=0)) if len(points) else np.zeros(2)
        self.origin = lo - m
        width, height = (hi - lo + 2 * m + 1).astype(int)
        self.canvas = np.zeros((int(height) * s, int(width) * s), np.uint8)
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * (s // 2) + 1, 2 * (s // 2) + 1))

    def shape(self, points: np.ndarray):
        cv2, s = self._cv2, self.S
        pts = (np.asarray(points, dtype=np.float64).reshape(-1, 2) + 0.5 - self.origin) * s
        if len(pts) < 3:
            return None
        H, W = self.canvas.shape
        lo = np.floor(pts.min(axis=0)).astype(int) - s
        hi = np.ceil(pts.max(axis=0)).astype(int) + s + 1
        x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
        x1, y1 = min(int(hi[0]), W), min(int(hi[1]), H)
        if x1 <= x0 or y1 <= y0:
            return None
        local = np.zeros((y1 - y0, x1 - x0), np.uint8)
        # cv2 pixel i is centred on i; sample i of this canvas is centred on i + 0.5 (sub-pixel units)
        fixed = np.round((pts - [x0 + 0.5, y0 + 0.5]) * 16).astype(np.int32)
        cv2.fillPoly(local, [fixed], 1, cv2.LINE_8, 4)
        local = cv2.dilate(local, self._kernel)
        return x0, y0, local.astype(bool)

    def add(self, shape) -> None:
        if shape is not None:
            x0, y0, m = shape
            self.canvas[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] |= m

    def covered(self, shape) -> bool:
        if shape is None:
            return True
        x0, y0, m = shape
        return not (m & (self.canvas[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] == 0)).any()


def cityscapes_loader_order(doc: dict, overlap: str = "auto") -> list[LoaderEntry]:
    """The category-0 annotations detectron2's `load_cityscapes_instances` (from JSON) yields for a polygons JSON,
    in its order: the reference's keypoint rows, one per entry. `overlap`: "shapely" (detectron2's own geometry),
    "raster" (approximation without shapely) or "auto" (shapely when installed)."""
    objects = doc.get("objects")
    if not isinstance(objects, list):
        raise ValueError("polygons JSON has no 'objects' list")
    values = cityscapes_instance_values(objects)
    persons = [i for i, o in enumerate(objects) if "deleted" not in o and _cs_label(o.get("label"))[0].name == "person"]
    if not persons:
        return []
    if overlap == "auto":
        overlap = "shapely" if _have_shapely() else "raster"
    considered = objects[persons[0]:]
    points = np.concatenate([np.asarray(o.get("polygon"), dtype=np.float64).reshape(-1, 2) for o in considered]
                            + [np.zeros((0, 2))])
    union = (_ShapelyUnion if overlap == "shapely" else _RasterUnion)(points)
    entries = []
    for index in range(len(objects) - 1, persons[0] - 1, -1):  # polygons before the first person cannot matter
        obj = objects[index]
        if "deleted" in obj:
            continue
        label, group = _cs_label(obj.get("label"))
        if label.id < 0:
            continue
        shape = union.shape(obj.get("polygon"))
        if not label.hasInstances or label.ignoreInEval:
            union.add(shape)
            continue
        if union.covered(shape):
            continue
        union.add(shape)
        if label.name == "person":
            entries.append(LoaderEntry(index, group, None if group else values.get(index)))
    return entries


# ----------------------------------------------------------------------------------------------------- file
def _parse_rows(value: Any) -> np.ndarray:
    """A list of (17, 3) keypoint rows -> float32 (N, 17, 3); ValueError when malformed."""
    if not isinstance(value, list):
        raise ValueError(f"expected a list of keypoint rows, got {type(value).__name__}")
    if not value:
        return np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
    try:
        rows = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise ValueError("keypoint rows must each be 17 [x, y, confidence] triples") from None
    if rows.ndim != 3 or rows.shape[1:] != (NUM_KEYPOINTS, 3) or not np.isfinite(rows).all():
        raise ValueError(f"keypoint rows must each be 17 [x, y, confidence] triples, got shape {rows.shape}")
    return rows


def dataset_format_of(file_name: str) -> Optional[tuple[str, str]]:
    """(format, split) from an image path relative to the dataset root, None when it is neither layout."""
    parts = PurePosixPath(file_name).parts
    if len(parts) >= 3 and parts[0] == "leftImg8bit":
        return "cityscapes", parts[1]
    if len(parts) >= 4 and parts[:2] == ("images", "10k"):
        return "bdd100k", parts[2]
    return None


@KEYPOINT_PROVIDERS.register("file")
class FileKeypointProvider(KeypointProvider):
    """The reference's `annotated_keypoints_{split}.json` (Cityscapes / BDD100K), mapped to instance ids.

    Parameters: file (default annotated_keypoints_{split}.json at the dataset root; relative paths are relative to
    it), format (auto | cityscapes | bdd100k), threshold (0.3), strict (false: conf >= threshold; the reference's
    BDD100K script used >), overlap (Cityscapes: auto | shapely | raster), cocofmt (BDD100K: default
    jsons/ins_seg_{split}_cocofmt.json), min_iou (BDD100K mask matching, 0.5)."""

    name = "file"
    keys = ("file", "format", "overlap", "cocofmt", "min_iou")

    def __init__(self, params, dataset_root, *, split=None, target_categories=None):
        super().__init__(params, dataset_root, split=split, target_categories=target_categories)
        p = self.params
        self.format = _choice(self.name, "format", p.get("format", "auto"), FILE_FORMATS)
        self.overlap = _choice(self.name, "overlap", p.get("overlap", "auto"), OVERLAP_MODES)
        if self.overlap == "shapely" and not _have_shapely():
            raise KeypointConfigError("keypoints.file.overlap: 'shapely' needs the shapely package "
                                      "(pip install shapely); 'auto' falls back to a raster approximation")
        self.min_iou = _number(self.name, "min_iou", p.get("min_iou", 0.5))
        if self.dataset_root is None:
            raise KeypointConfigError("keypoints.file: needs the dataset root (the file, the polygons JSON and the "
                                      "COCO-format labels are read from it)")
        for key in ("file", "cocofmt"):
            if key in p and (not isinstance(p[key], str) or not p[key]):
                raise KeypointConfigError(f"keypoints.file.{key}: expected a path, got {p[key]!r}")
        self._files: dict[Path, tuple[dict, str]] = {}
        self._cocofmt: dict[Path, tuple[dict, dict]] = {}
        if "file" in p or split is not None:
            self._load(self._path(split or ""))  # fail early on a missing or malformed file

    # -- files
    def _resolve(self, given: str) -> Path:
        path = Path(given)
        if not path.is_absolute() and self.dataset_root is not None:
            path = self.dataset_root / path
        return path

    def _path(self, split: str) -> Path:
        return self._resolve(self.params.get("file") or f"annotated_keypoints_{split}.json")

    def _load(self, path: Path) -> tuple[dict, str]:
        if path not in self._files:
            if not path.is_file():
                raise KeypointConfigError(f"keypoints.file: keypoint file {path} does not exist (the reference's "
                                          "annotated_keypoints_{split}.json; see docs for where to get it, or use "
                                          "the 'estimator' provider)")
            raw = path.read_bytes()
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise KeypointConfigError(f"keypoints.file: {path} is not valid JSON: {exc}") from None
            if not isinstance(data, dict):
                raise KeypointConfigError(f"keypoints.file: {path}: top level must be an object keyed by image")
            self._files[path] = (data, hashlib.sha256(raw).hexdigest())
        return self._files[path]

    def _cocofmt_index(self, split: str) -> tuple[dict, dict]:
        """({image file name: image entry}, {image id: [annotations in file order]}) of the COCO-format JSON."""
        path = self._resolve(self.params.get("cocofmt") or f"jsons/ins_seg_{split}_cocofmt.json")
        if path not in self._cocofmt:
            if not path.is_file():
                raise KeypointConfigError(f"keypoints.file: BDD100K rows follow the COCO-format labels, but {path} "
                                          "does not exist (set cocofmt=PATH)")
            try:
                doc = json.loads(path.read_bytes())
                images = {PurePosixPath(str(im["file_name"])).name: im for im in doc["images"]}
                anns: dict = {}
                for ann in doc["annotations"]:
                    anns.setdefault(ann["image_id"], []).append(ann)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                raise KeypointConfigError(f"keypoints.file: {path} is not a COCO-format label file: "
                                          f"{type(exc).__name__}: {exc}") from None
            self._cocofmt[path] = (images, anns)
        return self._cocofmt[path]

    def _where(self, record: ImageRecord) -> tuple[str, str]:
        found = dataset_format_of(record.file_name)
        fmt = self.format if self.format != "auto" else (found[0] if found else None)
        split = self.split or (found[1] if found else None)
        if fmt is None or split is None:
            raise KeypointConfigError(f"keypoints.file: cannot tell the dataset format / split of "
                                      f"{record.file_name}; set format=cityscapes|bdd100k and the split")
        return fmt, split

    # -- mapping
    def keypoints(self, record, image=None):
        fmt, split = self._where(record)
        data, _ = self._load(self._path(split))
        found = self._cityscapes(record, data) if fmt == "cityscapes" else self._bdd(record, data, split)
        self._count(found)
        return found

    def _cityscapes(self, record: ImageRecord, data: dict) -> dict[str, np.ndarray]:
        from dataset_adapters.cityscapes import IMAGE_SUFFIX

        key = next((k for k in record.lookup_keys or (record.image_id,) if k in data), None)
        if key is None:
            self.stats["images_not_in_file"] += 1
            return {}
        try:
            rows = _parse_rows(data[key])
        except ValueError as exc:
            self.warn(f"{record.file_name}: keypoint file entry {key!r}: {exc}")
            return {}
        rel = PurePosixPath(record.file_name)
        stem = rel.name[: -len(IMAGE_SUFFIX)] if rel.name.endswith(IMAGE_SUFFIX) else rel.stem
        gt = self.dataset_root / "gtFine" / rel.parent.relative_to("leftImg8bit") / f"{stem}_gtFine_polygons.json"
        try:
            order = cityscapes_loader_order(json.loads(gt.read_bytes()), self.overlap)
        except Exception as exc:  # unreadable file, unknown label, geometry errors: no keypoints, never a crash
            self.warn(f"{record.file_name}: cannot read the polygons JSON for the row order: "
                      f"{type(exc).__name__}: {exc}")
            return {}
        if len(order) != len(rows):
            self.stats["row_count_mismatch"] += 1
            self.warn(f"{record.file_name}: keypoint file has {len(rows)} rows, the polygons JSON gives "
                      f"{len(order)} person/persongroup annotations; no keypoints for this image")
            return {}
        ids = {inst.instance_id for inst in record.instances}
        out = {}
        for entry, row in zip(order, rows):
            if entry.iscrowd or entry.instance_value is None:
                continue
            iid = str(entry.instance_value)
            if iid in ids:
                out[iid] = row.copy()
        return out

    def _bdd(self, record: ImageRecord, data: dict, split: str) -> dict[str, np.ndarray]:
        from dataset_adapters.coco import decode_segmentation

        images, anns_by_image = self._cocofmt_index(split)
        image = images.get(PurePosixPath(record.file_name).name)
        if image is None:
            self.warn(f"{record.file_name}: not in the COCO-format labels; no keypoints")
            return {}
        entry = data.get(str(image["id"]))
        if entry is None:
            self.stats["images_not_in_file"] += 1
            return {}
        try:
            rows = _parse_rows(entry.get("keypoints") if isinstance(entry, dict) else entry)
        except ValueError as exc:
            self.warn(f"{record.file_name}: keypoint file entry {image['id']}: {exc}")
            return {}
        anns = [a for a in anns_by_image.get(image["id"], [])
                if not a.get("iscrowd") and not a.get("ignore") and a.get("category_id") == 1]
        if len(anns) != len(rows):
            self.stats["row_count_mismatch"] += 1
            self.warn(f"{record.file_name}: keypoint file has {len(rows)} rows, the COCO-format labels have "
                      f"{len(anns)} pedestrians (not crowd, not ignored); no keypoints for this image")
            return {}
        h, w = int(image.get("height", record.height)), int(image.get("width", record.width))
        if (w, h) != (record.width, record.height):
            self.warn(f"{record.file_name}: COCO-format size {w}x{h} differs from the image; no keypoints")
            return {}
        cands = [inst for inst in record.instances
                 if inst.category == "pedestrian" and not inst.iscrowd and not inst.ignore and inst.area > 0]
        pairs = []
        for j, ann in enumerate(anns):
            try:
                mask = decode_segmentation(ann.get("segmentation"), h, w)
            except ValueError as exc:
                self.warn(f"{record.file_name}: annotation {ann.get('id')}: {exc}")
                continue
            area = int(mask.sum())
            for i, inst in enumerate(cands):
                x0, y0, x1, y1 = inst.box
                inter = int((mask[y0:y1, x0:x1] & inst.mask).sum())
                if inter:
                    iou = inter / (area + inst.area - inter)
                    if iou >= self.min_iou:
                        pairs.append((-iou, j, i))
        out, used_rows, used_insts = {}, set(), set()
        for _, j, i in sorted(pairs):
            if j in used_rows or i in used_insts:
                continue
            used_rows.add(j)
            used_insts.add(i)
            out[cands[i].instance_id] = rows[j].copy()
        unmatched = len(anns) - len(used_rows)
        if unmatched:
            self.stats["rows_unmatched"] += unmatched
        return out

    def describe(self):
        d = {**super().describe(), "format": self.format, "overlap": self.overlap,
             "overlap_resolved": "shapely" if self.overlap == "shapely" or (self.overlap == "auto" and _have_shapely())
             else "raster", "min_iou": self.min_iou}
        if "cocofmt" in self.params:
            d["cocofmt"] = self.params["cocofmt"]
        d["files"] = {str(p): sha for p, (_, sha) in sorted(self._files.items())} or \
            {"pattern": self.params.get("file") or "annotated_keypoints_{split}.json"}
        return d


# ------------------------------------------------------------------------------------------------ estimator
def torchvision_weights_hint(path: Optional[Path]) -> str:
    name = TORCHVISION_KEYPOINT_URL.rsplit("/", 1)[1]
    where = f"{path} does not exist. " if path is not None else "no weights file given. "
    return (f"keypoints.estimator: {where}The torchvision backend needs torchvision's COCO Keypoint R-CNN weights, "
            f"one file: download {TORCHVISION_KEYPOINT_URL} on a machine with internet access (e.g. "
            f"`curl -LO {TORCHVISION_KEYPOINT_URL}`), copy it here and pass weights=/path/to/{name} "
            f"(or put it in torch's hub cache, {_torch_hub_checkpoint()}). avanon never downloads it.")


def _torch_hub_checkpoint() -> Path:
    try:
        import torch

        hub = Path(torch.hub.get_dir())
    except Exception:
        hub = Path(os.path.expanduser("~/.cache/torch/hub"))
    return hub / "checkpoints" / TORCHVISION_KEYPOINT_URL.rsplit("/", 1)[1]


def load_state_dict_file(path: Path) -> dict:
    """A torchvision state dict saved with torch.save (a {'model'|'state_dict': ...} wrapper is unwrapped)."""
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise KeypointConfigError(f"keypoints.estimator: cannot read weights file {path}: "
                                  f"{type(exc).__name__}: {exc}") from None
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise KeypointConfigError(f"keypoints.estimator: {path} does not hold a state dict")
    return sd


class TorchvisionTopDown:
    """Keypoint R-CNN R-50 FPN used top-down: given boxes are the proposals of its keypoint branch."""

    def __init__(self, weights: Path, device: str = "cpu", min_size: int = 800, max_size: int = 1333,
                 confidence: str = "local_softmax"):
        import torch
        from torchvision.models.detection import keypointrcnn_resnet50_fpn

        state = load_state_dict_file(weights)
        # Built on the meta device (no random initialisation, ~2 s saved) and filled from the file: strict, so every
        # parameter and buffer comes from it. Only the RPN's anchors stay on meta: the RPN is never run.
        with torch.device("meta"):
            model = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_keypoints=NUM_KEYPOINTS,
                                              min_size=min_size, max_size=max_size)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise KeypointConfigError(f"keypoints.estimator: {weights} is not a keypointrcnn_resnet50_fpn state "
                                      f"dict (17 keypoints): {str(exc).splitlines()[0]}") from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.confidence = confidence

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """image (H, W, 3) uint8 RGB, boxes (N, 4) float xyxy -> xy (N, 17, 2), confidence (N, 17)."""
        import torch
        import torch.nn.functional as F
        from torchvision.models.detection.roi_heads import heatmaps_to_keypoints

        model = self.model
        with torch.inference_mode():
            img = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).to(self.device).permute(2, 0, 1).float() / 255.0
            batch, _ = model.transform([img])
            new_h, new_w = batch.image_sizes[0]
            sx, sy = new_w / image.shape[1], new_h / image.shape[0]
            scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32, device=self.device)
            rois = torch.as_tensor(boxes, dtype=torch.float32, device=self.device) * scale
            features = model.backbone(batch.tensors)
            heads = model.roi_heads
            pooled = heads.keypoint_roi_pool(features, [rois], batch.image_sizes)
            logits = heads.keypoint_predictor(heads.keypoint_head(pooled))  # (N, 17, 56, 56)
            xy, scores = heatmaps_to_keypoints(logits, rois)
            if self.confidence != "logit":
                n, k, hh, ww = logits.shape
                probs = F.softmax(logits.reshape(n, k, -1).float(), dim=-1).reshape(n, k, hh, ww)
                if self.confidence == "local_softmax":  # probability mass within +-1 heatmap bin of the peak
                    probs = F.avg_pool2d(probs, 3, stride=1, padding=1, count_include_pad=True) * 9
                widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)[:, None]
                heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)[:, None]
                bx = ((xy[..., 0] - rois[:, 0:1]) / widths * ww).floor().long().clamp(0, ww - 1)
                by = ((xy[..., 1] - rois[:, 1:2]) / heights * hh).floor().long().clamp(0, hh - 1)
                flat = probs.reshape(n, k, -1)
                scores = flat.gather(2, (by * ww + bx)[..., None])[..., 0]
            out = xy[..., :2] / torch.tensor([sx, sy], dtype=torch.float32, device=self.device)
            return (out.cpu().numpy().astype(np.float32),
                    scores.float().cpu().numpy().astype(np.float32))


class MMPoseTopDown:
    """mmpose (>= 1.0) top-down model, e.g. ViTPose as the paper; only when mmpose is importable."""

    def __init__(self, config: str, checkpoint: Path, device: str = "cpu"):
        try:
            from mmpose.apis import inference_topdown, init_model
        except Exception as exc:
            raise KeypointConfigError(
                "keypoints.estimator: backend 'mmpose' needs mmpose >= 1.0 (with mmcv and mmengine) importable, "
                f"which failed: {type(exc).__name__}: {exc}. The default backend 'torchvision' needs nothing "
                "extra.") from None
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._infer = inference_topdown
        self.model = init_model(config, str(checkpoint), device=device)

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        results = self._infer(self.model, np.ascontiguousarray(image[..., ::-1]), bboxes=np.asarray(boxes),
                              bbox_format="xyxy")
        xy = np.stack([np.asarray(r.pred_instances.keypoints)[0] for r in results]).astype(np.float32)
        conf = np.stack([np.asarray(r.pred_instances.keypoint_scores)[0] for r in results]).astype(np.float32)
        return xy[..., :2], conf


@KEYPOINT_PROVIDERS.register("estimator")
class EstimatorKeypointProvider(KeypointProvider):
    """A top-down pose estimator on each instance's tight mask box (padded by `box_padding` of its size).

    Parameters: backend (torchvision | mmpose), weights (torchvision: the COCO Keypoint R-CNN state dict file;
    default: torch's hub cache), device (cpu | cuda | auto), min_size / max_size (torchvision's resize, 800 / 1333),
    confidence (torchvision: local_softmax = spatial-softmax mass within one heatmap bin of the peak, softmax =
    peak probability, logit = torchvision's raw keypoint score), box_padding (0.0), categories (default: the target
    categories when given, else every category), mmpose_config / mmpose_checkpoint (mmpose backend), threshold
    (0.3), strict.

    Keypoint R-CNN's heatmaps are trained with a spatial softmax and carry no visibility, so no confidence of it is
    calibrated like ViTPose's heatmap peaks; check the threshold on real weights with
    `avanon inspect --keypoints estimator` against Paper F's 95.8 % (Cityscapes) / 85.5 % (BDD100K)."""

    name = "estimator"
    needs_image = True
    keys = ("backend", "weights", "device", "min_size", "max_size", "confidence", "box_padding", "categories",
            "mmpose_config", "mmpose_checkpoint")

    def __init__(self, params, dataset_root, *, split=None, target_categories=None):
        super().__init__(params, dataset_root, split=split, target_categories=target_categories)
        p = self.params
        self.backend = _choice(self.name, "backend", p.get("backend", "torchvision"), BACKENDS)
        self.device = p.get("device", "cpu")
        if not isinstance(self.device, str):
            raise KeypointConfigError(f"keypoints.estimator.device: expected a string, got {self.device!r}")
        self.box_padding = _number(self.name, "box_padding", p.get("box_padding", 0.0))
        cats = p.get("categories", self.target_categories)
        if isinstance(cats, str):
            cats = [cats]
        self.categories = tuple(cats) if cats else None
        if self.backend == "torchvision":
            self.confidence = _choice(self.name, "confidence", p.get("confidence", "local_softmax"),
                                      CONFIDENCE_MODES)
            sizes = {}
            for key, default in (("min_size", 800), ("max_size", 1333)):
                v = p.get(key, default)
                if isinstance(v, bool) or not isinstance(v, int) or v < 32:
                    raise KeypointConfigError(f"keypoints.estimator.{key}: expected an integer >= 32, got {v!r}")
                sizes[key] = v
            self.min_size, self.max_size = sizes["min_size"], sizes["max_size"]
            given = p.get("weights")
            path = Path(os.path.expanduser(given)) if given else _torch_hub_checkpoint()
            if not path.is_file():
                raise KeypointConfigError(torchvision_weights_hint(path if given else None))
            self.weights = path
            self.model = TorchvisionTopDown(path, self.device, self.min_size, self.max_size, self.confidence)
        else:
            self.confidence = "heatmap"
            config, ckpt = p.get("mmpose_config"), p.get("mmpose_checkpoint")
            if not isinstance(config, str) or not isinstance(ckpt, str):
                raise KeypointConfigError("keypoints.estimator: backend 'mmpose' needs mmpose_config (a model config "
                                          "file) and mmpose_checkpoint (a local checkpoint file)")
            if "://" in ckpt or not Path(ckpt).is_file():
                raise KeypointConfigError(f"keypoints.estimator.mmpose_checkpoint: {ckpt} is not a local file "
                                          "(avanon never downloads weights)")
            self.weights = Path(ckpt)
            self.model = MMPoseTopDown(config, self.weights, self.device)

    def boxes(self, record: ImageRecord) -> tuple[list[Instance], np.ndarray]:
        """The instances the estimator runs on and their (padded, clipped) boxes."""
        insts, boxes = [], []
        for inst in record.instances:
            x0, y0, x1, y1 = inst.box
            if inst.iscrowd or x1 <= x0 or y1 <= y0:
                continue
            if self.categories is not None and inst.category not in self.categories:
                continue
            px, py = self.box_padding * (x1 - x0), self.box_padding * (y1 - y0)
            boxes.append([max(x0 - px, 0.0), max(y0 - py, 0.0), min(x1 + px, float(record.width)),
                          min(y1 + py, float(record.height))])
            insts.append(inst)
        return insts, np.asarray(boxes, dtype=np.float32).reshape(-1, 4)

    def keypoints(self, record, image=None):
        if image is None:
            raise ValueError("keypoints.estimator needs the image")
        insts, boxes = self.boxes(record)
        if not insts:
            self._count({})
            return {}
        xy, conf = self.model(image, boxes)
        found = {inst.instance_id: np.concatenate([xy[i], conf[i][:, None]], axis=1).astype(np.float32)
                 for i, inst in enumerate(insts)}
        self._count(found)
        return found

    def describe(self):
        d = {**super().describe(), "backend": self.backend, "weights": str(self.weights),
             "weights_size": self.weights.stat().st_size, "device": self.device, "box_padding": self.box_padding,
             "confidence": self.confidence, "categories": list(self.categories) if self.categories else None}
        if self.backend == "torchvision":
            d.update(min_size=self.min_size, max_size=self.max_size, model="keypointrcnn_resnet50_fpn")
        else:
            d.update(mmpose_config=self.params.get("mmpose_config"))
        return d
