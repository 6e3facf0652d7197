"""One-to-one matching of face boxes to person masks (the reference's annotate_faces.get_matches).

Why: a face box must anonymize *a person we annotate* (the paper counts faces per person instance), and one face
must not be claimed by two persons. Semantics followed: the box is rasterised with int() of its coordinates, the
IoU is |box ∩ mask| / (|box ∪ mask| + 1e-7), candidates need IoU > min_iou, candidate pairs are listed box-major
and stably sorted by (-IoU, -score, number of candidate boxes of the mask), then taken greedily.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from avanon.regions.filters import Candidate


def raster_box(box, height: int, width: int) -> tuple[int, int, int, int]:
    """The pixels a float box covers when rasterised as the reference does (int() truncation), clipped."""
    x0, y0, x1, y1 = (int(v) for v in box[:4])
    return (min(max(x0, 0), width), min(max(y0, 0), height), min(max(x1, 0), width), min(max(y1, 0), height))


def box_mask_iou(box, cand: Candidate, height: int, width: int) -> float:
    """IoU between a rasterised box and a candidate's mask, computed on the overlap only (no full-image masks)."""
    bx0, by0, bx1, by1 = raster_box(box, height, width)
    box_px = max(bx1 - bx0, 0) * max(by1 - by0, 0)
    mx0, my0, mx1, my1 = cand.box
    ix0, iy0, ix1, iy1 = max(bx0, mx0), max(by0, my0), min(bx1, mx1), min(by1, my1)
    inter = 0
    if ix1 > ix0 and iy1 > iy0:
        inter = int(cand.mask[iy0 - my0:iy1 - my0, ix0 - mx0:ix1 - mx0].sum())
    union = box_px + cand.area - inter
    return inter / (union + 1e-7)


def iou_matrix(boxes: Sequence, cands: Sequence[Candidate], height: int, width: int) -> np.ndarray:
    out = np.zeros((len(boxes), len(cands)), dtype=np.float64)
    for i, box in enumerate(boxes):
        for j, cand in enumerate(cands):
            out[i, j] = box_mask_iou(box, cand, height, width)
    return out


def greedy_match(iou: np.ndarray, scores: Sequence[float], min_iou: float) -> list[tuple[int, int, float]]:
    """(box index, mask index, IoU) pairs, greedy one-to-one by (-IoU, -score, candidate count of the mask)."""
    box_idx, mask_idx = np.nonzero(iou > min_iou)  # box-major, as np.where
    counts = np.bincount(mask_idx, minlength=iou.shape[1]) if iou.size else np.zeros(0, dtype=int)
    order = sorted(range(len(box_idx)), key=lambda k: (-iou[box_idx[k], mask_idx[k]], -float(scores[box_idx[k]]),
                                                       int(counts[mask_idx[k]])))
    taken_box, taken_mask = set(), set()
    matches = []
    for k in order:
        b, m = int(box_idx[k]), int(mask_idx[k])
        if b in taken_box or m in taken_mask:
            continue
        taken_box.add(b)
        taken_mask.add(m)
        matches.append((b, m, float(iou[b, m])))
    return matches
