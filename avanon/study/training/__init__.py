"""Training on mirrored datasets: torchvision Mask R-CNN / Keypoint R-CNN (and an optional MMDetection backend).

`train(config, out_dir)` runs one training (see engine.py for the config keys and the output directory), `predict`
writes COCO results, `build_model` builds the detector, `DetectionDataset` reads a dataset through its adapter with
the images from another root (the mirror). Heavy imports (torch, torchvision) happen on first use.
"""
from __future__ import annotations

__all__ = ["train", "predict", "build_model", "DetectionDataset", "TRAINERS", "resolve_config", "DEFAULT_CONFIG"]


def __getattr__(name):
    if name in ("train", "predict", "resolve_config", "DEFAULT_CONFIG"):
        from avanon.study.training import engine

        return getattr(engine, name)
    if name == "build_model":
        from avanon.study.training.models import build_model

        return build_model
    if name == "DetectionDataset":
        from avanon.study.training.data import DetectionDataset

        return DetectionDataset
    if name == "TRAINERS":
        from avanon.study.training.trainers import TRAINERS

        return TRAINERS
    raise AttributeError(f"module 'avanon.study.training' has no attribute {name!r}")
