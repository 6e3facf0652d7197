"""Resizing to the generator's crop resolution with the reference's filter choice, shared by regions and anonymizers.

It lives under regions because body regions resize their person masks with the same rule as the anonymizers
resize image crops (mask_resize: reference_uint8), and avanon.anonymizers imports avanon.regions, not the other
way round; avanon/anonymizers/crops.py re-exports these names.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

Size = tuple[int, int]  # (h, w)


def _to_torch(a: np.ndarray) -> torch.Tensor:
    """HxWxC numpy -> 1xCxHxW tensor view (channels-last strides: no copy; torch's kernels give bit-identical
    results to the contiguous layout the reference uses, which tests/test_crops.py checks)."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).unsqueeze(0)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """1xCxHxW tensor -> HxWxC view (no copy; may be non-contiguous)."""
    return t[0].permute(1, 2, 0).numpy()


def bicubic_aa(a: np.ndarray, size: Size) -> np.ndarray:
    """Bicubic + antialias resize of a HxWxC float32 array, as torchvision's tensor resize (no clamping)."""
    if tuple(a.shape[:2]) == tuple(size):
        return a.astype(np.float32, copy=False)
    t = _to_torch(a.astype(np.float32, copy=False))
    t = F.interpolate(t, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)
    return _to_numpy(t)


def nearest(a: np.ndarray, size: Size) -> np.ndarray:
    """torch's legacy "nearest" (torchvision InterpolationMode.NEAREST), for uint8 or float arrays."""
    if tuple(a.shape[:2]) == tuple(size):
        return a
    return _to_numpy(F.interpolate(_to_torch(a), size=tuple(size), mode="nearest"))


def round_uint8(a: np.ndarray) -> np.ndarray:
    """Round half to even and clamp, as the reference's `.round().clamp(0, 255).byte()`."""
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def body_uses_nearest(decide_size: Size, crop_size: Size) -> bool:
    """The reference resizes body crops NEAREST only when the (clipped) box is smaller than the crop in both
    dimensions; bicubic + antialias otherwise."""
    return decide_size[0] < crop_size[0] and decide_size[1] < crop_size[1]


def resize_to_crop(crop: np.ndarray, crop_size: Size, kind: str = "body",
                   decide_size: Optional[Size] = None, as_float: bool = False) -> np.ndarray:
    """Resize a cut (padded) crop to the generator's resolution, choosing the filter as the reference does.

    body: bicubic + antialias, except NEAREST when the crop is smaller than the target in both dimensions.
    face ("fdf_resize"): cv2.INTER_AREA when downsampling, bicubic + antialias when upsampling (area smaller than
    the target's); FDF was made with INTER_AREA.
    decide_size: the (h, w) the choice is made on. The reference decides on the expanded box clipped to the image
    (its cut_pad_resize reassigns the box to the clipped one before testing), so anonymizers pass clip-box size;
    default: the crop's own size.
    Returns uint8 rounded as the reference does, or the unrounded float32 result with as_float=True.
    """
    th, tw = (int(v) for v in crop_size)
    dh, dw = decide_size if decide_size is not None else crop.shape[:2]
    if tuple(crop.shape[:2]) == (th, tw):
        return crop.astype(np.float32) if as_float else crop.copy()
    if kind == "face":
        if dh * dw < th * tw:
            out = bicubic_aa(crop.astype(np.float32), (th, tw))
        else:
            src = crop.astype(np.float32) if as_float else crop
            return cv2.resize(src, (tw, th), interpolation=cv2.INTER_AREA).reshape(th, tw, -1)
    elif kind == "body":
        if body_uses_nearest((dh, dw), (th, tw)):
            out = nearest(crop, (th, tw))
            return out.astype(np.float32) if as_float else out
        out = bicubic_aa(crop.astype(np.float32), (th, tw))
    else:
        raise ValueError(f"resize kind must be 'body' or 'face', got {kind!r}")
    return out if as_float else round_uint8(out)
