"""The one interface every dataset adapter implements.

An adapter turns a dataset root + split into `ImageRecord`s: the image's path relative to the root, its size in
the annotation frame, and every annotated *human* instance (targets and the ones the filters will skip, such as
riders or crowds, so that skips can be counted with a reason). It also lists the files that make up the dataset
tree so that the mirror writer can reproduce it.

Every adapter takes the keyword option `categories`:
- `"human"` (default): human instances only, what anonymization needs;
- `"all"`: every instance category the dataset's instance-segmentation benchmark evaluates (`thing_classes`),
  what training and evaluation need. Group / crowd instances (Cityscapes `*group`, COCO `iscrowd`, BDD100K
  `crowd`) are yielded with `iscrowd=True` so that evaluation can treat them as crowd (ignore) regions.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Optional, Sequence

import numpy as np

from avanon.registry import Registry

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)


CATEGORY_MODES = ("human", "all")


class DatasetError(Exception):
    """A dataset that cannot be read at all (missing root, truncated JSON, unknown split...)."""


@dataclass
class Instance:
    """One annotated instance. `mask` is cropped to `box` (x0, y0, x1, y1; x1/y1 exclusive) to keep records small."""

    instance_id: str
    category: str
    box: tuple[int, int, int, int]
    mask: np.ndarray
    iscrowd: bool = False
    ignore: bool = False
    keypoints: Optional[np.ndarray] = None  # (17, 3) float32, COCO order, image coordinates, v in {0, 1, 2}
    score: float = 1.0

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def num_keypoints(self) -> int:
        if self.keypoints is None:
            return 0
        return int((self.keypoints[:, 2] > 0).sum())

    def full_mask(self, height: int, width: int) -> np.ndarray:
        out = np.zeros((height, width), dtype=bool)
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = self.mask
        return out

    @classmethod
    def from_full_mask(cls, mask: np.ndarray, **kwargs) -> "Instance":
        """Crop a full-image mask to its tight box. An empty mask keeps a zero-size box (the filters skip it)."""
        mask = np.asarray(mask, dtype=bool)
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            return cls(box=(0, 0, 0, 0), mask=np.zeros((0, 0), dtype=bool), **kwargs)
        cols = np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        return cls(box=(x0, y0, x1, y1), mask=np.ascontiguousarray(mask[y0:y1, x0:x1]), **kwargs)


@dataclass
class ImageRecord:
    """One image of the split with its instances, in the frame the annotations were made in."""

    image_id: str
    file_name: str  # relative to the dataset root, POSIX separators
    width: int
    height: int
    instances: list[Instance] = field(default_factory=list)
    # Keys under which external files (face boxes, keypoints) may name this image, most specific first.
    lookup_keys: tuple[str, ...] = ()
    # Annotation problems that make a correct anonymization impossible (e.g. a mask of the wrong size). The writer
    # treats an image with problems as failed: it never enters the mirror in the clear.
    problems: list[str] = field(default_factory=list)


class DatasetAdapter(abc.ABC):
    """A dataset format: one fixed path grammar, written once."""

    name: ClassVar[str]
    # Categories the paper anonymizes; other human categories are yielded and skipped with a reason.
    target_categories: ClassVar[tuple[str, ...]]
    # The classes the dataset's instance-segmentation benchmark evaluates, in the official order; evaluation and
    # training use 1-based positions in this tuple as category ids. A ClassVar for Cityscapes and BDD100K; for
    # COCO an instance property (the annotation JSON's categories in id order). Wrappers such as the synthetic
    # adapter may not define it: use `thing_classes_of(adapter)`.
    thing_classes: ClassVar[tuple[str, ...]]
    # "human" or "all" (see the module docstring), set by the constructors of the format adapters; wrappers may
    # not have it: use `categories_of(adapter)`.
    categories: str

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DatasetError(f"{self.name}: dataset root {self.root} does not exist or is not a directory")

    @abc.abstractmethod
    def images(self) -> Iterator[ImageRecord]:
        """Every image of the split, in a stable order, with its instances."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of images `images()` yields."""

    @abc.abstractmethod
    def tree_files(self) -> Iterator[str]:
        """Every file of the dataset tree the mirror reproduces (relative POSIX paths): images of all splits,
        annotation files, and extra files at the root such as face-box JSONs."""

    def dataset_problems(self) -> list[str]:
        """Problems found while indexing that belong to no image (e.g. an annotation pointing to no image)."""
        return []


ADAPTERS: Registry[type[DatasetAdapter]] = Registry("dataset adapter")


def check_categories(adapter_name: str, categories: str) -> str:
    """Validate the `categories` option of an adapter."""
    if categories not in CATEGORY_MODES:
        raise ValueError(f"{adapter_name}: categories must be one of {CATEGORY_MODES}, got {categories!r}")
    return categories


def innermost_adapter(adapter: DatasetAdapter) -> DatasetAdapter:
    """The adapter that actually reads the files: wrappers (the synthetic adapter) keep theirs in `.inner`."""
    seen = 0
    while getattr(adapter, "inner", None) is not None and seen < 8:
        adapter, seen = adapter.inner, seen + 1
    return adapter


def thing_classes_of(adapter: DatasetAdapter) -> tuple[str, ...]:
    """The evaluated classes of an adapter, looking through wrappers that do not define `thing_classes`."""
    classes = getattr(adapter, "thing_classes", None)
    if classes is None:
        classes = getattr(innermost_adapter(adapter), "thing_classes", None)
    if classes is None:
        raise AttributeError(f"adapter {type(adapter).__name__} defines no thing_classes")
    return tuple(classes)


def categories_of(adapter: DatasetAdapter) -> str:
    """The `categories` mode ("human" | "all") an adapter (or the adapter it wraps) was opened with."""
    return getattr(innermost_adapter(adapter), "categories", "human")


def build_adapter(name: str, root: str | Path, split: str, **options) -> DatasetAdapter:
    return ADAPTERS.get(name)(root, split, **options)


def walk_files(root: Path, subdirs: Sequence[str]) -> Iterator[str]:
    """Sorted relative POSIX paths of all files below the given subdirectories of root (missing ones are skipped)."""
    for sub in subdirs:
        base = root / sub
        if base.is_file():
            yield sub
            continue
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file():
                yield path.relative_to(root).as_posix()
