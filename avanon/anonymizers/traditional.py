"""Traditional anonymizers: mask-out, Gaussian blur, pixelation (docs/reference.md §2: the reference's dummy
generators, run through the same crop geometry as its GANs)."""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from avanon.anonymizers.base import (ANONYMIZERS, Anonymizer, AnonymizerConfigError, check_choice, check_int,
                                     check_positive)
from avanon.anonymizers.crops import (box_size, cut_pad, from_unit, gaussian_blur_crop, resize_from_crop,
                                      resize_to_crop, to_unit)
from avanon.regions.base import Region


class CropSpaceAnonymizer(Anonymizer):
    """Shared pipeline of the reference's generators: cut the expanded box (zero padding), resize to crop_size,
    replace the crop_mask pixels with `fill_crop(...)` in [-1, 1] space, resize back (bicubic + antialias) to the
    expanded box; the base class pastes on image_mask and rounds once."""

    def anonymize_region(self, image: np.ndarray, region: Region, rng: np.random.Generator) -> np.ndarray:
        ch, cw = region.crop_size
        if tuple(region.crop_mask.shape) != (ch, cw):
            raise ValueError(f"region {region.instance_id}: crop_mask shape {region.crop_mask.shape} "
                             f"!= crop_size {(ch, cw)}")
        crop = cut_pad(image, region.exp_box)
        small = resize_to_crop(crop, (ch, cw), region.kind, decide_size=box_size(region.clip_box))
        x = to_unit(small)
        filled = self.fill_crop(x)
        x = np.where(region.crop_mask[..., None], filled, x)
        return resize_from_crop(from_unit(x), box_size(region.exp_box))

    def fill_crop(self, x: np.ndarray) -> np.ndarray:
        """The replacement for the whole crop (HxWx3 float32 in [-1, 1]); only crop_mask pixels are used."""
        raise NotImplementedError


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
def default_kernel(sigma: float) -> int:
    """The reference's kernel size 3σ (21 for σ = 7), made odd and at least 3."""
    k = max(3, int(3 * sigma))
    return k + 1 - k % 2


@ANONYMIZERS.register("blur")
class GaussianBlur(CropSpaceAnonymizer):
    """I·(1−M) + blur(I)·M. space="crop" (default, the reference's GaussianBlurGenerator): blur of the whole
    resized crop (288×160 bodies, 128×128 faces), kernel min(kernel, crop width). space="image": blur at the
    image's own resolution (the paper's formula read literally), identical to blurring the whole image with
    cv2.GaussianBlur (default border) and compositing."""

    name = "blur"
    defaults = {"sigma": 7, "kernel": None, "space": "crop"}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        sigma = check_positive(self.name, "sigma", params["sigma"])
        kernel = params["kernel"]
        kernel = check_int(self.name, "kernel", default_kernel(sigma) if kernel is None else kernel, 3)
        if kernel % 2 == 0:
            raise AnonymizerConfigError(f"{self.name}: parameter 'kernel' must be odd, got {kernel}")
        space = check_choice(self.name, "space", params["space"], ("crop", "image"))
        return {"sigma": sigma, "kernel": kernel, "space": space}

    @property
    def tag(self) -> str:
        p = self._params
        tag = self.name + ("_image" if p["space"] == "image" else "")
        if p["sigma"] != 7:
            tag += f"_sigma{p['sigma']:g}"
        if p["kernel"] != default_kernel(p["sigma"]):
            tag += f"_k{p['kernel']}"
        return tag

    def anonymize_region(self, image: np.ndarray, region: Region, rng: np.random.Generator) -> np.ndarray:
        if self._params["space"] == "image":
            return self._blur_in_image(image, region)
        return super().anonymize_region(image, region, rng)

    def fill_crop(self, x: np.ndarray) -> np.ndarray:
        h, w = x.shape[:2]
        k = min(self._params["kernel"], w)  # the reference: min(3σ, crop width)
        k = min(k, h if h % 2 else h - 1)  # reflect padding needs kernel // 2 < h
        k -= 1 - k % 2  # keep it odd (the reference would fail on an even width)
        return gaussian_blur_crop(x, k, float(self._params["sigma"]))

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
    (block means, shown as flat blocks)."""

    name = "pixelate"
    defaults = {"size": 8, "interpolation": "bilinear"}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        size = check_int(self.name, "size", params["size"], 1, 128)
        interpolation = check_choice(self.name, "interpolation", params["interpolation"], ("bilinear", "nearest"))
        return {"size": size, "interpolation": interpolation}

    @property
    def tag(self) -> str:
        p = self._params
        return f"{self.name}{p['size']}" + ("_nearest" if p["interpolation"] == "nearest" else "")

    def fill_crop(self, x: np.ndarray) -> np.ndarray:
        s = self._params["size"]
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).unsqueeze(0)
        if self._params["interpolation"] == "bilinear":
            small = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=True)
            t = F.interpolate(small, size=x.shape[:2], mode="bilinear", align_corners=True)
        else:
            small = F.adaptive_avg_pool2d(t, (s, s))
            t = F.interpolate(small, size=x.shape[:2], mode="nearest")
        return t[0].permute(1, 2, 0).numpy()
