"""Crop geometry against the reference's definitions (torchvision / cv2 calls as DeepPrivacy2 makes them)."""
import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from avanon.anonymizers.crops import (clip_to_image, cut_pad, from_unit, gaussian_blur_crop, nearest, paste,
                                      resize_from_crop, resize_to_crop, round_uint8, to_unit)
from avanon.regions.base import Region


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)


def chw(a):
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).contiguous()


def hwc(t):
    return t.permute(1, 2, 0).numpy()


def tv_resize(a, size, mode, antialias):
    """The reference's call: torchvision resize of the float tensor, then round/clamp/byte."""
    return hwc(TF.resize(chw(a).float(), list(size), interpolation=mode, antialias=antialias)
               .round().clamp(0, 255).byte())


def region_for(exp_box, image_mask, shape):
    clip = clip_to_image(exp_box, shape)
    return Region("r", "body", exp_box, (8, 8), np.ones((8, 8), bool), clip, image_mask, int(image_mask.sum()))


# ----------------------------------------------------------------------------------------------------- cut_pad
def test_cut_pad_inside_is_the_slice(image):
    out = cut_pad(image, (10, 5, 30, 25))
    assert np.array_equal(out, image[5:25, 10:30])
    out[:] = 0
    assert image[5:25, 10:30].any()  # a copy, not a view


def test_cut_pad_zero_pads_outside(image):
    out = cut_pad(image, (-5, -3, 10, 12))
    assert out.shape == (15, 15, 3)
    assert not out[:3].any() and not out[:, :5].any()
    assert np.array_equal(out[3:, 5:], image[0:12, 0:10])
    out = cut_pad(image, (70, 50, 90, 70))
    assert np.array_equal(out[:10, :10], image[50:, 70:]) and not out[10:].any() and not out[:, 10:].any()
    assert not cut_pad(image, (100, 100, 110, 120)).any()


# ----------------------------------------------------------------------------------------------------- resizing
def test_body_downsampling_is_bicubic_antialias(image):
    out = resize_to_crop(image, (36, 20), "body")
    assert out.dtype == np.uint8
    assert np.array_equal(out, tv_resize(image, (36, 20), InterpolationMode.BICUBIC, True))


def test_body_upsampling_in_both_dims_is_nearest(image):
    out = resize_to_crop(image, (288, 160), "body")
    assert np.array_equal(out, tv_resize(image, (288, 160), InterpolationMode.NEAREST, False))
    # larger in one dimension only: bicubic
    out = resize_to_crop(image, (288, 40), "body")
    assert np.array_equal(out, tv_resize(image, (288, 40), InterpolationMode.BICUBIC, True))


def test_body_choice_is_made_on_decide_size(image):
    """The reference tests the clipped box: a crop larger than the target whose in-image part is smaller."""
    out = resize_to_crop(image, (72, 90), "body", decide_size=(50, 70))
    assert np.array_equal(out, tv_resize(image, (72, 90), InterpolationMode.NEAREST, False))


def test_face_resize_area_down_bicubic_up(image):
    down = resize_to_crop(image, (30, 40), "face")
    assert np.array_equal(down, cv2.resize(image, (40, 30), interpolation=cv2.INTER_AREA))
    up = resize_to_crop(image, (128, 128), "face")
    assert np.array_equal(up, tv_resize(image, (128, 128), InterpolationMode.BICUBIC, True))


def test_resize_float_path_and_identity(image):
    f = resize_to_crop(image, (36, 20), "body", as_float=True)
    assert f.dtype == np.float32 and np.array_equal(round_uint8(f), resize_to_crop(image, (36, 20), "body"))
    assert np.array_equal(resize_to_crop(image, image.shape[:2], "body"), image)
    with pytest.raises(ValueError, match="kind"):
        resize_to_crop(image, (10, 10), "car")


def test_resize_from_crop_is_torchvision_bicubic_float(image):
    x = from_unit(to_unit(image))
    out = resize_from_crop(x, (97, 41))
    ref = hwc(TF.resize(chw(x), [97, 41], interpolation=InterpolationMode.BICUBIC, antialias=True))
    assert out.dtype == np.float32 and np.allclose(out, ref, atol=1e-4)


def test_nearest_matches_torch(image):
    assert np.array_equal(nearest(image, (17, 200)), tv_resize(image, (17, 200), InterpolationMode.NEAREST, False))


# ----------------------------------------------------------------------------------------------------- unit space, blur
def test_unit_space_roundtrip(image):
    x = to_unit(image)
    assert x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(round_uint8(from_unit(x)), image)


def test_gaussian_blur_matches_torchvision():
    x = to_unit(np.random.default_rng(1).integers(0, 256, (288, 160, 3), dtype=np.uint8))
    ours = gaussian_blur_crop(x, 21, 7.0)
    ref = hwc(TF.gaussian_blur(chw(x), kernel_size=21, sigma=7.0))
    assert np.abs(ours - ref).max() < 1e-6


def test_round_half_to_even():
    assert round_uint8(np.array([0.5, 1.5, 2.5, -3.0, 300.0])).tolist() == [0, 2, 2, 0, 255]


# ----------------------------------------------------------------------------------------------------- paste
def test_paste_writes_only_image_mask_and_drops_padding(image):
    exp_box = (-4, -2, 12, 10)  # 12 x 16, clip (0, 0, 12, 10)
    mask = np.zeros((10, 12), bool)
    mask[3:7, 2:9] = True
    region = region_for(exp_box, mask, image.shape[:2])
    patch = np.arange(12 * 16 * 3, dtype=np.float32).reshape(12, 16, 3) % 251
    out = image.copy()
    paste(out, region, patch)
    expect = image.copy()
    expect[:10, :12][mask] = round_uint8(patch[2:, 4:][mask])
    assert np.array_equal(out, expect)


def test_paste_accepts_clip_sized_patch_and_rejects_others(image):
    mask = np.ones((10, 12), bool)
    region = region_for((-4, -2, 12, 10), mask, image.shape[:2])
    out = image.copy()
    paste(out, region, np.full((10, 12, 3), 7, np.uint8))
    assert (out[:10, :12] == 7).all() and np.array_equal(out[10:], image[10:])
    with pytest.raises(ValueError, match="patch shape"):
        paste(out, region, np.zeros((5, 5, 3), np.uint8))
    bad = region_for((0, 0, 12, 10), np.ones((3, 3), bool), image.shape[:2])
    with pytest.raises(ValueError, match="image_mask shape"):
        paste(out, bad, np.zeros((10, 12, 3), np.uint8))
