"""MMDetection 3.x config text for the same Mask R-CNN run as the torchvision trainer (optional backend).

`mmdet_config_text(cfg, classes, train_ann, val_ann, work_dir)` turns a resolved avanon training config
(`avanon.study.training.engine.resolve_config`) into a self-contained MMDetection 3.x config (Python dict syntax, no
``_base_`` files): ``mask-rcnn_r{depth}_fpn`` with mmdet's packaged defaults for the heads, assigners and samplers,
``num_classes`` = len(thing_classes), training images from the mirror (``data.image_root``) and validation from
the ORIGINAL split (``data.val_root``), the same schedule (iterations, warmup, steps, batch, lr, weight decay,
clipping), sizes and normalisation choice. Annotations are the adapter's instances exported as COCO JSON
(`export_annotations`), category ids = 1-based positions in thing_classes, so the metrics line up with the
torchvision trainer's.

Differences from the torchvision trainer that remain (documented, not hidden): mmdet keeps crowd annotations as
ignore regions during training (torchvision drops them); mmdet's RoIAlign uses ``sampling_ratio=0`` (adaptive) and
its box coder target stds (0.1, 0.1, 0.2, 0.2) equal torchvision's weights (10, 10, 5, 5); images are decoded by
mmcv (cv2, EXIF orientation applied = ``exif_frame: oriented``); mmdet draws flips and sizes from numpy's global RNG
and samples RPN / ROI targets from torch's, so the same seed gives the same run on the same machine but not the
torchvision trainer's sample stream. A COCO *detector* init must be an MMDetection checkpoint (``load_from``); an
ImageNet init is a torchvision ResNet state dict, whose key names mmdet's ResNet shares.

The text is a complete config (no ``_base_`` files; mmengine's ``Config.fromfile`` reads it), including a validation
loop with mmdet's CocoMetric at the last iteration. The ``mmdet`` trainer (avanon.study.training.trainers) runs it
without that validation and instead predicts the original validation split itself and scores it with
avanon.study.evaluation, like the torchvision trainer. The one resume file is
``OUT/checkpoint.pth`` (overwritten every ``checkpoint_period`` iterations), as the torchvision trainer's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

FPN_IN_CHANNELS = {18: [64, 128, 256, 512], 34: [64, 128, 256, 512], 50: [256, 512, 1024, 2048],
                   101: [256, 512, 1024, 2048], 152: [256, 512, 1024, 2048]}


class _Call:
    """Renders as ``dict(k=v, ...)`` / ``name(...)`` in the generated text."""

    def __init__(self, **kw: Any):
        self.kw = kw


def _fmt(value: Any, indent: int = 0) -> str:
    pad = "    " * (indent + 1)
    if isinstance(value, _Call) or (isinstance(value, dict) and all(isinstance(k, str) and k.isidentifier()
                                                                     for k in value)):
        kw = value.kw if isinstance(value, _Call) else value
        if not kw:
            return "dict()"
        inner = ",\n".join(f"{pad}{k}={_fmt(v, indent + 1)}" for k, v in kw.items())
        return f"dict(\n{inner})"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, _Call, list)) for v in value):
            return "[" + ", ".join(_fmt(v) for v in value) + "]"
        inner = ",\n".join(f"{pad}{_fmt(v, indent + 1)}" for v in value)
        return f"[\n{inner},\n{pad[:-4]}]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return repr(value)
    raise TypeError(f"cannot write {type(value).__name__} into an mmdet config")


def _norm_cfg(norm: str) -> tuple[dict, bool]:
    """(norm_cfg, norm_eval) of mmdet's ResNet for avanon's model.norm."""
    if norm == "frozen_bn":
        return {"type": "BN", "requires_grad": False}, True
    if norm == "bn":
        return {"type": "BN", "requires_grad": True}, False
    if norm == "sync_bn":
        return {"type": "SyncBN", "requires_grad": True}, False
    if norm == "gn":
        return {"type": "GN", "num_groups": 32, "requires_grad": True}, False
    raise ValueError(f"model.norm {norm!r} has no mmdet equivalent")


def model_dict(cfg: dict, num_classes: int) -> dict:
    """mmdet's mask-rcnn_r50_fpn model (configs/_base_/models/mask-rcnn_r50_fpn.py) at another depth, norm and
    class count."""
    m = cfg["model"]
    depth = int(m["depth"])
    pretrained = m["init"] is not None
    norm = m["norm"] or ("frozen_bn" if pretrained else "bn")
    trainable = m["trainable_backbone_layers"]
    if trainable is None:
        trainable = 3 if pretrained else 5
    norm_cfg, norm_eval = _norm_cfg(norm)
    opts = m.get("options") or {}
    fpn = int(opts.get("fpn_channels", 256))
    backbone: dict[str, Any] = {
        "type": "ResNet", "depth": depth, "num_stages": 4, "out_indices": (0, 1, 2, 3),
        "frozen_stages": 4 - trainable if trainable < 5 else -1,  # torchvision's trainable layers 3 = frozen 1
        "norm_cfg": norm_cfg, "norm_eval": norm_eval, "style": "pytorch"}
    init_kind = _init_kind(m["init"])
    if init_kind == "imagenet":
        backbone["init_cfg"] = {"type": "Pretrained", "checkpoint": str(m["init"])}
    roi = lambda size: {"type": "RoIAlign", "output_size": size, "sampling_ratio": 0}  # noqa: E731
    return {
        "type": "MaskRCNN",
        "data_preprocessor": {"type": "DetDataPreprocessor", "mean": [123.675, 116.28, 103.53],
                              "std": [58.395, 57.12, 57.375], "bgr_to_rgb": True, "pad_mask": True,
                              "pad_size_divisor": 32},
        "backbone": backbone,
        "neck": {"type": "FPN", "in_channels": FPN_IN_CHANNELS[depth], "out_channels": fpn, "num_outs": 5},
        "rpn_head": {
            "type": "RPNHead", "in_channels": fpn, "feat_channels": fpn,
            "anchor_generator": {"type": "AnchorGenerator", "scales": [8], "ratios": [0.5, 1.0, 2.0],
                                 "strides": [4, 8, 16, 32, 64]},
            "bbox_coder": {"type": "DeltaXYWHBBoxCoder", "target_means": [0.0, 0.0, 0.0, 0.0],
                           "target_stds": [1.0, 1.0, 1.0, 1.0]},
            "loss_cls": {"type": "CrossEntropyLoss", "use_sigmoid": True, "loss_weight": 1.0},
            "loss_bbox": {"type": "L1Loss", "loss_weight": 1.0}},
        "roi_head": {
            "type": "StandardRoIHead",
            "bbox_roi_extractor": {"type": "SingleRoIExtractor", "roi_layer": roi(7), "out_channels": fpn,
                                   "featmap_strides": [4, 8, 16, 32]},
            "bbox_head": {"type": "Shared2FCBBoxHead", "in_channels": fpn,
                          "fc_out_channels": int(opts.get("representation_size", 1024)), "roi_feat_size": 7,
                          "num_classes": num_classes,
                          "bbox_coder": {"type": "DeltaXYWHBBoxCoder", "target_means": [0.0, 0.0, 0.0, 0.0],
                                         "target_stds": [0.1, 0.1, 0.2, 0.2]},
                          "reg_class_agnostic": False,
                          "loss_cls": {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": 1.0},
                          "loss_bbox": {"type": "L1Loss", "loss_weight": 1.0}},
            "mask_roi_extractor": {"type": "SingleRoIExtractor", "roi_layer": roi(14), "out_channels": fpn,
                                   "featmap_strides": [4, 8, 16, 32]},
            "mask_head": {"type": "FCNMaskHead", "num_convs": int(opts.get("mask_head_layers", 4)),
                          "in_channels": fpn, "conv_out_channels": int(opts.get("mask_head_channels", 256)),
                          "num_classes": num_classes,
                          "loss_mask": {"type": "CrossEntropyLoss", "use_mask": True, "loss_weight": 1.0}}},
        "train_cfg": {
            "rpn": {"assigner": {"type": "MaxIoUAssigner", "pos_iou_thr": 0.7, "neg_iou_thr": 0.3,
                                 "min_pos_iou": 0.3, "match_low_quality": True, "ignore_iof_thr": -1},
                    "sampler": {"type": "RandomSampler", "num": int(opts.get("rpn_batch_size_per_image", 256)),
                                "pos_fraction": 0.5, "neg_pos_ub": -1, "add_gt_as_proposals": False},
                    "allowed_border": -1, "pos_weight": -1, "debug": False},
            "rpn_proposal": {"nms_pre": int(opts.get("rpn_pre_nms_top_n_train", 2000)),
                             "max_per_img": int(opts.get("rpn_post_nms_top_n_train", 1000)),
                             "nms": {"type": "nms", "iou_threshold": 0.7}, "min_bbox_size": 0},
            "rcnn": {"assigner": {"type": "MaxIoUAssigner", "pos_iou_thr": 0.5, "neg_iou_thr": 0.5,
                                  "min_pos_iou": 0.5, "match_low_quality": True, "ignore_iof_thr": -1},
                     "sampler": {"type": "RandomSampler", "num": int(opts.get("box_batch_size_per_image", 512)),
                                 "pos_fraction": 0.25, "neg_pos_ub": -1, "add_gt_as_proposals": True},
                     "mask_size": 28, "pos_weight": -1, "debug": False}},
        "test_cfg": {
            "rpn": {"nms_pre": int(opts.get("rpn_pre_nms_top_n_test", 1000)),
                    "max_per_img": int(opts.get("rpn_post_nms_top_n_test", 1000)),
                    "nms": {"type": "nms", "iou_threshold": 0.7}, "min_bbox_size": 0},
            "rcnn": {"score_thr": float(opts.get("box_score_thresh", 0.05)),
                     "nms": {"type": "nms", "iou_threshold": float(opts.get("box_nms_thresh", 0.5))},
                     "max_per_img": int(opts.get("box_detections_per_img", 100)), "mask_thr_binary": 0.5}},
    }


def _init_kind(init: Optional[str]) -> Optional[str]:
    """'imagenet' | 'detector' | None, from the file's keys when it exists, else from its name."""
    if init is None:
        return None
    path = Path(init)
    if path.is_file():
        try:
            from avanon.study.training.models import init_kind, read_state_dict

            return init_kind(read_state_dict(path))
        except Exception:  # an mmdet checkpoint holds more than tensors: treat it as a detector checkpoint
            return "detector"
    return "detector" if "rcnn" in path.name.lower() else "imagenet"


def mmdet_config_dict(cfg: dict, classes: Sequence[str], train_ann: str, val_ann: str, work_dir: str,
                      num_gpus: int = 1) -> dict:
    """The config as a dict of top-level names -> values (what the text assigns)."""
    d, m, s = cfg["data"], cfg["model"], cfg["solver"]
    if cfg["task"] != "instance_segmentation":
        raise ValueError("the mmdet backend trains Mask R-CNN (task instance_segmentation) only; keypoints need "
                         "the torchvision trainer (or mmpose)")
    if s["batch_size"] % num_gpus:
        raise ValueError(f"solver.batch_size {s['batch_size']} is not divisible by {num_gpus} GPUs")
    classes = tuple(classes)
    image_root = str(d["image_root"] or d["root"]).rstrip("/") + "/"
    val_root = str(d["val_root"] or d["root"]).rstrip("/") + "/"
    max_size = int(m["max_size"])
    test_size = int(m["test_min_size"] or m["min_size"][-1])
    backend_args = None
    train_pipeline = [
        {"type": "LoadImageFromFile", "backend_args": backend_args},
        {"type": "LoadAnnotations", "with_bbox": True, "with_mask": True},
        {"type": "RandomChoiceResize", "scales": [(max_size, int(v)) for v in m["min_size"]], "keep_ratio": True},
        {"type": "RandomFlip", "prob": float(d["flip_prob"])},
        {"type": "PackDetInputs"},
    ]
    test_pipeline = [
        {"type": "LoadImageFromFile", "backend_args": backend_args},
        {"type": "Resize", "scale": (max_size, test_size), "keep_ratio": True},
        {"type": "LoadAnnotations", "with_bbox": True, "with_mask": True},
        {"type": "PackDetInputs", "meta_keys": ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")},
    ]
    metainfo = {"classes": classes}
    val_dataloader = {
        "batch_size": 1, "num_workers": int(d["workers"]), "persistent_workers": bool(d["workers"]),
        "drop_last": False, "sampler": {"type": "DefaultSampler", "shuffle": False},
        "dataset": {"type": "CocoDataset", "data_root": "", "metainfo": metainfo, "ann_file": str(val_ann),
                    "data_prefix": {"img": val_root}, "test_mode": True, "pipeline": test_pipeline,
                    "backend_args": backend_args}}
    val_evaluator = {"type": "CocoMetric", "ann_file": str(val_ann), "metric": ["bbox", "segm"],
                     "classwise": True, "format_only": False, "backend_args": backend_args,
                     "outfile_prefix": str(Path(work_dir) / "predictions_val")}
    iterations = int(s["iterations"])
    if s["optimizer"] == "adamw":
        optimizer = {"type": "AdamW", "lr": float(s["lr"]), "weight_decay": float(s["weight_decay"])}
    else:
        optimizer = {"type": "SGD", "lr": float(s["lr"]), "momentum": float(s["momentum"]),
                     "weight_decay": float(s["weight_decay"])}
    optim_wrapper: dict[str, Any] = {"type": "AmpOptimWrapper" if s["amp"] == "fp16" else "OptimWrapper",
                                     "optimizer": optimizer,
                                     "clip_grad": ({"max_norm": float(s["clip_grad_norm"]), "norm_type": 2}
                                                   if s["clip_grad_norm"] else None)}
    if s["amp"] == "bf16":
        optim_wrapper.update(type="AmpOptimWrapper", dtype="bfloat16")
    param_scheduler = [
        {"type": "LinearLR", "start_factor": float(s["warmup_factor"]), "by_epoch": False, "begin": 0,
         "end": int(s["warmup_iterations"])},
        {"type": "MultiStepLR", "begin": 0, "end": iterations, "by_epoch": False,
         "milestones": [int(v) for v in s["steps"]], "gamma": float(s["gamma"])},
    ]
    out = {
        "default_scope": "mmdet",
        "work_dir": str(work_dir),
        "classes": classes,
        "metainfo": metainfo,
        "model": model_dict(cfg, len(classes)),
        "backend_args": backend_args,
        "train_pipeline": train_pipeline,
        "test_pipeline": test_pipeline,
        "train_dataloader": {
            "batch_size": s["batch_size"] // num_gpus, "num_workers": int(d["workers"]),
            "persistent_workers": bool(d["workers"]),
            "sampler": {"type": "InfiniteSampler", "shuffle": True, "seed": int(cfg["seed"])},
            "batch_sampler": {"type": "AspectRatioBatchSampler"},
            "dataset": {"type": "CocoDataset", "data_root": "", "metainfo": metainfo, "ann_file": str(train_ann),
                        "data_prefix": {"img": image_root},
                        # avanon keeps images without targets (torchvision trains on them as negatives)
                        "filter_cfg": {"filter_empty_gt": bool(d["drop_empty"]), "min_size": 0},
                        "pipeline": train_pipeline, "backend_args": backend_args}},
        "val_dataloader": val_dataloader,
        "test_dataloader": val_dataloader,
        "val_evaluator": val_evaluator,
        "test_evaluator": val_evaluator,
        "train_cfg": {"type": "IterBasedTrainLoop", "max_iters": iterations, "val_interval": iterations},
        "val_cfg": {"type": "ValLoop"},
        "test_cfg": {"type": "TestLoop"},
        "optim_wrapper": optim_wrapper,
        "param_scheduler": param_scheduler,
        "auto_scale_lr": {"enable": False, "base_batch_size": int(s["batch_size"])},
        "default_hooks": {
            "timer": {"type": "IterTimerHook"},
            "logger": {"type": "LoggerHook", "interval": int(cfg["log_period"])},
            "param_scheduler": {"type": "ParamSchedulerHook"},
            # one resume file, OUT/checkpoint.pth, overwritten in place like the torchvision trainer's (the study
            # runner resumes a run that has it); max_keep_ckpts -1: with one file name mmengine would delete the
            # checkpoint it just wrote
            "checkpoint": {"type": "CheckpointHook", "by_epoch": False, "interval": int(cfg["checkpoint_period"]),
                           "filename_tmpl": "checkpoint.pth", "max_keep_ckpts": -1, "save_last": True},
            "sampler_seed": {"type": "DistSamplerSeedHook"},
            "visualization": {"type": "DetVisualizationHook"}},
        "env_cfg": {"cudnn_benchmark": False, "mp_cfg": {"mp_start_method": "fork", "opencv_num_threads": 0},
                    "dist_cfg": {"backend": "nccl"}},
        "vis_backends": [{"type": "LocalVisBackend"}],
        "visualizer": {"type": "DetLocalVisualizer", "vis_backends": [{"type": "LocalVisBackend"}],
                       "name": "visualizer"},
        "log_processor": {"type": "LogProcessor", "window_size": int(cfg["log_period"]), "by_epoch": False},
        "log_level": "INFO",
        "randomness": {"seed": int(cfg["seed"]), "deterministic": False},
        "load_from": str(m["init"]) if _init_kind(m["init"]) == "detector" else None,
        "resume": False,
    }
    return out


def mmdet_config_text(cfg: dict, classes: Sequence[str], train_ann: str, val_ann: str, work_dir: str,
                      num_gpus: int = 1) -> str:
    """The config as MMDetection 3.x Python text (assignments of dict(...) literals, no imports, no _base_)."""
    values = mmdet_config_dict(cfg, classes, train_ann, val_ann, work_dir, num_gpus)
    lines = ["# MMDetection 3.x config generated by avanon.study.training.mmdet_config from the avanon config below.",
             "# Regenerate instead of editing. avanon config:"]
    lines += [f"#   {line}" for line in json.dumps(cfg, sort_keys=True).splitlines()]
    for name, value in values.items():
        lines.append(f"{name} = {_fmt(value)}")
    return "\n".join(lines) + "\n"


def parse_config_text(text: str) -> dict:
    """Execute generated config text (literals only) into a dict, as mmengine's Config.fromfile would."""
    import ast

    ast.parse(text)
    namespace: dict[str, Any] = {}
    exec(compile(text, "<mmdet config>", "exec"), {"__builtins__": {"dict": dict}}, namespace)
    return namespace


def export_annotations(adapter, path: Path, *, exclude_classes: Sequence[str] = (),
                       image_root: Optional[Path] = None) -> Path:
    """The adapter's split as COCO JSON (avanon.study.evaluation.ground_truth_coco: ids = 1-based thing_classes),
    without the excluded classes' annotations and without images missing from image_root (a mirror leaves out
    images it failed to anonymize)."""
    from avanon.study.evaluation import ground_truth_coco

    gt = ground_truth_coco(adapter, strict=False)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    if exclude_classes:
        gt["annotations"] = [a for a in gt["annotations"] if names[a["category_id"]] not in set(exclude_classes)]
    if image_root is not None:
        keep = {im["id"] for im in gt["images"] if (Path(image_root) / im["file_name"]).is_file()}
        gt["images"] = [im for im in gt["images"] if im["id"] in keep]
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(gt))
    tmp.replace(path)
    return path
