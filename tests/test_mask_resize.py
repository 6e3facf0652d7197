"""region.body.mask_resize: the reference resizes uint8 person masks (its COCO and BDD100K scripts) like an image:
bicubic + antialias on the float 0/1 mask, rounded, non-zero = mask, NEAREST only when the clipped expanded box is
smaller than the crop in both dimensions. Checked against a direct torch computation, and on mask-out output."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avanon.anonymizers import build_anonymizer
from avanon.recipe import load_recipe
from avanon.regions import BODY_CROP, RegionConfigError, build_region_selector
from dataset_adapters.base import ImageRecord, Instance

RECIPES = Path(__file__).parent.parent / "recipes"


def human(h, w, top, height, cx):
    """A person-like full-image mask `height` px tall: head disk, torso ellipse, two slanted legs, two arms."""
    m = np.zeros((h, w), dtype=np.uint8)
    u = height / 300.0
    pt = lambda x, y: (int(round(cx + x * u)), int(round(top + y * u)))  # noqa: E731
    cv2.circle(m, pt(0, 22), int(22 * u), 1, -1)
    cv2.ellipse(m, pt(0, 100), (int(38 * u), int(60 * u)), 0, 0, 360, 1, -1)
    for side in (-1, 1):
        cv2.line(m, pt(side * 15, 150), pt(side * 30, 298), 1, max(1, int(22 * u)))
        cv2.line(m, pt(side * 35, 60), pt(side * 62, 165), 1, max(1, int(11 * u)))
    return m.astype(bool)


def selector(mode, **params):
    return build_region_selector("body", {"mask_resize": mode, **params}, {}, None, ("person",))


def region(mask, mode, **params):
    rec = ImageRecord("1", "a.jpg", mask.shape[1], mask.shape[0],
                      [Instance.from_full_mask(mask, instance_id="p", category="person")])
    (r,) = selector(mode, **params).select(rec).regions
    return r


def exp_cut(mask, exp_box):
    """The expanded box's view of a full-image mask, zero outside the image, as float32 0/1 (written out here,
    independently of avanon's geometry helpers)."""
    x0, y0, x1, y1 = exp_box
    h, w = mask.shape
    out = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = mask[cy0:cy1, cx0:cx1]
    return torch.from_numpy(out)[None, None]


def reference_uint8_crop(mask, r):
    """The reference's uint8 branch: float -> resize (bicubic+aa unless the clipped box is smaller in both
    dimensions) -> round -> clamp(0, 255) -> byte -> stored in a bool tensor."""
    cx0, cy0, cx1, cy1 = r.clip_box
    t = exp_cut(mask, r.exp_box)
    if cy1 - cy0 < BODY_CROP[0] and cx1 - cx0 < BODY_CROP[1]:
        out = F.interpolate(t, size=BODY_CROP, mode="nearest")
    else:
        out = F.interpolate(t, size=BODY_CROP, mode="bicubic", antialias=True, align_corners=False)
    return (out.round().clamp(0, 255).to(torch.uint8) != 0)[0, 0].numpy()


def lying(h, w):
    """A 300 px person lying across an image only `h` px tall (the standing mask with its axes swapped)."""
    return np.ascontiguousarray(human(w, h, 10, 300, h // 2).T)


# mask and the branch the reference takes
CASES = {
    "larger": (lambda: human(480, 640, 90, 300, 320), "bicubic"),   # clipped box ~330x185: downscaled in both
    "smaller": (lambda: human(480, 640, 150, 100, 320), "nearest"),  # clipped box ~110x61: upscaled in both
    "taller": (lambda: human(480, 150, 90, 300, 75), "bicubic"),    # box wider than the image: width < 160 only
    "wider": (lambda: lying(150, 640), "bicubic"),                  # box taller than the image: height < 288 only
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_uint8_matches_direct_computation(case):
    make, branch = CASES[case]
    m = make()
    r = region(m, "reference_uint8")
    near = region(m, "nearest")
    cx0, cy0, cx1, cy1 = r.clip_box
    smaller_both = cy1 - cy0 < BODY_CROP[0] and cx1 - cx0 < BODY_CROP[1]
    assert smaller_both == (branch == "nearest"), (case, r.clip_box)
    if case in ("taller", "wider"):
        assert (cy1 - cy0 < BODY_CROP[0]) != (cx1 - cx0 < BODY_CROP[1]), "mixed case must be mixed"
    und = r.extra["crop_mask_undilated"]
    assert np.array_equal(und, reference_uint8_crop(m, r))
    assert r.extra["mask_resize"] == "reference_uint8" and r.exp_box == near.exp_box
    if branch == "nearest":
        assert np.array_equal(und, near.extra["crop_mask_undilated"])
        assert np.array_equal(r.crop_mask, near.crop_mask) and np.array_equal(r.image_mask, near.image_mask)
    else:
        assert not np.array_equal(und, near.extra["crop_mask_undilated"])


def test_bicubic_rounding_threshold_is_strictly_above_half():
    # .round() is half to even: 0.5 -> 0, so a crop pixel is mask exactly where the bicubic value exceeds 0.5
    # (overshoot above 1.5 would round to 2, still non-zero).
    m = human(480, 640, 90, 300, 320)
    r = region(m, "reference_uint8")
    v = F.interpolate(exp_cut(m, r.exp_box), size=BODY_CROP, mode="bicubic", antialias=True,
                      align_corners=False)[0, 0].numpy()
    assert np.array_equal(r.extra["crop_mask_undilated"], v > 0.5)
    assert v.min() < 0 and v.max() > 1  # bicubic over/undershoot happens, and rounding absorbs it
    assert torch.tensor([0.5, 0.5000001, 1.5]).round().tolist() == [0.0, 1.0, 2.0]


def test_pixels_dilation_resizes_the_dilated_mask_with_the_same_rule():
    m = human(480, 640, 90, 300, 320)
    params = {"dilation": "pixels", "dilation_radius": 3}
    r, near = region(m, "reference_uint8", **params), region(m, "nearest", **params)
    assert np.array_equal(r.image_mask, near.image_mask)  # image-space dilation does not resize anything
    full = np.zeros(m.shape, dtype=bool)
    cx0, cy0, cx1, cy1 = r.clip_box
    full[cy0:cy1, cx0:cx1] = r.image_mask
    assert np.array_equal(r.crop_mask, reference_uint8_crop(full, r))
    assert not np.array_equal(r.crop_mask, near.crop_mask)


@pytest.mark.parametrize("bad", ["bicubic", "", None, 1, True])
def test_unknown_mode_names_the_key(bad):
    with pytest.raises(RegionConfigError, match=r"region\.body\.mask_resize"):
        selector(bad)


def test_describe_differs_between_modes():
    a, b = selector("nearest").describe(), selector("reference_uint8").describe()
    assert a["params"]["mask_resize"] == "nearest" and b["params"]["mask_resize"] == "reference_uint8"
    assert a != b
    default = build_region_selector("body", {}, {}, None, ("person",)).describe()
    assert default == a


@pytest.mark.parametrize("name, mode", [
    ("coco_body", "reference_uint8"), ("bdd100k_body", "reference_uint8"),
    ("bdd100k_body_minsize32", "reference_uint8"), ("cityscapes_body", "nearest"),
    ("cityscapes_body_minsize32", "nearest"), ("cityscapes_body_depth", "nearest"),
    ("cityscapes_body_other_classes", "nearest"), ("cityscapes_body_truncation", "nearest"), ("demo", "nearest"),
])
def test_paper_recipes_resolve_mask_resize(name, mode, monkeypatch):
    for var in ("AVANON_CITYSCAPES_ROOT", "AVANON_BDD100K_ROOT", "AVANON_COCO_ROOT"):
        monkeypatch.setenv(var, "/data/x")
    r = load_recipe(RECIPES / f"{name}.yaml")
    sel = build_region_selector("body", r["regions"]["body"], r["filters"], None, ("person",))
    assert sel.describe()["params"]["mask_resize"] == mode


def _mask_out(m, mode, **params):
    r = region(m, mode, **params)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, m.shape + (3,), dtype=np.uint8)
    out = build_anonymizer("mask_out", {"fill": 128}).anonymize(image, [r], seed=0)
    return r, (out != image).any(axis=2)


def _distance_to_outline(mask):
    """Distance (image px) of every pixel to the nearest pixel on the other side of `mask`'s outline."""
    m = mask.astype(np.uint8)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)  # 0 on the mask
    inside = cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)     # 0 off the mask
    return np.maximum(outside, inside)


def _full(r, shape):
    full = np.zeros(shape, dtype=bool)
    cx0, cy0, cx1, cy1 = r.clip_box
    full[cy0:cy1, cx0:cx1] = r.image_mask
    return full


@pytest.mark.parametrize("radius", [0, 4])
def test_mask_out_differs_only_along_the_outline(radius):
    # One 300 px person in 640x480 (crop scale 330/288 = 1.15 image px per crop px). With dilation_radius 0 the
    # region is the resized person mask, so differences hug the person's outline; with the reference's disk(4)
    # they hug the dilated outline, radius * scale further out.
    m = human(480, 640, 90, 300, 320)
    r8, changed8 = _mask_out(m, "reference_uint8", dilation_radius=radius)
    rn, changedn = _mask_out(m, "nearest", dilation_radius=radius)
    diff = changed8 != changedn
    assert 0 < diff.sum() < 0.05 * m.sum()
    assert not (diff & m).any()  # both cover the person itself
    scale = (r8.exp_box[3] - r8.exp_box[1]) / BODY_CROP[0]
    assert _distance_to_outline(m)[diff].max() <= radius * scale + 3
    assert np.array_equal(changed8, _full(r8, m.shape)) and np.array_equal(changedn, _full(rn, m.shape))
