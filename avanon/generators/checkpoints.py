"""Build the four DeepPrivacy2 generators and load their official ``EMA_generator`` checkpoints.

Names (see docs/reference.md §3.3):

=================  ==========================================================  ==============
name               reference config                                            parameters
=================  ==========================================================  ==============
face_fdf128        configs/fdf/stylegan_fdf128.py (StyleGANUnet, cnum 128, x4)  42,569,987
face_fdf256        configs/fdf/stylegan.py (StyleGANUnet, cnum 64, x8)          43,131,523
body_nocse288      configs/fdh/styleganL_nocse.py (288x160, fix_errors=False)   43,131,523
body_triagan288    configs/fdh/triagan/L_im288.py (TriaGAN, 30-channel input)   124,212,639
=================  ==========================================================  ==============

``load_generator(name, path)`` reads a checkpoint dict, takes ``ckpt["EMA_generator"]``, applies the reference's
key mapping (TriA-GAN: ``decoder.to_rgb.{i}.{weight,bias}`` -> ``decoder.to_rgb.{weight,bias}``), installs the
multi-modal-truncation centres (``state["style_net.w_centers"]``, or the old top-level ``ckpt["w_centers"]``;
zeros and ``style_net.has_w_centers == False`` when absent), loads with ``strict=True`` and returns the module in
eval mode. Unlike the reference (``strict=False``, mismatches dropped with a warning) any missing, unexpected or
mis-shaped key is an error that names the keys.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch

from .layers import DEFAULT_N_CENTERS
from .stylegan_unet import StyleGANUnet
from .triagan import TriaGAN

__all__ = [
    "GENERATOR_NAMES",
    "EXPECTED_PARAM_COUNTS",
    "CHECKPOINTS",
    "CheckpointError",
    "build_generator",
    "load_generator",
    "map_state_dict",
    "read_checkpoint",
    "md5sum",
    "num_parameters",
]

_LOKE = "https://api.loke.aws.unit.no/dlr-gui-backend-resources-content/v2/contents/links/"



def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """"auto" (or None): CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# name -> (class, constructor kwargs). Values are the resolved reference configs.
_CONFIGS: Dict[str, tuple] = {
    # configs/generators/stylegan_unet.py updated by configs/fdf/stylegan_fdf128.py
    "face_fdf128": (StyleGANUnet, dict(imsize=128, im_channels=3, min_fmap_resolution=8, cnum=128, max_cnum_mul=4,
                                       n_middle_blocks=0, z_channels=512, w_dim=512, mask_output=True,
                                       conv_clamp=256, fix_errors=True)),
    # configs/fdf/stylegan.py (generator defaults, input_cse=False)
    "face_fdf256": (StyleGANUnet, dict(imsize=256, im_channels=3, min_fmap_resolution=8, cnum=64, max_cnum_mul=8,
                                       n_middle_blocks=0, z_channels=512, w_dim=512, mask_output=True,
                                       conv_clamp=256, fix_errors=True)),
    # configs/fdh/styleganL_nocse.py (data = configs/datasets/fdh.py, imsize (288, 160))
    "body_nocse288": (StyleGANUnet, dict(imsize=(288, 160), im_channels=3, min_fmap_resolution=8, cnum=64,
                                         max_cnum_mul=8, n_middle_blocks=0, z_channels=512, w_dim=512,
                                         mask_output=True, conv_clamp=256, fix_errors=False)),
    # configs/generators/triagan.py -> L_im18 -> ... -> configs/fdh/triagan/L_im288.py
    "body_triagan288": (TriaGAN, dict(imsize=(288, 160), im_channels=3, dim=128, dim_mults=(1, 2, 4, 4, 4, 4),
                                      num_resnet_blocks=2, n_middle_blocks=2, z_channels=64, w_dim=512,
                                      norm_enc=True, norm_dec=True, use_maskrcnn_mask=True, input_keypoints=True,
                                      n_keypoints=17, input_keypoint_indices=tuple(range(17)), input_joint=True,
                                      use_noise=True, layer_scale=True)),
}

GENERATOR_NAMES = tuple(_CONFIGS)

EXPECTED_PARAM_COUNTS = {
    "face_fdf128": 42_569_987,
    "face_fdf256": 43_131_523,
    "body_nocse288": 43_131_523,
    "body_triagan288": 124_212_639,
}

# Official checkpoints (docs/reference.md §3.3). ``filename`` is what tops.download_file stores under
# $TORCH_HOME/hub/checkpoints/ (basename of the URL path). The nocse URL is dead (issue #33).
CHECKPOINTS = {
    "face_fdf128": dict(
        url=_LOKE + "66d803c0-55ce-44c0-9d53-815c2c0e6ba4eb458409-9e91-45d1-bce0-95c8a47a57218b102fdf-bea3-44dc-"
                    "aac4-0fb1d370ef1c",
        md5="bccd4403e7c9bca682566ff3319e8176"),
    "face_fdf256": dict(
        url=_LOKE + "89660f04-5c11-4dbf-adac-cbe2f11b0aeea25cbf78-7558-475a-b3c7-03f5c10b7934646b0720-ca0a-4d53-"
                    "aded-daddbfa45c9e",
        md5="e8e32190528af2ed75f0cb792b7f2b07"),
    "body_nocse288": dict(
        url="https://folk.ntnu.no/haakohu/checkpoints/deep_privacy2/fdh_styleganL_nocse.ckpt",
        md5="fda0d809741bc67487abada793975c37"),
    "body_triagan288": dict(
        url=_LOKE + "e62a306a-5295-47dd-8a0e-4f7c05b9ecd44c9fbc76-5ce2-4dd0-9454-04776bef2745659fbec7-fa0a-485b-"
                    "8501-c94a2439b601",
        md5="b649410e831b45f7800a89c738b411ce"),
}
for _meta in CHECKPOINTS.values():
    _meta["filename"] = _meta["url"].rstrip("/").split("/")[-1]


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read or does not fit the architecture."""


def num_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_name(name: str) -> None:
    if name not in _CONFIGS:
        raise KeyError(f"unknown generator {name!r}; choose one of {', '.join(GENERATOR_NAMES)}")


def build_generator(name: str) -> torch.nn.Module:
    """Randomly initialised generator ``name`` (eval mode, CPU). Weights come from :func:`load_generator`."""
    _check_name(name)
    cls, kwargs = _CONFIGS[name]
    G = cls(**kwargs)
    G.generator_name = name
    return G.eval()


def map_state_dict(name: str, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The reference's ``ckpt_mapper`` for ``name`` (identity except for TriA-GAN's ``ckpt_map_G``: the
    progressive-growing per-level ``decoder.to_rgb.{i}.weight/bias`` (i < 6) become ``decoder.to_rgb.weight/bias``;
    as in the reference, when several levels are present the last one in the dict wins)."""
    _check_name(name)
    if _CONFIGS[name][0] is not TriaGAN:
        return dict(state)
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new_key = key
        for i in range(6):
            if key == f"decoder.to_rgb.{i}.weight":
                new_key = "decoder.to_rgb.weight"
            elif key == f"decoder.to_rgb.{i}.bias":
                new_key = "decoder.to_rgb.bias"
        out[new_key] = value
    return out


def md5sum(path: Union[str, os.PathLike], chunk: int = 1 << 22) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: Union[str, os.PathLike], name: Optional[str] = None,
                    allow_pickle: Optional[bool] = None) -> dict:
    """``torch.load`` a checkpoint on CPU with ``weights_only=True``.

    If the file holds non-tensor Python objects (training state) the safe loader refuses it. Then:
    ``allow_pickle=True`` loads it with full unpickling; ``allow_pickle=None`` (default) does so only when the
    file's md5 equals the official checkpoint's for ``name`` (a known file); otherwise a :class:`CheckpointError`
    explains what to do. Only unpickle files you trust.
    """
    path = Path(path)
    if not path.is_file():
        hint = ""
        if name in CHECKPOINTS:
            meta = CHECKPOINTS[name]
            hint = (f" The official {name} checkpoint is {meta['url']} (md5 {meta['md5']}; cached by DeepPrivacy2 as "
                    f"$TORCH_HOME/hub/checkpoints/{meta['filename']}).")
        raise FileNotFoundError(f"checkpoint not found: {path}.{hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
        safe_error = err
    if allow_pickle is None:
        allow_pickle = name in CHECKPOINTS and md5sum(path) == CHECKPOINTS[name]["md5"]
    if not allow_pickle:
        raise CheckpointError(
            f"{path} cannot be loaded with torch.load(weights_only=True) ({type(safe_error).__name__}: "
            f"{str(safe_error).splitlines()[0] if str(safe_error) else ''}). Its md5 does not match the official "
            f"{name or 'generator'} checkpoint, so it is not unpickled automatically; pass allow_pickle=True if you "
            f"trust the file.")
    warnings.warn(f"{path}: weights_only load failed; unpickling the trusted file with weights_only=False")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # pragma: no cover - corrupted files
        raise CheckpointError(f"could not read checkpoint {path}: {type(err).__name__}: {err}") from err


def _fmt_keys(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    head = ", ".join(keys[:limit])
    return head + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_generator(name: str, path: Union[str, os.PathLike], allow_pickle: Optional[bool] = None, expected_md5: Optional[str] = None,
                   map_location: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """Build generator ``name`` and load the official checkpoint at ``path`` (see module docstring).

    ``expected_md5``: verify the file first (pass ``CHECKPOINTS[name]["md5"]`` for the official file).
    ``allow_pickle``: see :func:`read_checkpoint`.
    Returns the module (float32) in eval mode on ``map_location``; ``G.style_net.has_w_centers`` says whether
    multi-modal truncation is available. Loading is always strict: every key of the architecture must be in the
    (mapped) state dict with the right shape and nothing else may be, otherwise :class:`CheckpointError` lists them.
    """
    _check_name(name)
    if expected_md5 is not None and Path(path).is_file():
        got = md5sum(path)
        if got != expected_md5:
            raise CheckpointError(f"md5 mismatch for {path}: got {got}, expected {expected_md5}")
    ckpt = read_checkpoint(path, name=name, allow_pickle=allow_pickle)
    if not isinstance(ckpt, Mapping) or "EMA_generator" not in ckpt:
        keys = list(ckpt.keys()) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a DeepPrivacy2 generator checkpoint: no 'EMA_generator' entry "
                              f"(found {keys})")
    state = map_state_dict(name, ckpt["EMA_generator"])
    # Cluster centres: the old format stores them at the top level, the current one inside the state dict
    # (when both exist the reference ends up with the state dict's).
    if "style_net.w_centers" not in state and ckpt.get("w_centers") is not None:
        state["style_net.w_centers"] = torch.as_tensor(ckpt["w_centers"])
    # Build on the meta device: no random initialisation of ~10^8 weights that are overwritten right away;
    # every tensor (parameters and persistent buffers) then comes from the checkpoint via assign=True.
    cls, kwargs = _CONFIGS[name]
    with torch.device("meta"):
        G = cls(**kwargs)
    G.generator_name = name
    if "style_net.w_centers" not in state:
        state["style_net.w_centers"] = torch.zeros([DEFAULT_N_CENTERS, G.style_net.w_dim])

    own = G.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and k != "style_net.w_centers"
                  and tuple(state[k].shape) != tuple(own[k].shape)]
    centers = state.get("style_net.w_centers")
    if centers is not None and (centers.ndim != 2 or centers.shape[1] != G.style_net.w_dim):
        mismatched.append(f"style_net.w_centers: checkpoint {tuple(centers.shape)} vs model (K, {G.style_net.w_dim})")
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_fmt_keys(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched[:12])}")
        raise CheckpointError(f"{path} does not fit generator {name!r}: " + " | ".join(parts))
    state = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in state.items()}
    G.load_state_dict(state, strict=True, assign=True)
    G.style_net.has_w_centers = bool(G.style_net.w_centers.abs().sum() > 0)
    return G.to(map_location).eval()
