"""Writing scenes in the real on-disk formats: COCO (person_keypoints / instances JSON), Cityscapes (leftImg8bit,
gtFine polygons and instanceIds) and BDD100K (bitmasks, Scalabel RLE, COCO-format JSON)."""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Iterable, Optional

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from dataset_adapters.base import COCO_KEYPOINT_NAMES
from dataset_adapters.synthetic.scene import GENERATOR_VERSION, Scene, SceneObject


BDD_CATEGORIES = ("pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


BDD_CATEGORY_OF = {"person": "pedestrian", "crowd": "pedestrian", "rider": "rider", "car": "car",
                   "bicycle": "bicycle"}


COCO_CATEGORY_IDS = {"person": 1, "rider": 1, "crowd": 1, "bicycle": 2, "car": 3}


COCO_CATEGORIES = [{"supercategory": "person", "id": 1, "name": "person"},
                   {"supercategory": "vehicle", "id": 2, "name": "bicycle"},
                   {"supercategory": "vehicle", "id": 3, "name": "car"}]


# COCO's person skeleton (1-based keypoint indices), as in person_keypoints_*.json.
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                 [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]


_CITIES = {"train": ("avalon", "bellmont"), "val": ("corvale",), "test": ("dunmore",)}


_COCO_SPLIT_BASE = {"train": 1_000_000, "val": 2_000_000, "test": 3_000_000}


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_json(path: Path, obj, indent: Optional[int] = None) -> None:
    text = json.dumps(obj, indent=indent, separators=None if indent else (",", ":"))
    _write_bytes(path, text.encode("utf-8"))


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return buf.tobytes()


def _png(arr: np.ndarray) -> bytes:
    """PNG of an RGB / RGBA / grey (uint8 or uint16) array; cv2 wants BGR(A) channel order."""
    if arr.ndim == 3:
        arr = arr[..., [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[..., ::-1]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    assert ok
    return buf.tobytes()


def _r(v: float, nd: int = 2) -> float:
    return round(float(v), nd)


def coco_image_id(split: str, index: int) -> int:
    """Numeric COCO image id, unique across splits: 1_000_001.. for train, 2_000_001.. for val."""
    base = _COCO_SPLIT_BASE.get(split, (10 + zlib.crc32(split.encode("utf-8")) % 990) * 1_000_000)
    return base + index + 1


def bdd_name(seed: int, split: str, index: int) -> str:
    """BDD100K-style image name (two hex groups, like '0a0a0b1a-7c39d841')."""
    d = hashlib.sha1(f"avanon/{seed}/{split}/{index}".encode("utf-8")).hexdigest()
    return f"{d[:8]}-{d[8:16]}"


def cityscapes_stem(split: str, index: int) -> tuple[str, str]:
    """(city, '{city}_{seq:06d}_000019') of image `index` of a split; cities alternate within a split."""
    cities = _CITIES.get(split, (f"{''.join(ch for ch in split.lower() if ch.isalnum()) or 'x'}town",))
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_000019"


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths starting with background), as real COCO crowds use."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode("ascii"), "size": [int(v) for v in rle["size"]]}


def coco_polygons(obj: SceneObject) -> list[list[float]]:
    """Polygons of the visible mask that pycocotools rasterises back to exactly that mask: outer contours traced on
    the mask upsampled 4x, i.e. along the pixel edges (1/8 px inside), in COCO's continuous coordinates where
    pixel (x, y) covers [x, x+1) x [y, y+1). Contours through pixel centres would lose half a pixel all round."""
    x0, y0, _, _ = obj.box
    up = cv2.resize(obj.visible.astype(np.uint8), None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) < 3:
            continue
        pts = (c[:, 0, :].astype(np.float64) + 0.5) / 4 + np.array([x0, y0])
        polys.append([_r(v, 3) for v in pts.ravel()])
    return polys


def _detected_face(box, rng: np.random.Generator, min_height: float = 6.0):
    """A 'detector' output for a ground-truth face box: jittered by a few percent, score in [0.5, 1]; faces
    smaller than min_height px are missed, as DSFD misses tiny faces."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if h < min_height:
        return None
    j = rng.normal(0, 0.04, 4).clip(-0.08, 0.08) * np.array([w, h, w, h])
    return [_r(x0 + j[0]), _r(y0 + j[1]), _r(x1 + j[2]), _r(y1 + j[3])], _r(rng.uniform(0.5, 1.0), 4)


def _keypoint_rows(o: SceneObject) -> list[list[float]]:
    """Reference-style keypoints (a pose estimator's output): ground truth with confidence 0.9 where visible,
    0.1 where labelled but hidden, 0.0 where unlabelled (placed at the projected joint, clipped to the box)."""
    x0, y0, x1, y1 = o.box
    if o.keypoints is None:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        return [[_r(cx), _r(cy), 0.0] for _ in range(17)]
    rows = []
    for (x, y, v), (px, py) in zip(o.keypoints, o.kp_xy):
        if v > 0:
            rows.append([_r(x), _r(y), 0.9 if v == 2 else 0.1])
        else:
            rows.append([_r(np.clip(px, x0, x1 - 1)), _r(np.clip(py, y0, y1 - 1)), 0.0])
    return rows


class _Writer:
    """Writes the scenes of a split; `finish()` writes what spans the split (JSON label files)."""

    def __init__(self, root: Path, seed: int):
        self.root, self.seed = root, seed

    def aux_rng(self, split: str, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(split.encode("utf-8")), index, 0xFACE])


class _CocoWriter(_Writer):
    """`{split}2017/{id:012d}.jpg`, `annotations/{person_keypoints,instances}_{split}2017.json`, and the reference's
    `boxes_{split}2017.json` face boxes."""

    def split(self, split: str, scenes: Iterable[Scene]) -> None:
        images, kp_anns, inst_anns, boxes = [], [], [], {}
        for index, scene in enumerate(scenes):
            image_id = coco_image_id(split, index)
            file_name = f"{image_id:012d}.jpg"
            _write_bytes(self.root / f"{split}2017" / file_name, _jpeg(scene.image))
            images.append({"license": 1, "file_name": file_name, "coco_url": "", "height": scene.height,
                           "width": scene.width, "date_captured": "2017-01-01 00:00:00", "flickr_url": "",
                           "id": image_id})
            rng = self.aux_rng(split, index)
            face_boxes, face_indices, n_with_kp = [], [], 0
            k = 0
            for o in scene.objects:
                if not o.is_instance:
                    continue
                if o.iscrowd:
                    seg = _uncompressed_rle(o.full_mask(scene.height, scene.width))
                    rle = mask_utils.frPyObjects(seg, scene.height, scene.width)
                else:
                    seg = coco_polygons(o)
                    if not seg:
                        continue
                    rle = mask_utils.merge(mask_utils.frPyObjects(seg, scene.height, scene.width))
                area = float(mask_utils.area(rle))
                if area <= 0:
                    continue
                k += 1
                ann = {"segmentation": seg, "area": _r(area, 1), "iscrowd": int(o.iscrowd), "image_id": image_id,
                       "bbox": [_r(v) for v in mask_utils.toBbox(rle)], "category_id": COCO_CATEGORY_IDS[o.kind],
                       "id": image_id * 100 + k}
                inst_anns.append(ann)
                if COCO_CATEGORY_IDS[o.kind] != 1:
                    continue
                kps = o.keypoints if o.keypoints is not None else np.zeros((17, 3), np.float32)
                nk = int((kps[:, 2] > 0).sum())
                kp_anns.append({**ann, "num_keypoints": nk, "keypoints": [int(v) for v in kps.ravel()]})
                if nk > 0 and not o.iscrowd:
                    if o.face_box is not None:
                        det = _detected_face(o.face_box, rng)
                        if det is not None:
                            face_boxes.append(det[0])
                            face_indices.append(n_with_kp)
                    n_with_kp += 1
            boxes[str(image_id)] = {"boxes": face_boxes, "keypoint_indices": face_indices}
        info = {"description": "avanon synthetic street scenes (COCO format)", "version": str(GENERATOR_VERSION),
                "year": 2017, "contributor": "avanon", "date_created": "2017/01/01"}
        licenses = [{"url": "", "id": 1, "name": "synthetic"}]
        person = dict(COCO_CATEGORIES[0], keypoints=list(COCO_KEYPOINT_NAMES), skeleton=COCO_SKELETON)
        _write_json(self.root / "annotations" / f"person_keypoints_{split}2017.json",
                    {"info": info, "licenses": licenses, "images": images, "annotations": kp_anns,
                     "categories": [person]})
        _write_json(self.root / "annotations" / f"instances_{split}2017.json",
                    {"info": info, "licenses": licenses, "images": images, "annotations": inst_anns,
                     "categories": COCO_CATEGORIES})
        _write_json(self.root / f"boxes_{split}2017.json", boxes)


class _CityscapesWriter(_Writer):
    """`leftImg8bit/{split}/{city}/*_leftImg8bit.png`, gtFine polygons JSON and, from it with cityscapesscripts,
    `_gtFine_instanceIds.png` / `_gtFine_labelIds.png`; `face_boxes_{split}.json` and
    `annotated_keypoints_{split}.json` at the root, keyed by image basename.

    Keypoint rows follow the reference's loader (detectron2 `load_cityscapes_instances`, polygons from JSON): its
    annotations run over the polygons in *reverse* file order (front to back) and include groups, so there is one
    row per 'person' or 'persongroup' polygon, front-most first (rows for groups are all-zero confidence)."""

    def split(self, split: str, scenes: Iterable[Scene]) -> None:
        from cityscapesscripts.helpers.annotation import Annotation
        from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
        from cityscapesscripts.preparation.json2labelImg import createLabelImage

        faces, keypoints = {}, {}
        for index, scene in enumerate(scenes):
            city, stem = cityscapes_stem(split, index)
            basename = f"{stem}_leftImg8bit.png"
            _write_bytes(self.root / "leftImg8bit" / split / city / basename, _png(scene.image))
            gt = self.root / "gtFine" / split / city
            text = json.dumps(scene.cityscapes_json(), indent=4)
            _write_bytes(gt / f"{stem}_gtFine_polygons.json", text.encode("utf-8"))
            annotation = Annotation()
            annotation.fromJsonText(text)
            ids = np.asarray(createInstanceImage(annotation, "ids"), dtype=np.int64)
            if ids.max() > 0xFFFF:
                raise ValueError("instance id does not fit a 16-bit PNG")
            _write_bytes(gt / f"{stem}_gtFine_instanceIds.png", _png(ids.astype(np.uint16)))
            labels = np.asarray(createLabelImage(annotation, "ids"), dtype=np.uint8)
            _write_bytes(gt / f"{stem}_gtFine_labelIds.png", _png(labels))
            rng = self.aux_rng(split, index)
            rows = []
            for o in scene.objects:
                if o.kind == "person" and o.face_box is not None:
                    det = _detected_face(o.face_box, rng)
                    if det is not None:
                        rows.append(det[0] + [det[1]])
            faces[basename] = rows
            keypoints[basename] = [_keypoint_rows(o) for o in reversed(scene.objects) if o.kind in ("person", "crowd")]
        _write_json(self.root / f"face_boxes_{split}.json", faces)
        _write_json(self.root / f"annotated_keypoints_{split}.json", keypoints)


class _BddWriter(_Writer):
    """`images/10k/{split}/{name}.jpg` with the same labels three ways: RGBA bitmasks, the Scalabel RLE JSON and the
    COCO-format JSON; `face_boxes_{split}.json` / `annotated_keypoints_{split}.json` keyed by the COCO-format image
    id. Keypoint rows: one per pedestrian annotation that is neither crowd nor ignored, in annotation order."""

    def split(self, split: str, scenes: Iterable[Scene]) -> None:
        frames, images, anns, faces, keypoints = [], [], [], {}, {}
        ann_id = 0
        for index, scene in enumerate(scenes):
            H, W = scene.height, scene.width
            name = bdd_name(self.seed, split, index)
            image_id = index + 1
            _write_bytes(self.root / "images" / "10k" / split / f"{name}.jpg", _jpeg(scene.image))
            images.append({"file_name": f"{name}.jpg", "height": H, "width": W, "id": image_id})
            bitmask = np.zeros((H, W, 4), np.uint8)
            labels, face_rows, kp_rows = [], [], []
            rng = self.aux_rng(split, index)
            lid = 0
            for o in scene.objects:
                if not o.is_instance:
                    continue
                lid += 1
                category = BDD_CATEGORY_OF[o.kind]
                attributes = {"occluded": bool(o.occluded), "truncated": bool(o.truncated),
                              "crowd": bool(o.iscrowd), "ignored": False}
                full = o.full_mask(H, W)
                flags = (int(o.truncated) << 3) + (int(o.occluded) << 2) + (int(o.iscrowd) << 1)
                bitmask[full] = (BDD_CATEGORIES.index(category) + 1, flags, lid >> 8, lid & 0xFF)
                rle = _compressed_rle(full)
                labels.append({"id": str(lid), "category": category, "attributes": attributes, "rle": rle})
                ann_id += 1
                crle = {"counts": rle["counts"].encode("ascii"), "size": rle["size"]}
                anns.append({"id": ann_id, "image_id": image_id, "category_id": BDD_CATEGORIES.index(category) + 1,
                             "scalabel_id": str(lid), "iscrowd": int(o.iscrowd), "ignore": 0,
                             "bbox": [_r(v) for v in mask_utils.toBbox(crle)], "area": _r(mask_utils.area(crle), 1),
                             "segmentation": rle})
                if o.kind == "person":
                    kp_rows.append(_keypoint_rows(o))
                    if o.face_box is not None:
                        det = _detected_face(o.face_box, rng)
                        if det is not None:
                            face_rows.append(det[0])
            _write_bytes(self.root / "labels" / "ins_seg" / "bitmasks" / split / f"{name}.png", _png(bitmask))
            frames.append({"name": f"{name}.jpg", "labels": labels})
            faces[str(image_id)] = face_rows
            keypoints[str(image_id)] = {"keypoints": kp_rows}
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(BDD_CATEGORIES)]
        _write_json(self.root / "labels" / "ins_seg" / "rles" / f"ins_seg_{split}.json", frames)
        _write_json(self.root / "jsons" / f"ins_seg_{split}_cocofmt.json",
                    {"categories": categories, "images": images, "annotations": anns, "type": "instances"})
        _write_json(self.root / f"face_boxes_{split}.json", faces)
        _write_json(self.root / f"annotated_keypoints_{split}.json", keypoints)


_WRITERS = {"coco": _CocoWriter, "cityscapes": _CityscapesWriter, "bdd100k": _BddWriter}
