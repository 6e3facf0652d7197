"""Which crops of an image the realistic anonymizer generates together: waves of instances that do not overlap
(overlapping ones stay sequential, as the reference's recursive stitching needs), and the FDF256 high-resolution
face regions of faces large enough for them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator, Optional, Sequence

import numpy as np

from avanon.regions.base import Region


FDF256_CROP = (256, 256)
HR_MIN_AREA = 128 * 128



HR_CRITERIA = ("effective", "fdf128")



FDF256_EXPANSION = 0.4  # expand_bbox_simple(box, 0.4) of the reference's fdf128_expand=False path



EFFECTIVE_HR_EXPANSION = 0.7  # the fallback the reference's refine_faces.py ends up using (§3.5 bug)



# ----------------------------------------------------------------------------------------------------- waves
def boxes_overlap(a: Sequence[int], b: Sequence[int]) -> bool:
    """Whether two (x0, y0, x1, y1) boxes with exclusive ends share at least one pixel."""
    return max(a[0], b[0]) < min(a[2], b[2]) and max(a[1], b[1]) < min(a[3], b[3])



def plan_waves(boxes: Sequence[Sequence[int]]) -> list[list[int]]:
    """Group instances (in paste order) into waves that can run in one batch with the sequential result.

    Greedy: walk the pending instances in order; one joins the current wave only if its box overlaps no box in the
    wave AND no earlier pending instance that was deferred. Every pair of overlapping instances is then processed
    in its original order (the earlier one in an earlier wave), and instances in one wave are pairwise disjoint.
    Boxes are the clip boxes: the pixels an instance reads (its crop) and may write (its image_mask) lie inside.
    """
    pending = list(range(len(boxes)))
    waves: list[list[int]] = []
    while pending:
        wave: list[int] = []
        deferred: list[int] = []
        for i in pending:
            if any(boxes_overlap(boxes[i], boxes[j]) for j in wave) or \
                    any(boxes_overlap(boxes[i], boxes[j]) for j in deferred):
                deferred.append(i)
            else:
                wave.append(i)
        waves.append(wave)
        pending = deferred
    return waves



# ----------------------------------------------------------------------------------------------------- face geometry
def _face_box_int(region: Region) -> tuple[int, int, int, int]:
    from avanon.regions.geometry import outward_box, round_box, is_empty

    box = region.extra.get("face_box_int") if region.extra else None
    if box is None:
        if region.face_box is None:
            raise ValueError(f"region {region.instance_id}: a face region needs face_box")
        box = round_box(region.face_box)
        if is_empty(box):
            box = outward_box(region.face_box)
    return tuple(int(v) for v in box)



def hr_qualifies(region: Region, criterion: str = "effective") -> bool:
    """Whether a face is refined with FDF256 (module docstring)."""
    from avanon.regions.geometry import box_area, expand_box_simple

    if criterion == "fdf128":
        return box_area(region.exp_box) >= HR_MIN_AREA
    return box_area(expand_box_simple(_face_box_int(region), EFFECTIVE_HR_EXPANSION)) >= HR_MIN_AREA



def fdf256_region(region: Region, imshape: tuple[int, int]) -> Optional[Region]:
    """The FDF256 crop of a face region (the reference's fdf128_expand=False path): simple 0.4 expansion, 256×256,
    face-box crop mask; image_mask = its paste-back view OR'ed with the face box (rounded outward, clipped), as
    the FDF128 regions. None when the box is degenerate or outside the image."""
    from avanon.regions.geometry import (clip_box, crop_to_clip, expand_box_simple, face_box_in_crop, is_empty,
                                         outward_box, place)

    box_i = _face_box_int(region)
    exp_box = expand_box_simple(box_i, FDF256_EXPANSION)
    if is_empty(exp_box):
        return None
    clip = clip_box(exp_box, imshape[0], imshape[1])
    if is_empty(clip):
        return None
    size = FDF256_CROP
    crop_mask = np.zeros(size, dtype=bool)
    cx0, cy0, cx1, cy1 = face_box_in_crop(box_i, exp_box, size)
    crop_mask[cy0:cy1, cx0:cx1] = True
    image_mask = crop_to_clip(crop_mask, exp_box, clip)
    if region.face_box is not None:
        cover = clip_box(outward_box(region.face_box), imshape[0], imshape[1])
        cover = (max(cover[0], clip[0]), max(cover[1], clip[1]), min(cover[2], clip[2]), min(cover[3], clip[3]))
        if not is_empty(cover):
            image_mask |= place(np.ones((cover[3] - cover[1], cover[2] - cover[0]), dtype=bool), cover, clip)
    return Region(instance_id=region.instance_id, kind="face", exp_box=exp_box, crop_size=size, crop_mask=crop_mask,
                  clip_box=clip, image_mask=image_mask, area=region.area, face_box=region.face_box,
                  extra={**(region.extra or {}), "face_box_int": box_i, "expansion": "simple0.4"})


# ----------------------------------------------------------------------------------------------------- requests
@dataclass
class GenRequest:
    """Crops of one image that run through one generator together: one wave's instances (pairwise disjoint)."""
    model: str
    jobs: list
    crops: list
    seed: int  # the image's seed (latents are drawn per (seed, instance))


def run_steps(steps: Generator, fulfil: Callable[[GenRequest], list]) -> Any:
    """Drive an anonymizer coroutine to its end, answering each request with fulfil(request); its return value."""
    try:
        request = next(steps)
        while True:
            request = steps.send(fulfil(request))
    except StopIteration as stop:
        return stop.value
