"""Latent sampling for the realistic anonymizers (docs/reference.md §5); the k-means centres of multi-modal truncation
(§5.1) are computed and stored by avanon.generators.weights.centres.

Modes (all give w of shape [1, w_dim] per instance):

* ``none``: z ~ N(0, I) mapped through the style net (the reference's truncation_value = 1);
* ``unimodal``: ``lerp(w_avg, mapping(z), t)``; t = 0 gives w_avg for everyone (COCO / Cityscapes faces);
* ``multimodal``: ``lerp(w_centers[c], mapping(z), t)`` with c drawn uniformly from the K (512) k-means centres of
  w, one per instance; t = 0 gives exactly one of the centres (the paper's default for bodies).

Determinism: the reference draws z and the centre from global RNG state, so its result depends on the order of
images and instances. Here both come from a ``torch.Generator`` seeded with a hash of (per-image seed, instance id
[, salt]): an instance gets the same latent whatever the worker count, the processing order or the batching. The
centre index is drawn first and z second in every mode, so switching the truncation mode keeps z.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import torch

from avanon.generators.checkpoints import resolve_device  # noqa: F401  (re-exported for the anonymizer)
from avanon.generators.weights.centres import DEFAULT_N_CENTERS, load_centers  # noqa: F401

TRUNCATION_MODES = ("none", "unimodal", "multimodal")


# ----------------------------------------------------------------------------------------------------- seeding
def instance_seed(seed: int, instance_id: str, salt: str = "") -> int:
    """A 63-bit seed from (image seed, instance id, salt): stable across processes and Python versions."""
    digest = hashlib.sha256(f"{int(seed)}\x00{instance_id}\x00{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def instance_generator(seed: int, instance_id: str, salt: str = "") -> torch.Generator:
    """A CPU torch.Generator for one instance (CPU so that z does not depend on the device)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(instance_seed(seed, instance_id, salt))
    return g


# ----------------------------------------------------------------------------------------------------- sampling
def draw_z_and_center(style_net, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """(z [1, z_dim] on CPU, centre index) from one instance generator, in a fixed order."""
    n_centers = int(style_net.w_centers.shape[0]) if hasattr(style_net, "w_centers") else DEFAULT_N_CENTERS
    idx = int(torch.randint(0, max(n_centers, 1), (1,), generator=generator))
    z = torch.randn((1, int(style_net.z_dim)), generator=generator)
    return z, idx


@torch.no_grad()
def sample_w(style_net, mode: str, truncation_value: Optional[float], seed: int, instance_id: str,
             salt: str = "") -> torch.Tensor:
    """w [1, w_dim] (on the style net's device) for one instance; see the module docstring."""
    if mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation mode must be one of {TRUNCATION_MODES}, got {mode!r}")
    z, idx = draw_z_and_center(style_net, instance_generator(seed, instance_id, salt))
    z = z.to(style_net.w_avg.device)
    if mode == "none":
        return style_net(z)
    t = 0.0 if truncation_value is None else float(truncation_value)
    if mode == "unimodal":
        return style_net.get_truncated(t, z=z)
    if not getattr(style_net, "has_w_centers", False):
        raise RuntimeError("multi-modal truncation needs the generator's k-means centres (style_net.w_centers)")
    return style_net.multi_modal_truncate(t, z=z, w_indices=[idx])


