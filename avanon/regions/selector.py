"""The one entry point the mirror writer and `verify` use: build a selector from the recipe, then select per image.

A selector is pure given its configuration (no randomness), so mirrors are reproducible, and `describe()` records
every resolved parameter in the manifest.
"""
from __future__ import annotations

import abc

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from avanon.regions.base import Region, Selection
from avanon.regions.body import BodyParams, body_region, parse_body_params
from avanon.regions.face import (
    FACE_PROVIDERS, FaceBox, FaceParams, clip_face_box, face_region, head_visible, parse_face_params,
)
from avanon.regions.filters import Candidate, FilterConfig, RegionConfigError, apply_filters, parse_filters
from avanon.regions.matching import greedy_match, iou_matrix
from dataset_adapters.base import ImageRecord

KINDS = ("body", "face")


def _finish(record: ImageRecord, regions: list[Region], skipped: list[tuple[str, str]],
            face_missed: Sequence[str] = (), face_visible: Sequence[str] = ()) -> Selection:
    """Paste order: ascending area, stable (ties keep record order); skips and face_missed in record order."""
    order = {inst.instance_id: i for i, inst in enumerate(record.instances)}
    regions = sorted(regions, key=lambda r: r.area)
    skipped = sorted(skipped, key=lambda s: order.get(s[0], len(order)))
    missed = sorted(face_missed, key=lambda iid: order.get(iid, len(order)))
    return Selection(regions=regions, skipped=skipped, face_missed=missed, face_visible=list(face_visible))


class RegionSelector(abc.ABC):
    """Body or face region selection; `select` is pure given the configuration."""

    kind: str
    needs_image = False  # True when select() looks at the pixels (a face detector); the writer decodes first then

    def __init__(self, filters: FilterConfig):
        self.filters = filters

    @abc.abstractmethod
    def select(self, record: ImageRecord, image: Optional[np.ndarray] = None) -> Selection:
        """The regions of one image in paste order, and every skipped instance with its reason."""

    @abc.abstractmethod
    def describe(self) -> dict:
        """Resolved parameters, for the manifest and the mirror's identity."""


class BodySelector(RegionSelector):
    """Dilated full-body masks (docs/reference.md §3.2)."""

    kind = "body"

    def __init__(self, params: BodyParams, filters: FilterConfig):
        super().__init__(filters)
        self.params = params

    def select(self, record, image=None):
        cands, skipped = apply_filters(record, self.filters)
        imshape = (record.height, record.width)
        regions = []
        for cand in cands:
            region = body_region(cand, imshape, self.params)
            if region is None:
                skipped.append((cand.instance_id, "too_small"))
            else:
                regions.append(region)
        return _finish(record, regions, skipped)

    def describe(self):
        return {"kind": "body", "params": self.params.describe(), "filters": self.filters.describe()}


class FaceSelector(RegionSelector):
    """One face box per person, FDF128 crops (docs/reference.md §1.4, §3.2)."""

    kind = "face"

    def __init__(self, params: FaceParams, filters: FilterConfig, dataset_root: Optional[Path]):
        super().__init__(filters)
        self.params = params
        self.provider = FACE_PROVIDERS.get(params.provider)(params, dataset_root)
        self.needs_image = bool(self.provider.needs_image)

    def _assign(self, faces: Sequence[FaceBox], cands: Sequence[Candidate], imshape) -> dict[int, tuple]:
        """Candidate index -> (face, IoU or None): provider matches first, then greedy IoU matching of the rest."""
        index = {c.instance_id: j for j, c in enumerate(cands)}
        assigned: dict[int, tuple] = {}
        loose = []
        for face in faces:
            if face.instance_id is None:
                loose.append(face)
            elif face.instance_id in index and index[face.instance_id] not in assigned:
                assigned[index[face.instance_id]] = (face, None)
        free = [j for j in range(len(cands)) if j not in assigned]
        if loose and free:
            iou = iou_matrix([f.box for f in loose], [cands[j] for j in free], imshape[0], imshape[1])
            for b, m, value in greedy_match(iou, [f.score for f in loose], self.params.min_iou):
                assigned[free[m]] = (loose[b], value)
        return assigned

    def _merge(self, faces: Sequence[FaceBox], cands: Sequence[Candidate], imshape) -> dict[int, tuple]:
        """`union`: loose (detector) boxes matched by IoU against every person, owned (keypoint) boxes to their
        person; per person the smallest box containing both, else the one that exists."""
        owned = self._assign([f for f in faces if f.instance_id is not None], cands, imshape)
        loose = self._assign([f for f in faces if f.instance_id is None], cands, imshape)
        out = {}
        for j in sorted(set(owned) | set(loose)):
            mine, det = owned.get(j, (None, None)), loose.get(j, (None, None))
            if mine[0] is not None and det[0] is not None:
                a, b = mine[0].box, det[0].box
                box = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                out[j] = (FaceBox(box, det[0].score, cands[j].instance_id), det[1], ["detector", "keypoints"])
            elif det[0] is not None:
                out[j] = (det[0], det[1], ["detector"])
            else:
                out[j] = (mine[0], None, ["keypoints"])
        return out

    def select(self, record, image=None):
        cands, skipped = apply_filters(record, self.filters)
        imshape = (record.height, record.width)
        faces = []
        if cands:
            for face in self.provider.boxes(record, image, cands):
                box = clip_face_box(face.box, *imshape)
                if box is not None and face.score >= self.params.score_threshold:
                    faces.append(FaceBox(box, face.score, face.instance_id))
        if self.provider.merge_per_person:
            assigned = self._merge(faces, cands, imshape)
        else:
            assigned = {j: (face, iou, None) for j, (face, iou) in self._assign(faces, cands, imshape).items()}
        regions, missed, visible = [], [], []
        thr = self.provider.keypoint_threshold
        for j, cand in enumerate(cands):
            if head_visible(cand.instance.keypoints, thr, *imshape):
                visible.append(cand.instance_id)
            if j not in assigned:
                skipped.append((cand.instance_id, "no_face"))
                if visible and visible[-1] == cand.instance_id:
                    missed.append(cand.instance_id)  # a visible head without a face region: the audit counts it
                continue
            face, iou, sources = assigned[j]
            extra = {"iou": iou, "provider": self.params.provider}
            if sources is not None:
                extra["sources"] = sources
            regions.append(face_region(face, cand.instance_id, imshape, extra))
        return _finish(record, regions, skipped, missed, visible)

    def describe(self):
        return {"kind": "face", "params": self.params.describe(), "provider": self.provider.describe(),
                "filters": self.filters.describe()}


def build_region_selector(kind: str, params: Optional[dict], filters: Optional[dict],
                          dataset_root, target_categories: Sequence[str]) -> RegionSelector:
    """Validate the recipe's region section and build its selector; RegionConfigError names the bad key."""
    if kind not in KINDS:
        raise RegionConfigError(f"region.kind: unknown region kind {kind!r}; known: {', '.join(KINDS)}")
    if params is not None and not isinstance(params, dict):
        raise RegionConfigError(f"region.{kind}: expected a mapping of parameters, got {params!r}")
    if filters is not None and not isinstance(filters, dict):
        raise RegionConfigError(f"region.filters: expected a mapping, got {filters!r}")
    filter_cfg = parse_filters(filters, target_categories)
    root = Path(dataset_root) if dataset_root is not None else None
    if kind == "body":
        return BodySelector(parse_body_params(params), filter_cfg)
    return FaceSelector(parse_face_params(params), filter_cfg, root)
