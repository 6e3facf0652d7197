"""Full-body regions: the reference's PersonDetection pre-processing (docs/reference.md §3.2, §1.5-1.6).

tight mask box -> expanded box (+10 %, aspect 288:160, >= 30 % background) -> min-size filter on the expanded box
-> mask cut with zero padding, NEAREST-resized to 288x160, dilated with disk(4) there, dilation in the padding
removed -> pasted back through the NEAREST resize of that crop mask. The image mask is OR'ed with the person's own
undilated mask: NEAREST down/up-sampling can drop thin limbs, and a region must never leave part of a person in
the clear. The "pixels" mode dilates in image space instead (a fixed number of image pixels for every instance).

`mask_resize` picks how the cut mask reaches 288x160. "nearest" (default) is what the reference does with bool
masks (Cityscapes, live detections). "reference_uint8" is what it does with the uint8 masks of its COCO and BDD100K
scripts: bicubic + antialias on the float 0/1 mask, rounded, non-zero = mask; NEAREST only when the clipped
expanded box is smaller than the crop in both dimensions. With dilation "pixels" the same rule resizes the dilated
image mask into the crop. docs/reference_geometry.md describes this geometry and the rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import cv2
import numpy as np
from skimage.morphology import disk

from avanon.regions.base import BODY_CROP, Region
from avanon.regions.filters import Candidate, RegionConfigError, check_keys
from avanon.regions.geometry import (
    body_expanded_box, clip_box, crop_to_clip, include_box, pad_removal, place, sample_into_box,
)
from avanon.regions.resize import body_uses_nearest, resize_to_crop

DEFAULT_DILATION_RADIUS = int(0.02 * (BODY_CROP[0] * BODY_CROP[1]) ** 0.5)  # = 4, the reference's
DILATION_MODES = ("crop_relative", "pixels")
# How the person mask is resized into the crop: the reference's bool-mask path, or its uint8-mask path (COCO, BDD100K).
MASK_RESIZE_MODES = ("nearest", "reference_uint8")
BODY_KEYS = ("dilation", "dilation_radius", "min_size", "keypoint_threshold", "mask_resize")


@dataclass(frozen=True)
class BodyParams:
    dilation: str = "crop_relative"
    dilation_radius: int = DEFAULT_DILATION_RADIUS
    min_size: float = 8
    # Keypoints with v >= this are visible (COCO v in {1, 2} and pose confidences >= 0.3, as the reference).
    keypoint_threshold: float = 0.3
    mask_resize: str = "nearest"

    def describe(self) -> dict:
        return {"dilation": self.dilation, "dilation_radius": self.dilation_radius, "min_size": self.min_size,
                "keypoint_threshold": self.keypoint_threshold, "mask_resize": self.mask_resize,
                "crop_size": list(BODY_CROP), "percentage_background": 0.3, "axis_minimum_expansion": 0.1}


def parse_body_params(params: Optional[dict]) -> BodyParams:
    params = dict(params or {})
    check_keys("region.body", params, BODY_KEYS)
    dilation = params.get("dilation", "crop_relative")
    if dilation not in DILATION_MODES:
        raise RegionConfigError(f"region.body.dilation: unknown mode {dilation!r}; known: {', '.join(DILATION_MODES)}")
    radius = params.get("dilation_radius", DEFAULT_DILATION_RADIUS)
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise RegionConfigError(f"region.body.dilation_radius: expected an integer >= 0, got {radius!r}")
    min_size = params.get("min_size", 8)
    if isinstance(min_size, bool) or not isinstance(min_size, (int, float)) or min_size < 0:
        raise RegionConfigError(f"region.body.min_size: expected a number >= 0, got {min_size!r}")
    thr = params.get("keypoint_threshold", 0.3)
    if isinstance(thr, bool) or not isinstance(thr, (int, float)):
        raise RegionConfigError(f"region.body.keypoint_threshold: expected a number, got {thr!r}")
    mask_resize = params.get("mask_resize", "nearest")
    if mask_resize not in MASK_RESIZE_MODES:
        raise RegionConfigError(f"region.body.mask_resize: unknown mode {mask_resize!r}; "
                                f"known: {', '.join(MASK_RESIZE_MODES)}")
    return BodyParams(dilation, radius, min_size, float(thr), mask_resize)


# ----------------------------------------------------------------------------------------------------- masks
@lru_cache(maxsize=32)
def _disk(radius: int) -> np.ndarray:
    return disk(radius).astype(np.uint8)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """True binary dilation with skimage's disk(radius); outside the array counts as background."""
    if radius <= 0 or not mask.any():
        return mask.copy()
    out = cv2.dilate(mask.astype(np.uint8), _disk(radius), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(bool)


def remove_dilation_in_pad(crop_mask: np.ndarray, exp_box, imshape) -> None:
    """Zero the crop-space padding rows/cols (in place), with the reference's height-ratio rounding."""
    left, top, right, bottom = pad_removal(exp_box, imshape, crop_mask.shape[0])
    h, w = crop_mask.shape
    crop_mask[:top, :] = False
    crop_mask[:, :left] = False
    if bottom > 0:
        crop_mask[max(h - bottom, 0):, :] = False
    if right > 0:
        crop_mask[:, max(w - right, 0):] = False


def mask_into_crop(mask: np.ndarray, mask_box, exp_box, clip, mode: str) -> np.ndarray:
    """The crop mask of `mask` (at mask_box, inside clip_box) in the expanded box, resized to BODY_CROP.

    "nearest": the reference's bool-mask path. "reference_uint8": its uint8-mask path, the image-crop filter on the
    0/1 mask (bicubic + antialias, rounded half to even, so a value must exceed 0.5 to count) unless the clipped
    box is smaller than the crop in both dimensions, where it is the same NEAREST resize.
    """
    clip_hw = (clip[3] - clip[1], clip[2] - clip[0])
    if mode == "nearest" or body_uses_nearest(clip_hw, BODY_CROP):
        return sample_into_box(mask, mask_box, exp_box, BODY_CROP)
    cut = place(mask, mask_box, exp_box).astype(np.uint8)[..., None]  # zero padding outside the image
    return resize_to_crop(cut, BODY_CROP, kind="body", decide_size=clip_hw)[..., 0] != 0


def crop_keypoints(keypoints: Optional[np.ndarray], exp_box, threshold: float) -> Optional[np.ndarray]:
    """Keypoints relative to the expanded box in [0, 1] (float32, as the reference); visible = v >= threshold and
    inside the crop."""
    if keypoints is None:
        return None
    kp = np.asarray(keypoints, dtype=np.float32).reshape(-1, 3).copy()
    x0, y0, x1, y1 = (np.float32(v) for v in exp_box)
    kp[:, 0] = (kp[:, 0] - x0) / (x1 - x0)
    kp[:, 1] = (kp[:, 1] - y0) / (y1 - y0)
    outside = (kp[:, 0] < 0) | (kp[:, 0] > 1) | (kp[:, 1] < 0) | (kp[:, 1] > 1)
    kp[:, 2] = ((kp[:, 2] >= threshold) & ~outside).astype(np.float32)
    return kp


# ----------------------------------------------------------------------------------------------------- region
def body_region(cand: Candidate, imshape, params: BodyParams) -> Optional[Region]:
    """The body Region of one filtered instance; None when its expanded box is below the min-size filter."""
    area = cand.area
    exp_box = body_expanded_box(cand.box, imshape, area, BODY_CROP)
    if not include_box(exp_box, params.min_size ** 2):
        return None
    clip = clip_box(exp_box, imshape[0], imshape[1])
    own = place(cand.mask, cand.box, clip)
    undilated = mask_into_crop(cand.mask, cand.box, exp_box, clip, params.mask_resize)
    if params.dilation == "crop_relative":
        crop_mask = dilate(undilated, params.dilation_radius)
        remove_dilation_in_pad(crop_mask, exp_box, imshape)
        image_mask = crop_to_clip(crop_mask, exp_box, clip) | own
    else:
        image_mask = dilate(own, params.dilation_radius)
        crop_mask = mask_into_crop(image_mask, clip, exp_box, clip, params.mask_resize)
    return Region(
        instance_id=cand.instance_id, kind="body", exp_box=exp_box, crop_size=BODY_CROP, crop_mask=crop_mask,
        clip_box=clip, image_mask=image_mask, area=area,
        keypoints=crop_keypoints(cand.instance.keypoints, exp_box, params.keypoint_threshold),
        extra={"tight_box": cand.box, "crop_mask_undilated": undilated, "dilation": params.dilation,
               "dilation_radius": params.dilation_radius, "mask_resize": params.mask_resize},
    )
