"""The `file` keypoint provider: the reference's annotated_keypoints_{split}.json rows mapped to our instance ids
(the row orders are described in the package docstring)."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Sequence

import numpy as np

from dataset_adapters.base import ImageRecord
from avanon.regions.keypoints.base import (
    FILE_FORMATS, OVERLAP_MODES, KEYPOINT_PROVIDERS, NUM_KEYPOINTS, KeypointConfigError, KeypointProvider, _choice, _number,
)


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
