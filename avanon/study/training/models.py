"""Mask R-CNN / Keypoint R-CNN with a ResNet-FPN backbone of any depth, initialised from scratch, from an
ImageNet backbone file or from a COCO-pretrained torchvision detector file. Weights are never downloaded.

Normalisation (decided here, as detectron2 and torchvision do):

- initialised from ImageNet or a COCO detector: ``frozen_bn`` (FrozenBatchNorm2d: the pretrained statistics and
  affine parameters are constants; per-GPU batches of 1-2 images are too small for BN statistics) and
  ``trainable_backbone_layers`` 3 (torchvision's default: conv1 and layer1 frozen);
- from scratch: ``bn`` (plain BatchNorm2d, every layer trainable; frozen random statistics would be meaningless).
  Batch statistics come from all pixels of the per-device batch, so a batch of 2-8 small images is enough on one
  device; under DDP use ``sync_bn`` (converted to SyncBatchNorm) or ``gn`` (GroupNorm(32), batch-independent,
  what "Rethinking ImageNet Pre-training" trains from scratch with) for small per-GPU batches.

Heads are torchvision's v1 heads (the key names of ``maskrcnn_resnet50_fpn`` / ``keypointrcnn_resnet50_fpn``), so
torchvision's COCO checkpoints load; heads whose class count differs are re-initialised with a log message.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.detection import KeypointRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

logger = logging.getLogger(__name__)

DEPTHS = (18, 34, 50, 101, 152)
NORMS = ("frozen_bn", "bn", "sync_bn", "gn")
TASK_ALIASES = {"instance_segmentation": "instance_segmentation", "segm": "instance_segmentation",
                "mask_rcnn": "instance_segmentation", "keypoints": "keypoints", "keypoint_rcnn": "keypoints"}


class InitWeightsError(Exception):
    """An init file that is missing or does not fit the model (the message says which recipe key and why)."""


class MissingInitFile(InitWeightsError, FileNotFoundError):
    pass


def published_urls(task: str, depth: int) -> dict[str, str]:
    """torchvision's published weights that fit (read from the weights enums; nothing is downloaded)."""
    from torchvision import models
    from torchvision.models import detection

    urls = {}
    enum = getattr(models, f"ResNet{depth}_Weights", None)
    if enum is not None:
        urls[f"ImageNet ResNet-{depth} backbone (torchvision ResNet{depth}_Weights.IMAGENET1K_V1)"] = \
            enum.IMAGENET1K_V1.url
    if depth == 50:
        if task == "instance_segmentation":
            urls["COCO Mask R-CNN R-50-FPN (torchvision MaskRCNN_ResNet50_FPN_Weights.COCO_V1)"] = \
                detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url
        else:
            urls["COCO Keypoint R-CNN R-50-FPN (torchvision KeypointRCNN_ResNet50_FPN_Weights.COCO_V1)"] = \
                detection.KeypointRCNN_ResNet50_FPN_Weights.COCO_V1.url
    return urls


def missing_init_message(path: Path, task: str, depth: int, key: str) -> str:
    lines = [f"{key}: init file {path} does not exist. avanon never downloads weights: fetch the file on a machine "
             f"with network access, copy it here (or point {key} at it), or set {key} to null to train from "
             f"scratch. Files that fit this {task} ResNet-{depth}-FPN model:"]
    urls = published_urls(task, depth)
    lines += [f"  {name}: {url}" for name, url in urls.items()] or [
        f"  (torchvision publishes no ImageNet weights for ResNet-{depth})"]
    return "\n".join(lines)


class RCNNTransform(GeneralizedRCNNTransform):
    """torchvision's transform with a separate test size (torchvision itself tests at ``min_size[-1]``)."""

    def __init__(self, min_size, max_size, image_mean, image_std, test_min_size: Optional[int] = None, **kw):
        super().__init__(min_size, max_size, image_mean, image_std, **kw)
        self.test_min_size = test_min_size
        self.channels_last = False  # set_channels_last: the padded batch goes to the backbone as NHWC

    def batch_images(self, images, size_divisible: int = 32):
        batched = super().batch_images(images, size_divisible)
        return batched.contiguous(memory_format=torch.channels_last) if self.channels_last else batched

    def resize(self, image, target=None):
        if self.training or self.test_min_size is None:
            return super().resize(image, target)
        saved = self.min_size
        self.min_size = (int(self.test_min_size),)
        try:
            return super().resize(image, target)
        finally:
            self.min_size = saved


def _norm_layer(norm: str):
    if norm == "frozen_bn":
        return misc_ops.FrozenBatchNorm2d
    if norm in ("bn", "sync_bn"):
        return nn.BatchNorm2d  # sync_bn: converted to SyncBatchNorm by the engine when running under DDP
    if norm == "gn":
        return lambda channels: nn.GroupNorm(32, channels)
    raise ValueError(f"model.norm must be one of {NORMS}, got {norm!r}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth file: a bare state dict, or a checkpoint with 'model' / 'state_dict'; the
    'module.' prefix of DDP-saved files is removed."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InitWeightsError(f"{path} holds no state dict (a dict of tensors, or a checkpoint with 'model')")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def init_kind(state: dict[str, torch.Tensor]) -> str:
    """'detector' (torchvision detection keys), 'imagenet' (torchvision resnet keys) or 'unknown'."""
    if any(k.startswith("backbone.body.") for k in state):
        return "detector"
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        return "imagenet"
    return "unknown"


def _load_imagenet(body: nn.Module, state: dict, path: Path, key: str) -> dict:
    own = {k: v for k, v in body.state_dict().items() if not k.startswith("fc.")}  # the classifier is unused
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    if bad or missing or unexpected:
        raise InitWeightsError(
            f"{key}: {path} does not fit this ResNet (wrong depth?): {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(bad)} with another shape {bad[:3]}")
    body.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {"kind": "imagenet", "path": str(path), "loaded": len(state)}


def _load_detector(model: nn.Module, state: dict, path: Path, key: str) -> dict:
    own = model.state_dict()
    backbone_missing = [k for k in own if k.startswith("backbone.") and k not in state
                        and not k.endswith("num_batches_tracked")]
    backbone_bad = [k for k in own if k.startswith("backbone.") and k in state and state[k].shape != own[k].shape]
    if backbone_missing or backbone_bad:
        raise InitWeightsError(
            f"{key}: {path} is a detector checkpoint whose backbone does not fit this model (wrong depth?): "
            f"missing {backbone_missing[:3]}, other shape {backbone_bad[:3]}")
    load, reinit = {}, []
    for k, v in state.items():
        if k not in own:
            continue
        if own[k].shape != v.shape:
            reinit.append(f"{k} {tuple(v.shape)} -> {tuple(own[k].shape)}")
            continue
        load[k] = v
    not_in_file = sorted({k.rsplit(".", 1)[0] for k in own if k not in state
                          and not k.endswith("num_batches_tracked")})
    unused = sorted({k.rsplit(".", 1)[0] for k in state if k not in own})
    model.load_state_dict(load, strict=False)
    for line in reinit:
        logger.info("init %s: re-initialised (class count differs): %s", path.name, line)
    if not_in_file:
        logger.info("init %s: not in the file, left at random init: %s", path.name, ", ".join(not_in_file))
    if unused:
        logger.info("init %s: unused entries of the file: %s", path.name, ", ".join(unused))
    return {"kind": "detector", "path": str(path), "loaded": len(load), "reinitialised": reinit,
            "random": not_in_file, "unused": unused}


def build_model(task: str, depth: int = 50, num_classes: int = 1, init: Optional[str | Path] = None,
                min_size: int | Sequence[int] = 800, max_size: int = 1333, *, norm: Optional[str] = None,
                trainable_backbone_layers: Optional[int] = None, test_min_size: Optional[int] = None,
                fpn_channels: int = 256, representation_size: int = 1024, mask_head_channels: int = 256,
                mask_head_layers: int = 4, keypoint_head_channels: int = 512, keypoint_head_layers: int = 8,
                init_key: str = "model.init", **kw: Any) -> nn.Module:
    """Mask R-CNN (task "instance_segmentation") or Keypoint R-CNN ("keypoints"), ResNet-`depth` FPN backbone.

    num_classes: foreground classes (``len(thing_classes)``; 1 for keypoints); the box predictor has
    num_classes + 1 outputs (0 = background). min_size: one short-side size or a list (multi-scale training: one
    drawn per batch); tests at ``test_min_size`` (default: the last entry, torchvision's rule); max_size caps the
    long side. init: None (scratch), a torchvision ImageNet ResNet state dict, or a torchvision detector state dict
    (``maskrcnn_resnet50_fpn`` / ``keypointrcnn_resnet50_fpn`` key names). norm / trainable_backbone_layers:
    defaults depend on init (module docstring). fpn_channels (256), representation_size (box head MLP, 1024),
    mask_head_channels (256), mask_head_layers (4), keypoint_head_channels (512), keypoint_head_layers (8): the
    widths of torchvision's standard model, smaller for CPU demos (a COCO checkpoint loads only into the standard
    widths). kw: passed to torchvision's MaskRCNN / KeypointRCNN (rpn_*, box_*, ...). The result carries
    ``model.init_report`` (what was loaded)."""
    task = TASK_ALIASES.get(task, task)
    if task not in ("instance_segmentation", "keypoints"):
        raise ValueError(f"task must be instance_segmentation or keypoints, got {task!r}")
    if depth not in DEPTHS:
        raise ValueError(f"model.depth must be one of {DEPTHS}, got {depth!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (foreground classes), got {num_classes}")
    state, kind, path = None, None, None
    if init is not None:
        path = Path(init).expanduser()
        if not path.is_file():
            raise MissingInitFile(missing_init_message(path, task, depth, init_key))
        state = read_state_dict(path)
        kind = init_kind(state)
        if kind == "unknown":
            raise InitWeightsError(f"{init_key}: {path} is neither a torchvision ResNet state dict (conv1.*, "
                                   f"layer1.*) nor a torchvision detector state dict (backbone.body.*)")
    pretrained = init is not None
    norm = norm or ("frozen_bn" if pretrained else "bn")
    if trainable_backbone_layers is None:
        trainable_backbone_layers = 3 if pretrained else 5
    if not 0 <= trainable_backbone_layers <= 5:
        raise ValueError(f"model.trainable_backbone_layers must be 0..5, got {trainable_backbone_layers}")
    if not pretrained and trainable_backbone_layers != 5:
        logger.warning("training from scratch: trainable_backbone_layers=%d would freeze random layers; using 5",
                       trainable_backbone_layers)
        trainable_backbone_layers = 5
    if not pretrained and norm == "frozen_bn":
        raise ValueError("model.norm frozen_bn freezes random statistics when training from scratch; use bn, "
                         "sync_bn or gn")

    body = getattr(tv_resnet, f"resnet{depth}")(weights=None, norm_layer=_norm_layer(norm))
    report: dict[str, Any] = {"kind": "scratch"}
    if kind == "imagenet":
        report = _load_imagenet(body, state, path, init_key)
    backbone = _resnet_fpn_extractor(body, trainable_backbone_layers)
    if fpn_channels != backbone.out_channels:
        in_channels = [block[0].in_channels for block in backbone.fpn.inner_blocks]
        backbone.fpn = FeaturePyramidNetwork(in_channels, fpn_channels, extra_blocks=LastLevelMaxPool())
        backbone.out_channels = fpn_channels
    sizes = (int(min_size),) if isinstance(min_size, int) else tuple(int(s) for s in min_size)
    heads: dict[str, Any] = {}
    if representation_size != 1024 or fpn_channels != 256:
        heads["box_head"] = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
        heads["box_predictor"] = FastRCNNPredictor(representation_size, num_classes + 1)
    if task == "instance_segmentation":
        cls = MaskRCNN
        if mask_head_channels != 256 or mask_head_layers != 4 or fpn_channels != 256:
            layers = (int(mask_head_channels),) * int(mask_head_layers)
            heads["mask_head"] = MaskRCNNHeads(fpn_channels, layers, 1)
            heads["mask_predictor"] = MaskRCNNPredictor(layers[-1], layers[-1], num_classes + 1)
    else:
        cls = KeypointRCNN
        if keypoint_head_channels != 512 or keypoint_head_layers != 8:
            layers = (int(keypoint_head_channels),) * int(keypoint_head_layers)
            heads["keypoint_head"] = KeypointRCNNHeads(fpn_channels, layers)
            heads["keypoint_predictor"] = KeypointRCNNPredictor(layers[-1], kw.get("num_keypoints", 17))
    heads.update(kw)
    model = cls(backbone, num_classes=None if "box_predictor" in heads else num_classes + 1, min_size=sizes,
                max_size=int(max_size), **heads)
    model.transform = RCNNTransform(sizes, int(max_size), model.transform.image_mean, model.transform.image_std,
                                    test_min_size=test_min_size)
    if kind == "detector":
        report = _load_detector(model, state, path, init_key)
    model.init_report = report
    model.norm = norm
    return model


def set_channels_last(model: nn.Module, on: bool = True) -> nn.Module:
    """Convolution weights and the padded input batch in channels_last (NHWC) memory format, or back to NCHW.
    The values are the same; cuDNN's NHWC kernels (tensor cores, with AMP above all) are faster. In place."""
    model.to(memory_format=torch.channels_last if on else torch.contiguous_format)
    net = model.module if hasattr(model, "module") else model
    if isinstance(getattr(net, "transform", None), RCNNTransform):
        net.transform.channels_last = bool(on)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
