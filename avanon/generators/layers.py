"""Plain-PyTorch building blocks shared by the DeepPrivacy2-compatible generators.

Everything here runs on CPU (or any device) with standard torch ops; there are no custom CUDA kernels.
The semantics follow the StyleGAN2/3 "reference" code paths that DeepPrivacy2 falls back to when its
CUDA plug-ins are unavailable (``sg3_torch_utils/ops/{upfirdn2d,bias_act,conv2d_resample,fma}.py``):

* ``upfirdn2d``: zero-insertion upsampling, padding (negative = crop), FIR filtering (true convolution,
  i.e. the filter is flipped unless ``flip_filter``), then decimation.
* ``bias_act``: add bias, activation, multiply by gain, optional clamp to ``[-clamp, clamp]``.
* ``conv2d_resample``: convolution with optional up/down-sampling through the [1, 3, 3, 1] low-pass filter,
  following the same fast-path decomposition (so numerics and border handling match).

Only the tensors that exist in the official state dicts are registered as parameters / persistent buffers;
constants (gains, paddings) are plain Python attributes.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ACTIVATIONS",
    "setup_filter",
    "upfirdn2d",
    "bias_act",
    "conv2d_resample",
    "instance_norm",
    "FullyConnectedLayer",
    "MappingNetwork",
    "DEFAULT_N_CENTERS",
]

# name -> (function, default gain). lrelu uses slope 0.2 as in StyleGAN2.
ACTIVATIONS = {
    "linear": (lambda x: x, 1.0),
    "relu": (F.relu, math.sqrt(2.0)),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), math.sqrt(2.0)),
}

DEFAULT_N_CENTERS = 512  # number of multi-modal-truncation centres (tools/compute_cluster_means.py default)


def _act_gain(activation: str) -> float:
    return ACTIVATIONS[activation][1]


def setup_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """2-D low-pass FIR filter: outer product of ``taps``, normalised to unit DC gain (float32)."""
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def _pad4(padding: Union[int, Sequence[int]]) -> List[int]:
    if isinstance(padding, int):
        return [padding] * 4
    padding = list(padding)
    if len(padding) == 2:
        return [padding[0], padding[0], padding[1], padding[1]]
    assert len(padding) == 4
    return padding


def upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], up: int = 1, down: int = 1,
              padding: Union[int, Sequence[int]] = 0, flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """Upsample (zero insertion) -> pad/crop -> FIR filter -> downsample. ``padding`` is [x0, x1, y0, y1]."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    n, c, h, w = x.shape
    px0, px1, py0, py1 = _pad4(padding)
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = (f * (gain ** (f.ndim / 2))).to(device=x.device, dtype=x.dtype)
    if not flip_filter:  # conv2d is a correlation; flip the filter to get a true convolution
        f = f.flip(list(range(f.ndim)))
    weight = f[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, act: str = "linear",
             gain: Optional[float] = None, clamp: Optional[float] = None, dim: int = 1) -> torch.Tensor:
    """Add bias along ``dim``, apply activation, scale by ``gain`` (default: the activation's gain), clamp."""
    fn, def_gain = ACTIVATIONS[act]
    gain = def_gain if gain is None else float(gain)
    if b is not None:
        shape = [-1 if i == dim else 1 for i in range(x.ndim)]
        x = x + b.reshape(shape)
    x = fn(x)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: Optional[torch.Tensor] = None, up: int = 1, down: int = 1,
                    padding: int = 0, flip_weight: bool = True) -> torch.Tensor:
    """2-D convolution with optional 2x up/down-sampling (StyleGAN2 decomposition, groups=1)."""
    out_ch, in_ch, kh, kw = w.shape
    fw = fh = 1 if f is None else int(f.shape[-1])
    px0, px1, py0, py1 = _pad4(padding)
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

    def _conv(x_, w_, stride=1, pad=(0, 0), transpose=False, flip=True):
        if not flip:
            w_ = w_.flip([2, 3])
        if transpose:
            return F.conv_transpose2d(x_, w_, stride=stride, padding=pad)
        return F.conv2d(x_, w_, stride=stride, padding=pad)

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
        return _conv(x, w, flip=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, flip=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return _conv(x, w, stride=down, flip=flip_weight)
    if up > 1:
        wt = w.transpose(0, 1)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(x, wt, stride=up, pad=(pyt, pxt), transpose=True, flip=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2)
        if down > 1:
            x = upfirdn2d(x, f, down=down)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, pad=(py0, px0), flip=flip_weight)
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1])
    return _conv(x, w, flip=flip_weight)


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``torch.nn.InstanceNorm2d(None)`` semantics: per-sample, per-channel, no affine, no running stats."""
    return F.instance_norm(x, eps=eps)


class InstanceNorm(torch.nn.Module):
    """Stateless instance norm (the reference's ``InstanceNorm2d(None)``; contributes nothing to state dicts)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D401
        return instance_norm(x)


class FullyConnectedLayer(torch.nn.Module):
    """Equalised-learning-rate linear layer. State: ``weight`` [out, in], ``bias`` [out]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias
        if b is not None and self.bias_gain != 1:
            b = b * self.bias_gain
        x = F.linear(x, w)
        return bias_act(x, b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class MappingNetwork(torch.nn.Module):
    """z -> w mapping (DeepPrivacy2 ``SG2StyleNet``): pixel-norm of z, then ``num_layers`` lrelu FC layers.

    State: ``fc{i}.weight``, ``fc{i}.bias``, buffer ``w_avg`` [w_dim] and buffer ``w_centers`` [K, w_dim]
    (multi-modal-truncation centres; zeros until a checkpoint provides them, see ``has_w_centers``).

    Latent API (all return w of shape [N, w_dim]):

    * ``forward(z)``: untruncated mapping.
    * ``get_truncated(truncation_value, z=None, n=None)``: unimodal truncation ``lerp(w_avg, w, t)``.
    * ``multi_modal_truncate(truncation_value, z=None, w_indices=None, n=None)``: ``lerp(w_centers[i], w, t)``;
      ``w_indices=None`` draws the centre indices uniformly with ``np.random.randint`` as the reference does.

    ``truncation_value`` is clamped to [0, 1] (0 = exactly the mean/centre, 1 = no truncation).
    """

    def __init__(self, z_dim: int, w_dim: int, num_layers: int = 2, lr_multiplier: float = 0.01,
                 w_avg_beta: float = 0.998, n_centers: int = DEFAULT_N_CENTERS) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation="lrelu",
                                                          lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))
        self.register_buffer("w_centers", torch.zeros([n_centers, w_dim]))
        self.has_w_centers = False

    def set_w_centers(self, centers: Optional[torch.Tensor]) -> None:
        """Install cluster centres (K x w_dim); ``None`` resets to 512 zero rows and ``has_w_centers=False``."""
        if centers is None:
            self.w_centers = torch.zeros([DEFAULT_N_CENTERS, self.w_dim], device=self.w_avg.device)
            self.has_w_centers = False
            return
        centers = torch.as_tensor(centers).detach().float()
        if centers.ndim != 2 or centers.shape[1] != self.w_dim:
            raise ValueError(f"w_centers must have shape [K, {self.w_dim}], got {tuple(centers.shape)}")
        self.w_centers = centers.to(self.w_avg.device).clone()
        self.has_w_centers = bool(centers.abs().sum() > 0)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Accept any number of centres: resize the buffer to the incoming shape before the copy.
        key = prefix + "w_centers"
        if key in state_dict:
            incoming = state_dict[key]
            if isinstance(incoming, torch.Tensor) and incoming.ndim == 2 and incoming.shape[1] == self.w_dim:
                self.w_centers = torch.zeros_like(incoming, dtype=self.w_centers.dtype, device=self.w_centers.device)
                self.has_w_centers = bool(incoming.abs().sum() > 0)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, z: torch.Tensor, update_emas: bool = False, **_) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [N, {self.z_dim}], got {tuple(z.shape)}")
        x = z.to(torch.float32)
        x = x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas:
            with torch.no_grad():
                self.w_avg.copy_(x.float().detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        return x

    def sample_z(self, n: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.randn((n, self.z_dim), generator=generator, device=self.w_avg.device)

    def get_truncated(self, truncation_value: float, z: Optional[torch.Tensor] = None,
                      n: Optional[int] = None) -> torch.Tensor:
        if z is None:
            z = self.sample_z(1 if n is None else n)
        w = self(z)
        t = min(max(float(truncation_value), 0.0), 1.0)
        return self.w_avg.to(w.dtype).lerp(w, t)

    def multi_modal_truncate(self, truncation_value: float, z: Optional[torch.Tensor] = None,
                             w_indices=None, n: Optional[int] = None) -> torch.Tensor:
        if not self.has_w_centers:
            raise RuntimeError("multi-modal truncation needs cluster centres (style_net.w_centers); this checkpoint "
                               "has none (compute them with k-means over mapped w, DeepPrivacy2 "
                               "tools/compute_cluster_means.py)")
        if n is None:
            n = len(w_indices) if w_indices is not None else (z.shape[0] if z is not None else 1)
        if z is None:
            z = self.sample_z(n)
        w = self(z)
        if w_indices is None:
            w_indices = np.random.randint(0, len(self.w_centers), size=(len(w),))
        idx = torch.as_tensor(np.asarray(w_indices), dtype=torch.long, device=self.w_centers.device)
        centers = self.w_centers[idx].to(device=w.device, dtype=w.dtype)
        t = min(max(float(truncation_value), 0.0), 1.0)
        return centers.lerp(w, t)

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, w_dim={self.w_dim}, num_layers={self.num_layers}"
