"""The crop path of the traditional methods (avanon/anonymizers/resample.py) against the plain pipeline it replaces.

The plain pipeline (`CropSpaceAnonymizer._reference_region`: cut the whole expanded box, torch resizes, [-1, 1]
arithmetic) is the reference. The fast path gathers NEAREST crops (bit-identical), blurs in byte units and
resizes to and from the crop with cached weight matrices and BLAS products (equal to float32 rounding), so a
pasted byte may
differ by 1 where a value lies within a few units in the last place of a .5 boundary, and never by more.
Measured on the random geometries below (pooled over 6 images, ~237k pasted values per method): blur 2.5-3.8 in
10^5 pasted values differ, bilinear pixelation 5.5 in 10^5; on the astronaut 2 of 93k (blur) and 0 (bilinear
pixelation). Nearest pixelation differs more often (7e-4 random, 2.3e-3 astronaut): its flat blocks hold the mean
of n crop bytes, an exact .5 tie once in n or so, and a tie is broken by float noise for the whole block. The tests
allow 1e-4, and 5e-3 for nearest pixelation; the float patches and the crops are compared too.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from avanon.anonymizers import build_anonymizer
from avanon.anonymizers.crops import (
    _masked_copy,
    bicubic_aa,
    body_uses_nearest,
    box_size,
    clip_to_image,
    cut_pad,
    nearest,
    resize_to_crop,
    round_uint8,
    round_uint8_fast,
)
from avanon.anonymizers.resample import (
    aa_bicubic_matrix,
    cut_nearest,
    nearest_index,
    resize_aa_window,
)
from avanon.anonymizers.traditional import CropSpaceAnonymizer
from avanon.regions.base import BODY_CROP, FACE_CROP, Region

MAX_FRACTION = 1e-4  # pooled share of the pasted pixel values (pixels x channels) that may differ, by exactly 1
MAX_FRACTION_FLAT_BLOCKS = 5e-3  # nearest pixelation (see above)
METHODS = [
    ("blur", {}),
    ("blur", {"sigma": 3}),
    ("blur", {"sigma": 7, "kernel": 9}),
    ("blur", {"min_image_sigma": 2}),
    ("pixelate", {}),
    ("pixelate", {"size": 16, "interpolation": "nearest"}),
    ("pixelate", {"min_image_block": 4}),
]


def torch_weights(n_in, n_out):
    """torch's own weights: the resize of an identity (each output sums one nonzero product, exactly)."""
    eye = torch.eye(n_in, dtype=torch.float32).view(1, 1, n_in, n_in)
    out = F.interpolate(eye, size=(n_in, n_out), mode="bicubic", align_corners=False, antialias=True)
    return out[0, 0].numpy().T


def make_region(mask, exp_box, kind="body", crop_size=None, iid="0"):
    """As the selector makes one: crop_mask = the cut mask resized NEAREST; image_mask = crop_mask resized back,
    padding dropped, OR'd with the instance mask."""
    crop_size = crop_size or (BODY_CROP if kind == "body" else FACE_CROP)
    x0, y0, x1, y1 = exp_box
    cx0, cy0, cx1, cy1 = clip_to_image(exp_box, mask.shape)
    padded = np.zeros((y1 - y0, x1 - x0), bool)
    padded[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = mask[cy0:cy1, cx0:cx1]
    crop_mask = nearest(padded.astype(np.uint8)[..., None], crop_size)[..., 0] > 0
    back = nearest(crop_mask.astype(np.uint8)[..., None], (y1 - y0, x1 - x0))[..., 0] > 0
    image_mask = back[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] | mask[cy0:cy1, cx0:cx1]
    return Region(iid, kind, exp_box, crop_size, np.ascontiguousarray(crop_mask), (cx0, cy0, cx1, cy1),
                  np.ascontiguousarray(image_mask), int(mask.sum()))


def random_region(rng, shape, i):
    """Tiny to larger-than-the-image boxes, often clipped by a border, odd sizes, body and face kinds; an
    elliptical mask (sometimes ragged) inside."""
    h, w = shape
    scale = [4, 16, 60, 150, 400][i % 5]
    bw, bh = (int(v) for v in rng.integers(max(2, scale // 3), scale + 3, 2))
    x0 = int(rng.integers(-bw + 1, w))  # at least one column and row inside the image
    y0 = int(rng.integers(-bh + 1, h))
    kind = "face" if i % 3 == 2 else "body"
    yy, xx = np.mgrid[:h, :w]
    cx, cy = x0 + bw / 2, y0 + bh / 2
    mask = ((xx - cx) / max(bw / 3, 1)) ** 2 + ((yy - cy) / max(bh / 3, 1)) ** 2 <= 1
    if i % 4 == 1:
        mask &= rng.random(shape) < 0.7
    crop = (int(rng.integers(40, 300)), int(rng.integers(40, 200))) if i % 7 == 6 else None  # odd crop sizes
    return make_region(mask, (x0, y0, x0 + bw, y0 + bh), kind=kind, crop_size=crop, iid=str(i))


def both_paths(name, params, image, regions, monkeypatch):
    anon = build_anonymizer(name, params)
    fast = anon.anonymize(image, regions, 0)
    with monkeypatch.context() as m:
        m.setattr(CropSpaceAnonymizer, "anonymize_region", CropSpaceAnonymizer._reference_region)
        ref = anon.anonymize(image, regions, 0)
    return fast, ref


def pasted(image, regions):
    """Pixels any region may write (the union of the image masks)."""
    u = np.zeros(image.shape[:2], bool)
    for r in regions:
        x0, y0, x1, y1 = r.clip_box
        if x1 > x0 and y1 > y0:
            u[y0:y1, x0:x1] |= r.image_mask
    return u


def assert_close(fast, ref, image, regions):
    """Never more than 1 grey level, nothing written outside the regions; returns (values differing, pasted)."""
    diff = np.abs(fast.astype(int) - ref.astype(int))
    union = pasted(image, regions)
    assert not diff[~union].any(), "the fast path wrote outside the regions"
    assert diff.max() <= 1
    n = int(union.sum()) * 3
    assert n > 0
    return int(diff[union].sum()), n


def allowed(params):
    return MAX_FRACTION_FLAT_BLOCKS if params.get("interpolation") == "nearest" else MAX_FRACTION


# ----------------------------------------------------------------------------------------------------- operators
@pytest.mark.parametrize("n_in", [1, 2, 3, 7, 33, 128, 160, 288, 301, 1000])
def test_weights_are_torchs(n_in):
    for n_out in [1, 2, 5, 16, 55, 128, 159, 160, 161, 288, 577, 1024]:
        ours, theirs = aa_bicubic_matrix(n_in, n_out), torch_weights(n_in, n_out)
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= 1e-6, (n_in, n_out)  # a unit or so in the last place


def test_nearest_index_is_torchs():
    for n_in in range(1, 700, 7):
        for n_out in (1, 3, 128, 160, 288, 289, 1000):
            src = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in, 1)
            theirs = F.interpolate(src, size=(n_out, 1), mode="nearest")[0, 0, :, 0].numpy().astype(np.int64)
            assert np.array_equal(nearest_index(n_in, n_out), theirs), (n_in, n_out)


def test_cut_nearest_is_bit_identical():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    for _ in range(1500):
        x0, y0 = (int(v) for v in rng.integers(-60, 90, 2))
        bw, bh = (int(v) for v in rng.integers(1, 140, 2))
        size = tuple(int(v) for v in rng.integers(1, 300, 2))
        box = (x0, y0, x0 + bw, y0 + bh)
        assert np.array_equal(cut_nearest(image, box, size), nearest(cut_pad(image, box), size)), (box, size)


def test_resize_window_equals_torch_to_float_rounding():
    rng = np.random.default_rng(1)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 300, 2))
        oh, ow = (int(v) for v in rng.integers(1, 700, 2))
        a = (rng.random((h, w, 3)) * 255).astype(np.float32)
        r0 = int(rng.integers(0, oh)); r1 = int(rng.integers(r0 + 1, oh + 1))
        c0 = int(rng.integers(0, ow)); c1 = int(rng.integers(c0 + 1, ow + 1))
        ours = resize_aa_window(a, (oh, ow), (r0, r1), (c0, c1))
        theirs = bicubic_aa(a, (oh, ow))[r0:r1, c0:c1]
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= 2e-3, (h, w, oh, ow)  # float32 rounding of sums up to ~300


# ----------------------------------------------------------------------------------------------------- anonymizers
@pytest.mark.parametrize("name,params", METHODS)
def test_random_geometries_match_the_plain_pipeline(name, params, monkeypatch):
    rng = np.random.default_rng(7)
    total = [0, 0]
    for trial in range(6):
        shape = [(97, 131), (240, 320), (33, 47)][trial % 3]
        image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
        image = np.clip(image.astype(int) + np.mgrid[:shape[0], :shape[1]][1][..., None] - 60, 0, 255).astype(np.uint8)
        regions = [random_region(rng, shape, i) for i in range(15)]
        regions = [r for r in regions if r.clip_box[2] > r.clip_box[0] and r.clip_box[3] > r.clip_box[1]]
        fast, ref = both_paths(name, params, image, regions, monkeypatch)
        d, n = assert_close(fast, ref, image, regions)
        total[0] += d
        total[1] += n
    assert total[0] / total[1] <= allowed(params), f"{total[0]} of {total[1]} pasted values differ"


@pytest.mark.parametrize("name,params", METHODS[:2] + METHODS[4:5])
def test_astronaut_matches_the_plain_pipeline(name, params, monkeypatch):
    """A real photo, people-sized regions from tiny (NEAREST crops) to larger than the crop (bicubic), one
    clipped by each border, body and face kinds."""
    image = data.astronaut()  # 512 x 512
    shape = image.shape[:2]
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    specs = [  # (cx, cy, rx, ry, exp_box, kind)
        (260, 140, 60, 90, (150, 20, 370, 420), "body"),  # larger than the 288x160 crop: bicubic both ways
        (100, 400, 8, 20, (85, 370, 115, 430), "body"),  # small: NEAREST
        (20, 250, 30, 80, (-60, 150, 90, 370), "body"),  # clipped at the left border
        (480, 480, 40, 60, (420, 380, 560, 600), "body"),  # clipped at the bottom right
        (250, 150, 45, 55, (180, 70, 320, 230), "face"),  # face larger than 128: INTER_AREA
        (400, 100, 12, 14, (380, 80, 420, 120), "face"),  # face smaller than 128: bicubic up
        (300, 300, 3, 5, (296, 293, 305, 308), "body"),  # tiny
    ]
    regions = []
    for i, (cx, cy, rx, ry, box, kind) in enumerate(specs):
        mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        regions.append(make_region(mask, box, kind=kind, iid=str(i)))
    fast, ref = both_paths(name, params, image, regions, monkeypatch)
    assert not np.array_equal(fast, image)
    d, n = assert_close(fast, ref, image, regions)
    assert d / n <= allowed(params), f"{d} of {n} pasted values differ"


def test_small_crops_match_resize_to_crop():
    """The crop the methods start from: NEAREST, INTER_AREA and same-size crops bit-identical; bicubic ones (large
    bodies, small faces) rounded from sums equal to float32 rounding, so a byte may differ by 1, rarely."""
    rng = np.random.default_rng(5)
    image = data.astronaut()
    differing = total = 0
    for i in range(150):
        r = random_region(rng, image.shape[:2], i)
        ours = CropSpaceAnonymizer._small_crop(image, r)
        theirs = resize_to_crop(cut_pad(image, r.exp_box), r.crop_size, r.kind, decide_size=box_size(r.clip_box))
        assert ours.dtype == np.uint8 and ours.shape == theirs.shape
        diff = np.abs(ours.astype(int) - theirs)
        ch, cw = r.crop_size
        nearest_or_area = (r.kind == "body" and body_uses_nearest(box_size(r.clip_box), (ch, cw))) or (
            r.kind == "face" and np.prod(box_size(r.clip_box)) >= ch * cw) or box_size(r.exp_box) == (ch, cw)
        assert diff.max() <= (0 if nearest_or_area else 1), (r.kind, r.exp_box, r.crop_size)
        if not nearest_or_area:
            differing += int(diff.sum())
            total += diff.size
    assert total > 0 and differing / total <= MAX_FRACTION, f"{differing} of {total} crop values differ"


def test_region_patches_agree_to_float_rounding():
    """Before rounding: the fast patch is the plain one's clip box on the image mask (the only pixels pasted), to
    float32 rounding, except around the rare crop byte the bicubic resize to the crop rounded the other way (then
    by less than 1.5)."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    for name, params in METHODS:
        if "min_image_sigma" in params or "min_image_block" in params:
            continue  # the floors run after the crop path; compared on whole images above
        anon = build_anonymizer(name, params)
        far = total = 0
        for i in range(25):
            r = random_region(rng, (240, 320), i)
            fast = anon.anonymize_region(image, r, rng)
            ref = CropSpaceAnonymizer._reference_region(anon, image, r, rng)
            x0, y0, _, _ = r.exp_box
            cx0, cy0, cx1, cy1 = r.clip_box
            ref = ref[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
            assert fast.shape == ref.shape
            diff = np.abs(fast.astype(np.float64) - ref)[r.image_mask]  # only these are pasted
            assert diff.size == 0 or diff.max() < 1.5, (name, params, r.exp_box)
            far += int((diff > 2e-3).sum())
            total += diff.size
        assert far / total <= 5e-3, (name, params, far, total)  # measured: blur 1.3e-3


def test_paste_helpers_equal_the_numpy_formulas():
    """paste's cv2 rounding and masked copy give exactly round_uint8 and np.copyto(where=mask) (paste is shared
    with the realistic methods: its output must not change)."""
    rng = np.random.default_rng(11)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        a = (rng.random((h, w, 3)) * 300 - 20).astype(np.float32)
        a.flat[rng.integers(0, a.size, 10)] = rng.integers(-2, 258, 10) + 0.5  # exact ties, out of range
        assert np.array_equal(round_uint8_fast(a), round_uint8(a))
        image = rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)
        y0, x0 = int(rng.integers(0, 80 - h + 1)), int(rng.integers(0, 90 - w + 1))
        src = round_uint8(a)
        mask = rng.random((h, w)) < 0.5
        ours, theirs = image.copy(), image.copy()
        _masked_copy(ours[y0:y0 + h, x0:x0 + w], src, mask)
        np.copyto(theirs[y0:y0 + h, x0:x0 + w], src, where=mask[..., None])
        assert np.array_equal(ours, theirs)
