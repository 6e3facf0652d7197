"""Deterministic synthetic street scenes, written in the real COCO / Cityscapes / BDD100K on-disk formats.

Why it exists: the tests, the demo recipe and CI need datasets that go through the *same* readers as the real
data, and on which a small Mask R-CNN can learn people from their bodies (so that body anonymization measurably
hurts person AP and face anonymization barely does). People are therefore drawn from a posed 17-keypoint COCO
skeleton with clothing, limbs and a head whose face (eyes, brows, nose, mouth, skin tone) is a small region,
and with detail at the scale of a few pixels (outlines, garment prints, hair strands) that a body blur removes;
the rest of a scene is a textured street (sky, brick facades, sidewalk, grainy road, trees, poles), cars, riders
on bicycles and crowds of tiny people.

Layout: draw.py (primitives), people.py, street.py, scene.py (one scene from a seed), formats.py (the three on-disk
formats); this module generates a dataset and is its adapter.

Determinism: scene (seed, split, index) is drawn from `np.random.default_rng([seed, crc32(split), index])`, so
it does not depend on the format, the number of images or what was generated before; with the same image size
the three formats hold the same scenes. Files are written in a fixed order with fixed encoder settings, so the
same arguments give byte-identical trees.

Ground truth: every object is one outline polygon (the outer contour of what was drawn), and objects are
painted back to front. Visible masks are those polygons rasterised exactly like cityscapesscripts'
`createInstanceImage` (PIL, later polygons on top), so all three formats carry the same masks; keypoints and face
boxes are checked against those visible masks.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator, Optional

from avanon.progress import progress as progress_bar
from dataset_adapters.base import (  # noqa: F401  (COCO_KEYPOINT_NAMES: re-exported)
    ADAPTERS, COCO_KEYPOINT_NAMES, DatasetAdapter, DatasetError, ImageRecord, check_option,
)
from dataset_adapters.synthetic.formats import (  # noqa: F401  (re-exported: the format writers' API)
    _WRITERS, BDD_CATEGORIES, BDD_CATEGORY_OF, COCO_CATEGORIES, _CocoWriter, _write_json, bdd_name,
    cityscapes_stem, coco_image_id,
)
from dataset_adapters.synthetic.scene import (  # noqa: F401  (re-exported: the scene API)
    CITYSCAPES_LABELS, GENERATOR_VERSION, Scene, SceneObject, render_scene, scene_for,
)

FORMATS = ("coco", "cityscapes", "bdd100k")
DEFAULT_IMAGE_SIZES = {"cityscapes": (256, 512), "coco": (240, 320), "bdd100k": (288, 512)}  # (height, width)
DEFAULT_SPLITS = {"train": 24, "val": 8}
MARKER = "avanon_synthetic.json"

log = logging.getLogger("avanon.synthetic")


# --------------------------------------------------------------------------------------------- drawing helpers


# --------------------------------------------------------------------------------------------------- people


# ---------------------------------------------------------------------------------------- vehicles and props


# ------------------------------------------------------------------------------------------------- background


# ------------------------------------------------------------------------------------------------- scene model


# ---------------------------------------------------------------------------------------------------- writers


# -------------------------------------------------------------------------------------------------- generate


def generation_params(fmt: str, splits: Optional[dict] = None, seed: int = 0,
                      image_size: Optional[tuple[int, int]] = None,
                      person_heights: Optional[tuple[float, float]] = None) -> dict:
    """The resolved parameters recorded in `avanon_synthetic.json` (what makes two datasets the same)."""
    if fmt not in FORMATS:
        raise DatasetError(f"synthetic: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    for name, n in splits.items():
        if not isinstance(name, str) or not name.isalnum():
            raise DatasetError(f"synthetic: split name {name!r} must be a non-empty alphanumeric word")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise DatasetError(f"synthetic: split {name!r} needs a non-negative image count, got {n!r}")
    if person_heights is not None:
        ok = (isinstance(person_heights, (list, tuple)) and len(person_heights) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in person_heights)
              and 0 < person_heights[0] <= person_heights[1] <= 1.5)
        if not ok:
            raise DatasetError(f"synthetic: person_heights must be [lo, hi] fractions of the image height with "
                               f"0 < lo <= hi <= 1.5, got {person_heights!r}")
    h, w = DEFAULT_IMAGE_SIZES[fmt] if image_size is None else image_size
    return {"generator": "avanon.synthetic", "version": GENERATOR_VERSION, "format": fmt, "splits": splits,
            "seed": int(seed), "image_size": [int(h), int(w)],
            **({} if person_heights is None else {"person_heights": [float(v) for v in person_heights]})}


def read_params(root: str | Path) -> Optional[dict]:
    """The parameters of an existing synthetic dataset, None when `root` has no marker."""
    path = Path(root) / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"synthetic: {path} is unreadable: {e}") from None


def generate(root: str | Path, fmt: str, splits: Optional[dict] = None, seed: int = 0,
             image_size: Optional[tuple[int, int]] = None,
             person_heights: Optional[tuple[float, float]] = None, progress: Optional[bool] = None) -> Path:
    """Write a synthetic dataset in format `fmt` at `root` and return `root`.

    splits: {split name: number of images} (default {"train": 24, "val": 8}); image_size: (height, width), default
    per format (DEFAULT_IMAGE_SIZES); person_heights: (lo, hi) pedestrian heights as fractions of the image height
    (default: a street-scene mix with many tiny people; the demo uses taller people so that its small training
    resolution still shows their detail). The tree is written into a temporary sibling directory and renamed into place
    with the marker `avanon_synthetic.json` written last, so an interrupted run never looks complete. If `root`
    already holds a dataset with the same parameters it is left as it is; with other parameters, or any other
    content, DatasetError is raised. progress: a bar over the images on a terminal (None: avanon.progress's
    default, which `avanon run --no-progress` turns off); a log line says what is generated either way."""
    params = generation_params(fmt, splits, seed, image_size, person_heights)
    root = Path(root)
    if _existing_matches(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        writer = _WRITERS[fmt](tmp, params["seed"])
        h, w = params["image_size"]
        heights = params.get("person_heights")
        total = sum(params["splits"].values())
        log.info(f"synthetic: generating {total} {fmt} images ("
                 + ", ".join(f"{split} {n}" for split, n in params["splits"].items()) + f") at {root}")
        with progress_bar(total, "synthetic data", progress, unit="img") as bar:
            for split, n in params["splits"].items():
                writer.split(split, _counted((scene_for(params["seed"], split, i, (h, w), heights)
                                              for i in range(n)), bar))
        _write_json(tmp / MARKER, params, indent=2)
        try:
            if root.is_dir() and not any(root.iterdir()):
                root.rmdir()
            os.rename(tmp, root)
        except OSError:
            if _existing_matches(root, params):  # another process finished the same dataset first
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _counted(items, bar):
    for item in items:
        yield item
        bar.update(1)


def _existing_matches(root: Path, params: dict) -> bool:
    """True if root already holds exactly this dataset; False if root is absent or empty; DatasetError otherwise."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise DatasetError(f"synthetic: {root} exists and is not a directory")
    found = read_params(root)
    if found is None:
        if any(root.iterdir()):
            raise DatasetError(f"synthetic: {root} is not empty and holds no {MARKER}; refusing to write there")
        return False
    if found != params:
        diff = {k: (found.get(k), v) for k, v in params.items() if found.get(k) != v}
        raise DatasetError(f"synthetic: {root} holds a synthetic dataset generated with other parameters "
                           f"(existing vs requested: {diff}); delete it or use another root")
    return True


# --------------------------------------------------------------------------------------------------- adapter


@ADAPTERS.register("synthetic")
class SyntheticAdapter(DatasetAdapter):
    """A synthetic dataset in one of the real formats, generated at `root` on first use, then read by that
    format's own adapter (so the demo and CI exercise the real readers)."""

    name = "synthetic"
    target_categories = ("person",)
    human_categories = ("person",)

    def __init__(self, root: str | Path, split: str, format: str = "cityscapes", num_train: int = 24,
                 num_val: int = 8, seed: int = 0, image_size: Optional[tuple[int, int]] = None,
                 person_heights: Optional[tuple[float, float]] = None, **format_options):
        for key, value in (("format", format), ("num_train", num_train), ("num_val", num_val), ("seed", seed)):
            check_option("synthetic", key, value, str if key == "format" else int,
                         "a string" if key == "format" else "an integer")
        if image_size is not None and not (isinstance(image_size, (list, tuple)) and len(image_size) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 16 for v in image_size)):
            raise DatasetError(f"synthetic: dataset.options.image_size: expected [height, width] integers >= 16, "
                               f"got {image_size!r}")
        if format not in FORMATS:
            raise DatasetError(f"synthetic: dataset.options.format: unknown format {format!r}; choose one of "
                               f"{', '.join(FORMATS)}")
        self.format = format
        size = tuple(image_size) if image_size is not None else None
        heights = tuple(person_heights) if isinstance(person_heights, (list, tuple)) else person_heights
        generate(root, format, {"train": num_train, "val": num_val}, seed, size, heights)
        super().__init__(root, split)
        self.inner = ADAPTERS.get(format)(self.root, split, **format_options)
        self.target_categories = self.inner.target_categories
        self.human_categories = self.inner.human_categories

    def images(self) -> Iterator[ImageRecord]:
        return self.inner.images()

    def __len__(self) -> int:
        return len(self.inner)

    def tree_files(self) -> Iterator[str]:
        return self.inner.tree_files()

    def dataset_problems(self) -> list[str]:
        return self.inner.dataset_problems()

    def image_index(self) -> list[tuple[str, tuple[str, ...]]]:
        return self.inner.image_index()

    def source_path(self, rel: str) -> Path:
        return self.inner.source_path(rel)


def main(argv: Optional[list[str]] = None) -> None:
    """`python -m dataset_adapters.synthetic ROOT --format coco --train 24 --val 8 --seed 0 [--size H W]
    [--person-heights LO HI]`."""
    p = argparse.ArgumentParser(description="Write a synthetic street-scene dataset in a real on-disk format.")
    p.add_argument("root")
    p.add_argument("--format", choices=FORMATS, default="cityscapes")
    p.add_argument("--train", type=int, default=DEFAULT_SPLITS["train"])
    p.add_argument("--val", type=int, default=DEFAULT_SPLITS["val"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"))
    p.add_argument("--person-heights", type=float, nargs=2, metavar=("LO", "HI"),
                   help="pedestrian heights as fractions of the image height (default: street-scene mix)")
    a = p.parse_args(argv)
    out = generate(a.root, a.format, {"train": a.train, "val": a.val}, a.seed, tuple(a.size) if a.size else None,
                   tuple(a.person_heights) if a.person_heights else None)
    print(out)

