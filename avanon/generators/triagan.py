"""TriA-GAN keypoint-guided full-body generator compatible with DeepPrivacy2's ``TriaGAN`` (L_im288) checkpoints.

State-dict layout (official ``EMA_generator`` after the reference's ``ckpt_map_G``)::

    style_net.fc0.{weight,bias} (z 64 -> 512), style_net.fc1.*, style_net.w_avg, [style_net.w_centers]
    from_rgb.{weight,bias}                                7x7 conv, 30 -> dim, linear
    encoder.layers.{j}.{b}.{conv0,conv1}.{weight,bias,affine.*,affine_beta.*}
    encoder.layers.{j}.{b}.skip.weight, encoder.layers.{j}.{b}.layer_scale
        j = 0 is the LOWEST resolution (the reference builds the list top-down and reverses it)
    encoder.downsample.resample_filter
    decoder.layers.{j}.{b}.{conv0,conv1}.{weight,bias,affine.*,affine_beta.*,noise_const,noise_strength}
    decoder.layers.{j}.{b}.skip.weight, decoder.layers.{j}.{b}.layer_scale
        j = 0 is the lowest resolution; noise_const has the level's [H, W]
    decoder.unet_layers.{j}.0.weight                      j >= 1: 1x1 conv with InstanceNorm (Identity elsewhere)
    decoder.middle_blocks.{m}.*                           2 residual blocks at the lowest resolution (with noise)
    decoder.upsample.resample_filter
    decoder.to_rgb.{weight,bias}                          1x1 conv, dim -> 3, linear

Conv semantics (``dp2/generator/triagan.py::Conv2d``): InstanceNorm (input) -> ``x*affine(w)+affine_beta(w)``
-> activation (x gain) -> conv (weight and bias scaled by the layer gain) -> + noise_strength * noise.
In eval mode the noise is the fixed ``noise_const`` buffer, so the output is deterministic given w.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .layers import FullyConnectedLayer, InstanceNorm, MappingNetwork, _act_gain, bias_act, setup_filter, upfirdn2d
from .stylegan_unet import _get_w

__all__ = ["TriaConv2d", "SG2ResidualBlock", "Resample", "TriaGAN", "keypoint_channels", "joint_map",
           "COCO_KEYPOINTS"]

# ---------------------------------------------------------------------------------------------------------------
# Keypoint encodings (dp2/generator/utils.py::spatial_embed_keypoints, dp2/data/transforms/transforms.py::
# InsertJointMap). Keypoints are crop-relative: x in [0, 1] of the width, y in [0, 1] of the height.

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
_KNAMES = COCO_KEYPOINTS + ("neck", "mid_hip")
# Drawing order matters where lines overlap (later lines overwrite): same order as the reference's dicts.
_CONNECTIVITY = (
    ("nose", ("left_eye", "right_eye", "neck")),
    ("left_eye", ("right_eye", "left_ear")),
    ("right_eye", ("right_ear",)),
    ("left_shoulder", ("right_shoulder", "left_elbow", "left_hip")),
    ("right_shoulder", ("right_elbow", "right_hip")),
    ("left_elbow", ("left_wrist",)),
    ("right_elbow", ("right_wrist",)),
    ("left_hip", ("right_hip", "left_knee")),
    ("right_hip", ("right_knee",)),
    ("left_knee", ("left_ankle",)),
    ("right_knee", ("right_ankle",)),
    ("neck", ("mid_hip", "nose")),
)
# 0 head, 1 left arm, 2 right arm, 3 body, 4 left leg, 5 right leg (pixel value = category + 1)
_CATEGORY = {
    ("nose", "left_eye"): 0, ("nose", "right_eye"): 0, ("nose", "neck"): 0, ("left_eye", "right_eye"): 0,
    ("left_eye", "left_ear"): 0, ("right_eye", "right_ear"): 0,
    ("left_shoulder", "left_elbow"): 1, ("left_elbow", "left_wrist"): 1,
    ("right_shoulder", "right_elbow"): 2, ("right_elbow", "right_wrist"): 2,
    ("left_shoulder", "right_shoulder"): 3, ("left_shoulder", "left_hip"): 3, ("right_shoulder", "right_hip"): 3,
    ("left_hip", "right_hip"): 3, ("neck", "mid_hip"): 3,
    ("left_hip", "left_knee"): 4, ("left_knee", "left_ankle"): 4,
    ("right_hip", "right_knee"): 5, ("right_knee", "right_ankle"): 5,
    ("neck", "nose"): 0,
}
_K = {name: i for i, name in enumerate(_KNAMES)}


def _as_keypoint_tensor(keypoints) -> torch.Tensor:
    kp = torch.as_tensor(keypoints, dtype=torch.float32)
    if kp.ndim == 2:
        kp = kp[None]
    if kp.ndim != 3 or kp.shape[-1] != 3:
        raise ValueError(f"keypoints must be N x K x 3 (x, y, visibility), got {tuple(kp.shape)}")
    return kp


@torch.no_grad()
def keypoint_channels(keypoints, height: int, width: int) -> torch.Tensor:
    """One-hot spatial keypoint maps, N x K x H x W (float32).

    Channel k has a single 1 at ``(round(y*H), round(x*W))`` (torch rounding, half to even; clamped into the
    image) when keypoint k is visible, and is all zeros otherwise. Visibility is ``round(v) != 0`` as in the
    reference (which multiplies the flat index by ``round(v)``; crops carry v in {0, 1}).
    """
    kp = _as_keypoint_tensor(keypoints)
    N, K, _ = kp.shape
    x = (kp[..., 0] * width).round().long().clamp(0, width - 1)
    y = (kp[..., 1] * height).round().long().clamp(0, height - 1)
    vis = kp[..., 2].round() != 0
    out = torch.zeros((N, K, height, width), dtype=torch.float32, device=kp.device)
    n_idx, k_idx = torch.nonzero(vis, as_tuple=True)
    out[n_idx, k_idx, y[n_idx, k_idx], x[n_idx, k_idx]] = 1
    return out


def _xy(point: torch.Tensor):
    return tuple(point[:2].round().long().tolist())


@torch.no_grad()
def joint_map(keypoints, height: int, width: int) -> torch.Tensor:
    """Limb-category map N x 1 x H x W (uint8, 0 = background, 1..6 = category + 1), drawn with PIL
    ``ImageDraw.line(width=1)`` at crop resolution between visible (v > 0) COCO keypoint pairs, plus a synthetic
    ``neck`` (mid-shoulders, if both shoulders are visible) and ``mid_hip`` (if both hips are visible).
    If the nose is invisible and the neck visible, a head line runs from mid-eyes to the neck (the reference
    uses the eye coordinates whatever their visibility)."""
    from PIL import Image, ImageDraw

    kps = _as_keypoint_tensor(keypoints).cpu()
    if kps.shape[1] != 17:
        raise ValueError(f"joint_map needs the 17 COCO keypoints, got {kps.shape[1]}")
    out = np.zeros((kps.shape[0], 1, height, width), dtype=np.uint8)
    for b in range(kps.shape[0]):
        kp = torch.cat((kps[b].clone(), torch.zeros(2, 3)))
        visible = kp[:, -1] > 0
        ls, rs, lh, rh = _K["left_shoulder"], _K["right_shoulder"], _K["left_hip"], _K["right_hip"]
        if visible[ls] and visible[rs]:
            kp[_K["neck"]] = kp[ls] + (kp[rs] - kp[ls]) / 2
            visible[_K["neck"]] = True
        if visible[lh] and visible[rh]:
            kp[_K["mid_hip"]] = kp[lh] + (kp[rh] - kp[lh]) / 2
            visible[_K["mid_hip"]] = True
        kp[:, 0] *= width
        kp[:, 1] *= height
        canvas = Image.fromarray(np.zeros((height, width), dtype=np.uint8))
        draw = ImageDraw.Draw(canvas)
        for src, dsts in _CONNECTIVITY:
            for dst in dsts:
                if not (visible[_K[src]] and visible[_K[dst]]):
                    continue
                c = _CATEGORY[(src, dst)]
                draw.line((_xy(kp[_K[src]]), _xy(kp[_K[dst]])), width=1, fill=c + 1)
        if not visible[_K["nose"]] and visible[_K["neck"]]:
            m_eye = kp[_K["left_eye"]] + (kp[_K["right_eye"]] - kp[_K["left_eye"]]) / 2
            draw.line((_xy(m_eye), _xy(kp[_K["neck"]])), width=1, fill=_CATEGORY[("nose", "neck")] + 1)
        out[b, 0] = np.asarray(canvas)
    return torch.from_numpy(out)


_draw_joint_map = joint_map  # the forward() argument of the same name shadows the function


class Resample(torch.nn.Module):
    """2x up- or down-sampling with the [1,3,3,1] filter (reference ``Upfirdn2d``). State: ``resample_filter``."""

    def __init__(self, down: int = 1, up: int = 1) -> None:
        super().__init__()
        assert up <= 2 and down <= 2
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))
        fw = fh = 4
        px0 = px1 = py0 = py1 = 0
        if up > 1:
            px0 += (fw + up - 1) // 2
            px1 += (fw - up) // 2
            py0 += (fh + up - 1) // 2
            py1 += (fh - up) // 2
        if down > 1:
            px0 += (fw - down + 1) // 2
            px1 += (fw - down) // 2
            py0 += (fh - down + 1) // 2
            py1 += (fh - down) // 2
        self.up = up
        self.down = down
        self.padding = [px0, px1, py0, py1]
        self.gain = up ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.resample_filter, up=self.up, down=self.down, padding=self.padding, gain=self.gain)


class TriaConv2d(torch.nn.Module):
    """State: ``weight``, ``bias`` (if bias), ``affine``/``affine_beta`` (if w_dim), ``noise_const`` [H, W] and
    ``noise_strength`` [] (if use_noise). The activation gain is a non-persistent constant."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, activation: str = "lrelu",
                 bias: bool = True, norm: bool = False, lr_multiplier: float = 1.0, bias_init: float = 0.0,
                 w_dim: Optional[int] = None, gain: float = 1.0, resolution: Optional[Sequence[int]] = None,
                 use_noise: bool = False) -> None:
        super().__init__()
        if norm:
            self.norm = InstanceNorm()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.padding = kernel_size // 2
        self.gain = gain
        self.act_gain = _act_gain(activation)
        self.weight_gain = lr_multiplier / np.sqrt(in_channels * kernel_size ** 2)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]) + bias_init) if bias else None
        self.bias_gain = lr_multiplier
        if w_dim is not None:
            self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
            self.affine_beta = FullyConnectedLayer(w_dim, in_channels, bias_init=0)
        self.use_noise = use_noise
        if use_noise:
            assert resolution is not None
            self.resolution = [int(r) for r in resolution]
            self.register_buffer("noise_const", torch.randn(self.resolution))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor, w: Optional[torch.Tensor] = None) -> torch.Tensor:
        if hasattr(self, "norm"):
            x = self.norm(x)
        if hasattr(self, "affine"):
            if w is None:
                raise ValueError("this layer is style-modulated and needs w")
            gamma = self.affine(w).view(-1, self.in_channels, 1, 1)
            beta = self.affine_beta(w).view(-1, self.in_channels, 1, 1)
            x = torch.addcmul(beta, x, gamma)
        # act(x) * act_gain followed by a (linear) conv == conv with the gain folded into the weight; folding
        # saves one full-size multiply per layer (identical up to float rounding).
        x = bias_act(x, None, act=self.activation, gain=1.0)
        b = self.bias * (self.bias_gain * self.gain) if self.bias is not None else None
        weight = self.weight * float(self.weight_gain * self.gain * self.act_gain)
        x = F.conv2d(x, weight, bias=b, padding=self.padding)
        if self.use_noise:
            if self.training:
                noise = torch.randn([x.shape[0], 1, *self.resolution], device=x.device) * self.noise_strength
            else:
                noise = self.noise_const * self.noise_strength
            x = x + noise
        return x

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, act={self.activation}, "
                f"gain={self.gain:.4f}, noise={self.use_noise}")


class SG2ResidualBlock(torch.nn.Module):
    """skip (1x1, linear, no bias, gain) + conv1(conv0(x)) * layer_scale."""

    def __init__(self, in_channels: int, out_channels: Sequence[int], skip_gain: float = np.sqrt(0.5),
                 layer_scale: bool = False, **layer_kwargs) -> None:
        super().__init__()
        self.conv0 = TriaConv2d(in_channels, out_channels[0], **layer_kwargs)
        self.conv1 = TriaConv2d(out_channels[0], out_channels[1], gain=skip_gain, **layer_kwargs)
        self.skip = TriaConv2d(in_channels, out_channels[1], kernel_size=1, bias=False, gain=skip_gain,
                               activation="linear")
        if layer_scale:
            self.layer_scale = torch.nn.Parameter(torch.zeros((1, out_channels[1], 1, 1)) + 1e-5)

    def forward(self, x: torch.Tensor, w: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.skip(x)
        x = self.conv0(x, w)
        x = self.conv1(x, w)
        if hasattr(self, "layer_scale"):
            x = x * self.layer_scale
        return y + x


class Encoder(torch.nn.Module):
    def __init__(self, dim: int, dim_mults: Sequence[int], num_resnet_blocks: Sequence[int], w_dim: int,
                 norm_enc: bool, imsize: Tuple[int, int], layer_scale: bool) -> None:
        super().__init__()
        n_layers = len(dim_mults)
        dims = [dim * m for m in dim_mults]
        layers = []
        for lidx in range(n_layers):
            resolution = [r // 2 ** lidx for r in imsize]
            dim_in = dims[lidx]
            dim_out = dims[min(lidx + 1, n_layers - 1)]
            blocks = torch.nn.ModuleList()
            for i in range(num_resnet_blocks[lidx]):
                cur = dim_out if i == num_resnet_blocks[lidx] - 1 else dim_in
                blocks.append(SG2ResidualBlock(dim_in, [dim_in, cur], skip_gain=np.sqrt(0.5), layer_scale=layer_scale,
                                               norm=norm_enc, w_dim=w_dim, use_noise=False, resolution=resolution))
            layers.append(blocks)
        layers.reverse()  # index 0 = lowest resolution, as in the checkpoints
        self.layers = torch.nn.ModuleList(layers)
        self.downsample = Resample(down=2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        feats = []
        levels = list(self.layers)[::-1]  # highest resolution first
        for lidx, blocks in enumerate(levels):
            for block in blocks:
                x = block(x, w)
                feats.append(x)
            if lidx != len(levels) - 1:
                x = self.downsample(x)
        return x, feats


class Decoder(torch.nn.Module):
    def __init__(self, dim: int, dim_mults: Sequence[int], num_resnet_blocks: Sequence[int], n_middle_blocks: int,
                 w_dim: int, norm_dec: bool, im_channels: int, imsize: Tuple[int, int], use_noise: bool,
                 layer_scale: bool) -> None:
        super().__init__()
        dims = [dim * m for m in dim_mults]
        n_layers = len(dims)
        self.layers = torch.nn.ModuleList()
        self.unet_layers = torch.nn.ModuleList()
        kw = dict(norm=norm_dec, w_dim=w_dim, use_noise=use_noise, layer_scale=layer_scale)
        for lidx in range(n_layers):  # lowest resolution first
            dim_in = dims[min(-lidx, -1)]
            dim_out = dims[-1 - lidx]
            resolution = [r // 2 ** (n_layers - 1 - lidx) for r in imsize]
            blocks = torch.nn.ModuleList()
            skips = torch.nn.ModuleList()
            for i in range(num_resnet_blocks[-lidx - 1]):
                has_unet = i == 0 and lidx != 0
                cur = dim_in if i == 0 else dim_out
                gain = np.sqrt(1 / (2 + int(has_unet)))
                blocks.append(SG2ResidualBlock(cur, [cur, dim_out], skip_gain=gain, resolution=resolution, **kw))
                if has_unet:
                    skips.append(TriaConv2d(cur, cur, kernel_size=1, norm=True, gain=gain, bias=False))
                else:
                    skips.append(torch.nn.Identity())
            self.layers.append(blocks)
            self.unet_layers.append(skips)
        self.upsample = Resample(up=2)
        if n_middle_blocks:
            low = [r // 2 ** (n_layers - 1) for r in imsize]
            self.middle_blocks = torch.nn.ModuleList([
                SG2ResidualBlock(dims[-1], [dims[-1], dims[-1]], skip_gain=np.sqrt(0.5), resolution=low, **kw)
                for _ in range(n_middle_blocks)])
        self.to_rgb = TriaConv2d(dims[0], im_channels, 1, activation="linear")

    def forward(self, x: torch.Tensor, w: torch.Tensor, feats: List[torch.Tensor]) -> torch.Tensor:
        if hasattr(self, "middle_blocks"):
            for block in self.middle_blocks:
                x = block(x, w)
        rfeats = iter(reversed(feats))
        for lidx, (skips, blocks) in enumerate(zip(self.unet_layers, self.layers)):
            for skip, block in zip(skips, blocks):
                f = next(rfeats)  # every block consumes one encoder feature, used only where a skip conv exists
                if not isinstance(skip, torch.nn.Identity):
                    x = x + skip(f)
                x = block(x, w)
            if lidx != len(self.layers) - 1:
                x = self.upsample(x)
        return self.to_rgb(x)


class TriaGAN(torch.nn.Module):
    """DeepPrivacy2 ``TriaGAN`` (configs/fdh/triagan/L_im288.py defaults).

    forward(condition=None, mask=..., img=None, maskrcnn_mask=None, keypoints=None, joint_map=None, w=None,
            z=None, **ignored) -> {"img": composited, "unmasked": raw generator output}

    * ``mask`` N x 1 x H x W, 1 = keep, 0 = generate; ``condition`` = img * mask (computed from img if omitted).
    * ``maskrcnn_mask`` N x 1 x H x W, 1 = background (the undilated segmentation's complement). Defaults to
      ``mask`` when omitted (a documented approximation; the reference requires it).
    * ``keypoints`` N x 17 x 3, crop-relative x, y in [0, 1] and visibility (> 0 = visible; the one-hot map
      uses ``round(v)``). Missing keypoints -> all invisible.
    * ``joint_map`` N x 1 x H x W integers 0..6; built from ``keypoints`` with :func:`joint_map` when None
      (the reference requires it, see docs/reference.md §9 item 2).
    * Output ``img`` = ``mask * img + (1 - mask) * generated`` (falls back to condition if img is None).
    """

    def __init__(self, imsize: Sequence[int] = (288, 160), im_channels: int = 3, dim: int = 128,
                 dim_mults: Sequence[int] = (1, 2, 4, 4, 4, 4), num_resnet_blocks=2, n_middle_blocks: int = 2,
                 z_channels: int = 64, w_dim: int = 512, norm_enc: bool = True, norm_dec: bool = True,
                 use_maskrcnn_mask: bool = True, input_keypoints: bool = True, n_keypoints: int = 17,
                 input_keypoint_indices: Optional[Sequence[int]] = None, input_joint: bool = True,
                 use_noise: bool = True, layer_scale: bool = True) -> None:
        super().__init__()
        self.imsize = (int(imsize[0]), int(imsize[1]))
        self.im_channels = im_channels
        self.z_channels = z_channels
        self.w_dim = w_dim
        self.n_keypoints = n_keypoints
        self.input_keypoint_indices = list(range(n_keypoints) if input_keypoint_indices is None
                                           else input_keypoint_indices)
        self.input_keypoints = input_keypoints
        self.input_joint = input_joint
        self.use_maskrcnn_mask = use_maskrcnn_mask
        n_layers = len(dim_mults)
        if isinstance(num_resnet_blocks, int):
            num_resnet_blocks = (num_resnet_blocks,) * n_layers
        num_resnet_blocks = tuple(num_resnet_blocks)
        assert len(num_resnet_blocks) == n_layers
        self.style_net = MappingNetwork(z_channels, w_dim, num_layers=2, lr_multiplier=0.01, w_avg_beta=0.998)
        in_ch = (im_channels + 2 + 2 * int(use_maskrcnn_mask)
                 + int(input_keypoints) * len(self.input_keypoint_indices) + int(input_joint) * 6)
        self.in_channels = in_ch
        self.from_rgb = TriaConv2d(in_ch, dim, 7, activation="linear")
        # The reference overrides the gain as if there were 7 "groups" of input (not 30 channels).
        self.from_rgb.weight_gain = 1 / np.sqrt(
            (3 + 1 + int(use_maskrcnn_mask) + int(input_keypoints) + int(input_joint)) * 7 ** 2)
        self.encoder = Encoder(dim, dim_mults, num_resnet_blocks, w_dim, norm_enc, self.imsize, layer_scale)
        self.decoder = Decoder(dim, dim_mults, num_resnet_blocks, n_middle_blocks, w_dim, norm_dec, im_channels,
                               self.imsize, use_noise, layer_scale)

    # ------------------------------------------------------------------ latent API
    def get_w(self, z: Optional[torch.Tensor] = None, truncation_value: Optional[float] = None,
              multi_modal: bool = False, w_indices=None, n: int = 1) -> torch.Tensor:
        """Sample w (N x w_dim); see :meth:`StyleGANUnet.get_w`."""
        return _get_w(self.style_net, z, truncation_value, multi_modal, w_indices, n)

    # ------------------------------------------------------------------ inputs
    def get_input(self, condition: torch.Tensor, mask: torch.Tensor, maskrcnn_mask: torch.Tensor,
                  keypoints: Optional[torch.Tensor], joint_map: Optional[torch.Tensor]) -> torch.Tensor:
        N, _, H, W = condition.shape
        parts = [condition, mask, 1 - mask]
        if self.use_maskrcnn_mask:
            parts += [maskrcnn_mask, 1 - maskrcnn_mask]
        if keypoints is None and (self.input_keypoints or (self.input_joint and joint_map is None)):
            keypoints = torch.zeros((N, self.n_keypoints, 3), device=condition.device)
        if self.input_keypoints:
            kp = keypoints[:, self.input_keypoint_indices].to(condition.device)
            parts.append(keypoint_channels(kp, H, W).to(condition.dtype))
        if self.input_joint:
            if joint_map is None:
                joint_map = _draw_joint_map(keypoints, H, W)
            joint_map = torch.as_tensor(joint_map, device=condition.device)
            if joint_map.ndim == 3:
                joint_map = joint_map[:, None]
            oh = torch.zeros((N, 7, H, W), device=condition.device, dtype=torch.float32)
            oh.scatter_(1, joint_map.long(), 1)
            parts.append(oh[:, 1:].to(condition.dtype))  # channel 0 = background, dropped
        return torch.cat(parts, dim=1)

    def forward(self, condition: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                img: Optional[torch.Tensor] = None, maskrcnn_mask: Optional[torch.Tensor] = None,
                keypoints: Optional[torch.Tensor] = None, joint_map: Optional[torch.Tensor] = None,
                w: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None, **_ignored) -> dict:
        if mask is None:
            raise ValueError("mask is required (N x 1 x H x W, 1 = keep, 0 = generate)")
        mask = mask.float()
        if condition is None:
            if img is None:
                raise ValueError("give condition (= img * mask) or img")
            condition = img * mask
        if maskrcnn_mask is None:
            maskrcnn_mask = mask
        maskrcnn_mask = maskrcnn_mask.float()
        if w is None:
            if z is None:
                z = torch.randn((condition.shape[0], self.z_channels), device=condition.device)
            w = self.style_net(z)
        x = self.get_input(condition, mask, maskrcnn_mask, keypoints, joint_map)
        x = self.from_rgb(x)
        x, feats = self.encoder(x, w)
        gen = self.decoder(x, w, feats)
        real = img if img is not None else condition
        out = mask * real + (1 - mask) * gen
        return {"img": out, "unmasked": gen}
