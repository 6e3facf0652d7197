"""Crop geometry of the DeepPrivacy2 reference: cut with zero padding, resize to the generator's resolution, resize
back, paste inside the region's mask (docs/reference.md §3.1-3.2).

Everything here works on one instance's crop, never on the whole image, so that anonymizing an image costs little
more than decoding and encoding it. Images are HxWx3 uint8 RGB numpy arrays; crop-space arithmetic is float32 in
the reference's [-1, 1] space so that rounding happens once, where the reference rounds.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from avanon.regions.base import Region
# The resize helpers live beside the body regions, which resize person masks with the same rule; re-exported here.
from avanon.regions.resize import (  # noqa: F401  (re-exported)
    Size, bicubic_aa, body_uses_nearest, nearest, resize_to_crop, round_uint8,
)

Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------------------------------- geometry
def box_size(box: Box) -> Size:
    """(h, w) of an (x0, y0, x1, y1) box with exclusive ends."""
    x0, y0, x1, y1 = box
    return (int(y1 - y0), int(x1 - x0))


def clip_to_image(box: Box, image_hw: Size) -> Box:
    """The part of `box` inside an image of size (h, w); may be empty (x1 <= x0 or y1 <= y0)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = image_hw
    return (max(x0, 0), max(y0, 0), min(x1, w), min(y1, h))


def cut_pad(image: np.ndarray, exp_box: Box) -> np.ndarray:
    """The expanded box's pixels; pixels outside the image are zero (the reference's zero padding)."""
    x0, y0, x1, y1 = (int(v) for v in exp_box)
    h, w = image.shape[:2]
    cx0, cy0, cx1, cy1 = clip_to_image(exp_box, (h, w))
    if (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
        return image[y0:y1, x0:x1].copy()
    out = np.zeros((y1 - y0, x1 - x0) + image.shape[2:], dtype=image.dtype)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = image[cy0:cy1, cx0:cx1]
    return out


def drop_pad(patch: np.ndarray, region: Region) -> np.ndarray:
    """The part of an expanded-box-sized patch that lies inside the image (clip_box)."""
    x0, y0, _, _ = region.exp_box
    cx0, cy0, cx1, cy1 = region.clip_box
    return patch[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]


# ----------------------------------------------------------------------------------------------------- resizing
def resize_from_crop(crop: np.ndarray, size: Size) -> np.ndarray:
    """Crop-space result back to the expanded box's size: bicubic + antialias, float32, unrounded (the reference
    resizes the generator's float output and rounds only the pasted pixels)."""
    return bicubic_aa(crop.astype(np.float32, copy=False), size)


# ----------------------------------------------------------------------------------------------------- [-1, 1] space
def to_unit(a: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1], as the reference's normalize(mean=127.5, std=127.5)."""
    return (a.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)


def from_unit(x: np.ndarray) -> np.ndarray:
    """[-1, 1] -> float32 [0, 255], as the reference's (x + 1) / 2, clamp(0, 1), * 255 (unrounded)."""
    return np.clip((x + np.float32(1)) / np.float32(2), 0, 1) * np.float32(255)


# ----------------------------------------------------------------------------------------------------- filters
def gaussian_kernel1d(kernel: int, sigma: float) -> np.ndarray:
    """The 1-D Gaussian weights torchvision's gaussian_blur uses (float32 linspace, exp, normalised)."""
    half = (kernel - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel, dtype=torch.float32)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return (pdf / pdf.sum()).numpy()


def gaussian_blur_crop(x: np.ndarray, kernel: int, sigma: float) -> np.ndarray:
    """Gaussian blur of a whole HxWxC float32 crop as torchvision's gaussian_blur (reflect padding without
    repeating the edge = OpenCV BORDER_REFLECT_101), done separably: ~30x faster than torchvision's 2-D
    convolution; differs only by float32 summation order (<= ~2e-7)."""
    k = gaussian_kernel1d(kernel, sigma)
    out = cv2.sepFilter2D(np.ascontiguousarray(x, dtype=np.float32), cv2.CV_32F, k, k,
                          borderType=cv2.BORDER_REFLECT_101)
    return out.reshape(x.shape)


# ----------------------------------------------------------------------------------------------------- paste
def paste(image: np.ndarray, region: Region, patch: np.ndarray) -> None:
    """Write `patch` into `image` (in place) where region.image_mask is True, and nowhere else.

    patch: the expanded box's size (its padding is dropped) or already the clip box's size; float patches are
    rounded half to even and clamped, as the reference rounds the pasted pixels.
    """
    x0, y0, x1, y1 = region.clip_box
    clip_hw = (y1 - y0, x1 - x0)
    if clip_hw[0] <= 0 or clip_hw[1] <= 0:
        return
    if tuple(region.image_mask.shape) != clip_hw:
        raise ValueError(f"region {region.instance_id}: image_mask shape {region.image_mask.shape} "
                         f"!= clip_box size {clip_hw}")
    if tuple(patch.shape[:2]) == box_size(region.exp_box):
        patch = drop_pad(patch, region)
    elif tuple(patch.shape[:2]) != clip_hw:
        raise ValueError(f"region {region.instance_id}: patch shape {patch.shape[:2]} is neither the "
                         f"expanded box {box_size(region.exp_box)} nor the clip box {clip_hw}")
    if patch.dtype != np.uint8:
        patch = round_uint8_fast(patch)
    _masked_copy(image[y0:y1, x0:x1], patch, region.image_mask)


def round_uint8_fast(a: np.ndarray) -> np.ndarray:
    """round_uint8 (half to even, clamped) in one pass for float32 HxWxC arrays (cv2's saturating conversion
    rounds the same way: round to nearest even, then clamp); round_uint8 otherwise."""
    if a.dtype == np.float32 and a.ndim == 3 and a.shape[2] <= 4 and a.strides[1:] == (a.shape[2] * 4, 4):
        return cv2.multiply(a, 1.0, dtype=cv2.CV_8U).reshape(a.shape)
    return round_uint8(a)


def _masked_copy(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> None:
    """np.copyto(dst, src, where=mask[..., None]) for uint8 HxWxC arrays; with cv2's masked copy when dst is an
    in-place-writable view (numpy's masked copy is ~20x slower)."""
    if (src.ndim == 3 and src.shape[2] <= 4 and dst.shape == src.shape and mask.dtype == bool
            and dst.strides[1:] == (dst.shape[2], 1)):
        res = cv2.copyTo(np.ascontiguousarray(src), np.ascontiguousarray(mask).view(np.uint8), dst)
        if res.ctypes.data == dst.ctypes.data:
            return
    np.copyto(dst, src, where=mask[..., None])
