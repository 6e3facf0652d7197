"""Which instances qualify for anonymization, and why the others are left alone.

Every instance a filter drops is reported with one reason from `SKIP_REASONS`, so the manifest can count them (the
paper's numbers, e.g. "149,813 COCO persons after filtering", are counts of what passes here). The configuration
error type lives here too because every part of the package validates a piece of the recipe.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

from dataset_adapters.base import ImageRecord, Instance

# The fixed vocabulary of skip reasons ("category:<name>" is the one parametrised reason).
SKIP_REASONS = (
    "category:<name>", "crowd", "ignore", "no_keypoints", "empty_mask", "invalid_mask", "too_small", "no_face",
    "outside_image",
)


class RegionConfigError(ValueError):
    """A recipe's region / filter configuration that cannot be used; the message names the offending key."""


def check_keys(section: str, given: dict, known: Iterable[str]) -> None:
    """Reject unknown keys early: a typo in a recipe must not silently fall back to a default."""
    known = sorted(known)
    for key in given:
        if key not in known:
            raise RegionConfigError(f"{section}.{key}: unknown parameter; known: {', '.join(known)}")


@dataclass(frozen=True)
class FilterConfig:
    categories: tuple[str, ...]
    skip_crowd: bool = True
    skip_ignore: bool = True
    require_keypoints: bool = False

    def describe(self) -> dict:
        return {"categories": list(self.categories), "skip_crowd": self.skip_crowd,
                "skip_ignore": self.skip_ignore, "require_keypoints": self.require_keypoints}


FILTER_KEYS = ("categories", "skip_crowd", "skip_ignore", "require_keypoints", "allow_empty")


def parse_filters(filters: Optional[dict], target_categories: Sequence[str]) -> FilterConfig:
    """Recipe `filters:` dict -> FilterConfig; categories default to the adapter's target categories."""
    filters = dict(filters or {})
    check_keys("region.filters", filters, FILTER_KEYS)
    cats = filters.get("categories")
    if cats is None:
        cats = tuple(target_categories)
    elif not isinstance(cats, (list, tuple)) or not all(isinstance(c, str) for c in cats):
        raise RegionConfigError(f"region.filters.categories: expected a list of category names, got {cats!r}")
    allow_empty = filters.get("allow_empty", False)
    if not isinstance(allow_empty, bool):
        raise RegionConfigError(f"region.filters.allow_empty: expected true or false, got {allow_empty!r}")
    if not cats and not allow_empty:
        raise RegionConfigError("region.filters.categories: an empty list anonymizes nobody and would copy every "
                                "image in the clear; name the categories to anonymize (or set "
                                "filters.allow_empty: true if a mirror without anonymization is really wanted)")
    flags = {}
    for key, default in (("skip_crowd", True), ("skip_ignore", True), ("require_keypoints", False)):
        value = filters.get(key, default)
        if not isinstance(value, bool):
            raise RegionConfigError(f"region.filters.{key}: expected true or false, got {value!r}")
        flags[key] = value
    return FilterConfig(categories=tuple(cats), **flags)


@dataclass
class Candidate:
    """An instance that passed the filters, with its mask clipped to the image.

    box: tight box of the clipped mask (x1/y1 exclusive); mask: bool, cropped to box.
    """

    instance: Instance
    box: tuple[int, int, int, int]
    mask: np.ndarray
    area: int = field(init=False)

    def __post_init__(self):
        self.area = int(self.mask.sum())

    @property
    def instance_id(self) -> str:
        return self.instance.instance_id


def _clip_mask(inst: Instance, height: int, width: int):
    """The instance mask restricted to the image, re-tightened; None when nothing of it is inside."""
    x0, y0, x1, y1 = (int(v) for v in inst.box)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    m = np.asarray(inst.mask, dtype=bool)[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return (cx0 + c0, cy0 + r0, cx0 + c1, cy0 + r1), np.ascontiguousarray(m[r0:r1, c0:c1])


def skip_reason(inst: Instance, cfg: FilterConfig) -> Optional[str]:
    """The annotation-level reason an instance is not anonymized (None: it qualifies so far)."""
    if inst.category not in cfg.categories:
        return f"category:{inst.category}"
    if cfg.skip_crowd and inst.iscrowd:
        return "crowd"
    if cfg.skip_ignore and inst.ignore:
        return "ignore"
    if cfg.require_keypoints and inst.num_keypoints == 0:
        return "no_keypoints"
    return None


def apply_filters(record: ImageRecord, cfg: FilterConfig) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Split a record's instances into candidates (record order) and (instance_id, reason) skips.

    A mask whose shape disagrees with its box cannot be anonymized correctly: it is skipped as "invalid_mask" and
    the record gets a problem, so the writer fails the image instead of leaving the person in the clear.
    """
    kept: list[Candidate] = []
    skipped: list[tuple[str, str]] = []
    for inst in record.instances:
        reason = skip_reason(inst, cfg)
        if reason is None:
            x0, y0, x1, y1 = (int(v) for v in inst.box)
            mask = np.asarray(inst.mask)
            if mask.ndim != 2 or mask.shape != (max(y1 - y0, 0), max(x1 - x0, 0)):
                reason = "invalid_mask"
                record.problems.append(f"instance {inst.instance_id}: mask shape {mask.shape} does not match "
                                       f"its box {inst.box}")
            elif not mask.any():
                reason = "empty_mask"
            else:
                clipped = _clip_mask(inst, record.height, record.width)
                if clipped is None:
                    reason = "outside_image"
                else:
                    kept.append(Candidate(inst, *clipped))
        if reason is not None:
            skipped.append((inst.instance_id, reason))
    return kept, skipped
