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
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Iterator, Optional, Sequence

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
    """A dataset that cannot be read at all (missing root, truncated JSON, unknown split, a path that leaves the
    root, an annotation that does not attach to an image...)."""


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

    def content_hash(self) -> str:
        """sha256 of everything the annotations say about this image (size, instances, masks, keypoints,
        problems): a resumed run redoes an image whose record changed, e.g. people added to its annotation."""
        h = hashlib.sha256()
        h.update(repr((self.image_id, self.file_name, self.width, self.height, self.problems)).encode())
        for inst in self.instances:
            mask = np.ascontiguousarray(inst.mask, dtype=bool)
            h.update(repr((inst.instance_id, inst.category, tuple(int(v) for v in inst.box), inst.iscrowd,
                           inst.ignore, float(inst.score), mask.shape)).encode())
            h.update(np.packbits(mask).tobytes())
            if inst.keypoints is not None:
                h.update(np.ascontiguousarray(inst.keypoints, dtype=np.float32).tobytes())
        return h.hexdigest()


class DatasetAdapter(abc.ABC):
    """A dataset format: one fixed path grammar, written once."""

    name: ClassVar[str]
    # Categories the paper anonymizes; other human categories are yielded and skipped with a reason.
    target_categories: ClassVar[tuple[str, ...]]
    # Every human category the adapter yields in "human" mode: what `filters.categories` may name.
    human_categories: ClassVar[tuple[str, ...]]
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
        """Problems found while indexing that belong to no image and do not endanger privacy (e.g. a label
        file for an image that is not on disk)."""
        return []

    def image_index(self) -> list[tuple[str, tuple[str, ...]]]:
        """(file_name, lookup_keys) of every image, in `images()` order, decoding no mask: cheap enough to
        fingerprint the split and to check that a face-box file covers it. Adapters override the default."""
        return [(r.file_name, r.lookup_keys) for r in self.images()]

    def source_path(self, rel: str) -> Path:
        """The real path of a file of this dataset; DatasetError when it would be outside the root."""
        return resolve_inside(self.root, rel, f"{self.name}: ")


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
    """The adapter `name` on root/split. Bad options (unknown key, wrong type or value) are a DatasetError that
    names the option, never a traceback."""
    import inspect

    try:
        cls = ADAPTERS.get(name)
    except KeyError as exc:
        raise DatasetError(str(exc.args[0])) from None
    if not isinstance(split, str) or not split or not split.replace("-", "").replace("_", "").isalnum():
        raise DatasetError(f"{name}: split must be a word such as train or val, got {split!r}")
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        allowed = [n for n in params if n not in ("self", "root", "split")]
        for key in options:
            if key not in allowed:
                raise DatasetError(f"{name}: dataset.options.{key}: unknown option; allowed: "
                                   f"{', '.join(allowed) or '(none)'}")
    try:
        return cls(root, split, **options)
    except (TypeError, ValueError) as exc:
        msg = str(exc) if str(exc).startswith(f"{name}:") else f"{name}: {exc}"
        raise DatasetError(f"dataset.options: {msg}") from None


def check_option(adapter_name: str, key: str, value: Any, kind: type, what: str) -> Any:
    """An adapter option of exactly this type (no coercion: 5 is not the path "5", "3" is not the number 3)."""
    if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise DatasetError(f"{adapter_name}: dataset.options.{key}: expected {what}, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------- paths
def check_relative(rel: Any, what: str = "path") -> str:
    """A relative POSIX path that cannot leave its base by its spelling: no '..', '.', empty parts, absolute
    paths, backslashes or NUL. Every path an annotation file names goes through here."""
    ok = isinstance(rel, str) and rel and "\\" not in rel and "\x00" not in rel and not rel.startswith("/")
    if ok:
        parts = rel.split("/")
        ok = all(part not in ("", ".", "..") for part in parts)
    if not ok:
        raise DatasetError(f"{what} {rel!r} is not a plain relative path inside the dataset (no '..', no "
                           "absolute path, no backslash): refusing to read or write outside the dataset root")
    return rel


def resolve_inside(root: Path, rel: str, context: str = "") -> Path:
    """root/rel with every symlink followed; DatasetError unless the result stays inside the (real) root."""
    check_relative(rel, f"{context}path")
    real_root = Path(os.path.realpath(root))
    target = Path(os.path.realpath(Path(root) / rel))
    if not target.is_relative_to(real_root):
        raise DatasetError(f"{context}{rel} resolves to {target}, outside the dataset root {real_root}: avanon "
                           "reads only inside the root (symlinks are followed only when they stay inside it); "
                           "copy the file in or point the dataset root at the real location")
    return target


def walk_files(root: Path, subdirs: Sequence[str]) -> Iterator[str]:
    """Sorted relative POSIX paths of all files below the given subdirectories of root (missing ones are skipped).

    Symlinks are followed while they stay inside the root; one that leads outside it, a broken one or a loop is a
    DatasetError: the mirror must reproduce the tree without reading (or writing) anything outside it."""
    real_root = Path(os.path.realpath(root))
    for sub in subdirs:
        check_relative(sub, "dataset subdirectory")
        base = Path(root) / sub
        if not os.path.lexists(base):
            continue
        real = resolve_inside(root, sub)
        if real.is_file():
            yield sub
        elif real.is_dir():
            yield from _walk(real_root, sub, real, frozenset())
        else:
            raise DatasetError(f"{sub}: a broken symlink or a special file in the dataset tree")


def _walk(real_root: Path, rel: str, real: Path, seen: frozenset) -> Iterator[str]:
    if real in seen:
        raise DatasetError(f"{rel}: a symlink loop in the dataset tree")
    seen = seen | {real}
    with os.scandir(real) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        child = f"{rel}/{entry.name}"
        if entry.is_symlink():
            target = Path(os.path.realpath(entry.path))
            if not target.is_relative_to(real_root):
                raise DatasetError(f"{child} is a symlink to {target}, outside the dataset root {real_root}: "
                                   "avanon reads only inside the root; copy the files in or point the dataset "
                                   "root at the real location")
            if target.is_dir():
                yield from _walk(real_root, child, target, seen)
            elif target.is_file():
                yield child
            else:
                raise DatasetError(f"{child} is a broken symlink (to {target})")
        elif entry.is_dir(follow_symlinks=False):
            yield from _walk(real_root, child, real / entry.name, seen)
        elif entry.is_file(follow_symlinks=False):
            yield child


def is_posix_child(rel: str, directory: str) -> bool:
    """True when rel is a direct child of directory (both relative POSIX paths)."""
    return str(PurePosixPath(rel).parent) == directory
