"""DeepPrivacy2-compatible generators: exact parameter counts, checkpoint key layout and strict loading (including
the reference's TriA-GAN to_rgb mapping and both w_centers formats), forward contract (composite keeps known pixels
exactly, eval determinism given w, w changes the output), latent API and the keypoint encodings
(docs/reference.md §3.3, §3.4, §5)."""
import argparse

import numpy as np
import pytest
import torch

from avanon.generators import (EXPECTED_PARAM_COUNTS, GENERATOR_NAMES, CheckpointError, StyleGANUnet, TriaGAN,
                              build_generator, joint_map, keypoint_channels, load_generator, map_state_dict,
                              read_checkpoint)
from avanon.generators.layers import conv2d_resample, setup_filter, upfirdn2d

NATIVE = {"face_fdf128": (128, 128), "face_fdf256": (256, 256), "body_nocse288": (288, 160),
          "body_triagan288": (288, 160)}


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(sorted(NATIVE).index(name))
            cache[name] = build_generator(name)
        return cache[name]

    return get


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------- architecture
def test_reference_param_counts_are_the_measured_ones():
    assert EXPECTED_PARAM_COUNTS == {"face_fdf128": 42_569_987, "face_fdf256": 43_131_523,
                                     "body_nocse288": 43_131_523, "body_triagan288": 124_212_639}
    assert set(GENERATOR_NAMES) == set(EXPECTED_PARAM_COUNTS)


@pytest.mark.parametrize("name", list(NATIVE))
def test_param_count(models, name):
    assert n_params(models(name)) == EXPECTED_PARAM_COUNTS[name]


def test_unknown_name():
    with pytest.raises(KeyError, match="face_fdf128"):
        build_generator("nope")


# Keys and shapes read off the reference code (stylegan_unet.py / sg2_layers.py / triagan.py / base.py).
KEYS = {
    "face_fdf128": {
        "style_net.fc0.weight": (512, 512), "style_net.fc1.bias": (512,), "style_net.w_avg": (512,),
        "style_net.w_centers": (512, 512),
        "from_rgb.weight": (128, 4, 1, 1), "from_rgb.bias": (128,),
        "encoder.0.conv0.weight": (256, 128, 3, 3), "encoder.0.skip.weight": (256, 128, 1, 1),
        "encoder.1.conv0.resample_filter": (4, 4), "encoder.1.skip.resample_filter": (4, 4),
        "encoder.4.conv1.weight": (512, 512, 3, 3),
        "decoder.0.conv0.affine.weight": (512, 512), "decoder.0.conv0.affine_beta.bias": (512,),
        "decoder.0.conv1.resample_filter": (4, 4), "decoder.4.conv1.weight": (128, 128, 3, 3),
        "unet_block1.weight": (512, 512, 1, 1), "unet_block4.bias": (256,),
        "to_rgb.weight": (3, 128, 1, 1), "to_rgb.bias": (3,),
    },
    "body_nocse288": {
        "from_rgb.weight": (64, 4, 1, 1), "encoder.5.conv0.weight": (512, 512, 3, 3),
        "decoder.5.conv0.weight": (64, 128, 3, 3), "unet_block5.weight": (128, 128, 1, 1),
        "to_rgb.weight": (3, 64, 1, 1),
    },
    "body_triagan288": {
        "style_net.fc0.weight": (512, 64), "style_net.w_avg": (512,), "style_net.w_centers": (512, 512),
        "from_rgb.weight": (128, 30, 7, 7), "from_rgb.bias": (128,),
        "encoder.layers.5.0.conv0.weight": (128, 128, 3, 3),  # index 5 = full resolution (list reversed)
        "encoder.layers.5.1.conv1.weight": (256, 128, 3, 3), "encoder.layers.5.1.skip.weight": (256, 128, 1, 1),
        "encoder.layers.0.1.layer_scale": (1, 512, 1, 1), "encoder.layers.0.0.conv0.affine.weight": (512, 512),
        "encoder.downsample.resample_filter": (4, 4), "decoder.upsample.resample_filter": (4, 4),
        "decoder.middle_blocks.1.conv1.noise_const": (9, 5), "decoder.middle_blocks.0.conv0.noise_strength": (),
        "decoder.layers.0.0.conv0.noise_const": (9, 5), "decoder.layers.5.1.conv1.noise_const": (288, 160),
        "decoder.layers.5.0.conv0.weight": (256, 256, 3, 3), "decoder.layers.5.1.conv0.weight": (128, 128, 3, 3),
        "decoder.unet_layers.1.0.weight": (512, 512, 1, 1), "decoder.unet_layers.5.0.weight": (256, 256, 1, 1),
        "decoder.to_rgb.weight": (3, 128, 1, 1), "decoder.to_rgb.bias": (3,),
    },
}
ABSENT = {
    "face_fdf128": ["encoder.0.conv0.resample_filter", "decoder.4.conv1.resample_filter", "unet_block0.weight",
                    "encoder.0.skip.bias", "encoder.0.conv0.affine.weight"],
    "body_triagan288": ["decoder.unet_layers.0.0.weight", "decoder.unet_layers.1.1.weight",
                        "decoder.unet_layers.1.0.bias", "encoder.layers.5.0.conv0.noise_const",
                        "encoder.layers.0.0.skip.bias", "from_rgb.act_gain", "decoder.to_rgb.noise_const"],
}


@pytest.mark.parametrize("name", sorted(KEYS))
def test_state_dict_layout(models, name):
    sd = models(name).state_dict()
    for key, shape in KEYS[name].items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, (key, tuple(sd[key].shape))
    for key in ABSENT.get(name, []):
        assert key not in sd, key


# ---------------------------------------------------------------------------------------------- loading
def _assert_state_equal(G, ref):
    sd = G.state_dict()
    assert set(sd) == set(ref)
    for k, v in ref.items():
        assert torch.equal(sd[k], v), k


def test_roundtrip_current_format(models, tmp_path):
    G = models("face_fdf128")
    ref = {k: v.clone() for k, v in G.state_dict().items()}
    ref["style_net.w_centers"] = torch.randn(512, 512)
    ref["style_net.w_avg"] = torch.randn(512)
    path = tmp_path / "fdf128.ckpt"
    torch.save({"EMA_generator": ref, "global_step": 1}, path)
    L = load_generator("face_fdf128", path)
    assert not L.training
    _assert_state_equal(L, ref)
    assert L.style_net.has_w_centers
    w = L.get_w(truncation_value=0, multi_modal=True, w_indices=[7])
    assert torch.equal(w, ref["style_net.w_centers"][7:8])
    w = L.get_w(truncation_value=0, n=2)
    assert torch.equal(w, ref["style_net.w_avg"].expand(2, -1))


def test_roundtrip_triagan_mapping_and_old_w_centers(models, tmp_path):
    G = models("body_triagan288")
    ref = {k: v.clone() for k, v in G.state_dict().items()}
    ckpt_state = dict(ref)
    # Progressive-growing name of the output layer, and the old top-level w_centers.
    ckpt_state["decoder.to_rgb.0.weight"] = ckpt_state.pop("decoder.to_rgb.weight")
    ckpt_state["decoder.to_rgb.0.bias"] = ckpt_state.pop("decoder.to_rgb.bias")
    centers = torch.randn(512, 512)
    del ckpt_state["style_net.w_centers"]
    path = tmp_path / "triagan.ckpt"
    torch.save({"EMA_generator": ckpt_state, "w_centers": centers}, path)
    L = load_generator("body_triagan288", path)
    ref["style_net.w_centers"] = centers
    _assert_state_equal(L, ref)
    assert L.style_net.has_w_centers and not L.training


def test_map_state_dict_is_triagan_only():
    t = torch.zeros(1)
    assert map_state_dict("body_triagan288", {"decoder.to_rgb.3.bias": t, "x": t}) == \
        {"decoder.to_rgb.bias": t, "x": t}
    assert "decoder.to_rgb.3.bias" in map_state_dict("face_fdf128", {"decoder.to_rgb.3.bias": t})


def test_no_w_centers_and_different_center_count(models, tmp_path):
    G = models("face_fdf128")
    sd = {k: v for k, v in G.state_dict().items() if k != "style_net.w_centers"}
    path = tmp_path / "nocenters.ckpt"
    torch.save({"EMA_generator": sd}, path)
    L = load_generator("face_fdf128", path)
    assert not L.style_net.has_w_centers
    assert tuple(L.style_net.w_centers.shape) == (512, 512) and not L.style_net.w_centers.any()
    with pytest.raises(RuntimeError, match="w_centers"):
        L.get_w(truncation_value=0, multi_modal=True)
    # Any number of centres loads (the buffer takes the checkpoint's shape).
    sd["style_net.w_centers"] = torch.randn(64, 512)
    torch.save({"EMA_generator": sd}, path)
    L = load_generator("face_fdf128", path)
    assert tuple(L.style_net.w_centers.shape) == (64, 512) and L.style_net.has_w_centers


def test_strict_errors_name_the_keys(models, tmp_path):
    G = models("face_fdf128")
    sd = dict(G.state_dict())
    del sd["unet_block2.weight"]
    sd["decoder.9.conv0.weight"] = torch.zeros(1)
    sd["to_rgb.bias"] = torch.zeros(4)
    path = tmp_path / "bad.ckpt"
    torch.save({"EMA_generator": sd}, path)
    with pytest.raises(CheckpointError) as err:
        load_generator("face_fdf128", path)
    msg = str(err.value)
    assert "unet_block2.weight" in msg and "decoder.9.conv0.weight" in msg and "to_rgb.bias" in msg
    torch.save({"generator": {}}, path)
    with pytest.raises(CheckpointError, match="EMA_generator"):
        load_generator("face_fdf128", path)
    with pytest.raises(FileNotFoundError, match="b649410e831b45f7800a89c738b411ce"):
        load_generator("body_triagan288", tmp_path / "missing.ckpt")


def test_unsafe_pickle_needs_consent(tmp_path):
    path = tmp_path / "pickled.ckpt"
    torch.save({"EMA_generator": {}, "train_state": argparse.Namespace(step=3)}, path)
    with pytest.raises(CheckpointError, match="allow_pickle"):
        read_checkpoint(path, name="face_fdf128")
    with pytest.warns(UserWarning):
        ckpt = read_checkpoint(path, name="face_fdf128", allow_pickle=True)
    assert ckpt["train_state"].step == 3


# ---------------------------------------------------------------------------------------------- forward
def _inputs(H, W, n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(n, 3, H, W, generator=g) * 2 - 1
    mask = torch.ones(n, 1, H, W)
    mask[..., H // 5: 4 * H // 5, W // 4: 3 * W // 4] = 0
    mrcnn = torch.ones(n, 1, H, W)
    mrcnn[..., H // 4: 3 * H // 4, W // 3: 2 * W // 3] = 0
    kp = torch.rand(n, 17, 3, generator=g) * 0.6 + 0.2
    kp[..., 2] = 1.0
    kp[:, 0, 2] = 0  # nose invisible
    return dict(img=img, condition=img * mask, mask=mask, maskrcnn_mask=mrcnn, keypoints=kp)


def _activate(G, seed=0):
    """Random init leaves some paths (layer_scale 1e-5, noise strength 0) nearly inert; make them matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("layer_scale"):
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=g))
            elif name.endswith("noise_strength"):
                p.fill_(0.1)


def _check_forward(G, H, W, z_dim, seed=0):
    batch = _inputs(H, W, seed=seed)
    torch.manual_seed(seed)
    w1, w2 = G.get_w(n=1), G.get_w(n=1)
    assert w1.shape == (1, G.w_dim)
    with torch.no_grad():
        a = G(**batch, w=w1)
        b = G(**batch, w=w1)["img"]
        c = G(**batch, w=w2)["img"]
    out = a["img"]
    assert out.shape == (1, 3, H, W) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    keep = batch["mask"].expand_as(out).bool()
    assert torch.equal(out[keep], batch["img"][keep])  # known pixels returned exactly
    assert torch.equal(out, b)  # eval: deterministic for a given w
    gen = ~keep
    assert not torch.equal(out[gen], c[gen])  # w changes the generated pixels
    assert torch.equal(c[keep], batch["img"][keep])


@pytest.mark.parametrize("name", [
    "face_fdf128",
    pytest.param("face_fdf256", marks=pytest.mark.slow),
    pytest.param("body_nocse288", marks=pytest.mark.slow),
    pytest.param("body_triagan288", marks=pytest.mark.slow),
])
def test_native_forward(models, name):
    G = models(name)
    if isinstance(G, TriaGAN):
        _activate(G)
    H, W = NATIVE[name]
    _check_forward(G, H, W, G.z_channels)


@pytest.fixture(scope="module")
def small_tria():
    torch.manual_seed(1)
    G = TriaGAN(imsize=(36, 20), dim=8, dim_mults=(1, 2, 2), num_resnet_blocks=2, n_middle_blocks=2,
                z_channels=8, w_dim=16).eval()
    _activate(G)
    return G


@pytest.fixture(scope="module")
def small_unet():
    torch.manual_seed(2)
    return StyleGANUnet(imsize=32, cnum=8, max_cnum_mul=4, z_channels=16, w_dim=16).eval()


def test_small_forward_contract(small_tria, small_unet):
    _check_forward(small_tria, 36, 20, 8)
    _check_forward(small_unet, 32, 32, 16)


def test_triagan_noise_semantics_and_joint_map_default(small_tria):
    G = small_tria
    batch = _inputs(36, 20, seed=3)
    w = G.get_w(n=1)
    with torch.no_grad():
        ref = G(**batch, w=w)["img"]
        explicit = G(**batch, w=w, joint_map=joint_map(batch["keypoints"], 36, 20))["img"]
        assert torch.equal(ref, explicit)  # joint map is built from the keypoints when not given
        G.train()
        try:
            t1 = G(**batch, w=w)["unmasked"]
            t2 = G(**batch, w=w)["unmasked"]
        finally:
            G.eval()
    assert not torch.equal(t1, t2)  # training mode draws fresh noise
    # z path: same z, same output; condition computed from img when omitted
    z = torch.randn(1, G.z_channels)
    with torch.no_grad():
        o1 = G(**batch, z=z)["img"]
        b2 = {k: v for k, v in batch.items() if k != "condition"}
        o2 = G(**b2, z=z)["img"]
    assert torch.equal(o1, o2)


def test_triagan_input_channels(models):
    G = models("body_triagan288")
    H, W = NATIVE["body_triagan288"]
    batch = _inputs(H, W, seed=4)
    x = G.get_input(batch["condition"], batch["mask"], batch["maskrcnn_mask"], batch["keypoints"], None)
    assert x.shape == (1, 30, H, W) and G.in_channels == 30
    assert torch.equal(x[:, :3], batch["condition"])
    assert torch.equal(x[:, 3:5], torch.cat([batch["mask"], 1 - batch["mask"]], 1))
    assert torch.equal(x[:, 5:7], torch.cat([batch["maskrcnn_mask"], 1 - batch["maskrcnn_mask"]], 1))
    assert torch.equal(x[:, 7:24], keypoint_channels(batch["keypoints"], H, W))
    jm = joint_map(batch["keypoints"], H, W)[0, 0]
    for c in range(6):
        assert torch.equal(x[0, 24 + c], (jm == c + 1).float())
    assert x[:, 24:].sum() == (jm > 0).sum()
    assert np.isclose(G.from_rgb.weight_gain, 1 / np.sqrt(7 * 49))


def test_latent_api(small_unet):
    sn = small_unet.style_net
    z = torch.randn(3, 16)
    assert torch.equal(small_unet.get_w(z=z), sn(z))
    with torch.no_grad():
        sn.w_avg.copy_(torch.randn(16))
    assert torch.allclose(small_unet.get_w(z=z, truncation_value=0), sn.w_avg.expand(3, -1))
    assert torch.allclose(small_unet.get_w(z=z, truncation_value=1), sn(z))
    half = small_unet.get_w(z=z, truncation_value=0.5)
    assert torch.allclose(half, (sn.w_avg + sn(z)) / 2, atol=1e-6)
    sn.set_w_centers(torch.randn(5, 16))
    try:
        w = small_unet.get_w(truncation_value=0, multi_modal=True, w_indices=[4, 0])
        assert torch.equal(w, sn.w_centers[[4, 0]])
        assert small_unet.get_w(truncation_value=0, multi_modal=True, n=3).shape == (3, 16)
    finally:
        sn.set_w_centers(None)
    assert not sn.has_w_centers


# ---------------------------------------------------------------------------------------------- ops
def test_resampling_fast_paths_match_generic_decomposition():
    g = torch.Generator().manual_seed(0)
    f = setup_filter().double()
    assert torch.allclose(setup_filter().sum(), torch.tensor(1.0)) and setup_filter().shape == (4, 4)
    x = torch.randn(2, 5, 18, 10, generator=g, dtype=torch.float64)
    w = torch.randn(7, 5, 3, 3, generator=g, dtype=torch.float64)
    up = conv2d_resample(x, w, f, up=2, padding=1, flip_weight=False)
    ref = upfirdn2d(x, f, up=2, padding=[3, 2, 3, 2], gain=4)
    ref = torch.nn.functional.conv2d(ref, w.flip([2, 3]))
    assert up.shape == (2, 7, 36, 20) and torch.allclose(up, ref, atol=1e-10)
    down = conv2d_resample(x, w, f, down=2, padding=1)
    ref = upfirdn2d(torch.nn.functional.conv2d(upfirdn2d(x, None, padding=[2, 2, 2, 2]), w), f, down=2)
    assert down.shape == (2, 7, 9, 5) and torch.allclose(down, ref, atol=1e-10)
    # A constant image stays constant away from the borders after 2x up/down-sampling (unit DC gain).
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(upfirdn2d(ones, f, up=2, padding=[2, 1, 2, 1], gain=4)[..., 3:-3, 3:-3],
                          torch.ones(1, 1, 10, 10, dtype=torch.float64))
    assert torch.allclose(upfirdn2d(ones, f, down=2, padding=[1, 1, 1, 1])[..., 1:-1, 1:-1],
                          torch.ones(1, 1, 2, 2, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- keypoints
def test_keypoint_channels_hand_example():
    kp = torch.zeros(1, 17, 3)
    kp[0, 0] = torch.tensor([0.5, 0.25, 1])     # (x=2, y=2) on a 8x4 crop
    kp[0, 1] = torch.tensor([0.375, 0.5, 1])    # x = 1.5 -> 2 (half to even), y = 4
    kp[0, 2] = torch.tensor([0.625, 0.0, 1])    # x = 2.5 -> 2, y = 0
    kp[0, 3] = torch.tensor([1.0, 1.0, 1])      # clamped to (3, 7)
    kp[0, 4] = torch.tensor([0.5, 0.5, 0])      # invisible
    out = keypoint_channels(kp, 8, 4)
    assert out.shape == (1, 17, 8, 4)
    expected = {0: (2, 2), 1: (4, 2), 2: (0, 2), 3: (7, 3)}
    for k in range(17):
        if k in expected:
            y, x = expected[k]
            assert out[0, k, y, x] == 1 and out[0, k].sum() == 1, k
        else:
            assert out[0, k].sum() == 0, k


def test_joint_map_hand_example():
    H, W = 20, 10
    kp = torch.zeros(1, 17, 3)
    pts = {1: (0.4, 0.1), 2: (0.6, 0.1),          # eyes -> (x 4, y 2), (6, 2)
           5: (0.3, 0.3), 6: (0.7, 0.3),          # shoulders -> (3, 6), (7, 6); neck (5, 6)
           7: (0.1, 0.3),                          # left elbow -> (1, 6)
           11: (0.3, 0.7), 12: (0.7, 0.7)}        # hips -> (3, 14), (7, 14); mid-hip (5, 14)
    for k, (x, y) in pts.items():
        kp[0, k] = torch.tensor([x, y, 1.0])
    kp[0, 16] = torch.tensor([0.9, 0.9, 0.0])     # invisible ankle: no line
    kp[0, 14] = torch.tensor([0.8, 0.8, 1.0])     # right knee visible but its hip-knee partner line needs both
    jm = joint_map(kp, H, W)
    assert jm.shape == (1, 1, H, W) and jm.dtype == torch.uint8
    exp = np.zeros((H, W), np.uint8)
    # The reference's drawing order; later lines overwrite earlier ones.
    exp[2, 4:7] = 1                                # left_eye - right_eye (head, value 0 + 1)
    exp[6, 3:8] = 4                                # left_shoulder - right_shoulder (body)
    exp[6, 1:4] = 2                                # left_shoulder - left_elbow (left arm)
    exp[6:15, 3] = 4                               # left_shoulder - left_hip (body) overwrites (3, 6)
    exp[6:15, 7] = 4                               # right_shoulder - right_hip
    exp[14, 3:8] = 4                               # left_hip - right_hip
    exp[6:15, 5] = 4                               # neck - mid_hip
    exp[2:7, 5] = 1                                # nose invisible, neck visible: mid-eyes - neck (head)
    # right_hip - right_knee: both visible -> right leg (value 6) from (7, 14) to (8, 16)
    got = jm[0, 0].numpy()
    leg = got == 6
    assert leg.sum() >= 2 and leg[16, 8] and not leg[:14].any()
    got = np.where(leg, 0, got)
    exp[14, 7] = got[14, 7]                        # the leg line may or may not repaint its start pixel
    assert np.array_equal(got, exp), f"\n{got}\n{exp}"


def test_joint_map_categories_and_visibility():
    H, W = 40, 30
    kp = torch.zeros(2, 17, 3)
    # sample 0: only a left leg (hip-knee-ankle) -> category 4 -> value 5
    kp[0, 11] = torch.tensor([0.3, 0.5, 1])
    kp[0, 13] = torch.tensor([0.3, 0.7, 1])
    kp[0, 15] = torch.tensor([0.3, 0.9, 2])   # COCO v=2 counts as visible
    # sample 1: right arm only -> value 3
    kp[1, 6] = torch.tensor([0.7, 0.3, 1])
    kp[1, 8] = torch.tensor([0.7, 0.5, 1])
    kp[1, 10] = torch.tensor([0.7, 0.7, 1])
    jm = joint_map(kp, H, W)
    assert set(np.unique(jm[0].numpy())) == {0, 5}
    assert (jm[0, 0, :, 9] == 5).sum() == int(round(0.9 * H)) - int(round(0.5 * H)) + 1
    assert set(np.unique(jm[1].numpy())) == {0, 3}
    assert joint_map(torch.zeros(1, 17, 3), H, W).sum() == 0
