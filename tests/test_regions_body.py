"""Body regions: the reference's expansion numbers worked by hand, dilation in crop space, coverage, paste order."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_dilation
from skimage.morphology import disk

from avanon.regions import BODY_CROP, build_region_selector
from avanon.regions.geometry import (
    body_expanded_box, expand_axis, expand_for_background, include_box, nearest_indices, nearest_resize,
    pad_removal,
)
from dataset_adapters.base import ImageRecord, Instance


def person(mask, iid="p", **kw):
    return Instance.from_full_mask(mask, instance_id=iid, category=kw.pop("category", "person"), **kw)


def rect_mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def select(instances, h, w, params=None, filters=None):
    rec = ImageRecord("1", "a.jpg", w, h, list(instances))
    return build_region_selector("body", params or {}, filters or {}, None, ("person",)).select(rec)


# ----------------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("args, expected", [
    ((50, 70, 23, 200), (49, 72)),     # odd growth: the extra pixel goes to the end
    ((0, 90, 94, 100), (0, 94)),       # start < 0: shifted right by min(2, 100 - 92)
    ((150, 190, 60, 200), (140, 200)),  # end > limit: shifted left
    ((38, 62, 187, 100), (-43, 144)),  # both sides out: left as is
    ((2, 98, 100, 100), (0, 100)),
    ((0, 66, 118, 100), (-18, 100)),   # shift limited by the free space at the end
])
def test_expand_axis(args, expected):
    assert expand_axis(*args) == expected


def test_expand_axis_strict_limit():
    # start < 0 but end == limit exactly: the reference shifts only when end < limit, so nothing moves.
    assert expand_axis(0, 96, 100, 98) == (-2, 98)


def test_expansion_inside_image_aspect_1_8():
    # tight 20x60: +int(sqrt(1200)*0.1)=3 per axis -> 23x63, then width int(63/1.8)=35, background 46 % -> kept.
    assert body_expanded_box((50, 20, 70, 80), (100, 200), 1200) == (43, 19, 78, 82)


def test_expansion_wide_person_leaves_image():
    # 100x20 lying person: +4 -> 104x24, height int(104*1.8)=187 > image height: both sides stick out.
    assert body_expanded_box((50, 40, 150, 60), (100, 200), 2000) == (48, -43, 152, 144)


def test_expansion_30_percent_background_rule():
    # Full 100x180 rectangle: +13 -> 113x193, aspect -> 113x203 (78.5 % mask), so both sides scale by
    # sqrt((18000/0.7)/(113*203)) = 1.0588: ceil(119.6)=120, ceil(214.9)=215.
    assert body_expanded_box((400, 400, 500, 580), (1000, 1000), 18000) == (391, 383, 511, 598)


def test_background_rule_not_applied_with_enough_background():
    assert expand_for_background((0, 0, 10, 10), (100, 100), 69) == (0, 0, 10, 10)


def test_expansion_capped_at_image_size():
    # 30x40 mask in a 32x40 image: +3 would give 33x43; capped at 32x40 (image), then height int(32*1.8)=57.
    assert body_expanded_box((1, 0, 31, 40), (40, 32), 1200) == (0, -8, 32, 49)


def test_include_box_min_area():
    assert include_box((0, 0, 8, 8), 64) and not include_box((0, 0, 7, 9), 64)
    assert include_box((0, 0, 16, 16), 16 ** 2) and not include_box((0, 0, 15, 17), 16 ** 2)


def test_nearest_matches_torch():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n_in, n_out = int(rng.integers(1, 700)), int(rng.integers(1, 700))
        ref = F.interpolate(torch.arange(n_in, dtype=torch.float32)[None, None, None], size=(1, n_out),
                            mode="nearest")[0, 0, 0].long().numpy()
        assert np.array_equal(nearest_indices(n_in, n_out), ref), (n_in, n_out)
    m = rng.random((37, 23)) > 0.5
    ref = F.interpolate(torch.from_numpy(m).float()[None, None], size=(288, 160), mode="nearest")[0, 0] > 0.5
    assert np.array_equal(nearest_resize(m, (288, 160)), ref.numpy())


# ----------------------------------------------------------------------------------------------------- regions
def test_min_size_filter():
    tiny = person(rect_mask(100, 100, 10, 10, 13, 13), "tiny")  # expanded box 3x5 = 15 px
    big = person(rect_mask(100, 100, 40, 20, 60, 80), "big")
    sel = select([tiny, big], 100, 100)
    assert [r.instance_id for r in sel.regions] == ["big"] and sel.skipped == [("tiny", "too_small")]
    assert [r.instance_id for r in select([tiny], 100, 100, {"min_size": 3}).regions] == ["tiny"]
    # big's expanded box is 35x63 = 2205 px: kept at 32 (1024), dropped at 48 (2304).
    assert select([big], 100, 100, {"min_size": 32}).regions
    assert select([big], 100, 100, {"min_size": 48}).skipped == [("big", "too_small")]


def test_crop_mask_is_disk4_dilation_in_crop_space():
    m = np.zeros((400, 400), dtype=bool)
    m[150:250, 180:220] = True
    m[200:210, 160:240] = True
    r = select([person(m)], 400, 400).regions[0]
    und = r.extra["crop_mask_undilated"]
    assert r.crop_mask.shape == BODY_CROP and und.shape == BODY_CROP
    assert np.array_equal(und, nearest_resize(_exp_view(m, r.exp_box), BODY_CROP))
    assert np.array_equal(r.crop_mask, binary_dilation(und, disk(4)))
    assert r.extra["dilation_radius"] == 4


def _exp_view(mask, box):
    x0, y0, x1, y1 = box
    h, w = mask.shape
    out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = mask[cy0:cy1, cx0:cx1]
    return out


def test_dilation_removed_in_padding():
    # 60x60 person at the top edge: expanded box (67, -18, 133, 100); the padding is 18 image rows, i.e.
    # floor(18 * 288/118) = 43 crop rows. The mask starts at crop row 44, its dilation reaches row 40; rows < 43
    # are cleared, row 43 (partly padding, floored away) keeps its dilation as in the reference.
    m = rect_mask(100, 200, 70, 0, 130, 60)
    r = select([person(m)], 100, 200).regions[0]
    assert r.exp_box == (67, -18, 133, 100) and r.clip_box == (67, 0, 133, 100)
    assert pad_removal(r.exp_box, (100, 200), 288) == (0, 43, 0, 0)
    und = r.extra["crop_mask_undilated"]
    assert not und[:44].any() and und[44].any()
    assert not r.crop_mask[:43].any() and r.crop_mask[43].any()
    assert r.image_mask.shape == (100, 66)


def test_image_mask_is_paste_back_of_crop_mask():
    m = np.zeros((300, 300), dtype=bool)
    m[100:200, 140:160] = True
    r = select([person(m)], 300, 300).regions[0]
    x0, y0, x1, y1 = r.exp_box
    back = nearest_resize(r.crop_mask, (y1 - y0, x1 - x0))
    cx0, cy0, cx1, cy1 = r.clip_box
    expected = back[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] | m[cy0:cy1, cx0:cx1]
    assert np.array_equal(r.image_mask, expected)


def _random_blob(rng, h, w):
    m = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.integers(-10, h + 10), rng.integers(-10, w + 10)
        ry, rx = rng.integers(1, max(2, h // 3)), rng.integers(1, max(2, w // 4))
        yy, xx = np.ogrid[:h, :w]
        m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    m &= rng.random((h, w)) > 0.1  # holes and thin bits that NEAREST resampling can lose
    return m


@pytest.mark.parametrize("mode", ["crop_relative", "pixels"])
def test_image_mask_always_covers_the_person(mode):
    rng = np.random.default_rng(1)
    for trial in range(40):
        h, w = int(rng.integers(20, 400)), int(rng.integers(20, 400))
        m = _random_blob(rng, h, w)
        if not m.any():
            continue
        sel = select([person(m)], h, w, {"dilation": mode, "min_size": 0})
        r = sel.regions[0]
        cx0, cy0, cx1, cy1 = r.clip_box
        assert 0 <= cx0 < cx1 <= w and 0 <= cy0 < cy1 <= h
        assert r.image_mask.shape == (cy1 - cy0, cx1 - cx0)
        full = np.zeros((h, w), dtype=bool)
        full[cy0:cy1, cx0:cx1] = r.image_mask
        assert not (m & ~full).any(), (mode, trial)
        assert r.crop_mask.shape == BODY_CROP and r.area == int(m.sum())


def test_pixels_mode_dilates_in_image_space():
    m = np.zeros((300, 300), dtype=bool)
    m[100:200, 140:160] = True
    r = select([person(m)], 300, 300, {"dilation": "pixels", "dilation_radius": 3}).regions[0]
    cx0, cy0, cx1, cy1 = r.clip_box
    assert np.array_equal(r.image_mask, binary_dilation(m, disk(3))[cy0:cy1, cx0:cx1])
    x0, y0, x1, y1 = r.exp_box
    full = np.zeros((300, 300), dtype=bool)
    full[cy0:cy1, cx0:cx1] = r.image_mask
    assert np.array_equal(r.crop_mask, nearest_resize(_exp_view(full, r.exp_box), BODY_CROP))


def test_paste_order_ascending_area_and_keypoints():
    small = person(rect_mask(200, 200, 10, 10, 30, 60), "small")
    kp = np.zeros((17, 3), dtype=np.float32)
    kp[0] = (100, 60, 2)   # inside
    kp[1] = (500, 60, 1)   # outside the crop -> invisible
    kp[2] = (110, 70, 0)   # unlabelled
    large = person(rect_mask(200, 200, 80, 50, 140, 190), "large", keypoints=kp)
    sel = select([large, small], 200, 200)
    assert [r.instance_id for r in sel.regions] == ["small", "large"]
    r = sel.regions[1]
    x0, y0, x1, y1 = r.exp_box
    assert r.keypoints.shape == (17, 3) and r.keypoints.dtype == np.float32
    assert r.keypoints[0, 2] == 1 and r.keypoints[1, 2] == 0 and r.keypoints[2, 2] == 0
    assert r.keypoints[0, 0] == pytest.approx((100 - x0) / (x1 - x0))
    assert r.keypoints[0, 1] == pytest.approx((60 - y0) / (y1 - y0))
    assert sel.regions[0].keypoints is None
