"""DeepPrivacy2-compatible realistic anonymization generators (plain PyTorch, CPU-capable), and their pretrained
checkpoints (weights/). `avanon.realistic` re-exports this API under its earlier name.

Public API::

    from avanon.generators import build_generator, load_generator, keypoint_channels, joint_map

    G = load_generator("body_triagan288", "/path/to/triagan_L_im288.ckpt")   # eval mode, strict load
    w = G.get_w(truncation_value=0, multi_modal=True, n=1)                    # MMT (needs w_centers)
    out = G(img=img, condition=img * mask, mask=mask, maskrcnn_mask=mrcnn, keypoints=kps, w=w)["img"]

Latent sampling (``G.get_w(z=None, truncation_value=None, multi_modal=False, w_indices=None, n=1)``):

* ``truncation_value=None``: w = mapping(z) (z ~ N(0, I) when not given).
* ``truncation_value=t``: unimodal truncation ``lerp(style_net.w_avg, w, t)`` (t = 0 gives w_avg).
* ``multi_modal=True``: ``lerp(style_net.w_centers[w_indices], w, t)`` (random centres when w_indices is None);
  requires ``style_net.has_w_centers``.

``G.style_net`` also offers ``get_truncated`` / ``multi_modal_truncate`` with the reference's semantics, and the
buffers ``w_avg`` [w_dim] and ``w_centers`` [K, w_dim].
"""
from .checkpoints import (CHECKPOINTS, EXPECTED_PARAM_COUNTS, GENERATOR_NAMES, CheckpointError, build_generator,
                         load_generator, map_state_dict, md5sum, num_parameters, read_checkpoint)
from .layers import MappingNetwork
from .weights.centres import cmd_compute_centers as compute_centers


from .stylegan_unet import StyleGANUnet
from .triagan import COCO_KEYPOINTS, TriaGAN, joint_map, keypoint_channels

__all__ = [
    "CHECKPOINTS",
    "COCO_KEYPOINTS",
    "EXPECTED_PARAM_COUNTS",
    "GENERATOR_NAMES",
    "CheckpointError",
    "MappingNetwork",
    "StyleGANUnet",
    "TriaGAN",
    "build_generator",
    "compute_centers",
    "joint_map",
    "keypoint_channels",
    "load_generator",
    "map_state_dict",
    "md5sum",
    "num_parameters",
    "read_checkpoint",
]
