"""U-Net StyleGAN generator compatible with DeepPrivacy2's ``StyleGANUnet`` checkpoints.

Used for the FDF128 / FDF256 face models and the mask-only ("nocse") full-body model.

State-dict layout (names must match the official ``EMA_generator`` dicts)::

    style_net.fc0.{weight,bias}, style_net.fc1.{weight,bias}, style_net.w_avg, [style_net.w_centers]
    from_rgb.{weight,bias}                                   1x1 conv, (3 + 1) -> cnum, lrelu
    encoder.{i}.{conv0,conv1}.{weight,bias}                  ResidualBlock, i = 0 (full res) .. n_levels-1
    encoder.{i}.conv0.resample_filter, encoder.{i}.skip.{weight,resample_filter}   (i > 0: 2x down in conv0/skip)
    decoder.{i}.{conv0,conv1}.{weight,bias,affine.*,affine_beta.*}   i = 0 (lowest res) .. n_levels-1
    decoder.{i}.conv1.resample_filter, decoder.{i}.skip.{weight,resample_filter}   (i < n_levels-1: 2x up)
    unet_block{i}.{weight,bias}                              i = 1 .. n_levels-1, 1x1 conv + InstanceNorm
    to_rgb.{weight,bias}                                     1x1 conv, cnum -> 3, linear

Layer semantics (``dp2/layers/sg2_layers.py::Conv2d``): optional style modulation of the *input activations*
``x * affine(w) + affine_beta(w)`` -> conv (with resampling) -> optional InstanceNorm -> bias, activation,
gain, clamp. Not weight demodulation.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .layers import (FullyConnectedLayer, InstanceNorm, MappingNetwork, _act_gain, bias_act, conv2d_resample,
                     setup_filter)

__all__ = ["SG2Conv2d", "ResidualBlock", "StyleGANUnet", "get_chsize"]


def get_chsize(imsize: int, cnum: int, max_imsize: int, max_cnum_mul: int) -> int:
    """Channel count at a level whose larger side is ``imsize`` (same float arithmetic as the reference)."""
    n = int(np.log2(max_imsize) - np.log2(imsize))
    mul = min(2 ** n, max_cnum_mul)
    return int(cnum * mul)


class SG2Conv2d(torch.nn.Module):
    """Conv layer of the StyleGAN-UNet (``sg2_layers.Conv2d``).

    State: ``weight`` [out, in, k, k], ``bias`` [out] (if bias), ``resample_filter`` [4, 4] (if up/down),
    ``affine`` / ``affine_beta`` FC layers w_dim -> in (if w_dim).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, up: int = 1, down: int = 1,
                 activation: str = "lrelu", conv_clamp: Optional[float] = None, bias: bool = True,
                 norm: bool = False, lr_multiplier: float = 1.0, bias_init: float = 0.0,
                 w_dim: Optional[int] = None, gain: float = 1.0) -> None:
        super().__init__()
        if norm:
            self.norm = InstanceNorm()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.up = up
        self.down = down
        self.activation = activation
        self.conv_clamp = None if conv_clamp is None else conv_clamp * gain
        self.padding = kernel_size // 2
        if up == 1 and down == 1:
            self.resample_filter = None
        else:
            self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))
        self.act_gain = _act_gain(activation) * gain
        self.weight_gain = lr_multiplier / np.sqrt(in_channels * kernel_size ** 2)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]) + bias_init) if bias else None
        self.bias_gain = lr_multiplier
        if w_dim is not None:
            self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
            self.affine_beta = FullyConnectedLayer(w_dim, in_channels, bias_init=0)

    def forward(self, x: torch.Tensor, w: Optional[torch.Tensor] = None) -> torch.Tensor:
        if hasattr(self, "affine"):
            if w is None:
                raise ValueError("this layer is style-modulated and needs w")
            gamma = self.affine(w).view(-1, self.in_channels, 1, 1)
            beta = self.affine_beta(w).view(-1, self.in_channels, 1, 1)
            x = torch.addcmul(beta, x, gamma)
        weight = self.weight * self.weight_gain
        x = conv2d_resample(x, weight, self.resample_filter, up=self.up, down=self.down, padding=self.padding,
                            flip_weight=(self.up == 1))
        if hasattr(self, "norm"):
            x = self.norm(x)
        b = self.bias * self.bias_gain if self.bias is not None else None
        return bias_act(x, b, act=self.activation, gain=self.act_gain, clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, up={self.up}, down={self.down}, "
                f"act={self.activation}, clamp={self.conv_clamp}")


class ResidualBlock(torch.nn.Module):
    """conv0 (optional 2x down) -> conv1 (optional 2x up, output gain) + 1x1 skip (same resampling, no bias)."""

    def __init__(self, in_channels: int, out_channels: int, conv_clamp: Optional[float] = None, up: int = 1,
                 down: int = 1, gain_out: float = np.sqrt(0.5), fix_residual: bool = False, **layer_kwargs) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv0 = SG2Conv2d(in_channels, out_channels, down=down, conv_clamp=conv_clamp, **layer_kwargs)
        self.conv1 = SG2Conv2d(out_channels, out_channels, up=up, conv_clamp=conv_clamp, gain=gain_out,
                               **layer_kwargs)
        # Checkpoints trained with fix_errors=False have an lrelu (x sqrt 2) on the skip path.
        self.skip = SG2Conv2d(in_channels, out_channels, kernel_size=1, bias=False, up=up, down=down,
                              activation="linear" if fix_residual else "lrelu", gain=gain_out)

    def forward(self, x: torch.Tensor, w: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.skip(x)
        x = self.conv0(x, w)
        x = self.conv1(x, w)
        return y + x


def _as_hw(imsize: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(imsize, int):
        return (imsize, imsize)
    return (int(imsize[0]), int(imsize[1]))


class StyleGANUnet(torch.nn.Module):
    """DeepPrivacy2 ``StyleGANUnet`` (image + mask in, composited image out).

    forward(condition=None, mask=..., img=None, w=None, z=None, **ignored) -> {"img": ...}

    * ``mask`` N x 1 x H x W, 1 = known pixel (kept), 0 = generate.
    * ``condition`` = img * mask (computed from ``img`` when omitted).
    * ``w`` N x w_dim; when None, ``z`` (N x z_channels, default N(0, I)) is mapped through ``style_net``.
    * Output ``img`` = ``condition * mask + (1 - mask) * generated`` (the reference's ``mask_output``), so known
      pixels are returned exactly; ``"unmasked"`` holds the raw generator output.
    """

    def __init__(self, imsize: Union[int, Sequence[int]], im_channels: int = 3, min_fmap_resolution: int = 8,
                 cnum: int = 64, max_cnum_mul: int = 8, n_middle_blocks: int = 0, z_channels: int = 512,
                 w_dim: int = 512, mask_output: bool = True, conv_clamp: Optional[float] = 256,
                 fix_errors: bool = True, input_extra_channels: int = 0) -> None:
        super().__init__()
        self.imsize = _as_hw(imsize)
        self.im_channels = im_channels
        self.z_channels = z_channels
        self.w_dim = w_dim
        self.mask_output = mask_output
        self.fix_errors = fix_errors
        self.style_net = MappingNetwork(z_channels, w_dim)
        max_imsize = max(self.imsize)
        self._max_imsize = max_imsize
        n_levels = int(np.log2(max_imsize) - np.log2(min_fmap_resolution)) + 1
        self.n_levels = n_levels

        def ch(res: int) -> int:
            return get_chsize(res, cnum, max_imsize, max_cnum_mul)

        self.from_rgb = SG2Conv2d(im_channels + 1 + input_extra_channels, cnum, 1)
        encoder = []
        for i in range(n_levels):
            res = max(x // 2 ** i for x in self.imsize)
            in_ch = ch(res)
            out_ch = in_ch if i == n_levels - 1 else ch(res // 2)
            down = 1 if i == 0 else 2
            encoder.append(ResidualBlock(in_ch, out_ch, down=down, conv_clamp=conv_clamp, fix_residual=fix_errors))
        self.encoder = torch.nn.ModuleList(encoder)

        decoder = []
        for i in range(n_levels):
            res = max(x // 2 ** (n_levels - 1 - i) for x in self.imsize)
            in_ch = ch(res) if i == 0 else ch(res // 2)
            out_ch = ch(res)
            up = 2 if i != n_levels - 1 else 1
            decoder.append(ResidualBlock(in_ch, out_ch, conv_clamp=conv_clamp, gain_out=np.sqrt(1 / 3),
                                         w_dim=w_dim, norm=True, up=up, fix_residual=fix_errors))
            if i != 0:
                setattr(self, f"unet_block{i}", SG2Conv2d(
                    in_ch, in_ch, kernel_size=1, conv_clamp=conv_clamp, norm=True,
                    gain=np.sqrt(1 / 3) if fix_errors else np.sqrt(0.5)))
        if n_middle_blocks:
            c = ch(min_fmap_resolution)
            self.middle_blocks = torch.nn.Sequential(*[
                ResidualBlock(c, c, conv_clamp=conv_clamp, gain_out=np.sqrt(0.5) if fix_errors else np.sqrt(1 / 3),
                              w_dim=w_dim, norm=True) for _ in range(n_middle_blocks)])
        self.decoder = torch.nn.ModuleList(decoder)
        self.to_rgb = SG2Conv2d(cnum, im_channels, 1, activation="linear", conv_clamp=conv_clamp)

    # ------------------------------------------------------------------ latent API
    def get_w(self, z: Optional[torch.Tensor] = None, truncation_value: Optional[float] = None,
              multi_modal: bool = False, w_indices=None, n: int = 1) -> torch.Tensor:
        """Sample w (N x w_dim). ``truncation_value=None``: plain mapping of z; otherwise unimodal truncation
        towards ``style_net.w_avg`` or, with ``multi_modal=True``, towards ``style_net.w_centers[w_indices]``."""
        return _get_w(self.style_net, z, truncation_value, multi_modal, w_indices, n)

    # ------------------------------------------------------------------ forward
    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        x = self.from_rgb(x)
        feats = []
        for i, block in enumerate(self.encoder):
            x = block(x)
            if i != len(self.encoder) - 1:
                feats.append(x)
        if hasattr(self, "middle_blocks"):
            # The reference calls middle blocks without w here (and never uses them in the released models).
            raise ValueError("n_middle_blocks > 0: no released checkpoint uses it, so this architecture is not built")
        return x, feats

    def decode(self, x: torch.Tensor, w: torch.Tensor, feats: List[torch.Tensor]) -> torch.Tensor:
        for i, block in enumerate(self.decoder):
            if i != 0:
                x = x + getattr(self, f"unet_block{i}")(feats[-i])
            x = block(x, w)
        return self.to_rgb(x)

    def forward(self, condition: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                img: Optional[torch.Tensor] = None, w: Optional[torch.Tensor] = None,
                z: Optional[torch.Tensor] = None, **_ignored) -> dict:
        if mask is None:
            raise ValueError("mask is required (N x 1 x H x W, 1 = keep, 0 = generate)")
        mask = mask.float()
        if condition is None:
            if img is None:
                raise ValueError("give condition (= img * mask) or img")
            condition = img * mask
        x, feats = self.encode(torch.cat((condition, mask), dim=1))
        if w is None:
            if z is None:
                z = torch.randn((condition.shape[0], self.z_channels), device=condition.device)
            w = self.style_net(z)
        gen = self.decode(x, w, feats)
        out = condition * mask + (1 - mask) * gen if self.mask_output else gen
        return {"img": out, "unmasked": gen}


def _get_w(style_net: MappingNetwork, z, truncation_value, multi_modal, w_indices, n) -> torch.Tensor:
    if z is None:
        n = len(w_indices) if (w_indices is not None and multi_modal) else n
        z = style_net.sample_z(n)
    if multi_modal:
        return style_net.multi_modal_truncate(1.0 if truncation_value is None else truncation_value, z=z,
                                              w_indices=w_indices)
    if truncation_value is None:
        return style_net(z)
    return style_net.get_truncated(truncation_value, z=z)
