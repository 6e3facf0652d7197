"""Histogram matching of generated persons to the original crop (docs/reference.md §4).

HM (``HistogramMatchAnonymizer``, §4.1)
    The generated crop, rounded to bytes, is matched to the real crop (the full resized crop, original person
    included) with ``skimage.exposure.match_histograms`` without ``channel_axis``: all RGB values pooled into one
    histogram, as the reference (it passes [1, H, W, 3] arrays and no channel axis). The result is blended into the
    (unrounded) generated crop with a soft mask: the undilated person mask (1 − (maskrcnn_mask > 0.5)) blurred by
    a 19×19 Gaussian with σ = 10 (the reference code; the paper text says 9; parameter) and divided by its max:
    ``out = g·matched + (1 − g)·generated``. Pasting then uses the usual dilated mask.

HM-LO (``LatentHistogramMatchAnonymizer``, §4.2)
    Adam on w (lr 1e-3, default betas) minimising W1(S) + W1(V) between differentiable 256-bin histograms (Gaussian
    KDE, bins linspace(0, 1, 256), bandwidth 1.0, as kornia.enhance.histogram) of the real crop and of the
    generated, composited crop (``out·0.5 + 0.5``, not clamped), HSV as kornia (eps 1e-8). W1 = Σ|CDF_a − CDF_b|
    over the 256 bins (not times the bin width), so the 0.02 threshold is in the reference's units. Loop per step:
    forward, loss, backward, stop if the gradient sums to 0, Adam step, stop if loss < threshold; the image kept is
    the one of the last forward pass (before the final step), as the reference.

    Batched across instances with a per-instance early stop: the loss is the SUM of per-instance losses (each w
    row gets exactly its own instance's gradient; the reference's batch mean would scale it), Adam is elementwise
    with per-row state, and an instance that stopped is dropped from the batch with its w frozen. Each instance
    therefore follows the same trajectory as when optimised alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from skimage.exposure import match_histograms

from avanon.anonymizers.crops import gaussian_blur_crop, round_uint8

HM_KERNEL = 19
HM_SIGMA = 10.0  # the reference code (paper text: 9)
N_BINS = 256
KDE_BANDWIDTH = 1.0
HSV_EPS = 1e-8


# ----------------------------------------------------------------------------------------------------- HM
def hm_soft_mask(undilated: np.ndarray, sigma: float = HM_SIGMA, kernel: int = HM_KERNEL) -> np.ndarray:
    """The blend weight g (H×W float32 in [0, 1]): the undilated person mask blurred (reflect border, as kornia's
    gaussian_blur2d) and divided by its max; all zeros for an empty mask."""
    m = np.ascontiguousarray(undilated, dtype=np.float32)
    if not m.any():
        return np.zeros_like(m)
    k = min(kernel, m.shape[0] - (1 - m.shape[0] % 2), m.shape[1] - (1 - m.shape[1] % 2))
    g = gaussian_blur_crop(m[..., None], k, float(sigma))[..., 0]
    return g / g.max()


def match_pooled(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """skimage match_histograms of uint8 H×W×3 crops with all channels pooled (the reference's call), float32."""
    out = match_histograms(generated[None], real[None])  # no channel_axis: one pooled histogram
    return np.asarray(out, dtype=np.float32)[0]


def histogram_match(generated: np.ndarray, real: np.ndarray, undilated: np.ndarray,
                    sigma: float = HM_SIGMA) -> np.ndarray:
    """HM of one crop. generated: H×W×3 float32 in [0, 255] (the generator's output after (x+1)/2·255);
    real: H×W×3 uint8 (the resized real crop); undilated: H×W bool person mask. Returns float32 [0, 255]."""
    g = hm_soft_mask(undilated, sigma)[..., None]
    if not g.any():
        return generated.astype(np.float32, copy=True)
    matched = match_pooled(round_uint8(generated), real)
    return g * matched + (np.float32(1) - g) * generated.astype(np.float32)


# ----------------------------------------------------------------------------------------------------- HM-LO
def rgb_to_sv(img01: torch.Tensor, eps: float = HSV_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """S and V of kornia's rgb_to_hsv for N×3×H×W images in [0, 1]: V = max, S = (max − min) / (max + eps)."""
    vmax = img01.max(dim=1).values
    vmin = img01.min(dim=1).values
    return (vmax - vmin) / (vmax + eps), vmax


class _KDEHistogram(torch.autograd.Function):
    """Unnormalised Gaussian-KDE histogram mean_n exp(−½((x_n − b_k)/σ)²) of x [B, N], computed in chunks of
    pixels so that memory stays O(B·chunk·K) in the forward and the backward (kornia materialises B·N·K)."""

    CHUNK = 8192

    @staticmethod
    def forward(ctx, x: torch.Tensor, bins: torch.Tensor, sigma: float) -> torch.Tensor:
        ctx.save_for_backward(x, bins)
        ctx.sigma = sigma
        out = torch.zeros(x.shape[0], bins.numel(), dtype=x.dtype, device=x.device)
        for s in range(0, x.shape[1], _KDEHistogram.CHUNK):
            r = (x[:, s:s + _KDEHistogram.CHUNK, None] - bins) / sigma
            out += torch.exp(-0.5 * r.square()).sum(1)
        return out / x.shape[1]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, bins = ctx.saved_tensors
        sigma = ctx.sigma
        grad = torch.empty_like(x)
        scale = grad_out[:, None, :] / x.shape[1]
        for s in range(0, x.shape[1], _KDEHistogram.CHUNK):
            r = (x[:, s:s + _KDEHistogram.CHUNK, None] - bins) / sigma
            k = torch.exp(-0.5 * r.square())
            grad[:, s:s + _KDEHistogram.CHUNK] = (scale * k * (-r / sigma)).sum(-1)
        return grad, None, None


def kde_histogram(x: torch.Tensor, n_bins: int = N_BINS, bandwidth: float = KDE_BANDWIDTH,
                  epsilon: float = 1e-10) -> torch.Tensor:
    """kornia.enhance.histogram(x, bins=linspace(0, 1, n_bins), bandwidth) for x [B, N]: differentiable, each
    row normalised to sum 1."""
    bins = torch.linspace(0, 1, n_bins, dtype=x.dtype, device=x.device)
    pdf = _KDEHistogram.apply(x, bins, float(bandwidth))
    return pdf / (pdf.sum(1, keepdim=True) + epsilon)


def w1_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The reference's torch_wasserstein_loss per row (no batch mean): normalise, cumulative sums, Σ|ΔCDF|."""
    a = a / (a.sum(-1, keepdim=True) + 1e-14)
    b = b / (b.sum(-1, keepdim=True) + 1e-14)
    return (a.cumsum(-1) - b.cumsum(-1)).abs().sum(-1)


def sv_histograms(img01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S histogram, V histogram), each [B, 256], of N×3×H×W images in [0, 1]."""
    s, v = rgb_to_sv(img01)
    return kde_histogram(s.flatten(1)), kde_histogram(v.flatten(1))


def sv_loss(real_hists: tuple[torch.Tensor, torch.Tensor], fake01: torch.Tensor) -> torch.Tensor:
    """Per-instance HM-LO loss W1(S) + W1(V) [B]."""
    fs, fv = sv_histograms(fake01)
    return w1_distance(real_hists[0], fs) + w1_distance(real_hists[1], fv)


class RowAdam:
    """torch.optim.Adam (single-tensor path, default betas and eps, no weight decay) on the rows of a [B, D]
    tensor, with per-row state so that rows can be dropped (frozen) while the others continue."""

    def __init__(self, n_rows: int, dim: int, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 device=None, dtype=torch.float32):
        self.lr, self.beta1, self.beta2, self.eps = float(lr), float(betas[0]), float(betas[1]), float(eps)
        self.exp_avg = torch.zeros(n_rows, dim, device=device, dtype=dtype)
        self.exp_avg_sq = torch.zeros(n_rows, dim, device=device, dtype=dtype)
        self.steps = torch.zeros(n_rows, dtype=torch.long)

    def step(self, w: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Adam update of w[rows] (w: [B, D] leaf data, updated in place) with `grad` [len(rows), D]."""
        m = self.exp_avg[rows]
        v = self.exp_avg_sq[rows]
        m.lerp_(grad, 1 - self.beta1)
        v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        self.exp_avg[rows] = m
        self.exp_avg_sq[rows] = v
        rows_cpu = rows.cpu()  # the step counters are host-side bookkeeping
        self.steps[rows_cpu] += 1
        out = w[rows]
        for j, step in enumerate(self.steps[rows_cpu].tolist()):  # rows may (in principle) be at different steps
            bias_correction1 = 1 - self.beta1 ** step
            bias_correction2 = 1 - self.beta2 ** step
            step_size = self.lr / bias_correction1
            denom = (v[j].sqrt() / math.sqrt(bias_correction2)).add_(self.eps)
            out[j].addcdiv_(m[j], denom, value=-step_size)
        w[rows] = out
        return w


@dataclass
class HMLOResult:
    images: torch.Tensor  # [B, 3, H, W] in [-1, 1], the output of each instance's last forward pass
    forward_passes: list = field(default_factory=list)  # per instance
    losses: list = field(default_factory=list)  # per instance: the loss of every forward pass
    stop: list = field(default_factory=list)  # per instance: "threshold" | "steps" | "zero_grad"


def hmlo_optimize(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], real01: torch.Tensor,
                  w0: torch.Tensor, steps: int = 100, threshold: float = 0.02, lr: float = 1e-3) -> HMLOResult:
    """HM-LO for a batch of instances.

    forward(w_active [A, D], rows [A] long) -> composited images [A, 3, H, W] in [-1, 1] of those instances.
    real01: [B, 3, H, W] real crops in [0, 1]; w0: [B, D] initial latents. See the module docstring.
    """
    n = w0.shape[0]
    with torch.no_grad():
        real_s, real_v = sv_histograms(real01)
    w = w0.detach().clone()
    adam = RowAdam(n, w.shape[1], lr=lr, device=w.device, dtype=w.dtype)
    images: list[Optional[torch.Tensor]] = [None] * n
    result = HMLOResult(images=torch.empty(0), forward_passes=[0] * n, losses=[[] for _ in range(n)],
                        stop=["steps"] * n)
    active = list(range(n))
    for j in range(int(steps)):
        if not active:
            break
        rows = torch.tensor(active, dtype=torch.long)
        wa = w[rows.to(w.device)].clone().requires_grad_(True)
        with torch.enable_grad():
            out = forward(wa, rows)
            ridx = rows.to(real_s.device)
            loss = sv_loss((real_s[ridx], real_v[ridx]), out * 0.5 + 0.5)
            loss.sum().backward()
        grad = wa.grad.detach()
        out = out.detach()
        loss_values = loss.detach().cpu().tolist()
        keep, step_rows, step_pos = [], [], []
        for pos, i in enumerate(active):
            images[i] = out[pos]
            result.forward_passes[i] += 1
            result.losses[i].append(loss_values[pos])
            if float(grad[pos].sum()) == 0:
                result.stop[i] = "zero_grad"
                continue
            step_rows.append(i)
            step_pos.append(pos)
            if loss_values[pos] < threshold:
                result.stop[i] = "threshold"
            else:
                keep.append(i)
        if step_rows:
            # the reference takes the Adam step before testing the threshold; the stepped w is never used then,
            # so only rows that go on need it (identical results, less work)
            go_on = [(i, p) for i, p in zip(step_rows, step_pos) if i in keep]
            if go_on:
                r = torch.tensor([i for i, _ in go_on], dtype=torch.long, device=w.device)
                p = torch.tensor([p for _, p in go_on], dtype=torch.long, device=grad.device)
                adam.step(w, grad[p], r)
        active = keep
    result.images = torch.stack(images)
    return result
