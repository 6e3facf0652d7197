"""The realistic anonymizer's generators, loaded once per process and shared by every RealisticAnonymizer;
random-weight generators for tests and demos; the row-wise fully connected layers that make a sample's result
independent of the batch it is in."""
from __future__ import annotations

import threading

import torch

from avanon.anonymizers.latents import instance_seed

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget the generators loaded in this process (they are shared by every RealisticAnonymizer)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _rowwise_linears(G: torch.nn.Module) -> torch.nn.Module:
    """Evaluate every fully connected layer one row at a time, so that a sample's result does not depend on the
    batch it is in (MKL's GEMM for M > 1 and GEMV for M = 1 round differently). In place, idempotent."""
    from avanon.generators.layers import FullyConnectedLayer

    for m in G.modules():
        if isinstance(m, (FullyConnectedLayer, torch.nn.Linear)) and not getattr(m, "_avanon_rowwise", False):
            original = m.forward

            def rowwise(x, _original=original):
                if x.ndim == 2 and x.shape[0] > 1:
                    return torch.cat([_original(x[i:i + 1]) for i in range(x.shape[0])])
                return _original(x)

            m.forward = rowwise
            m._avanon_rowwise = True
    return G


def random_generator(name: str) -> torch.nn.Module:
    """Generator `name` with random weights from a fixed seed (same in every process), w_avg = the mean of 4096
    mapped samples and 512 mapped samples as multi-modal centres. For tests and demos only."""
    from avanon.generators import build_generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(instance_seed(0, name, "random-weights"))
        G = build_generator(name)
    g = torch.Generator(device="cpu")
    g.manual_seed(instance_seed(1, name, "random-weights"))
    with torch.no_grad():
        ws = G.style_net(torch.randn((4096, int(G.style_net.z_dim)), generator=g))
        G.style_net.w_avg.copy_(ws.mean(0))
        G.style_net.set_w_centers(ws[:512].clone())
    return G.eval()


ROWWISE_LINEARS = True  # benchmarks/realistic_batching.py --no-rowwise measures what it costs


def prepare_module(G: torch.nn.Module, device: torch.device, channels_last: bool = False) -> torch.nn.Module:
    """A generator ready for inference on `device` (and HM-LO's gradients w.r.t. w only)."""
    G = G.to(device).eval()
    if channels_last:
        G = G.to(memory_format=torch.channels_last)
    G.requires_grad_(False)  # HM-LO differentiates w.r.t. w only
    return _rowwise_linears(G) if ROWWISE_LINEARS else G


