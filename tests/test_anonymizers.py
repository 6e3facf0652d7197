"""Traditional anonymizers: contract (never write outside the regions, determinism, recursive order), params,
tags, and fidelity to the reference pipeline written naively with torchvision (docs/reference.md §2, §3.1)."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from avanon.anonymizers import ANONYMIZERS, AnonymizerConfigError, build_anonymizer
from avanon.anonymizers.crops import clip_to_image
from avanon.regions.base import BODY_CROP, FACE_CROP, Region

H, W = 120, 160
CONFIGS = [
    ("mask_out", {}),
    ("mask_out", {"fill": [10, 200, 30]}),
    ("blur", {}),
    ("blur", {"space": "image"}),
    ("pixelate", {}),
    ("pixelate", {"size": 16, "interpolation": "nearest"}),
]


def textured(h=H, w=W, seed=0):
    """Noise plus gradients: every blur or pixelation visibly changes it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    return np.clip(base + rng.integers(-60, 61, (h, w, 3)), 0, 255).astype(np.uint8)


def _nearest(a, size):
    return F.interpolate(torch.from_numpy(a)[None, None].float(), size=size, mode="nearest")[0, 0].numpy() > 0.5


def make_region(mask, exp_box, kind="body", crop_size=None, iid="0"):
    """A Region as the selector would make it: crop_mask = the cut mask resized NEAREST to the crop; image_mask =
    crop_mask resized NEAREST back to the expanded box, padding dropped, OR'd with the instance mask."""
    crop_size = crop_size or (BODY_CROP if kind == "body" else FACE_CROP)
    x0, y0, x1, y1 = exp_box
    padded = np.zeros((y1 - y0, x1 - x0), bool)
    cx0, cy0, cx1, cy1 = clip_to_image(exp_box, mask.shape)
    padded[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = mask[cy0:cy1, cx0:cx1]
    crop_mask = _nearest(padded, crop_size)
    back = _nearest(crop_mask, (y1 - y0, x1 - x0))[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    image_mask = back | mask[cy0:cy1, cx0:cx1]
    return Region(iid, kind, exp_box, crop_size, crop_mask, (cx0, cy0, cx1, cy1), image_mask, int(mask.sum()))


def ellipse_region(cx, cy, rx, ry, exp_box, shape=(H, W), **kw):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    return make_region(mask, exp_box, **kw)


def random_regions(rng, n, shape=(H, W)):
    """Random boxes, some partly outside the image, overlapping, with random masks inside; body and face crops."""
    regions = []
    for i in range(n):
        bw, bh = int(rng.integers(8, 90)), int(rng.integers(8, 90))
        x0, y0 = int(rng.integers(-bw // 2, shape[1] - bw // 2)), int(rng.integers(-bh // 2, shape[0] - bh // 2))
        mask = np.zeros(shape, bool)
        ix0, iy0 = x0 + bw // 4, y0 + bh // 4
        mask[max(iy0, 0):max(iy0 + bh // 2, 0), max(ix0, 0):max(ix0 + bw // 2, 0)] = True
        mask &= rng.random(shape) < 0.8
        kind = "face" if i % 3 == 2 else "body"
        regions.append(make_region(mask, (x0, y0, x0 + bw, y0 + bh), kind=kind, iid=str(i)))
    return regions


def union_mask(regions, shape=(H, W)):
    u = np.zeros(shape, bool)
    for r in regions:
        x0, y0, x1, y1 = r.clip_box
        u[y0:y1, x0:x1] |= r.image_mask
    return u


# ----------------------------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name,params", CONFIGS)
def test_never_writes_outside_union_and_is_deterministic(name, params):
    anon = build_anonymizer(name, params)
    rng = np.random.default_rng(123)
    for trial in range(3):
        image = textured(seed=trial)
        before = image.copy()
        regions = random_regions(rng, 6)
        out = anon.anonymize(image, regions, seed=trial)
        assert np.array_equal(image, before), "input modified"
        assert out is not image and out.dtype == np.uint8 and out.shape == image.shape
        outside = ~union_mask(regions)
        assert np.array_equal(out[outside], image[outside])
        assert np.array_equal(out, anon.anonymize(image, regions, seed=trial + 99))


@pytest.mark.parametrize("name,params", CONFIGS)
def test_no_regions_is_identity_copy(name, params):
    image = textured()
    out = build_anonymizer(name, params).anonymize(image, [], seed=0)
    assert np.array_equal(out, image) and out is not image


def test_region_entirely_outside_is_skipped():
    image = textured()
    r = Region("x", "body", (200, 10, 236, 75), BODY_CROP, np.ones(BODY_CROP, bool), (200, 10, 160, 75),
               np.zeros((0, 0), bool), 0)
    assert np.array_equal(build_anonymizer("blur", {}).anonymize(image, [r], 0), image)


def test_rejects_non_rgb_uint8():
    anon = build_anonymizer("blur", {})
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        anon.anonymize(textured().astype(np.float32), [], 0)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        anon.anonymize(textured()[..., 0], [], 0)


@pytest.mark.parametrize("params", [{}, {"space": "image"}])
def test_blur_changes_masked_pixels(params):
    image = textured()
    r = ellipse_region(80, 60, 18, 35, (50, 10, 110, 110))
    out = build_anonymizer("blur", params).anonymize(image, [r], 0)
    x0, y0, x1, y1 = r.clip_box
    changed = (out[y0:y1, x0:x1] != image[y0:y1, x0:x1]).any(-1)[r.image_mask]
    assert changed.mean() > 0.9
    # and it is a blur: the masked pixels' local variation drops
    inner = np.zeros((H, W), bool)
    inner[y0:y1, x0:x1] = r.image_mask
    assert np.abs(np.diff(out.astype(int), axis=1))[inner[:, 1:] & inner[:, :-1]].mean() < \
        0.5 * np.abs(np.diff(image.astype(int), axis=1))[inner[:, 1:] & inner[:, :-1]].mean()


@pytest.mark.parametrize("fill", [127, 0, [10, 200, 30]])
def test_mask_out_pixels_equal_fill(fill):
    image = textured()
    regions = random_regions(np.random.default_rng(5), 5)
    out = build_anonymizer("mask_out", {"fill": fill}).anonymize(image, regions, 0)
    u = union_mask(regions)
    assert (out[u] == np.broadcast_to(np.asarray(fill, np.uint8), (int(u.sum()), 3))).all()
    assert np.array_equal(out[~u], image[~u])


@pytest.mark.parametrize("params", [{}, {"space": "image"}, {"size": 8}])
def test_recursive_order_is_respected(params):
    """Overlapping regions: the second is cut from the first's output (the reference's recursive stitching)."""
    name = "pixelate" if "size" in params else "blur"
    anon = build_anonymizer(name, params)
    image = textured()
    a = ellipse_region(70, 60, 20, 35, (40, 15, 100, 105), iid="a")
    b = ellipse_region(90, 60, 20, 35, (60, 15, 120, 105), iid="b")
    both = anon.anonymize(image, [a, b], 0)
    stepwise = anon.anonymize(anon.anonymize(image, [a], 0), [b], 0)
    assert np.array_equal(both, stepwise)
    assert not np.array_equal(both, anon.anonymize(image, [b, a], 0))


# ----------------------------------------------------------------------------------------------------- fidelity
def test_image_blur_equals_whole_image_blur():
    image = textured()
    full = cv2.GaussianBlur(image, (21, 21), 7, sigmaY=7)
    anon = build_anonymizer("blur", {"space": "image"})
    for r in [ellipse_region(80, 60, 18, 35, (50, 10, 110, 110)),      # inside
              ellipse_region(5, 8, 15, 25, (-20, -30, 30, 60)),        # at the top-left corner, partly outside
              ellipse_region(150, 110, 30, 20, (110, 80, 200, 150))]:  # bottom-right, partly outside
        u = union_mask([r])
        expect = image.copy()
        expect[u] = full[u]
        assert np.array_equal(anon.anonymize(image, [r], 0), expect)


def reference_pipeline(image, regions, generator):
    """The reference's anonymize_detections + cut_pad_resize, written naively with torch / torchvision, pasting on
    the region's image_mask. generator(x[-1,1] 1CHW, keep_mask 1CHW) -> 1CHW."""
    im = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    for r in regions:
        x0, y0, x1, y1 = r.exp_box
        cx0, cy0, cx1, cy1 = r.clip_box
        crop = torch.zeros((3, y1 - y0, x1 - x0), dtype=torch.uint8)
        crop[:, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = im[:, cy0:cy1, cx0:cx1]
        th, tw = r.crop_size
        if r.kind == "face" and (cy1 - cy0) * (cx1 - cx0) >= th * tw:
            crop = torch.from_numpy(cv2.resize(crop.permute(1, 2, 0).numpy(), (tw, th),
                                               interpolation=cv2.INTER_AREA)).permute(2, 0, 1)
        elif (x1 - x0, y1 - y0) != (tw, th):
            mode = InterpolationMode.BICUBIC
            if r.kind == "body" and (cy1 - cy0) < th and (cx1 - cx0) < tw:
                mode = InterpolationMode.NEAREST
            crop = TF.resize(crop.float(), [th, tw], interpolation=mode,
                             antialias=mode == InterpolationMode.BICUBIC).round().clamp(0, 255).byte()
        img = TF.normalize(crop[None].float(), [127.5] * 3, [127.5] * 3)
        keep = torch.from_numpy(~r.crop_mask)[None, None].float()
        out = (generator(img, keep) + 1).div(2).clamp(0, 1).mul(255)
        gim = TF.resize(out[0], [y1 - y0, x1 - x0], interpolation=InterpolationMode.BICUBIC, antialias=True)
        gim = gim[:, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        m = torch.from_numpy(r.image_mask)[None].expand(3, -1, -1)
        im[:, cy0:cy1, cx0:cx1][m] = gim[m].round().clamp(0, 255).byte()
    return im.permute(1, 2, 0).numpy()


def ref_blur(img, keep):
    return img * keep + (1 - keep) * TF.gaussian_blur(img, kernel_size=min(21, img.shape[-1]), sigma=7)


def ref_pixelate(size):
    def gen(img, keep):
        small = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=True)
        return F.interpolate(small, size=img.shape[-2:], mode="bilinear", align_corners=True) * (1 - keep) \
            + img * keep
    return gen


@pytest.mark.parametrize("name,params,generator", [
    ("blur", {}, ref_blur),
    ("pixelate", {"size": 8}, ref_pixelate(8)),
    ("pixelate", {"size": 16}, ref_pixelate(16)),
])
def test_crop_methods_match_reference_pipeline(name, params, generator):
    """Same crop, resize, generator and paste as the reference; only float32 summation order may differ, so a
    pixel may land on the other side of a .5 rounding boundary (blur: separable vs 2-D convolution)."""
    image = textured(200, 240, seed=3)
    rng = np.random.default_rng(7)
    regions = random_regions(rng, 8, shape=(200, 240))
    regions.append(ellipse_region(120, 100, 10, 20, (100, 60, 140, 140), shape=(200, 240)))  # upsampled: NEAREST
    regions.append(ellipse_region(120, 100, 60, 90, (40, -20, 200, 220), shape=(200, 240)))  # downsampled
    # larger than the crop, but its in-image part is not: the reference picks NEAREST on the clipped box
    regions.append(ellipse_region(20, 100, 25, 90, (-150, -100, 40, 250), shape=(200, 240)))
    regions.append(ellipse_region(150, 90, 60, 70, (70, 10, 230, 170), shape=(200, 240), kind="face"))  # INTER_AREA
    ours = build_anonymizer(name, params).anonymize(image, regions, 0).astype(int)
    ref = reference_pipeline(image, regions, generator).astype(int)
    diff = np.abs(ours - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_pixelate_nearest_makes_flat_blocks():
    anon = build_anonymizer("pixelate", {"size": 8, "interpolation": "nearest"})
    x = np.random.default_rng(0).random((288, 160, 3)).astype(np.float32)
    out = anon.fill_crop(x)
    blocks = out.reshape(8, 36, 8, 20, 3)
    assert np.ptp(blocks, axis=(1, 3)).max() == 0
    assert np.allclose(blocks[:, 0, :, 0], x.reshape(8, 36, 8, 20, 3).mean(axis=(1, 3)), atol=1e-6)


# ----------------------------------------------------------------------------------------------------- params, tags
def test_registry_and_resolved_params():
    assert {"mask_out", "blur", "pixelate"} <= set(ANONYMIZERS.names())
    assert build_anonymizer("blur", {}).params == {"sigma": 7, "kernel": 21, "space": "crop"}
    assert build_anonymizer("blur", {"sigma": 3}).params["kernel"] == 9
    assert build_anonymizer("blur", None).params["kernel"] == 21
    assert build_anonymizer("mask_out", {}).params == {"fill": 127}
    assert build_anonymizer("mask_out", {"fill": (1, 2, 3)}).params == {"fill": [1, 2, 3]}
    assert build_anonymizer("pixelate", {}).params == {"size": 8, "interpolation": "bilinear"}


@pytest.mark.parametrize("name,params,tag", [
    ("blur", {}, "blur"),
    ("blur", {"space": "image"}, "blur_image"),
    ("blur", {"sigma": 3}, "blur_sigma3"),
    ("blur", {"kernel": 31}, "blur_k31"),
    ("blur", {"sigma": 2.5, "kernel": 5, "space": "image"}, "blur_image_sigma2.5_k5"),
    ("mask_out", {}, "mask_out"),
    ("mask_out", {"fill": 128}, "mask_out_fill128"),
    ("mask_out", {"fill": [0, 0, 0]}, "mask_out_fill0-0-0"),
    ("pixelate", {}, "pixelate8"),
    ("pixelate", {"size": 16}, "pixelate16"),
    ("pixelate", {"size": 16, "interpolation": "nearest"}, "pixelate16_nearest"),
])
def test_tags(name, params, tag):
    assert build_anonymizer(name, params).tag == tag


@pytest.mark.parametrize("name,params,key", [
    ("blur", {"sgima": 7}, "sgima"),
    ("blur", {"sigma": -1}, "sigma"),
    ("blur", {"sigma": "7"}, "sigma"),
    ("blur", {"kernel": 20}, "kernel"),
    ("blur", {"kernel": 1}, "kernel"),
    ("blur", {"kernel": 21.0}, "kernel"),
    ("blur", {"space": "world"}, "space"),
    ("mask_out", {"fill": 256}, "fill"),
    ("mask_out", {"fill": [1, 2]}, "fill"),
    ("mask_out", {"fill": True}, "fill"),
    ("pixelate", {"size": 0}, "size"),
    ("pixelate", {"interpolation": "bicubic"}, "interpolation"),
])
def test_bad_params_name_the_key(name, params, key):
    with pytest.raises(AnonymizerConfigError, match=repr(key)):
        build_anonymizer(name, params)


def test_unknown_anonymizer_and_non_mapping_params():
    with pytest.raises(AnonymizerConfigError, match="'smudge'"):
        build_anonymizer("smudge", {})
    with pytest.raises(AnonymizerConfigError, match="mapping"):
        build_anonymizer("blur", [("sigma", 7)])


@pytest.mark.parametrize("name,params", CONFIGS)
def test_tiny_images_and_crops(name, params):
    """Kernels larger than the image or the crop are cut down (crop) or reflected (image), never fail."""
    anon = build_anonymizer(name, params)
    for h, w in [(1, 1), (2, 3), (7, 5)]:
        image = textured(h, w)
        mask = np.ones((h, w), bool)
        r = make_region(mask, (-1, -2, w + 1, h + 2), crop_size=(8, 6))
        out = anon.anonymize(image, [r], 0)
        assert out.shape == image.shape
