"""Realistic (GAN) anonymizer: params and tags, wave planning, latents, centres, HM / HM-LO, missing weights, and
end-to-end runs with randomly initialised generators (weights: random): changes only inside the regions,
deterministic per seed, batched == sequential bit for bit. Generators are built once per process (the anonymizer's
cache); the TriA-GAN / HM-LO / HR-face runs are marked slow."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from avanon.anonymizers import AnonymizerConfigError, build_anonymizer
from avanon.anonymizers import realistic as R  # noqa: F401  (registers "realistic")
from avanon.anonymizers.histogram import (RowAdam, histogram_match, hm_soft_mask, hmlo_optimize, rgb_to_sv,
                                          sv_histograms, w1_distance)
from avanon.anonymizers.latents import instance_seed, load_centers, sample_w
from avanon.generators.weights.centres import cmd_compute_centers, compute_centers, kmeans
from avanon.anonymizers.realistic import fdf256_region, hr_qualifies, plan_waves, random_generator
from avanon.regions.body import BodyParams, body_region
from avanon.regions.face import FaceBox, face_region
from avanon.regions.filters import Candidate
from dataset_adapters.base import Instance

RANDOM = {"weights": "random", "device": "cpu"}


# ----------------------------------------------------------------------------------------------------- helpers
def textured(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    return np.clip(base + rng.integers(-50, 51, (h, w, 3)), 0, 255).astype(np.uint8)


def union_mask(regions, shape):
    u = np.zeros(shape, bool)
    for r in regions:
        x0, y0, x1, y1 = r.clip_box
        u[y0:y1, x0:x1] |= r.image_mask
    return u


def person(iid, cx, cy, rx, ry, shape, keypoints=True, seed=0):
    """A Candidate with an elliptic mask and (optionally) 17 keypoints spread over it."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    inst = Instance.from_full_mask(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1, instance_id=iid,
                                   category="person")
    if keypoints:
        rng = np.random.default_rng(seed)
        kp = np.zeros((17, 3), np.float32)
        kp[:, 0] = cx + rng.uniform(-0.7, 0.7, 17) * rx
        kp[:, 1] = np.linspace(cy - 0.8 * ry, cy + 0.8 * ry, 17)
        kp[:, 2] = 2
        inst.keypoints = kp
    return Candidate(inst, inst.box, inst.mask)


def sv_w1(a: np.ndarray, b: np.ndarray) -> float:
    """W1(S) + W1(V) (the HM-LO loss) between two sets of RGB pixels (N×3 uint8 or float in [0, 255])."""
    ta = torch.from_numpy(np.asarray(a, np.float32) / 255).T.reshape(1, 3, 1, -1)
    tb = torch.from_numpy(np.asarray(b, np.float32) / 255).T.reshape(1, 3, 1, -1)
    ha, hb = sv_histograms(ta), sv_histograms(tb)
    return float(w1_distance(ha[0], hb[0]) + w1_distance(ha[1], hb[1]))


def plain_w1(a: np.ndarray, b: np.ndarray) -> float:
    """Sharp-histogram W1 of S plus of V (256 bins), a stricter measure than the wide-KDE loss."""
    def sv(x):
        x = np.asarray(x, np.float64) / 255
        v = x.max(1)
        s = (v - x.min(1)) / (v + 1e-8)
        return s, v

    total = 0.0
    for ca, cb in zip(sv(a), sv(b)):
        ha = np.histogram(ca, 256, (0, 1))[0] / len(ca)
        hb = np.histogram(cb, 256, (0, 1))[0] / len(cb)
        total += np.abs(np.cumsum(ha) - np.cumsum(hb)).sum()
    return total


# ----------------------------------------------------------------------------------------------------- params
def test_params_defaults_and_tags():
    a = build_anonymizer("realistic", RANDOM)
    p = a.params
    assert p["weights"] == "random" and p["truncation"] == "auto" and p["truncation_value"] == 0.0
    assert p["hm_sigma"] == 10 and p["hmlo_steps"] == 100 and p["hmlo_threshold"] == 0.02 and p["hmlo_lr"] == 1e-3
    assert a.tag == "realistic_randomweights"  # random weights are stamped in params and in the mirror name
    variants = [{}, {"histogram": "hm"}, {"histogram": "hmlo"}, {"hr_faces": True}, {"truncation": "none"},
                {"truncation": "unimodal"}, {"truncation": "multimodal"}, {"truncation_value": 0.5},
                {"histogram": "hm", "hm_sigma": 9}, {"histogram": "hmlo", "hmlo_steps": 10},
                {"region_model": "body_triagan288"}, {"hr_faces": True, "hr_criterion": "fdf128"}]
    tags = [build_anonymizer("realistic", {**RANDOM, **v}).tag.replace("_randomweights", "") for v in variants]
    assert len(set(tags)) == len(tags), tags
    assert tags[:5] == ["realistic", "realistic_hm", "realistic_hmlo", "realistic_hr_faces", "realistic_trunc_none"]
    # settings that cannot change the output do not change the tag
    assert build_anonymizer("realistic", {**RANDOM, "batch": False, "hm_sigma": 9}).tag == "realistic_randomweights"


@pytest.mark.parametrize("params, key", [
    ({"histogram": "hist"}, "histogram"),
    ({"truncation": "none", "truncation_value": 0.5}, "truncation_value"),
    ({"truncation_value": 2}, "truncation_value"),
    ({"hr_faces": True, "region_model": "body_triagan288"}, "hr_faces"),
    ({"region_model": "face_fdf512"}, "region_model"),
    ({"weights": {"face_fdf129": "/x"}}, "weights"),
    ({"hmlo_steps": 0}, "hmlo_steps"),
    ({"device": "tpu"}, "device"),
    ({"batch": 0}, "batch"),
    ({"sigma": 3}, "sigma"),
])
def test_bad_params(params, key):
    with pytest.raises(AnonymizerConfigError, match=key):
        build_anonymizer("realistic", {**RANDOM, **params})


def test_missing_weights_are_reported_before_any_work(tmp_path, monkeypatch):
    from avanon.generators.weights import WeightsError

    monkeypatch.setenv("AVANON_WEIGHTS", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    a = build_anonymizer("realistic", {"device": "cpu"})  # construction validates parameters only
    with pytest.raises(WeightsError) as err:
        a.check_weights("face")
    msg = str(err.value)
    assert "face_fdf128" in msg and "avanon weights fetch" in msg
    with pytest.raises(WeightsError, match="body_triagan288"):
        a.check_weights("body")
    missing = tmp_path / "nowhere" / "fdf128.ckpt"
    with pytest.raises(WeightsError, match="nowhere"):
        build_anonymizer("realistic", {"region_model": "face_fdf128",
                                       "weights": {"face_fdf128": str(missing)}}).check_weights("face")

    def only_faces(name, path=None):
        if name.startswith("body"):
            raise WeightsError(f"no {name}")
        return tmp_path / name

    monkeypatch.setattr("avanon.generators.weights.resolve", only_faces)
    a = build_anonymizer("realistic", {"device": "cpu"})
    a.check_weights("face")
    with pytest.raises(WeightsError, match="body_nocse288"):
        a.check_weights("body")


def test_a_realistic_mirror_without_weights_stops_before_any_work(tmp_path, monkeypatch):
    from avanon.cli import main

    monkeypatch.setenv("AVANON_WEIGHTS", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    args = ["anonymize", "--dataset", "synthetic", "--root", str(tmp_path / "data"), "--option", "num_train=2",
            "--option", "num_val=1", "--region", "body", "--method", "realistic", "--out", str(tmp_path / "out"),
            "--no-progress"]
    assert main(args) == 2
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------- waves
def test_plan_waves_keeps_the_order_of_every_overlapping_pair():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        boxes = []
        for _ in range(n):
            x0, y0 = rng.integers(0, 100, 2)
            w, h = rng.integers(1, 40, 2)
            boxes.append((int(x0), int(y0), int(x0 + w), int(y0 + h)))
        waves = plan_waves(boxes)
        assert sorted(i for w in waves for i in w) == list(range(n))
        wave_of = {i: k for k, w in enumerate(waves) for i in w}
        for w in waves:
            assert w == sorted(w)
        for i in range(n):
            for j in range(i + 1, n):
                if R.boxes_overlap(boxes[i], boxes[j]):
                    assert wave_of[i] < wave_of[j]
    # 0 and 1 disjoint, 2 overlaps 0; 3 overlaps only 2 and must wait for it
    assert plan_waves([(0, 0, 10, 10), (20, 0, 30, 10), (5, 5, 15, 15), (12, 12, 18, 18)]) == [[0, 1], [2], [3]]
    assert plan_waves([(0, 0, 10, 10), (10, 0, 20, 10)]) == [[0, 1]]  # touching is not overlapping


# ----------------------------------------------------------------------------------------------------- latents
@pytest.fixture(scope="module")
def fdf128_random():
    return random_generator("face_fdf128")


def test_latents_deterministic_per_instance(fdf128_random):
    sn = fdf128_random.style_net
    w = sample_w(sn, "none", None, 7, "a")
    assert torch.equal(w, sample_w(sn, "none", None, 7, "a"))
    assert not torch.equal(w, sample_w(sn, "none", None, 8, "a"))
    assert not torch.equal(w, sample_w(sn, "none", None, 7, "b"))
    assert torch.equal(sample_w(sn, "unimodal", 0.0, 7, "a")[0], sn.w_avg)
    half = sample_w(sn, "unimodal", 0.5, 7, "a")
    torch.testing.assert_close(half, sn.w_avg.lerp(w, 0.5))
    picked = [sample_w(sn, "multimodal", 0.0, 7, f"p{i}")[0] for i in range(40)]
    idx = [int((sn.w_centers == p).all(1).nonzero()[0]) for p in picked]  # exactly one of the centres
    assert len(set(idx)) > 30  # drawn uniformly from 512
    assert instance_seed(1, "x") == instance_seed(1, "x") != instance_seed(1, "x", "fdf256")


def test_kmeans_and_compute_centers(fdf128_random):
    g = torch.Generator().manual_seed(0)
    true = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=g) for c in true])
    centers, iters = kmeans(x, 3, seed=1)
    got = centers[torch.cdist(true, centers).argmin(1)]
    torch.testing.assert_close(got, true, atol=0.05, rtol=0)
    c = compute_centers(fdf128_random, n_samples=1024, k=16, seed=0)
    assert c.shape == (16, 512)
    assert torch.equal(c, compute_centers(fdf128_random, n_samples=1024, k=16, seed=0))


@pytest.mark.slow
def test_compute_centers_command_and_multimodal_loading(tmp_path, monkeypatch, fdf128_random):
    """A checkpoint without centres: multi-modal truncation fails with the compute-centers hint; the command's
    sidecar (and checkpoint copy) make it work."""
    from avanon.generators.weights import WeightsError

    ckpt = tmp_path / "fdf128.ckpt"
    state = {k: v for k, v in fdf128_random.state_dict().items() if k != "style_net.w_centers"}
    torch.save({"EMA_generator": state}, ckpt)
    monkeypatch.setenv("AVANON_WEIGHTS", str(tmp_path / "cache"))
    monkeypatch.setattr("avanon.generators.weights.resolve", lambda name, path=None: ckpt)
    params = {"device": "cpu", "region_model": "face_fdf128", "truncation": "multimodal"}
    with pytest.raises(WeightsError, match="compute-centers face_fdf128"):
        build_anonymizer("realistic", params).generator("face_fdf128")
    out = cmd_compute_centers("face_fdf128", ckpt, None, n_samples=2048, n_centers=32,
                              checkpoint_copy=tmp_path / "copy.ckpt")
    assert out == tmp_path / "cache" / "face_fdf128.w_centers.pt"
    centers = load_centers(out)
    assert centers.shape == (32, 512)
    G = build_anonymizer("realistic", params).generator("face_fdf128")
    assert torch.equal(G.style_net.w_centers, centers)
    from avanon.generators import load_generator

    assert torch.equal(load_generator("face_fdf128", tmp_path / "copy.ckpt").style_net.w_centers, centers)


# ----------------------------------------------------------------------------------------------------- HM
def test_hm_matches_histogram_inside_the_soft_mask():
    rng = np.random.default_rng(0)
    real = textured(64, 48, seed=1)
    undilated = np.zeros((64, 48), bool)
    undilated[16:48, 12:36] = True
    generated = real.astype(np.float32)
    generated[undilated] = np.clip(generated[undilated] * 0.3 + 180 + rng.normal(0, 5, (undilated.sum(), 3)), 0, 255)
    out = histogram_match(generated, real, undilated, sigma=10)
    g = hm_soft_mask(undilated, 10)
    assert g.max() == 1 and g[~undilated].min() >= 0
    assert np.array_equal(out[g == 0], generated[g == 0])  # outside the blurred mask: untouched
    before, after = sv_w1(generated[undilated], real[undilated]), sv_w1(out[undilated], real[undilated])
    assert after < before
    assert plain_w1(out[undilated], real[undilated]) < plain_w1(generated[undilated], real[undilated])
    # channel-pooled: matching to a grey image keeps colour differences between channels possible but pooled
    assert not np.array_equal(hm_soft_mask(undilated, 9), g)  # sigma is a parameter


# ----------------------------------------------------------------------------------------------------- HM-LO
def _toy_problem(n=3, hw=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(n, 3, hw, hw, generator=g)
    mask = torch.zeros(n, 1, hw, hw)
    mask[:, :, :, : hw // 2] = 1  # keep the left half
    base = torch.randn(n, 3, hw, hw, generator=g)

    def forward(w, rows):
        gen = torch.sigmoid(base[rows] + w[:, :3, None, None] * 3)
        return (mask[rows] * real[rows] + (1 - mask[rows]) * gen) * 2 - 1

    return real, mask, base, forward


def test_row_adam_equals_torch_adam():
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(1, 16, generator=g)
    grads = [torch.randn(1, 16, generator=g) for _ in range(5)]
    p = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=1e-3)
    mine = w0.clone()
    adam = RowAdam(1, 16, lr=1e-3)
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
        adam.step(mine, grad, torch.tensor([0]))
    assert torch.equal(mine, p.detach())


def test_hmlo_loss_decreases_and_stops_per_instance():
    real, mask, base, forward = _toy_problem()
    w0 = torch.zeros(3, 8)
    # instance 1 starts next to its optimum (its real crop is the composite of a nearby w): below the threshold at
    # once, so it stops after one pass while the others go on to the step limit
    with torch.no_grad():
        near = w0[1:2].clone()
        near[:, :3] = 0.01
        real[1] = (forward(near, torch.tensor([1]))[0] + 1) / 2
    res = hmlo_optimize(forward, real, w0, steps=5, threshold=0.2, lr=0.05)
    assert res.forward_passes[1] == 1 and res.stop[1] == "threshold" and res.losses[1][0] < 0.2
    for i in (0, 2):
        assert res.forward_passes[i] == 5 and res.stop[i] == "steps"
        assert res.losses[i][-1] < res.losses[i][0] and min(res.losses[i]) >= 0.2
    # each instance follows the same trajectory as alone (per-row Adam, summed loss, stopped rows dropped)
    for i in range(3):
        alone = hmlo_optimize(lambda w, rows, i=i: forward(w, rows + i), real[i:i + 1], w0[i:i + 1], steps=5,
                              threshold=0.2, lr=0.05)
        assert torch.equal(alone.images[0], res.images[i])
        assert alone.losses[0] == res.losses[i]
    # the threshold stop keeps the image of the first pass whose loss is below it
    long = hmlo_optimize(forward, real[:1], w0[:1], steps=25, threshold=0, lr=0.05)
    thr = long.losses[0][10] * 1.0001
    first = next(j for j, v in enumerate(long.losses[0]) if v < thr)
    res2 = hmlo_optimize(forward, real[:1], w0[:1], steps=100, threshold=thr, lr=0.05)
    assert res2.stop == ["threshold"] and res2.forward_passes[0] == first + 1
    assert res2.losses[0] == long.losses[0][:first + 1]
    # nothing generated -> zero gradient -> stop after one pass
    full = torch.ones_like(mask)

    def keep_all(w, rows):
        return (full[rows] * real[rows] + 0 * w[:, :1, None, None]) * 2 - 1

    assert hmlo_optimize(keep_all, real, w0, steps=5, threshold=0).stop == ["zero_grad"] * 3


def test_kde_histogram_gradient():
    x = torch.rand(2, 40, dtype=torch.float64, requires_grad=True)
    from avanon.anonymizers.histogram import _KDEHistogram

    bins = torch.linspace(0, 1, 7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: _KDEHistogram.apply(t, bins, 0.3), (x,))
    s, v = rgb_to_sv(torch.tensor([[[[1.0]], [[0.5]], [[0.0]]]]))
    assert float(v) == 1.0 and abs(float(s) - 1.0) < 1e-6


# ----------------------------------------------------------------------------------------------------- faces e2e
FACE_SHAPE = (160, 240)


@pytest.fixture(scope="module")
def face_scene():
    image = textured(*FACE_SHAPE, seed=3)
    faces = [FaceBox((20, 30, 50, 70)), FaceBox((150, 40, 180, 80)), FaceBox((40, 50, 75, 95))]
    regions = sorted([face_region(f, f"f{i}", FACE_SHAPE) for i, f in enumerate(faces)], key=lambda r: r.area)
    assert plan_waves([r.clip_box for r in regions]) == [[0, 1], [2]]  # 2 disjoint + 1 overlapping
    params = {**RANDOM, "truncation": "none"}  # faces default to w_avg (seed-independent): sample z here
    outs = {
        "batched": build_anonymizer("realistic", {**params, "batch": True}).anonymize(image, regions, 1),
        "sequential": build_anonymizer("realistic", {**params, "batch": False}).anonymize(image, regions, 1),
        "seed2": build_anonymizer("realistic", params).anonymize(image, regions, 2),
    }
    return image, regions, outs


def test_faces_change_only_inside_regions(face_scene):
    image, regions, outs = face_scene
    inside = union_mask(regions, FACE_SHAPE)
    for out in outs.values():
        assert np.array_equal(out[~inside], image[~inside])
        for r in regions:
            x0, y0, x1, y1 = r.clip_box
            changed = (out[y0:y1, x0:x1] != image[y0:y1, x0:x1]).any(-1) & r.image_mask
            assert changed.mean() > 0.05


def test_faces_batched_equals_sequential_and_seeds(face_scene):
    image, regions, outs = face_scene
    assert np.array_equal(outs["batched"], outs["sequential"])
    again = build_anonymizer("realistic", {**RANDOM, "truncation": "none", "batch": 2}).anonymize(image, regions, 1)
    assert np.array_equal(again, outs["batched"])
    assert (outs["seed2"] != outs["batched"]).any(-1).sum() > 100


def test_faces_truncation_modes(face_scene):
    image, regions, outs = face_scene
    uni = build_anonymizer("realistic", RANDOM)  # faces: unimodal t=0 -> w_avg, independent of the seed
    a = uni.anonymize(image, regions[:1], 1)
    assert np.array_equal(a, uni.anonymize(image, regions[:1], 2))
    mm = build_anonymizer("realistic", {**RANDOM, "truncation": "multimodal"}).anonymize(image, regions[:1], 1)
    assert not np.array_equal(mm, a) and not np.array_equal(mm, outs["batched"])


def test_hr_faces_geometry():
    big = face_region(FaceBox((60, 40, 136, 116)), "big", (200, 260))  # 76 px: (2*(129.2//2))^2 = 128^2
    small = face_region(FaceBox((10, 10, 85, 85)), "small", (200, 260))  # 75 px: 126^2 < 128^2
    assert hr_qualifies(big) and not hr_qualifies(small)
    assert hr_qualifies(big, "fdf128") == (np.prod(np.subtract(big.exp_box[2:], big.exp_box[:2])) >= 128 * 128)
    r = fdf256_region(big, (200, 260))
    assert r.crop_size == (256, 256) and r.exp_box == (45, 25, 151, 131)  # side 2 * (106.4 // 2)
    ys, xs = np.nonzero(r.crop_mask)
    assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (36, 36, 219, 219)  # int((15, 91) * 256 / 106)
    assert r.image_mask[15:91, 15:91].all()


@pytest.mark.slow
def test_hr_faces_refines_only_large_faces():
    shape = (200, 260)
    image = textured(*shape, seed=5)
    regions = sorted([face_region(FaceBox((60, 40, 136, 116)), "big", shape),
                      face_region(FaceBox((180, 20, 210, 56)), "small", shape)], key=lambda r: r.area)
    plain = build_anonymizer("realistic", RANDOM)
    hr = build_anonymizer("realistic", {**RANDOM, "hr_faces": True})
    a, b = plain.anonymize(image, regions, 0), hr.anonymize(image, regions, 0)
    assert "face_fdf256" in hr._generators and "face_fdf256" not in plain._generators
    diff = (a != b).any(-1)
    big256 = fdf256_region(regions[1] if regions[1].instance_id == "big" else regions[0], shape)
    allowed = np.zeros(shape, bool)
    x0, y0, x1, y1 = big256.clip_box
    allowed[y0:y1, x0:x1] = big256.image_mask
    assert diff.any() and not diff[~allowed].any()
    assert np.array_equal(b[~union_mask(regions, shape) & ~allowed], image[~union_mask(regions, shape) & ~allowed])


# ----------------------------------------------------------------------------------------------------- bodies e2e
BODY_SHAPE = (200, 320)


@pytest.fixture(scope="module")
def body_scene():
    image = textured(*BODY_SHAPE, seed=4)
    cands = [person("a", 70, 100, 22, 55, BODY_SHAPE, seed=1),
             person("b", 250, 95, 20, 50, BODY_SHAPE, keypoints=False),
             person("c", 110, 110, 25, 60, BODY_SHAPE, seed=2)]
    regions = sorted([body_region(c, BODY_SHAPE, BodyParams()) for c in cands], key=lambda r: r.area)
    waves = plan_waves([r.clip_box for r in regions])
    assert sorted(map(len, waves)) == [1, 2]
    return image, regions


@pytest.mark.slow
def test_bodies_triagan_and_nocse_batched_equals_sequential(body_scene):
    image, regions = body_scene
    a = build_anonymizer("realistic", {**RANDOM, "batch": True})
    out = a.anonymize(image, regions, 3)
    assert set(a._generators) == {"body_triagan288", "body_nocse288"}
    seq = build_anonymizer("realistic", {**RANDOM, "batch": False}).anonymize(image, regions, 3)
    assert np.array_equal(out, seq)
    inside = union_mask(regions, BODY_SHAPE)
    assert np.array_equal(out[~inside], image[~inside])
    assert (out[inside] != image[inside]).any(-1).mean() > 0.3


@pytest.mark.slow
def test_bodies_hm_closer_histogram(body_scene):
    image, regions = body_scene
    plain = build_anonymizer("realistic", RANDOM).anonymize(image, regions, 3)
    hm = build_anonymizer("realistic", {**RANDOM, "histogram": "hm"}).anonymize(image, regions, 3)
    inside = union_mask(regions, BODY_SHAPE)
    assert np.array_equal(hm[~inside], image[~inside])
    for r in regions:
        x0, y0, x1, y1 = r.clip_box
        person_px = np.zeros(BODY_SHAPE, bool)
        person_px[y0:y1, x0:x1] = r.image_mask
        assert plain_w1(hm[person_px], image[person_px]) < plain_w1(plain[person_px], image[person_px])


@pytest.mark.slow
def test_hmlo_end_to_end_batched_equals_sequential(face_scene):
    image, regions, outs = face_scene
    params = {**RANDOM, "histogram": "hmlo", "hmlo_steps": 2, "hmlo_threshold": 0.0, "truncation": "none"}
    a = build_anonymizer("realistic", {**params, "batch": True})
    out = a.anonymize(image, regions, 1)
    assert [res.forward_passes for res in a.last_hmlo] == [[2, 2], [2]]  # two waves, two passes each
    seq = build_anonymizer("realistic", {**params, "batch": False}).anonymize(image, regions, 1)
    assert np.array_equal(out, seq)
    inside = union_mask(regions, FACE_SHAPE)
    assert np.array_equal(out[~inside], image[~inside])
    assert not np.array_equal(out, outs["batched"])  # one Adam step moved w


@pytest.mark.slow
def test_realistic_faces_through_the_cli_with_random_weights(tmp_path, capsys):
    """End to end through the CLI on synthetic data; `weights: random` is for tests only and is stamped into the
    manifest and the mirror's name."""
    import json

    from avanon.cli import main

    args = ["anonymize", "--dataset", "synthetic", "--root", str(tmp_path / "data"), "--option", "num_train=2",
            "--option", "num_val=1", "--region", "face", "--region-param", "provider=file",
            "--region-param", "file=face_boxes_train.json", "--method", "realistic", "--param", "weights=random",
            "--param", "device=cpu", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 0
    mirror = next((tmp_path / "out" / "synthetic").iterdir())
    assert "randomweights" in mirror.name
    lines = [json.loads(t) for t in (mirror / "manifest.jsonl").read_text().splitlines()]
    assert any(l["status"] == "anonymized" for l in lines)
    assert all(l["params"]["weights"] == "random" for l in lines)
    assert main(["verify", str(mirror)]) == 0
