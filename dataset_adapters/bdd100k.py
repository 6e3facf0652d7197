"""BDD100K instance-segmentation adapter (10k subset): images `images/10k/{split}/*.jpg` with labels from
bitmask PNGs, the Scalabel RLE JSON or the COCO-format JSON the reference used.

Records follow the images on disk, so an image that the label source does not cover is reported as a problem
instead of silently passing through un-anonymized.

`categories="human"` (default) yields pedestrians and riders; `"all"` every ins_seg class (`thing_classes`, the
BDD100K ins_seg config order: pedestrian, rider, car, truck, bus, train, motorcycle, bicycle). The `crowd` and
`ignored` attributes become `iscrowd` / `ignore`; evaluation treats both as crowd (ignore) regions.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Optional

import numpy as np
from PIL import Image

from dataset_adapters.base import (
    ADAPTERS, DatasetAdapter, DatasetError, ImageRecord, Instance, check_categories, check_option, is_posix_child,
    walk_files,
)
from dataset_adapters.coco import CocoIndex, decode_segmentation, index_coco_json, instances_of_image, load_json

LABEL_SOURCES = ("auto", "bitmask", "rle", "cocofmt")
# BDD100K ins_seg leaf categories in config order; the bitmask R channel holds the position + 1.
INS_SEG_CATEGORIES = ("pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
HUMAN_CATEGORIES = ("pedestrian", "rider")
_HUMAN_IDS = tuple(INS_SEG_CATEGORIES.index(name) + 1 for name in HUMAN_CATEGORIES)
_ALL_IDS = tuple(range(1, len(INS_SEG_CATEGORIES) + 1))


def instances_from_bitmask(path: Path, width: int, height: int, category_ids: tuple = _HUMAN_IDS) -> list[Instance]:
    """Instances of the given category ids (default: human) of an RGBA bitmask: R category, G flags,
    (B << 8) + A instance id (0 = background)."""
    with Image.open(path) as im:
        if im.mode != "RGBA":
            raise ValueError(f"{path.name} has PIL mode {im.mode}, expected RGBA")
        if im.size != (width, height):
            raise ValueError(f"{path.name} is {im.size[0]}x{im.size[1]}, the image is {width}x{height} (w x h)")
        pixels = np.asarray(im)
    category, flags = pixels[..., 0], pixels[..., 1]
    ids = (pixels[..., 2].astype(np.int32) << 8) | pixels[..., 3]
    unknown = np.unique(category[(ids > 0) & ((category < 1) | (category > len(INS_SEG_CATEGORIES)))])
    if unknown.size:
        raise ValueError(f"{path.name}: instance pixels with unknown category values {unknown.tolist()} "
                         f"(known: 1..{len(INS_SEG_CATEGORIES)})")
    human_ids = np.unique(ids[np.isin(category, category_ids) & (ids > 0)])
    instances = []
    for iid in human_ids:
        mask = ids == iid
        cats, attrs = np.unique(category[mask]), np.unique(flags[mask])
        if cats.size != 1 or attrs.size != 1:
            raise ValueError(f"{path.name}: instance {iid} has pixels with different categories or flags")
        instances.append(Instance.from_full_mask(
            mask, instance_id=str(int(iid)), category=INS_SEG_CATEGORIES[int(cats[0]) - 1],
            iscrowd=bool(attrs[0] & 2), ignore=bool(attrs[0] & 1)))
    return instances


def instance_from_scalabel(label: dict, height: int, width: int) -> Instance:
    """One Scalabel label with an `rle` -> Instance; ValueError when it cannot be decoded."""
    rle = label.get("rle")
    if not isinstance(rle, dict):
        raise ValueError("has no 'rle' object")
    attributes = label.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ValueError("'attributes' is not an object")
    # Scalabel writes 'ignored'; accept 'ignore' too, as hand-made files use it.
    ignore = attributes.get("ignored", attributes.get("ignore", False))
    crowd = attributes.get("crowd", False)
    for key, value in (("crowd", crowd), ("ignored", ignore)):
        if not isinstance(value, bool):  # "false" is truthy: a person would be skipped as a crowd
            raise ValueError(f"attribute {key} must be true or false, got {value!r}")
    return Instance.from_full_mask(
        decode_segmentation(rle, height, width), instance_id=str(label["id"]), category=label["category"],
        iscrowd=crowd, ignore=ignore)


def index_scalabel_frames(data: Any, path: Path, wanted: tuple = HUMAN_CATEGORIES
                          ) -> tuple[dict[str, list[dict]], list[str]]:
    """Labels of the wanted categories (default: human) by image file name, plus problems that belong to no image.

    Strict: a frame listed twice, a label that is not an object, has no id, repeats an id in its frame, or names a
    category outside the ins_seg classes is a DatasetError (a dropped label would leave its person in the clear)."""
    frames = data.get("frames") if isinstance(data, dict) else data
    if not isinstance(frames, list):
        raise DatasetError(f"{path} is not a Scalabel label file: expected a list of frames or {{'frames': [...]}}")
    by_name: dict[str, list[dict]] = {}
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict) or not isinstance(frame.get("name"), str):
            raise DatasetError(f"{path}: frame #{i} has no 'name'")
        name = PurePosixPath(frame["name"]).name
        if name in by_name:
            raise DatasetError(f"{path}: frame {name} is listed more than once; refusing to guess which labels "
                               "hold (merge the entries)")
        labels = frame.get("labels") or []
        if not isinstance(labels, list):
            raise DatasetError(f"{path}: frame {name}: 'labels' is not a list")
        ids = set()
        for j, lab in enumerate(labels):
            where = f"{path}: frame {name}: labels[{j}]"
            if not isinstance(lab, dict):
                raise DatasetError(f"{where} is not an object")
            if lab.get("category") not in INS_SEG_CATEGORIES:
                raise DatasetError(f"{where}: unknown category {lab.get('category')!r}; known: "
                                   f"{', '.join(INS_SEG_CATEGORIES)} (older BDD100K label files call pedestrians "
                                   "'person': convert them with the bdd100k toolkit's to_scalabel first)")
            if not isinstance(lab.get("id"), (str, int)) or isinstance(lab.get("id"), bool) or lab["id"] in ids:
                raise DatasetError(f"{where}: id {lab.get('id')!r} is missing, not a string or repeated in the frame")
            ids.add(lab["id"])
        by_name[name] = [lab for lab in labels if lab["category"] in wanted]
    return by_name, []


@ADAPTERS.register("bdd100k")
class Bdd100kAdapter(DatasetAdapter):
    """BDD100K 10k images; `labels` picks the label source ('auto': bitmask, then rle, then cocofmt);
    `categories` "human" (pedestrian, rider) or "all" (every class in `thing_classes`)."""

    name = "bdd100k"
    target_categories = ("pedestrian",)
    human_categories = HUMAN_CATEGORIES
    thing_classes = INS_SEG_CATEGORIES

    def __init__(self, root: str | Path, split: str, *, labels: str = "auto", categories: str = "human"):
        super().__init__(root, split)
        check_option("bdd100k", "labels", labels, str, "a string")
        if labels not in LABEL_SOURCES:
            raise ValueError(f"bdd100k: labels must be one of {LABEL_SOURCES}, got {labels!r}")
        self.categories = check_categories("bdd100k", categories)
        self._wanted = HUMAN_CATEGORIES if categories == "human" else INS_SEG_CATEGORIES
        self._category_ids = _HUMAN_IDS if categories == "human" else _ALL_IDS
        self.image_dir = f"images/10k/{split}"
        if not (self.root / self.image_dir).is_dir():
            raise DatasetError(f"bdd100k: image directory {self.root / self.image_dir} does not exist")
        self.sources = {
            "bitmask": f"labels/ins_seg/bitmasks/{split}",
            "rle": f"labels/ins_seg/rles/ins_seg_{split}.json",
            "cocofmt": f"jsons/ins_seg_{split}_cocofmt.json",
        }
        self.labels = self._resolve_source(labels)
        self.label_path = self.root / self.sources[self.labels]

    def _resolve_source(self, labels: str) -> str:
        exists = {"bitmask": Path.is_dir, "rle": Path.is_file, "cocofmt": Path.is_file}
        candidates = list(self.sources) if labels == "auto" else [labels]
        for source in candidates:
            if exists[source](self.root / self.sources[source]):
                return source
        looked = ", ".join(str(self.root / self.sources[s]) for s in candidates)
        raise DatasetError(f"bdd100k: no {labels} instance-segmentation labels for split {self.split!r}; "
                           f"looked for {looked}")

    # ------------------------------------------------------------------------------------------- indexes

    @cached_property
    def _image_names(self) -> list[str]:
        """`images/10k/{split}/*.jpg`, walked like the tree (symlinks only inside the root)."""
        return sorted(PurePosixPath(rel).name for rel in walk_files(self.root, [self.image_dir])
                      if rel.endswith(".jpg") and is_posix_child(rel, self.image_dir))

    def image_index(self) -> list[tuple[str, tuple[str, ...]]]:
        cocofmt, _ = self._optional_cocofmt()
        return [(f"{self.image_dir}/{name}", self._keys(name, cocofmt)) for name in self._image_names]

    @staticmethod
    def _keys(name: str, cocofmt) -> tuple[str, ...]:
        coco_image = cocofmt[1].get(name) if cocofmt else None
        return ((str(coco_image["id"]),) if coco_image else ()) + (name, PurePosixPath(name).stem)

    @cached_property
    def _cocofmt(self) -> Optional[tuple[CocoIndex, dict[str, dict]]]:
        """The COCO-format JSON (labels in cocofmt mode, image ids for lookup keys in every mode), if present."""
        path = self.root / self.sources["cocofmt"]
        if not path.is_file():
            return None
        index = index_coco_json(load_json(self.source_path(self.sources["cocofmt"])), path, self._wanted)
        return index, {PurePosixPath(str(im["file_name"])).name: im for im in index.images}

    @cached_property
    def _scalabel(self) -> tuple[dict[str, list[dict]], list[str]]:
        return index_scalabel_frames(load_json(self.source_path(self.sources["rle"])), self.label_path, self._wanted)

    def _labelled_names(self) -> list[str]:
        if self.labels == "bitmask":
            return [p.stem + ".jpg" for p in self.label_path.glob("*.png")]
        if self.labels == "rle":
            return list(self._scalabel[0])
        return list(self._cocofmt[1])

    def _optional_cocofmt(self) -> tuple[Optional[tuple[CocoIndex, dict[str, dict]]], list[str]]:
        """Outside cocofmt mode a broken COCO-format file only costs the numeric lookup keys."""
        if self.labels == "cocofmt":
            return self._cocofmt, []
        try:
            return self._cocofmt, []
        except DatasetError as e:
            return None, [f"image ids unavailable: {e}"]

    # ----------------------------------------------------------------------------------------- interface

    def __len__(self) -> int:
        return len(self._image_names)

    def images(self) -> Iterator[ImageRecord]:
        cocofmt, _ = self._optional_cocofmt()
        for name in self._image_names:
            yield self._record(name, cocofmt)

    def dataset_problems(self) -> list[str]:
        cocofmt, problems = self._optional_cocofmt()
        if self.labels == "rle":
            problems += self._scalabel[1]
        if self.labels == "cocofmt":
            problems += cocofmt[0].problems
        on_disk = set(self._image_names)
        problems += [f"{self.sources[self.labels]} has labels for {name}, which is not in {self.image_dir}"
                     for name in sorted(set(self._labelled_names()) - on_disk)]
        return problems

    def tree_files(self) -> Iterator[str]:
        subdirs = ["images/10k", "labels/ins_seg"]
        subdirs += sorted(f"jsons/{p.name}" for p in (self.root / "jsons").glob("ins_seg*") if p.is_file())
        subdirs += sorted(p.name for p in self.root.glob("*.json") if p.is_file())
        yield from walk_files(self.root, subdirs)

    # ---------------------------------------------------------------------------------------- per image

    def _record(self, name: str, cocofmt: Optional[tuple[CocoIndex, dict[str, dict]]]) -> ImageRecord:
        rel = f"{self.image_dir}/{name}"
        record = ImageRecord(image_id=name, file_name=rel, width=0, height=0, lookup_keys=self._keys(name, cocofmt))
        try:
            with Image.open(self.source_path(rel)) as im:
                record.width, record.height = im.size
        except DatasetError:
            raise
        except Exception as e:  # OSError, PIL's DecompressionBombError, ...: this image fails, the run goes on
            record.problems.append(f"cannot read the size of {rel}: {type(e).__name__}: {e}")
            return record
        try:
            record.instances, record.problems = self._decode(name, record.width, record.height, cocofmt)
        except DatasetError:
            raise
        except Exception as e:  # ValueError, OSError, DecompressionBombError...: the image fails, never the run
            record.problems.append(f"{type(e).__name__}: {e}")
        return record

    def _decode(self, name: str, width: int, height: int, cocofmt) -> tuple[list[Instance], list[str]]:
        if self.labels == "bitmask":
            path = self.label_path / f"{PurePosixPath(name).stem}.png"
            if not path.is_file():
                return [], [f"missing bitmask {self.sources['bitmask']}/{path.name} for {name}"]
            real = self.source_path(f"{self.sources['bitmask']}/{path.name}")
            return instances_from_bitmask(real, width, height, self._category_ids), []
        if self.labels == "rle":
            return self._decode_scalabel(name, width, height)
        return self._decode_cocofmt(name, width, height, cocofmt)

    def _decode_scalabel(self, name: str, width: int, height: int) -> tuple[list[Instance], list[str]]:
        labels = self._scalabel[0].get(name)
        if labels is None:
            return [], [f"{self.sources['rle']} has no frame for {name}"]
        instances, problems = [], []
        for label in labels:
            try:
                instances.append(instance_from_scalabel(label, height, width))
            except ValueError as e:
                problems.append(f"label {label.get('id')}: {e}")
        return instances, problems

    def _decode_cocofmt(self, name: str, width: int, height: int, cocofmt) -> tuple[list[Instance], list[str]]:
        index, by_name = cocofmt
        image = by_name.get(name)
        if image is None:
            return [], [f"{self.sources['cocofmt']} has no image entry for {name}"]
        if (image["width"], image["height"]) != (width, height):
            return [], [f"{self.sources['cocofmt']} says {name} is {image['width']}x{image['height']}, "
                        f"the file is {width}x{height} (w x h)"]
        return instances_of_image(index.anns_by_image.get(image["id"], []), index.category_names, height, width)
