"""Traditional anonymizers: mask-out, Gaussian blur, pixelation (docs/reference.md §2: the reference's dummy
generators, run through the same crop geometry as its GANs)."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from avanon.anonymizers.base import (ANONYMIZERS, Anonymizer, AnonymizerConfigError, check_choice, check_floor,
                                     check_int, check_positive)
from avanon.anonymizers.crops import (body_uses_nearest, box_size, cut_pad, drop_pad, from_unit, gaussian_blur_crop,
                                      gaussian_kernel1d, resize_from_crop, resize_to_crop, round_uint8_fast,
                                      to_unit)
from avanon.anonymizers.resample import cut_nearest, resize_aa_window, scratch
from avanon.regions.base import Region


_BYTES = np.arange(256, dtype=np.uint8)
_UNIT = to_unit(_BYTES)  # to_unit of every byte value: a lookup gives the same floats
_ROUND_TRIP = from_unit(_UNIT)  # from_unit(to_unit(b)): what the plain pipeline resizes for an unchanged byte b
_UNIT, _ROUND_TRIP = _UNIT.reshape(1, 256), _ROUND_TRIP.reshape(1, 256)  # as cv2.LUT tables


def _where_mask(mask: np.ndarray, inside: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """np.where(mask[..., None], inside, outside) for HxWxC arrays, written into `outside` (cv2's masked copy;
    numpy's is ~10x slower)."""
    m = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    out = cv2.copyTo(np.ascontiguousarray(inside, dtype=outside.dtype), m, outside)
    return out.reshape(outside.shape)


def _lut(small: np.ndarray, table: np.ndarray, slot: str) -> np.ndarray:
    """cv2.LUT(small, table) into a scratch array (float32, small's shape)."""
    out = scratch(slot, small.shape)
    res = cv2.LUT(small, table, dst=out)
    return out if res.ctypes.data == out.ctypes.data else res.reshape(small.shape)


class CropSpaceAnonymizer(Anonymizer):
    """Shared pipeline of the reference's generators: cut the expanded box (zero padding), resize to crop_size,
    replace the crop_mask pixels with `fill_crop(...)` in [-1, 1] space, resize back (bicubic + antialias) to the
    expanded box; the base class pastes on image_mask and rounds once.

    Done cheaply (avanon/anonymizers/resample.py): a NEAREST crop is gathered straight from the image, the
    [-1, 1] round trip of unchanged pixels comes from a byte lookup, and the bicubic resizes (to the crop, and
    back for the pasted pixels' bounding box only) use cached weight matrices and BLAS products instead of a
    torch call per crop.
    They equal torch's to float32 rounding (and blur's `composite` blurs in byte units), so a pasted byte may
    differ by 1 from the plain pipeline (`_reference_region`, kept for tests) where a value lies within a few
    units in the last place of a .5 boundary (a few pasted values in 10^5; tests/test_blur_fast.py)."""

    def anonymize_region(self, image: np.ndarray, region: Region, rng: np.random.Generator) -> np.ndarray:
        ch, cw = region.crop_size
        if tuple(region.crop_mask.shape) != (ch, cw):
            raise ValueError(f"region {region.instance_id}: crop_mask shape {region.crop_mask.shape} "
                             f"!= crop_size {(ch, cw)}")
        v = self.composite(self._small_crop(image, region), region)
        x0, y0, _, _ = region.exp_box
        cx0, cy0, cx1, cy1 = region.clip_box
        exp_hw = box_size(region.exp_box)
        if self._needs_whole_patch():
            return resize_aa_window(v, exp_hw, (cy0 - y0, cy1 - y0), (cx0 - x0, cx1 - x0))
        # only the image mask's bounding box is pasted: compute that, zeros around it (never written)
        rows, cols = np.flatnonzero(region.image_mask.any(axis=1)), np.flatnonzero(region.image_mask.any(axis=0))
        out = np.zeros((cy1 - cy0, cx1 - cx0, v.shape[2]), dtype=np.float32)
        if rows.size:
            ra, rb, ca, cb = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            oy, ox = cy0 - y0, cx0 - x0
            out[ra:rb, ca:cb] = resize_aa_window(v, exp_hw, (oy + ra, oy + rb), (ox + ca, ox + cb))
        return out

    def _needs_whole_patch(self) -> bool:
        """Whether the patch is used beyond the image mask (a strength floor filters it): then every pixel of
        the clip box is computed."""
        return False

    def composite(self, small: np.ndarray, region: Region) -> np.ndarray:
        """The crop after replacement, float32 in [0, 255] (from_unit applied, unrounded): fill on crop_mask,
        the crop's own pixels elsewhere."""
        filled = from_unit(self.fill_crop_for(cv2.LUT(small, _UNIT), region))
        return _where_mask(region.crop_mask, filled, _lut(small, _ROUND_TRIP, "kept"))

    @staticmethod
    def _small_crop(image: np.ndarray, region: Region) -> np.ndarray:
        """The expanded box's pixels resized to crop_size with the reference's filter choice (uint8), as
        resize_to_crop(cut_pad(...)): NEAREST crops gathered without cutting the box first (bit-identical),
        bicubic + antialias with the cached weight matrices (to float32 rounding, then rounded as the
        reference rounds), INTER_AREA as before."""
        size = tuple(region.crop_size)
        decide = box_size(region.clip_box)
        if region.kind == "body" and body_uses_nearest(decide, size):
            return cut_nearest(image, region.exp_box, size)
        crop = cut_pad(image, region.exp_box)
        bicubic = region.kind == "body" or (region.kind == "face" and decide[0] * decide[1] < size[0] * size[1])
        if not bicubic or tuple(crop.shape[:2]) == size:
            return resize_to_crop(crop, size, region.kind, decide_size=decide)
        small = resize_aa_window(crop.astype(np.float32), size, (0, size[0]), (0, size[1]))
        return round_uint8_fast(small)

    def _reference_region(self, image: np.ndarray, region: Region, rng: np.random.Generator) -> np.ndarray:
        """The plain pipeline (whole expanded box, torch resizes): what anonymize_region reproduces."""
        ch, cw = region.crop_size
        crop = cut_pad(image, region.exp_box)
        small = resize_to_crop(crop, (ch, cw), region.kind, decide_size=box_size(region.clip_box))
        x = to_unit(small)
        filled = self.fill_crop_for(x, region)
        x = np.where(region.crop_mask[..., None], filled, x)
        return resize_from_crop(from_unit(x), box_size(region.exp_box))

    def fill_crop(self, x: np.ndarray) -> np.ndarray:
        """The replacement for the whole crop (HxWx3 float32 in [-1, 1]); only crop_mask pixels are used."""
        raise NotImplementedError

    def fill_crop_for(self, x: np.ndarray, region: Region) -> np.ndarray:
        """fill_crop when the replacement depends on the region's size in the image (strength floors)."""
        return self.fill_crop(x)


# ----------------------------------------------------------------------------------------------------- mask-out
@ANONYMIZERS.register("mask_out")
class MaskOut(Anonymizer):
    """I·(1−M) + fill·M on image_mask, exactly (no crop resampling, so no blending at the mask's edge).
    fill 127 by default (mid-grey); the reference's grey is 0 in [-1, 1] space, i.e. 128 after its rounding."""

    name = "mask_out"
    defaults = {"fill": 127}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        fill = params["fill"]
        if isinstance(fill, (list, tuple)):
            if len(fill) != 3:
                raise AnonymizerConfigError(f"{self.name}: parameter 'fill' must be an int or [r, g, b], "
                                            f"got {fill!r}")
            fill = [check_int(self.name, "fill", v, 0, 255) for v in fill]
        else:
            fill = check_int(self.name, "fill", fill, 0, 255)
        return {"fill": fill}

    @property
    def tag(self) -> str:
        fill = self._params["fill"]
        if fill == self.defaults["fill"]:
            return self.name
        return f"{self.name}_fill" + ("-".join(str(v) for v in fill) if isinstance(fill, list) else str(fill))

    def anonymize_region(self, image: np.ndarray, region: Region, rng: np.random.Generator) -> np.ndarray:
        x0, y0, x1, y1 = region.clip_box
        fill = np.asarray(self._params["fill"], dtype=np.uint8)
        return np.broadcast_to(fill, (y1 - y0, x1 - x0, 3))


# ----------------------------------------------------------------------------------------------------- blur
@lru_cache(maxsize=256)
def _kernel(kernel: int, sigma: float) -> np.ndarray:
    """gaussian_kernel1d, cached (it is built with torch)."""
    k = gaussian_kernel1d(kernel, sigma)
    k.setflags(write=False)
    return k


def default_kernel(sigma: float) -> int:
    """The reference's kernel size 3σ (21 for σ = 7), made odd and at least 3."""
    k = max(3, int(3 * sigma))
    return k + 1 - k % 2


def kernel_std(kernel: int, sigma: float) -> float:
    """Standard deviation (pixels) of the discrete, truncated Gaussian kernel the blurs use: less than sigma when
    the kernel is short (the reference's 3σ kernel, ±1.5σ, has std ≈ 0.74σ)."""
    k = gaussian_kernel1d(kernel, sigma).astype(np.float64)
    x = np.arange(kernel, dtype=np.float64) - (kernel - 1) / 2
    return float(np.sqrt(np.sum(k * x * x)))


def gaussian_with_std(std: float) -> np.ndarray:
    """A 1-D smoothing kernel whose discrete standard deviation is `std` (>= 0): [1] for ~0, the three taps
    [std²/2, 1 − std², std²/2] below 0.7 (a sampled Gaussian that narrow is not one), else a sampled Gaussian
    with ±3σ support, σ corrected once so that its std is `std`."""
    if std < 1e-3:
        return np.ones(1, dtype=np.float32)
    if std < 0.7:
        a = std * std / 2
        return np.array([a, 1 - 2 * a, a], dtype=np.float32)
    kernel = 2 * int(np.ceil(3 * std)) + 1
    sigma = std * std / kernel_std(kernel, std)
    return gaussian_kernel1d(2 * int(np.ceil(3 * sigma)) + 1, sigma)


@ANONYMIZERS.register("blur")
class GaussianBlur(CropSpaceAnonymizer):
    """I·(1−M) + blur(I)·M. space="crop" (default, the reference's GaussianBlurGenerator): blur of the whole
    resized crop (288×160 bodies, 128×128 faces), kernel min(kernel, crop width). space="image": blur at the
    image's own resolution (the paper's formula read literally), identical to blurring the whole image with
    cv2.GaussianBlur (default border) and compositing.

    min_image_sigma (default null = off, the reference): a floor on the blur's strength in image pixels. The
    blur's effective size in the image is the standard deviation of its kernel scaled to the image: in crop
    space std(kernel) · (expanded box h / crop h) vertically and · (w / crop w) horizontally (σ = 7, kernel 21:
    about 5.2 · H / 288 for a body whose expanded box is H pixels tall: 0.2 px at H = 12); in image space
    std(kernel). Where that is below the floor, the result is blurred again in image space (inside the clip box,
    reflected border) with the missing standard deviation sqrt(floor² − effective²), so that the total is the
    floor; where it is not, the output is bit-identical to the method without the floor. Resampling softness
    is not counted, so the floor errs on the strong side.

    Measured with `avanon.anonymizers.strength.detail_kept` (the share of fine detail kept; tests/test_strength.py:
    the astronaut image as a person's texture, elliptical mask, body regions as the selector makes them): a 12 px
    tall person keeps 0.68 of its detail under the reference's crop-space blur (17×33 px: 0.37, 200 px: 0.01);
    `min_image_sigma: 2` keeps at most 0.07 at every size from 10 to 200 px (12 px: 0.01-0.03), `min_image_sigma: 1`
    at most 0.22, `space: image` (σ = 7) at most 0.01.
    """

    name = "blur"
    defaults = {"sigma": 7, "kernel": None, "space": "crop", "min_image_sigma": None}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        sigma = check_positive(self.name, "sigma", params["sigma"])
        kernel = params["kernel"]
        kernel = check_int(self.name, "kernel", default_kernel(sigma) if kernel is None else kernel, 3)
        if kernel % 2 == 0:
            raise AnonymizerConfigError(f"{self.name}: parameter 'kernel' must be odd, got {kernel}")
        space = check_choice(self.name, "space", params["space"], ("crop", "image"))
        out = {"sigma": sigma, "kernel": kernel, "space": space}
        floor = check_floor(self.name, "min_image_sigma", params["min_image_sigma"])
        if floor is not None:  # recorded only when on: the reference's params (and mirror identity) unchanged
            out["min_image_sigma"] = floor
        return out

    @property
    def tag(self) -> str:
        p = self._params
        tag = self.name + ("_image" if p["space"] == "image" else "")
        if p["sigma"] != 7:
            tag += f"_sigma{p['sigma']:g}"
        if p["kernel"] != default_kernel(p["sigma"]):
            tag += f"_k{p['kernel']}"
        if p.get("min_image_sigma") is not None:
            tag += f"_minsigma{p['min_image_sigma']:g}"
        return tag

    def anonymize_region(self, image: np.ndarray, region: Region, rng: np.random.Generator) -> np.ndarray:
        if self._params["space"] == "image":
            patch = self._blur_in_image(image, region)
        else:
            patch = super().anonymize_region(image, region, rng)
        if self._params.get("min_image_sigma") is None:
            return patch
        return self._apply_floor(patch, region)

    def _needs_whole_patch(self) -> bool:
        return self._params.get("min_image_sigma") is not None

    def effective_image_sigma(self, region: Region) -> tuple[float, float]:
        """(vertical, horizontal) standard deviation in image pixels of the configured blur for this region."""
        p = self._params
        if p["space"] == "image":
            s = kernel_std(p["kernel"], float(p["sigma"]))
            return s, s
        ch, cw = region.crop_size
        k = self._crop_kernel(ch, cw)
        s = kernel_std(k, float(p["sigma"]))
        eh, ew = box_size(region.exp_box)
        return s * eh / ch, s * ew / cw

    def _apply_floor(self, patch: np.ndarray, region: Region) -> np.ndarray:
        floor = float(self._params["min_image_sigma"])
        ey, ex = self.effective_image_sigma(region)
        my, mx = (np.sqrt(max(floor * floor - e * e, 0.0)) for e in (ey, ex))
        if my < 1e-3 and mx < 1e-3:
            return patch
        if tuple(patch.shape[:2]) == box_size(region.exp_box):
            patch = drop_pad(patch, region)  # blur the pixels inside the image only (no zero padding)
        x = np.ascontiguousarray(patch, dtype=np.float32)
        out = cv2.sepFilter2D(x, cv2.CV_32F, gaussian_with_std(mx), gaussian_with_std(my),
                              borderType=cv2.BORDER_REFLECT_101)
        return out.reshape(x.shape)

    def _crop_kernel(self, h: int, w: int) -> int:
        k = min(self._params["kernel"], w)  # the reference: min(3σ, crop width)
        k = min(k, h if h % 2 else h - 1)  # reflect padding needs kernel // 2 < h
        return k - (1 - k % 2)  # keep it odd (the reference would fail on an even width)

    def fill_crop(self, x: np.ndarray) -> np.ndarray:
        h, w = x.shape[:2]
        return gaussian_blur_crop(x, self._crop_kernel(h, w), float(self._params["sigma"]))

    def composite(self, small: np.ndarray, region: Region) -> np.ndarray:
        """As the base class, in byte units: the blur of the bytes is from_unit of the blur in [-1, 1] (the
        affine maps commute with a kernel summing to 1), equal to float32 rounding; unchanged pixels get the
        exact round trip from a lookup."""
        h, w = small.shape[:2]
        k = _kernel(self._crop_kernel(h, w), float(self._params["sigma"]))
        blurred = scratch("blurred", small.shape)
        res = cv2.sepFilter2D(small, cv2.CV_32F, k, k, dst=blurred, borderType=cv2.BORDER_REFLECT_101)
        if res.ctypes.data != blurred.ctypes.data:  # cv2 did not write in place (it always does for 3 channels)
            blurred = res.reshape(small.shape)
        return _where_mask(region.crop_mask, blurred, _lut(small, _ROUND_TRIP, "kept"))

    def _blur_in_image(self, image: np.ndarray, region: Region) -> np.ndarray:
        """Blur only the clip box plus a kernel//2 margin: every output pixel sees the same neighbourhood as in
        a whole-image blur, and the window's edges coincide with the image's wherever a border is reflected."""
        k = self._params["kernel"]
        sigma = float(self._params["sigma"])
        m = k // 2
        h, w = image.shape[:2]
        x0, y0, x1, y1 = region.clip_box
        wx0, wy0, wx1, wy1 = max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, w), min(y1 + m, h)
        window = np.ascontiguousarray(image[wy0:wy1, wx0:wx1])
        blurred = cv2.GaussianBlur(window, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_DEFAULT)
        return blurred[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]


# ----------------------------------------------------------------------------------------------------- pixelation
@ANONYMIZERS.register("pixelate")
class Pixelate(CropSpaceAnonymizer):
    """The crop resized to size×size and back. interpolation="bilinear": the reference's PixelationGenerator
    (bilinear, align_corners=True, both ways: a smooth low-resolution version). "nearest": classic mosaic blocks
    (block means, shown as flat blocks).

    min_image_block (default null = off, the reference): a floor on the cell size in image pixels. A cell covers
    (expanded box h / rows) × (w / columns) image pixels, e.g. 1.5 px for size 8 and a 12 px tall expanded box.
    Along an axis where that is below the floor, the grid has floor(box side / min_image_block) cells (at least
    1) instead of `size`; where it is not, the output is bit-identical to the method without the floor.
    Measured with `detail_kept` (as for blur): pixelate 8 keeps 0.43 of a 12 px tall person's detail (pixelate
    16: 0.66); with `min_image_block: 4`, 0.20 (at most 0.3 at every size from 10 to 200 px).
    """

    name = "pixelate"
    defaults = {"size": 8, "interpolation": "bilinear", "min_image_block": None}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        size = check_int(self.name, "size", params["size"], 1, 128)
        interpolation = check_choice(self.name, "interpolation", params["interpolation"], ("bilinear", "nearest"))
        out = {"size": size, "interpolation": interpolation}
        floor = check_floor(self.name, "min_image_block", params["min_image_block"])
        if floor is not None:  # recorded only when on: the reference's params (and mirror identity) unchanged
            out["min_image_block"] = floor
        return out

    @property
    def tag(self) -> str:
        p = self._params
        tag = f"{self.name}{p['size']}" + ("_nearest" if p["interpolation"] == "nearest" else "")
        if p.get("min_image_block") is not None:
            tag += f"_minblock{p['min_image_block']:g}"
        return tag

    def grid(self, region: Region) -> tuple[int, int]:
        """(rows, columns) of the pixelation grid for this region (size × size unless the floor lowers it)."""
        s = self._params["size"]
        floor = self._params.get("min_image_block")
        if floor is None:
            return s, s
        eh, ew = box_size(region.exp_box)
        return tuple(s if side / s >= floor else max(1, min(s, int(side // floor))) for side in (eh, ew))

    def fill_crop_for(self, x: np.ndarray, region: Region) -> np.ndarray:
        return self._pixelate(x, self.grid(region))

    def fill_crop(self, x: np.ndarray) -> np.ndarray:
        s = self._params["size"]
        return self._pixelate(x, (s, s))

    def _pixelate(self, x: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).unsqueeze(0)
        if self._params["interpolation"] == "bilinear":
            small = F.interpolate(t, size=grid, mode="bilinear", align_corners=True)
            t = F.interpolate(small, size=x.shape[:2], mode="bilinear", align_corners=True)
        else:
            small = F.adaptive_avg_pool2d(t, grid)
            t = F.interpolate(small, size=x.shape[:2], mode="nearest")
        return t[0].permute(1, 2, 0).numpy()
