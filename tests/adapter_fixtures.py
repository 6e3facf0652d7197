"""Writers of tiny datasets in the real COCO / Cityscapes / BDD100K on-disk formats, for the adapter tests.

Masks are made with the official tools where they exist (pycocotools RLE, cityscapesscripts createInstanceImage),
so the tests check our readers against the formats, not against themselves.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from PIL import Image
from pycocotools import mask as mask_utils

W, H = 64, 48


def write_image(path: Path, width: int = W, height: int = H, seed: int = 0) -> Path:
    """A noise image; the format follows the suffix (.jpg or .png)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def box_mask(x0: int, y0: int, x1: int, y1: int, width: int = W, height: int = H) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def rle_of(mask: np.ndarray, compressed: bool = True) -> dict:
    """COCO RLE of a bool mask: compressed (counts string) or uncompressed (counts list, as COCO crowds)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


# ----------------------------------------------------------------------------------------------------------- COCO

COCO_CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 3, "name": "car", "supercategory": "vehicle"}]


def coco_keypoints(seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    kps = np.zeros((17, 3))
    kps[:, 0] = rng.integers(0, W, 17)
    kps[:, 1] = rng.integers(0, H, 17)
    kps[:, 2] = rng.integers(0, 3, 17)
    return kps.flatten().tolist()


def write_coco(root: Path, split: str = "train", images: Sequence[dict] = (), annotations: Sequence[dict] = (),
               categories: Optional[list] = None, annotation: str = "person_keypoints") -> Path:
    """`annotations/{annotation}_{split}2017.json` plus an image file for every image entry."""
    for i, image in enumerate(images):
        write_image(root / f"{split}2017" / image["file_name"], image["width"], image["height"], seed=i)
    data = {"info": {}, "licenses": [], "images": list(images), "annotations": list(annotations),
            "categories": COCO_CATEGORIES if categories is None else categories}
    return write_json(root / "annotations" / f"{annotation}_{split}2017.json", data)


def coco_image(image_id: int, width: int = W, height: int = H) -> dict:
    return {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height}


def coco_ann(ann_id: int, image_id: int, segmentation, category_id: int = 1, iscrowd: int = 0,
             keypoints: Optional[list] = None) -> dict:
    ann = {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": segmentation,
           "iscrowd": iscrowd, "area": 0.0, "bbox": [0, 0, 0, 0]}
    if keypoints is not None:
        ann["keypoints"] = keypoints
        ann["num_keypoints"] = int(sum(v > 0 for v in keypoints[2::3]))
    return ann


def make_coco(root: Path) -> Path:
    """train2017 with three images: polygons + crowd RLE + compressed RLE + a car; an empty one; one small."""
    images = [coco_image(139), coco_image(285), coco_image(632, width=40, height=30)]
    annotations = [
        coco_ann(1001, 139, [[5, 5, 25, 5, 25, 40, 5, 40], [30, 10, 36, 10, 33, 20]], keypoints=coco_keypoints(1)),
        coco_ann(1002, 139, rle_of(box_mask(40, 2, 60, 20), compressed=False), iscrowd=1,
                 keypoints=[0.0] * 51),
        coco_ann(1003, 139, rle_of(box_mask(42, 25, 50, 47)), keypoints=coco_keypoints(2)),
        coco_ann(1004, 139, [[0, 0, 10, 0, 10, 10]], category_id=3),
        coco_ann(1005, 632, [[2, 2, 12, 2, 12, 20, 2, 20]], keypoints=coco_keypoints(3)),
    ]
    return write_coco(root, "train", images, annotations)


# ----------------------------------------------------------------------------------------------------- Cityscapes


def cityscapes_stem(city: str, seq: int, frame: int) -> str:
    return f"{city}_{seq:06d}_{frame:06d}"


def cityscapes_polygons(objects: Sequence[tuple[str, list]], width: int = W, height: int = H) -> dict:
    """A gtFine polygons JSON: objects are (label, [[x, y], ...]) in drawing order."""
    return {"imgHeight": height, "imgWidth": width,
            "objects": [{"label": label, "polygon": polygon} for label, polygon in objects]}


def official_instance_image(polygons: dict) -> np.ndarray:
    """The instance-id image cityscapesscripts draws for a polygons JSON (what *_gtFine_instanceIds.png holds)."""
    annotation = Annotation()
    annotation.fromJsonText(json.dumps(polygons))
    return np.asarray(createInstanceImage(annotation, "ids"), dtype=np.int64)


def write_cityscapes_frame(root: Path, split: str, city: str, seq: int, frame: int, polygons: dict, *,
                           instance_ids: bool = True, polygons_json: bool = True) -> str:
    """leftImg8bit PNG, gtFine polygons JSON and the instanceIds PNG (uint16) made from it; returns the image
    path relative to root."""
    stem = cityscapes_stem(city, seq, frame)
    rel = f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"
    write_image(root / rel, polygons["imgWidth"], polygons["imgHeight"], seed=seq + frame)
    gt = root / "gtFine" / split / city
    if polygons_json:
        write_json(gt / f"{stem}_gtFine_polygons.json", polygons)
    if instance_ids:
        gt.mkdir(parents=True, exist_ok=True)
        ids = official_instance_image(polygons).astype(np.uint16)
        Image.fromarray(ids).save(gt / f"{stem}_gtFine_instanceIds.png")
    return rel


CITYSCAPES_SCENE = cityscapes_polygons([
    ("road", [[0, 30], [63, 30], [63, 47], [0, 47]]),
    ("person", [[2, 5], [12, 5], [12, 40], [2, 40]]),
    ("person", [[8, 10], [20, 10], [20, 44], [8, 44]]),  # overlaps the first person and is drawn over it
    ("rider", [[22, 8], [30, 8], [30, 36], [22, 36]]),
    ("car", [[26, 20], [45, 20], [45, 40], [26, 40]]),  # covers part of the rider
    ("persongroup", [[46, 2], [54, 2], [54, 20], [46, 20]]),
    ("persongroup", [[56, 2], [62, 2], [62, 14], [56, 14]]),
    ("ridergroup", [[46, 30], [60, 30], [60, 46], [46, 46]]),
    ("person", [[3, 12], [6, 12], [6, 14], [3, 14]]),  # wholly behind the next polygon: no pixels left
    ("person", [[1, 11], [7, 11], [7, 20], [1, 20]]),
])


def make_cityscapes(root: Path) -> list[str]:
    """train: two cities (three frames, one empty), val: one frame; plus camera/ and a root face-box JSON."""
    rels = [
        write_cityscapes_frame(root, "train", "zurich", 1, 19, CITYSCAPES_SCENE),
        write_cityscapes_frame(root, "train", "aachen", 0, 19, cityscapes_polygons([
            ("person", [[10, 10], [20, 10], [20, 30], [10, 30]])])),
        write_cityscapes_frame(root, "train", "aachen", 1, 19, cityscapes_polygons([
            ("sky", [[0, 0], [63, 0], [63, 10], [0, 10]])])),
        write_cityscapes_frame(root, "val", "lindau", 0, 19, CITYSCAPES_SCENE),
    ]
    write_json(root / "camera" / "train" / "aachen" / "aachen_000000_000019_camera.json", {"baseline": 0.2})
    write_json(root / "face_boxes_train.json", {})
    return rels


# -------------------------------------------------------------------------------------------------------- BDD100K

BDD_CATEGORIES = ("pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


@dataclass
class BddObject:
    """One labelled object; `mask` is the full-image shape before occlusion by objects listed after it."""

    label_id: str
    category: str
    mask: np.ndarray
    crowd: bool = False
    ignore: bool = False
    occluded: bool = False
    truncated: bool = False


def visible_masks(objects: Sequence[BddObject]) -> list[np.ndarray]:
    """Later objects are drawn over earlier ones, as the BDD100K converters do."""
    taken = np.zeros_like(objects[0].mask) if objects else None
    out = []
    for obj in reversed(objects):
        out.append(obj.mask & ~taken)
        taken = taken | obj.mask
    return out[::-1]


def write_bdd_bitmask(path: Path, objects: Sequence[BddObject], width: int = W, height: int = H) -> Path:
    """RGBA: R category id (1-based), G (truncated<<3)+(occluded<<2)+(crowd<<1)+ignore, B/A instance id 1, 2, ..."""
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    for n, (obj, mask) in enumerate(zip(objects, visible_masks(objects), strict=True), start=1):
        flags = (obj.truncated << 3) + (obj.occluded << 2) + (obj.crowd << 1) + obj.ignore
        pixels[mask] = (BDD_CATEGORIES.index(obj.category) + 1, flags, n >> 8, n & 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)  # (H, W, 4) uint8 -> RGBA
    return path


def bdd_scalabel_frames(scenes: dict[str, list[BddObject]]) -> list[dict]:
    frames = []
    for name, objects in scenes.items():
        labels = [{"id": obj.label_id, "category": obj.category,
                   "attributes": {"crowd": obj.crowd, "ignored": obj.ignore, "occluded": obj.occluded,
                                  "truncated": obj.truncated},
                   "rle": rle_of(mask)}
                  for obj, mask in zip(objects, visible_masks(objects), strict=True)]
        frames.append({"name": name, "labels": labels or None})
    return frames


def bdd_cocofmt(scenes: dict[str, list[BddObject]], width: int = W, height: int = H) -> dict:
    images, annotations = [], []
    for image_id, (name, objects) in enumerate(scenes.items(), start=1):
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for obj, mask in zip(objects, visible_masks(objects), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": BDD_CATEGORIES.index(obj.category) + 1, "iscrowd": int(obj.crowd),
                                "ignore": int(obj.ignore), "segmentation": rle_of(mask), "area": int(mask.sum()),
                                "bbox": [0, 0, 0, 0]})
    categories = [{"id": i, "name": name} for i, name in enumerate(BDD_CATEGORIES, start=1)]
    return {"images": images, "annotations": annotations, "categories": categories, "type": "instances"}


def write_bdd(root: Path, split: str, scenes: dict[str, list[BddObject]],
              formats: Sequence[str] = ("bitmask", "rle", "cocofmt")) -> None:
    """Images `images/10k/{split}/` and the same labels in each of the requested formats."""
    for i, name in enumerate(scenes):
        write_image(root / "images" / "10k" / split / name, seed=i)
    if "bitmask" in formats:
        for name, objects in scenes.items():
            write_bdd_bitmask(root / "labels/ins_seg/bitmasks" / split / (Path(name).stem + ".png"), objects)
    if "rle" in formats:
        write_json(root / "labels/ins_seg/rles" / f"ins_seg_{split}.json", {"frames": bdd_scalabel_frames(scenes)})
    if "cocofmt" in formats:
        write_json(root / "jsons" / f"ins_seg_{split}_cocofmt.json", bdd_cocofmt(scenes))


def bdd_scene() -> dict[str, list[BddObject]]:
    """Three frames: pedestrians (one occluded by a car, one crowd, one ignored), a rider; a car only; empty."""
    return {
        "0a0a0b1a-7c39d841.jpg": [
            BddObject("101", "pedestrian", box_mask(2, 4, 14, 40), occluded=True),
            BddObject("102", "car", box_mask(10, 20, 30, 44)),
            BddObject("103", "rider", box_mask(32, 5, 40, 30), truncated=True),
            BddObject("104", "pedestrian", box_mask(42, 2, 62, 22), crowd=True),
            BddObject("105", "pedestrian", box_mask(44, 26, 52, 46), ignore=True),
        ],
        "0a0b16e2-93f8c456.jpg": [BddObject("201", "car", box_mask(5, 5, 40, 30))],
        "0a1c3a2d-fb8ac2e7.jpg": [],
    }
