"""How much of a person's detail survives anonymization: `detail_kept(source, output, region)`.

Both images are reduced to grey levels and high-passed (the image minus its Gaussian low-pass with σ = 1 px, the
low-pass taken over the region's own pixels only); over the region's image_mask pixels, `detail_kept` is the
least-squares gain of the output's high-pass on the source's, <hs, ho> / <hs, hs> (= their correlation × the ratio
of their RMS), clipped to [0, 1]: the share of the source's fine detail that is still present, in place, in the
output.

- 1.0: every detail survives (the region is unchanged);
- ~0: none survives: mask-out (the region is flat), a blur that is strong at the person's size, or new content
  (realistic methods: whatever detail the output has is not the source's).

`measure="correlation"` gives the plain correlation instead (clipped to [0, 1]). It ignores how much the detail
is attenuated, so it reads "the pattern is still recognisable": ~0.4 after an image-space blur with σ = 2 px at
any person size, and high whenever most of a region is flattened but a few pixels keep their values (the edge
of a tiny expanded box under crop-space pixelation). The default gain has neither problem.

Measured (`python tests/test_strength.py` prints this; the astronaut image as a person's texture, elliptical
mask, body regions as the selector makes them, on a 720x480 image), gain / correlation:

| Method                         | 12 px tall  | 17×33 px    | 50 px       | 200 px      |
|--------------------------------|-------------|-------------|-------------|-------------|
| mask_out                       | 0.00 / 0.00 | 0.00 / 0.00 | 0.00 / 0.00 | 0.00 / 0.00 |
| blur (crop, the reference)     | 0.68 / 0.98 | 0.37 / 0.80 | 0.20 / 0.63 | 0.01 / 0.08 |
| blur, space: image (σ = 7)     | 0.00 / 0.00 | 0.00 / 0.12 | 0.00 / 0.13 | 0.00 / 0.05 |
| blur, min_image_sigma: 2       | 0.01 / 0.19 | 0.03 / 0.32 | 0.05 / 0.38 | 0.01 / 0.08 |
| pixelate 8 (the reference)     | 0.43 / 0.80 | 0.11 / 0.32 | 0.08 / 0.32 | 0.00 / 0.03 |
| pixelate 16                    | 0.66 / 0.96 | 0.36 / 0.73 | 0.20 / 0.47 | 0.01 / 0.08 |
| pixelate 16, min_image_block: 4| 0.20 / 0.65 | 0.03 / 0.21 | 0.06 / 0.30 | 0.01 / 0.08 |

It is the check for the weakness docs/privacy.md describes: the reference's crop-space blur and pixelation scale
with the person, so small people keep most of their detail. It measures the fine, pixel-scale detail only; the
coarse shape of a person (the silhouette, the colours of large parts) is not part of it, and is kept by design by
mask-out and the realistic body methods.

Why the low-pass uses only the region's pixels (normalised convolution): the contrast between the region and its
surroundings (the silhouette) is then not counted as detail, so mask-out scores exactly 0 however the fill
compares with the background, and the score does not depend on what lies outside the region.

Cost: one grey conversion and three small Gaussian filters of the clip box per region (the rest of the image is
never read). Deterministic (no randomness; float32 OpenCV filters, float64 sums).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np

from avanon.regions.base import Region

DETAIL_SIGMA = 1.0  # σ (image pixels) of the low-pass the high-pass is taken against
FLAT_RMS = 0.25  # a source whose high-pass RMS inside the region is below this (grey levels) has no detail
FLAT_OUTPUT_RMS = 1e-2  # an output high-pass RMS below this is float error on a flat region (mask-out): 0.0
MEASURES = ("gain", "correlation")
SHARE_THRESHOLD = 0.5  # summarize_detail's default: share of regions that keep more than half their detail

_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma, as cv2's RGB2GRAY


def _grey(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        return a.astype(np.float32)
    return (a[..., :3].astype(np.float32) @ _GREY).astype(np.float32)


def _high_pass(grey: np.ndarray, weight: np.ndarray, norm: np.ndarray, ksize: int, sigma: float) -> np.ndarray:
    """grey minus its Gaussian low-pass over the weighted (region) pixels only."""
    low = cv2.GaussianBlur(grey * weight, (ksize, ksize), sigma, sigma, borderType=cv2.BORDER_CONSTANT)
    return grey - low / norm


def detail_kept(source: np.ndarray, output: np.ndarray, region: Region, sigma: float = DETAIL_SIGMA,
                measure: str = "gain") -> float:
    """How much of the source's detail survives inside `region` in `output`: in [0, 1] (see the module docstring).

    source, output: the image before and after anonymization (HxWx3 RGB or HxW grey, any numeric dtype, same
    shape; only region.clip_box is read). region: an avanon Region (clip_box, image_mask of the clip box's shape).
    sigma: the high-pass scale in image pixels. measure: "gain" (default) or "correlation".

    Degenerate cases:
    - the region has no pixel in the image (empty clip box or an all-False image_mask): NaN (nothing to measure;
      the anonymizers skip such regions too). `summarize_detail` ignores NaNs.
    - a flat source (its high-pass RMS inside the region below FLAT_RMS = 0.25 grey levels: a uniform region, or
      a region of one or two pixels, whose high-pass is ~0 by construction): 0.0 -- there is no detail to keep,
      so none is kept. A flat output (mask-out): 0.0.
    - a negative value (detail inverted) is clipped to 0.0, a gain above 1 (detail amplified) to 1.0.
    """
    source = np.asarray(source)
    output = np.asarray(output)
    if source.shape != output.shape or source.ndim not in (2, 3):
        raise ValueError(f"source and output must be images of the same shape, got {source.shape} and "
                         f"{output.shape}")
    if isinstance(sigma, bool) or not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {list(MEASURES)}, got {measure!r}")
    h, w = source.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in region.clip_box)
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise ValueError(f"region {region.instance_id}: clip_box {region.clip_box} is outside the {h}x{w} image")
    if x1 <= x0 or y1 <= y0:
        return math.nan
    mask = np.asarray(region.image_mask, dtype=bool)
    if mask.shape != (y1 - y0, x1 - x0):
        raise ValueError(f"region {region.instance_id}: image_mask shape {mask.shape} != clip_box size "
                         f"{(y1 - y0, x1 - x0)}")
    if not mask.any():
        return math.nan
    ksize = 2 * math.ceil(3 * sigma) + 1
    weight = mask.astype(np.float32)
    norm = cv2.GaussianBlur(weight, (ksize, ksize), sigma, sigma, borderType=cv2.BORDER_CONSTANT)
    norm = np.maximum(norm, np.float32(1e-12))  # > 0 on every mask pixel (its own weight); guard elsewhere
    hs = _high_pass(_grey(source[y0:y1, x0:x1]), weight, norm, ksize, sigma)[mask].astype(np.float64)
    ho = _high_pass(_grey(output[y0:y1, x0:x1]), weight, norm, ksize, sigma)[mask].astype(np.float64)
    hs -= hs.mean()
    ho -= ho.mean()
    ss, so = float(np.sqrt(np.mean(hs * hs))), float(np.sqrt(np.mean(ho * ho)))
    if ss < FLAT_RMS or so < FLAT_OUTPUT_RMS:
        return 0.0
    if measure == "correlation":
        r = float(np.mean(hs * ho)) / (ss * so)
    else:
        r = float(np.mean(hs * ho)) / (ss * ss)
    return float(min(max(r, 0.0), 1.0))


def detail_kept_all(source: np.ndarray, output: np.ndarray, regions: Iterable[Region],
                    sigma: float = DETAIL_SIGMA, measure: str = "gain") -> list[float]:
    """detail_kept of every region of one image (the final output against the original source; overlapping
    regions are each measured on their own pixels). NaN for regions without a pixel in the image."""
    return [detail_kept(source, output, r, sigma, measure) for r in regions]


def summarize_detail(values: Sequence[float], threshold: float = SHARE_THRESHOLD) -> dict:
    """Summary of detail_kept values (e.g. every anonymized instance of a mirror).

    Returns {"count": finite values, "median", "p90", "max", "share_above": fraction of values > threshold,
    "threshold"}; NaN / None values are ignored; with no finite value every statistic is None (JSON null).
    """
    vals = np.array([float(v) for v in values if v is not None], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    out: dict[str, Optional[float]] = {"count": int(vals.size), "median": None, "p90": None, "max": None,
                                       "share_above": None, "threshold": float(threshold)}
    if vals.size:
        out.update(median=float(np.median(vals)), p90=float(np.percentile(vals, 90)), max=float(vals.max()),
                   share_above=float(np.mean(vals > threshold)))
    return out
