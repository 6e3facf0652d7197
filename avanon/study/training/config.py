"""The config of one training run: defaults (detectron2's Mask R-CNN R50-FPN 1x schedule), resolution against them,
loading from YAML/JSON with overrides, and the files a run directory holds."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

from avanon.study.training import data as tdata

CHECKPOINT = "checkpoint.pth"
MODEL_FINAL = "model_final.pth"
CONFIG = "config.json"
LOG = "log.jsonl"

# Defaults: detectron2's Mask R-CNN R50-FPN 1x COCO schedule (batch 16, lr 0.02, 90k iterations, steps 60k/80k,
# linear warmup 1k from 0.001, weight decay 1e-4, sizes 640..800 / 1333). Recipes override per dataset.
DEFAULT_CONFIG: dict[str, Any] = {
    "task": "instance_segmentation",  # instance_segmentation (Mask R-CNN) | keypoints (Keypoint R-CNN)
    "seed": 0,
    "device": "auto",  # auto (cuda if available) | cpu | cuda
    "threads": None,  # torch CPU threads (null: torch's default); 1 on a CPU shared with other jobs
    "data": {
        "adapter": None,  # required: dataset adapter name (coco, cityscapes, bdd100k, synthetic)
        "root": None,  # required: annotation root (the original dataset; the mirror's annotations are identical)
        "image_root": None,  # where training images are read: the mirror (default: root)
        "options": {},  # adapter options; "categories" defaults to "all"
        "train_split": "train",
        "val_split": "val",  # predictions after training on this split; null: none
        "val_root": None,  # annotations AND images of the validation split: the ORIGINAL dataset (default: root)
        "exclude_classes": [],  # classes removed from training targets ("other classes only": [person])
        "flip_prob": 0.5,
        "exif_frame": "auto",
        "workers": 2,  # DataLoader worker processes per training process
        "eval_workers": None,  # DataLoader workers of the prediction after training (null: min(workers, 2))
        "pin_memory": "auto",  # auto (on with CUDA) | true | false: page-locked batches, asynchronous copies
        "prefetch_factor": 2,  # batches each worker loads ahead (with workers > 0)
        "aspect_ratio_grouping": True,  # landscape and portrait images in separate batches (detectron2's rule)
        "drop_empty": False,  # drop training images without targets (default: keep them)
        "min_keypoints_per_image": 0,  # keypoints task: drop training images with fewer labelled keypoints
    },
    "model": {
        "depth": 50,  # ResNet depth: 18, 34, 50, 101, 152
        "init": None,  # null (scratch) | ImageNet ResNet .pth | torchvision COCO detector .pth (local files)
        "norm": None,  # null: frozen_bn with init, bn from scratch | frozen_bn | bn | sync_bn | gn
        "trainable_backbone_layers": None,  # null: 3 with init, 5 from scratch
        "min_size": [640, 672, 704, 736, 768, 800],  # training short side, one drawn per batch
        "max_size": 1333,
        "test_min_size": 800,  # null: the last min_size
        "options": {},  # more torchvision MaskRCNN/KeypointRCNN arguments (rpn_*, box_*)
    },
    "solver": {
        "optimizer": "sgd",  # sgd (the paper's detectron2 / MMDetection runs) | adamw (short from-scratch runs)
        "batch_size": 16,  # images per iteration, all processes together
        "lr": 0.02,
        "momentum": 0.9,  # sgd only
        "weight_decay": 1e-4,
        "iterations": 90000,
        "steps": [60000, 80000],  # lr *= gamma at these iterations
        "gamma": 0.1,
        "warmup_iterations": 1000,
        "warmup_factor": 0.001,  # linear warmup from lr * warmup_factor
        "clip_grad_norm": None,  # max total grad L2 norm, or null
        "amp": "none",  # none | fp16 (CUDA only, with GradScaler) | bf16 (CUDA or CPU autocast)
        "channels_last": "auto",  # auto (on with CUDA) | true | false: NHWC memory format for the convolutions
    },
    "log_period": 20,
    "checkpoint_period": 5000,
    "test_batch_size": 1,
    "eval_after_train": True,  # predictions_{val_split}.json + metrics.json (avanon.study.evaluation) after training
    "dist_timeout_minutes": 30,  # torch.distributed collectives (init_process_group's timeout), under torchrun
    "eval_timeout_minutes": 1440,  # how long the other processes wait for rank 0's evaluation after predicting
}
# Keys that may differ between a run and its resume (they do not change the result).
RUNTIME_KEYS = {("data", "workers"), ("log_period",), ("checkpoint_period",), ("device",), ("test_batch_size",),
                ("eval_after_train",), ("threads",), ("data", "eval_workers"), ("data", "pin_memory"),
                ("data", "prefetch_factor"), ("solver", "channels_last"), ("dist_timeout_minutes",),
                ("eval_timeout_minutes",)}
# Keys added after runs were written: a saved config.json without one ran with this value (else the default).
LEGACY_VALUES = {("data", "aspect_ratio_grouping"): False}
AMP_MODES = ("none", "fp16", "bf16")


class ConfigError(ValueError):
    """A config that cannot run (unknown key, missing value, resume with another config)."""


# ----------------------------------------------------------------------------------------------------- config


def _merge(defaults: dict, given: dict, where: str) -> dict:
    out = copy.deepcopy(defaults)
    for key, value in (given or {}).items():
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise ConfigError(f"unknown config key {where}{key}; known: {known}")
        if isinstance(defaults[key], dict) and key != "options":
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where}{key} must be a mapping, got {value!r}")
            out[key] = _merge(defaults[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config(config: dict) -> dict:
    """Defaults filled in and checked; the result is what config.json holds."""
    cfg = _merge(DEFAULT_CONFIG, config, "")
    from avanon.study.training.models import TASK_ALIASES

    cfg["task"] = TASK_ALIASES.get(cfg["task"], cfg["task"])
    if cfg["task"] not in tdata.TASKS:
        raise ConfigError(f"task must be one of {tdata.TASKS}, got {cfg['task']!r}")
    for key in ("adapter", "root"):
        if not cfg["data"][key]:
            raise ConfigError(f"config key data.{key} is required")
    for key in ("root", "image_root", "val_root"):
        if cfg["data"][key] is not None:
            cfg["data"][key] = str(cfg["data"][key])
    m, s = cfg["model"], cfg["solver"]
    if m["init"] is not None:
        m["init"] = str(m["init"])
    if isinstance(m["min_size"], int):
        m["min_size"] = [m["min_size"]]
    m["min_size"] = [int(v) for v in m["min_size"]]
    amp = s["amp"]
    s["amp"] = {True: "fp16", False: "none", None: "none"}.get(amp, amp) if isinstance(amp, (bool, type(None))) \
        else amp
    if s["amp"] not in AMP_MODES:
        raise ConfigError(f"solver.amp must be one of {AMP_MODES}, got {amp!r}")
    if s["optimizer"] not in ("sgd", "adamw"):
        raise ConfigError(f"solver.optimizer must be sgd or adamw, got {s['optimizer']!r}")
    s["steps"] = [int(v) for v in s["steps"]]
    if s["steps"] != sorted(s["steps"]):
        raise ConfigError(f"solver.steps must be increasing, got {s['steps']}")
    for key in ("batch_size", "iterations"):
        if int(s[key]) < 1:
            raise ConfigError(f"solver.{key} must be >= 1, got {s[key]}")
    if cfg["log_period"] < 1 or cfg["checkpoint_period"] < 1:
        raise ConfigError("log_period and checkpoint_period must be >= 1")
    if cfg["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg['device']!r}")
    d = cfg["data"]
    for where, node, key in (("solver", s, "channels_last"), ("data", d, "pin_memory")):
        if not isinstance(node[key], bool) and node[key] != "auto":
            raise ConfigError(f"{where}.{key} must be auto, true or false, got {node[key]!r}")
    if not isinstance(d["aspect_ratio_grouping"], bool):
        raise ConfigError(f"data.aspect_ratio_grouping must be true or false, got {d['aspect_ratio_grouping']!r}")
    for key in ("workers", "eval_workers", "prefetch_factor"):
        v = d[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "prefetch_factor"
                                                                                    else 0)):
            raise ConfigError(f"data.{key} must be an integer >= {1 if key == 'prefetch_factor' else 0}, got {v!r}")
    for key in ("dist_timeout_minutes", "eval_timeout_minutes"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], (int, float)) or cfg[key] <= 0:
            raise ConfigError(f"{key} must be a number of minutes > 0, got {cfg[key]!r}")
    return cfg


def resolve_flag(value, cuda: bool) -> bool:
    """An auto | true | false option: auto means on with CUDA."""
    return cuda if value == "auto" else bool(value)


def upgrade_saved_config(saved: dict) -> tuple[dict, list[tuple]]:
    """A run's config.json with the keys it predates filled in (LEGACY_VALUES, else the defaults), and the paths
    of the keys it lacked."""
    missing: list[tuple] = []

    def fill(defaults: dict, node: dict, prefix: tuple) -> dict:
        out = dict(node)
        for key, value in defaults.items():
            path = prefix + (key,)
            if key not in node:
                missing.append(path)
                out[key] = copy.deepcopy(LEGACY_VALUES.get(path, value))
            elif isinstance(value, dict) and key != "options" and isinstance(node[key], dict):
                out[key] = fill(value, node[key], path)
        return out

    return fill(DEFAULT_CONFIG, saved, ()), missing


def config_diff(a: dict, b: dict, prefix: tuple = ()) -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        path = prefix + (key,)
        if path in RUNTIME_KEYS:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict) and key != "options":
            out += config_diff(va, vb, path)
        elif va != vb:
            out.append(f"{'.'.join(path)}: {va!r} -> {vb!r}")
    return out


def load_config_file(path: str | Path, overrides: Optional[list[str]] = None) -> dict:
    """A YAML or JSON config, with `key.sub=value` overrides (values parsed as YAML)."""
    import yaml

    text = Path(path).read_text()
    cfg = yaml.safe_load(text) or {}
    if "train" in cfg and isinstance(cfg["train"], dict) and "data" not in cfg:
        cfg = cfg["train"]  # a recipe with a train: section
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return cfg


