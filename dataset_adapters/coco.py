"""COCO adapter: person annotations of `annotations/person_keypoints_{split}2017.json` and images in `{split}2017/`.

`categories="human"` (default) yields the person annotations; `"all"` the annotations of every category of the
JSON. `thing_classes` is an instance property here: the JSON's categories in id order (80 names for
`instances_*.json`, ("person",) for `person_keypoints_*.json`), so the contiguous category ids used by training and
evaluation (1-based positions in it) follow the JSON's id order.

The JSON parsing and mask decoding here are also used by the BDD100K adapter for its COCO-format labels.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Optional

import numpy as np
from pycocotools import mask as mask_utils

from dataset_adapters.base import (
    ADAPTERS, DatasetAdapter, DatasetError, ImageRecord, Instance, check_categories, check_option, check_relative,
    walk_files,
)

ANNOTATION_KINDS = ("person_keypoints", "instances")
_REQUIRED_IMAGE_KEYS = ("id", "file_name", "width", "height")


def load_json(path: Path) -> Any:
    """Read a whole JSON file; anything unreadable becomes a DatasetError that names the file."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"annotation file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON (truncated or corrupt?): {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None


# --------------------------------------------------------------------------------------------------- mask decoding


def compressed_rle_total(counts: bytes) -> int:
    """Sum of the run lengths in a compressed COCO RLE string.

    pycocotools decodes a string whose runs do not cover the image into uninitialised memory without complaint,
    so the total is checked before decoding. Format: runs as 5-bit little-endian groups offset by 48, 0x20 = more
    groups follow, 0x10 in the last group = negative; from the third run on, runs are deltas to the run two back.
    """
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                raise ValueError("compressed RLE string ends in the middle of a run")
            group = counts[pos] - 48
            if not 0 <= group < 64:
                raise ValueError(f"compressed RLE string has an invalid character {chr(counts[pos])!r}")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError("compressed RLE string has a negative run length")
        runs.append(value)
    return sum(runs)


def _check_rle_size(size: Any, height: int, width: int) -> tuple[int, int]:
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) for v in size)):
        raise ValueError(f"RLE 'size' {size!r} is not [height, width]")
    h, w = int(size[0]), int(size[1])
    if (h, w) != (height, width):
        raise ValueError(f"mask size {h}x{w} (h x w) differs from the image size {height}x{width}")
    return h, w


def _decode_rle(segm: dict, height: int, width: int) -> np.ndarray:
    h, w = _check_rle_size(segm.get("size"), height, width)
    counts = segm.get("counts")
    if isinstance(counts, str):
        if not counts.isascii():
            raise ValueError("compressed RLE string has non-ASCII characters")
        counts = counts.encode("ascii")
    if isinstance(counts, bytes):
        total = compressed_rle_total(counts)
        if total != h * w:
            raise ValueError(f"compressed RLE covers {total} pixels, the {h}x{w} mask has {h * w}")
        rle = {"size": [h, w], "counts": counts}
    elif isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
            raise ValueError("uncompressed RLE counts must be non-negative integers")
        if sum(counts) != h * w:
            raise ValueError(f"uncompressed RLE covers {sum(counts)} pixels, the {h}x{w} mask has {h * w}")
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": [int(c) for c in counts]}, h, w)
    else:
        raise ValueError(f"RLE 'counts' of type {type(counts).__name__} is neither a string nor a list")
    return mask_utils.decode(rle)


def _decode_polygons(polygons: list, height: int, width: int) -> np.ndarray:
    """Rasterise like `COCO.annToMask`. Parts with fewer than 3 points are dropped: pycocotools would read a
    4-number part as a box, and such parts enclose no area anyway."""
    if not polygons:
        raise ValueError("segmentation is an empty list")
    kept = []
    for part in polygons:
        if not isinstance(part, list) or not all(_is_number(v) for v in part):
            raise ValueError("a polygon is not a list of numbers")
        if len(part) % 2:
            raise ValueError(f"a polygon has an odd number of coordinates ({len(part)})")
        if len(part) >= 6:
            kept.append([float(v) for v in part])
    if not kept:
        return np.zeros((height, width), dtype=np.uint8)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(kept, height, width)))


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """COCO segmentation (polygons, uncompressed or compressed RLE) -> bool mask of the image's size.

    Raises ValueError with a readable reason when the segmentation is malformed or has another size."""
    if isinstance(segm, list):
        mask = _decode_polygons(segm, height, width)
    elif isinstance(segm, dict):
        mask = _decode_rle(segm, height, width)
    else:
        raise ValueError(f"segmentation of type {type(segm).__name__} is neither polygons nor RLE")
    if mask.shape != (height, width):
        raise ValueError(f"decoded mask is {mask.shape[0]}x{mask.shape[1]}, the image is {height}x{width}")
    return mask.astype(bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ------------------------------------------------------------------------------------------------- JSON indexing


@dataclass
class CocoIndex:
    """What the adapters need from a COCO-format JSON: images, and only the wanted annotations, by image id."""

    images: list[dict]  # sorted by file_name
    category_names: dict[Any, str]  # wanted category id -> name
    all_categories: list[tuple[Any, str]] = field(default_factory=list)  # every (id, name) of the JSON, by id
    anns_by_image: dict[Any, list[dict]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _entry_error(path: Path, what: str, problem: str) -> DatasetError:
    return DatasetError(f"{path}: {what}: {problem}. Annotations must attach to exactly one image and category; "
                        "avanon refuses the dataset rather than guess (fix the file, then re-run)")


def _check_flag(ann: dict, key: str, path: Path, what: str) -> None:
    """iscrowd / ignore: 0, 1, true or false. A string such as "0" is truthy in Python and would silently turn
    a person into a crowd that is never anonymized."""
    if key in ann and not (ann[key] in (0, 1) and isinstance(ann[key], (int, bool))):
        raise _entry_error(path, what, f"{key} must be 0 or 1, got {ann[key]!r}")


def _check_image_entry(image: Any, i: int, path: Path) -> None:
    what = f"images[{i}]"
    if not isinstance(image, dict):
        raise _entry_error(path, what, "is not an object")
    missing = [k for k in _REQUIRED_IMAGE_KEYS if k not in image]
    if missing:
        raise DatasetError(f"{path}: image entry #{i} lacks {', '.join(missing)}")
    if not _is_int(image["id"]):
        raise _entry_error(path, what, f"id must be an integer, got {image['id']!r}")
    for key in ("width", "height"):
        if not _is_int(image[key]) or image[key] <= 0:
            raise _entry_error(path, f"{what} (id {image['id']})", f"{key} must be a positive integer, "
                               f"got {image[key]!r}")
    check_relative(image["file_name"], f"{path.name}: {what} (id {image['id']}): file_name")


def index_coco_json(data: Any, path: Path, wanted: Optional[Iterable[str]]) -> CocoIndex:
    """Keep the images and the annotations of the wanted category names (None: every category); the rest of the
    (large) JSON is dropped.

    The schema is strict: integer ids, unique image ids and file names, positive integer sizes, plain relative
    file names, and every annotation (of any category) attached to a listed image and category with 0/1 flags.
    Anything else is a DatasetError naming the entry: an annotation that does not attach would leave its person
    in the clear."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path} is not a COCO annotation file: no 'images' list")
    raw_categories = data.get("categories") or []
    if not isinstance(raw_categories, list):
        raise DatasetError(f"{path}: 'categories' must be a list")
    categories: dict[int, str] = {}
    for i, c in enumerate(raw_categories):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise _entry_error(path, f"categories[{i}]", "needs an integer id and a string name")
        if c["id"] in categories:
            raise _entry_error(path, f"categories[{i}]", f"category id {c['id']} is listed twice")
        categories[c["id"]] = c["name"]
    wanted = None if wanted is None else set(wanted)
    category_names = {cid: name for cid, name in categories.items() if wanted is None or name in wanted}
    if not category_names:
        found = sorted(categories.values())
        looked = "any category" if wanted is None else f"a category named {' or '.join(sorted(wanted))}"
        raise DatasetError(f"{path} has no {looked}; categories: {found}")
    all_categories = sorted(categories.items())
    images: dict[int, dict] = {}
    names: dict[str, int] = {}
    for i, image in enumerate(data["images"]):
        _check_image_entry(image, i, path)
        if image["id"] in images:
            raise _entry_error(path, f"images[{i}]", f"image id {image['id']} is listed twice")
        if image["file_name"] in names:
            raise _entry_error(path, f"images[{i}]", f"file_name {image['file_name']!r} is listed twice (ids "
                               f"{names[image['file_name']]} and {image['id']})")
        images[image["id"]] = image
        names[image["file_name"]] = image["id"]
    index = CocoIndex(images=sorted(images.values(), key=lambda im: im["file_name"]),
                      category_names=category_names, all_categories=all_categories)
    annotations = data.get("annotations") or []
    if not isinstance(annotations, list):
        raise DatasetError(f"{path}: 'annotations' must be a list")
    ann_ids: set[int] = set()
    for i, ann in enumerate(annotations):
        what = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise _entry_error(path, what, "is not an object")
        if not _is_int(ann.get("id")):
            raise _entry_error(path, what, f"id must be an integer, got {ann.get('id')!r}")
        what = f"annotation {ann['id']}"
        if ann["id"] in ann_ids:
            raise _entry_error(path, what, "annotation id is used twice")
        ann_ids.add(ann["id"])
        if not _is_int(ann.get("image_id")) or ann["image_id"] not in images:
            raise _entry_error(path, what, f"image_id {ann.get('image_id')!r} is not the integer id of an image "
                               "listed in the file")
        if not _is_int(ann.get("category_id")) or ann["category_id"] not in categories:
            raise _entry_error(path, what, f"category_id {ann.get('category_id')!r} is not the integer id of a "
                               "category listed in the file")
        _check_flag(ann, "iscrowd", path, what)
        _check_flag(ann, "ignore", path, what)
        if ann["category_id"] in category_names:
            index.anns_by_image.setdefault(ann["image_id"], []).append(ann)
    return index


def keypoints_of(ann: dict) -> Optional[np.ndarray]:
    """(17, 3) float32 keypoints of an annotation, None when it has none; ValueError when malformed."""
    values = ann.get("keypoints")
    if values is None:
        return None
    try:
        kps = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError("keypoints are not numbers") from None
    if kps.size != 51:
        raise ValueError(f"{kps.size} keypoint values, expected 17 x 3 = 51")
    return kps.reshape(17, 3)


def instance_from_coco(ann: dict, category: str, height: int, width: int) -> Instance:
    """One COCO-format annotation -> Instance; ValueError with the reason when it cannot be decoded."""
    if "segmentation" not in ann:
        raise ValueError("has no segmentation")
    mask = decode_segmentation(ann["segmentation"], height, width)
    return Instance.from_full_mask(
        mask, instance_id=str(ann.get("id")), category=category, iscrowd=bool(ann.get("iscrowd", 0)),
        ignore=bool(ann.get("ignore", 0)), keypoints=keypoints_of(ann))


def instances_of_image(anns: list[dict], category_names: dict, height: int, width: int
                       ) -> tuple[list[Instance], list[str]]:
    """Decode the annotations of one image in JSON order (the order the reference's per-image lists follow)."""
    instances, problems = [], []
    for ann in anns:
        try:
            instances.append(instance_from_coco(ann, category_names[ann["category_id"]], height, width))
        except ValueError as e:
            problems.append(f"annotation {ann.get('id')}: {e}")
    return instances, problems


# ------------------------------------------------------------------------------------------------------- adapter


def _relative(path: Any, option: str) -> str:
    """Options name paths inside the dataset root, so that the mirror can reproduce them."""
    check_option("coco", option, path, str, "a path relative to the dataset root")
    return check_relative(path.rstrip("/"), f"coco: dataset.options.{option}")


@ADAPTERS.register("coco")
class CocoAdapter(DatasetAdapter):
    """COCO 2017 layout. Every image of the JSON is yielded, with its person annotations (crowds included), or
    with `categories="all"` the annotations of every category."""

    name = "coco"
    target_categories = ("person",)
    human_categories = ("person",)

    def __init__(self, root: str | Path, split: str, *, annotation: str = "person_keypoints",
                 annotation_file: Optional[str] = None, images_dir: Optional[str] = None, categories: str = "human"):
        super().__init__(root, split)
        check_option("coco", "annotation", annotation, str, "a string")
        if annotation not in ANNOTATION_KINDS:
            raise ValueError(f"coco: annotation must be one of {ANNOTATION_KINDS}, got {annotation!r}")
        self.categories = check_categories("coco", categories)
        self.annotation_file = _relative(annotation_file or f"annotations/{annotation}_{split}2017.json",
                                         "annotation_file")
        self.images_dir = _relative(images_dir or f"{split}2017", "images_dir")
        self.annotation_path = self.root / self.annotation_file
        if not self.annotation_path.is_file():
            raise DatasetError(f"coco: annotation file {self.annotation_path} does not exist")

    @cached_property
    def _index(self) -> CocoIndex:
        wanted = self.target_categories if self.categories == "human" else None
        return index_coco_json(load_json(self.source_path(self.annotation_file)), self.annotation_path, wanted)

    @property
    def thing_classes(self) -> tuple[str, ...]:
        """The JSON's category names in id order (reads the JSON on first use)."""
        names = tuple(name for _, name in self._index.all_categories)
        if len(set(names)) != len(names):
            raise DatasetError(f"{self.annotation_path} has two categories with the same name: {list(names)}")
        return names

    @property
    def category_json_ids(self) -> tuple:
        """The JSON's category ids in the order of `thing_classes` (for mapping back to the original ids)."""
        return tuple(cid for cid, _ in self._index.all_categories)

    def __len__(self) -> int:
        return len(self._index.images)

    def images(self) -> Iterator[ImageRecord]:
        index = self._index
        for image in index.images:
            yield self._record(image, index)

    def image_index(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(f"{self.images_dir}/{im['file_name']}", self._keys(im)) for im in self._index.images]

    @staticmethod
    def _keys(image: dict) -> tuple[str, ...]:
        return str(image["id"]), image["file_name"], PurePosixPath(image["file_name"]).stem

    def _record(self, image: dict, index: CocoIndex) -> ImageRecord:
        file_name = image["file_name"]
        height, width = image["height"], image["width"]
        instances, problems = instances_of_image(index.anns_by_image.get(image["id"], []), index.category_names,
                                                 height, width)
        return ImageRecord(
            image_id=str(image["id"]), file_name=f"{self.images_dir}/{file_name}", width=width, height=height,
            instances=instances, lookup_keys=self._keys(image), problems=problems)

    def dataset_problems(self) -> list[str]:
        return list(self._index.problems)

    def tree_files(self) -> Iterator[str]:
        subdirs = {"annotations", self.images_dir, self.annotation_file}
        subdirs.update(p.name for p in self.root.glob("*2017") if p.is_dir())
        subdirs.update(p.name for p in self.root.glob("*.json") if p.is_file())
        yield from sorted(set(walk_files(self.root, sorted(subdirs))))
