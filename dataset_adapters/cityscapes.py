"""Cityscapes adapter: human instances (person, rider and their groups) from gtFine, or with `categories="all"`
every instance class the official instance-level evaluation scores (`thing_classes`: the cityscapesscripts labels
with `hasInstances` and not `ignoreInEval`: person, rider, car, truck, bus, train, motorcycle, bicycle; caravan
and trailer are left out as the official evaluation and detectron2 do). A group value (`persongroup`, `cargroup`,
...) is one instance with `iscrowd=True` and the class name without "group".

Instances come from `*_gtFine_instanceIds.png` (default) or from rasterising `*_gtFine_polygons.json` with
cityscapesscripts' own `createInstanceImage`, so both routes decode the same pixel encoding
(`label_id * 1000 + k` per instance, plain `label_id` for groups).
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import id2label, name2label
from cityscapesscripts.helpers.labels import labels as CS_LABELS
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from PIL import Image

from dataset_adapters.base import (
    ADAPTERS, DatasetAdapter, DatasetError, ImageRecord, Instance, check_categories, check_option, walk_files,
)

MASK_SOURCES = ("instance_ids", "polygons")
IMAGE_SUFFIX = "_leftImg8bit.png"
HUMAN_LABEL_IDS = frozenset(label.id for label in id2label.values() if label.category == "human")
# What evalInstanceLevelSemanticLabeling.setInstanceLabels evaluates, in label-id order.
THING_CLASSES = tuple(label.name for label in CS_LABELS if label.hasInstances and not label.ignoreInEval)
THING_LABEL_IDS = frozenset(name2label[name].id for name in THING_CLASSES)
# PIL modes a 16-bit grey PNG opens as (older Pillow versions widen it to 32-bit "I").
_UINT16_MODES = ("I;16", "I;16B", "I;16L", "I")


def instances_from_id_image(ids: np.ndarray, label_ids: frozenset = HUMAN_LABEL_IDS) -> list[Instance]:
    """Instances of the given label ids (default: human) in an instance-id image, in increasing pixel value; a
    group value is one crowd instance."""
    instances = []
    for value in np.unique(ids):
        value = int(value)
        label_id = value // 1000 if value >= 1000 else value
        if label_id not in label_ids:
            continue
        instances.append(Instance.from_full_mask(
            ids == value, instance_id=str(value), category=id2label[label_id].name, iscrowd=value < 1000))
    return instances


def read_instance_ids_png(path: Path, width: int, height: int) -> np.ndarray:
    """The uint16 instance-id image; ValueError with the reason if it is not one of the image's size."""
    with Image.open(path) as im:
        if im.mode not in _UINT16_MODES:
            raise ValueError(f"{path.name} has PIL mode {im.mode}, expected a 16-bit grey PNG")
        if im.size != (width, height):
            raise ValueError(f"{path.name} is {im.size[0]}x{im.size[1]}, the image is {width}x{height} (w x h)")
        ids = np.asarray(im)
    if ids.min() < 0 or ids.max() > 0xFFFF:
        raise ValueError(f"{path.name} has values outside 0..65535")
    return ids


def _known_label(label: str) -> bool:
    """A label createInstanceImage accepts: a label name, or a label name + 'group'."""
    return label in name2label or (label.endswith("group") and label[: -len("group")] in name2label)


def rasterise_polygons(path: Path, width: int, height: int) -> np.ndarray:
    """Instance-id image of a polygons JSON, drawn by cityscapesscripts (file order, later polygons on top)."""
    annotation = Annotation()
    try:
        annotation.fromJsonText(path.read_text())
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{path.name} is not a valid polygons JSON: {type(e).__name__}: {e}") from None
    if (annotation.imgWidth, annotation.imgHeight) != (width, height):
        raise ValueError(f"{path.name} is for a {annotation.imgWidth}x{annotation.imgHeight} image, "
                         f"the image is {width}x{height} (w x h)")
    for obj in annotation.objects:
        # createInstanceImage exits the process on an unknown label, so check first.
        label = getattr(obj, "label", "")
        if not getattr(obj, "deleted", 0) and not _known_label(label):
            raise ValueError(f"{path.name} has an object with the unknown label {label!r}")
        if not hasattr(obj, "polygon"):
            raise ValueError(f"{path.name} has a {type(obj).__name__} object, expected polygons only")
    try:
        return np.asarray(createInstanceImage(annotation, "ids"), dtype=np.int64)
    except Exception as e:  # PIL rejects malformed polygons with assorted exception types
        raise ValueError(f"{path.name}: a polygon cannot be drawn: {type(e).__name__}: {e}") from None


@ADAPTERS.register("cityscapes")
class CityscapesAdapter(DatasetAdapter):
    """`leftImg8bit/{split}/{city}/*_leftImg8bit.png` with gtFine labels; every image of the split is yielded.

    categories: "human" (person, rider and their groups) or "all" (every class in `thing_classes`)."""

    name = "cityscapes"
    target_categories = ("person",)
    human_categories = tuple(sorted(id2label[i].name for i in HUMAN_LABEL_IDS if id2label[i].hasInstances))
    thing_classes = THING_CLASSES

    def __init__(self, root: str | Path, split: str, *, masks: str = "instance_ids", categories: str = "human"):
        super().__init__(root, split)
        check_option("cityscapes", "masks", masks, str, "a string")
        if masks not in MASK_SOURCES:
            raise ValueError(f"cityscapes: masks must be one of {MASK_SOURCES}, got {masks!r}")
        self.masks = masks
        self.categories = check_categories("cityscapes", categories)
        self._label_ids = HUMAN_LABEL_IDS if categories == "human" else THING_LABEL_IDS
        split_dir = self.root / "leftImg8bit" / split
        if not split_dir.is_dir():
            present = sorted(p.name for p in (self.root / "leftImg8bit").glob("*") if p.is_dir())
            raise DatasetError(f"cityscapes: {split_dir} does not exist; splits present: {present or 'none'}")

    @cached_property
    def _image_paths(self) -> list[str]:
        """`leftImg8bit/{split}/{city}/*_leftImg8bit.png`, walked like the tree (symlinks only inside the root)."""
        base = f"leftImg8bit/{self.split}"
        return sorted(rel for rel in walk_files(self.root, [base])
                      if rel.endswith(IMAGE_SUFFIX) and rel.count("/") == base.count("/") + 2)

    def image_index(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(r.file_name, r.lookup_keys) for r in self.bare_records()]

    def __len__(self) -> int:
        return len(self._image_paths)

    def images(self) -> Iterator[ImageRecord]:
        for rel in self._image_paths:
            yield self._record(rel)

    def gt_path(self, rel_image: str, suffix: str = "instanceIds.png") -> Path:
        """The gtFine file `*_gtFine_{suffix}` of an image path relative to the root."""
        return self._gt_path(rel_image, suffix)

    def _gt_path(self, rel_image: str, suffix: str) -> Path:
        city_dir = Path(rel_image).parent.relative_to(Path("leftImg8bit"))
        stem = Path(rel_image).name[: -len(IMAGE_SUFFIX)]
        return self.root / "gtFine" / city_dir / f"{stem}_gtFine_{suffix}"

    def bare_records(self) -> Iterator[ImageRecord]:
        """The records of `images()` with ids and paths only (no size, no instances, nothing decoded): enough for
        `coco_image_ids` and for locating the gtFine files."""
        for rel in self._image_paths:
            yield self._bare_record(rel)

    def _bare_record(self, rel: str) -> ImageRecord:
        basename = Path(rel).name
        return ImageRecord(image_id=basename, file_name=rel, width=0, height=0,
                           lookup_keys=(basename, basename[: -len(IMAGE_SUFFIX)], rel))

    def _record(self, rel: str) -> ImageRecord:
        record = self._bare_record(rel)
        try:
            with Image.open(self.source_path(rel)) as im:
                record.width, record.height = im.size
        except DatasetError:
            raise
        except Exception as e:  # OSError, PIL's DecompressionBombError, ...: this image fails, the run goes on
            record.problems.append(f"cannot read the size of {rel}: {type(e).__name__}: {e}")
            return record
        ids, problem = self._id_image(rel, record.width, record.height)
        if problem:
            record.problems.append(problem)
        else:
            record.instances = instances_from_id_image(ids, self._label_ids)
        return record

    def _id_image(self, rel: str, width: int, height: int) -> tuple[Optional[np.ndarray], Optional[str]]:
        suffix = "instanceIds.png" if self.masks == "instance_ids" else "polygons.json"
        path = self._gt_path(rel, suffix)
        gt_rel = path.relative_to(self.root).as_posix()
        if not path.is_file():
            return None, f"missing gtFine file {gt_rel} for {rel}"
        real = self.source_path(gt_rel)
        try:
            if self.masks == "instance_ids":
                return read_instance_ids_png(real, width, height), None
            return rasterise_polygons(real, width, height), None
        except Exception as e:  # ValueError, OSError, DecompressionBombError...: the image fails, never the run
            return None, f"{gt_rel}: {type(e).__name__}: {e}"

    def tree_files(self) -> Iterator[str]:
        subdirs = ["leftImg8bit", "gtFine", "camera"]
        subdirs += sorted(p.name for p in self.root.glob("*.json") if p.is_file())
        yield from walk_files(self.root, subdirs)
