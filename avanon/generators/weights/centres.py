"""The k-means centres of w for multi-modal truncation (docs/reference.md §5.1): computed, saved as a sidecar file
next to the cache, loaded by the realistic anonymizer.

:func:`compute_centers` samples z ~ N(0, I) through the style net only and runs Lloyd k-means (euclidean), as the
reference's ``tools/compute_cluster_means.py`` with fast_pytorch_kmeans: random initial points, at most 1000
iterations, stop when the centres move less than tol = 1e-5 in squared norm. :func:`cmd_compute_centers` is the
``avanon weights compute-centers`` back end: it writes a sidecar file (never the official checkpoint, whose md5
must stay valid), optionally also a checkpoint copy with ``style_net.w_centers`` filled.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional, Union

import torch

from avanon.generators.checkpoints import resolve_device

DEFAULT_N_SAMPLES = 599_552  # the reference's 600e3 rounded down to whole batches of 512
DEFAULT_N_CENTERS = 512


# ----------------------------------------------------------------------------------------------------- k-means
def _style_net(generator_or_style_net):
    return getattr(generator_or_style_net, "style_net", generator_or_style_net)


def _assign(x: torch.Tensor, centers: torch.Tensor, chunk: int) -> torch.Tensor:
    """Index of the nearest centre (euclidean) of every row of x, computed in chunks."""
    c_sq = centers.square().sum(1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk]
        d = c_sq[None, :] - 2.0 * xs @ centers.T  # + |x|^2, constant per row
        out[s:s + chunk] = d.argmin(1)
    return out


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, seed: int = 0, max_iter: int = 1000, tol: float = 1e-5,
           chunk: int = 65536) -> tuple[torch.Tensor, int]:
    """Lloyd k-means (euclidean) on the rows of x: k distinct random rows as the initial centres, at most max_iter
    iterations, stop when the squared movement of all centres is <= tol. An empty cluster keeps its centre.
    Returns (centres [k, D], iterations run)."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= n_samples, got k={k}, n={n}")
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    centers = x[torch.randperm(n, generator=g)[:k].to(x.device)].clone()
    it = 0
    for it in range(1, max_iter + 1):
        labels = _assign(x, centers, chunk)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centers)
        shift = float((new - centers).square().sum())
        centers = new
        if shift <= tol:
            break
    return centers, it


@torch.no_grad()
def sample_ws(generator_or_style_net, n_samples: int, seed: int = 0, batch_size: int = 512,
              device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """n_samples untruncated w (z ~ N(0, I) through the style net only), [n, w_dim] on `device`."""
    style_net = _style_net(generator_or_style_net)
    dev = resolve_device(device) if device is not None else style_net.w_avg.device
    if style_net.w_avg.device != dev:
        style_net = copy.deepcopy(style_net).to(dev)  # leave the caller's module where it is
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    out = []
    for s in range(0, n_samples, batch_size):
        z = torch.randn((min(batch_size, n_samples - s), int(style_net.z_dim)), generator=g)
        out.append(style_net(z.to(dev)).float())
    return torch.cat(out)


def compute_centers(generator, n_samples: int = DEFAULT_N_SAMPLES, k: int = DEFAULT_N_CENTERS, seed: int = 0,
                    batch_size: int = 512, device: Union[str, torch.device, None] = None, max_iter: int = 1000,
                    tol: float = 1e-5) -> torch.Tensor:
    """The k-means centres [k, w_dim] of `n_samples` sampled w of `generator` (or its style net), on CPU."""
    ws = sample_ws(generator, n_samples, seed=seed, batch_size=batch_size, device=device)
    centers, _ = kmeans(ws, k, seed=seed, max_iter=max_iter, tol=tol)
    return centers.cpu()


# ----------------------------------------------------------------------------------------------------- files
def save_centers(path: Union[str, os.PathLike], centers: torch.Tensor, **meta) -> Path:
    """Write a centres sidecar file atomically: {"w_centers": [K, w_dim] float32, **meta}."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"w_centers": centers.detach().float().cpu().contiguous(), **meta}, tmp)
    os.replace(tmp, path)
    return path


def load_centers(path: Union[str, os.PathLike]) -> torch.Tensor:
    """Centres from a sidecar file (a dict with "w_centers", or a bare [K, w_dim] tensor)."""
    data = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    centers = data.get("w_centers") if isinstance(data, dict) else data
    if not isinstance(centers, torch.Tensor) or centers.ndim != 2:
        raise ValueError(f"{path}: not a w-centres file (expected a [K, w_dim] tensor under 'w_centers')")
    return centers.float()


def cmd_compute_centers(name: str, checkpoint_path: Union[str, os.PathLike],
                        out_path: Union[str, os.PathLike, None] = None, n_samples: int = DEFAULT_N_SAMPLES,
                        k: int = DEFAULT_N_CENTERS, *, n_centers: Optional[int] = None, batch_size: int = 512,
                        seed: int = 0, device: Union[str, torch.device, None] = "cpu", max_iter: int = 1000,
                        tol: float = 1e-5, checkpoint_copy: Union[str, os.PathLike, None] = None) -> Path:
    """``avanon weights compute-centers``: load generator `name` from `checkpoint_path`, compute the k-means
    centres of w and write them to `out_path` (default ``avanon.generators.weights.centers_path(name)``), a sidecar file the
    realistic anonymizer picks up when the checkpoint has no centres of its own. `n_centers` is an alias of `k`
    (the keyword avanon.generators.weights passes). `checkpoint_copy`: also write a copy of the checkpoint with
    ``EMA_generator["style_net.w_centers"]`` filled (the reference's own format; its md5 is of course not the
    official one). Returns the sidecar path."""
    from avanon.generators.checkpoints import load_generator, read_checkpoint

    k = int(n_centers if n_centers is not None else k)
    G = load_generator(name, checkpoint_path)
    centers = compute_centers(G, n_samples=int(n_samples), k=k, seed=seed, batch_size=batch_size, device=device,
                              max_iter=max_iter, tol=tol)
    if out_path is None:
        from avanon.generators.weights.registry import centers_path

        out_path = centers_path(name)
    try:
        from avanon.generators.weights.registry import md5sum

        md5 = md5sum(checkpoint_path)
    except Exception:  # the md5 is informative only
        md5 = None
    out = save_centers(out_path, centers, generator=name, checkpoint_file=Path(checkpoint_path).name,
                       checkpoint_md5=md5, n_samples=int(n_samples), n_centers=k, seed=int(seed))
    if checkpoint_copy is not None:
        ckpt = read_checkpoint(checkpoint_path, name=name)
        ckpt = dict(ckpt)
        state = dict(ckpt["EMA_generator"])
        state["style_net.w_centers"] = centers
        ckpt["EMA_generator"] = state
        ckpt.pop("w_centers", None)
        dst = Path(checkpoint_copy).expanduser()
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, dst)
    return out
