"""What every keypoint provider is: COCO keypoints (17, COCO order, image coordinates) per instance, the registry
keyed by the names recipes use, and the `annotations` provider (the dataset's own keypoints)."""
from __future__ import annotations

from abc import ABC, abstractmethod
import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from avanon.registry import Registry
from dataset_adapters.base import ImageRecord


NUM_KEYPOINTS = 17
DEFAULT_THRESHOLD = 0.3
# torchvision.models.detection.KeypointRCNN_ResNet50_FPN_Weights.COCO_V1.url (box AP 55.0, keypoint AP 65.0).
TORCHVISION_KEYPOINT_URL = "https://download.pytorch.org/models/keypointrcnn_resnet50_fpn_coco-fc266e95.pth"
FILE_FORMATS = ("auto", "cityscapes", "bdd100k")
OVERLAP_MODES = ("auto", "shapely", "raster")
CONFIDENCE_MODES = ("local_softmax", "softmax", "logit")
BACKENDS = ("torchvision", "mmpose")
_MAX_WARNINGS = 200


class KeypointConfigError(ValueError):
    """A keypoint provider configuration that cannot be used (unknown key, missing file or weights...)."""


# ----------------------------------------------------------------------------------------------------- base
class KeypointProvider(ABC):
    """Keypoints for the instances of one image. Built once per run; `stats` and `warnings` accumulate."""

    name: ClassVar[str] = ""
    needs_image: ClassVar[bool] = False
    keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Optional[dict], dataset_root: Optional[str | Path], *, split: Optional[str] = None,
                 target_categories: Optional[Sequence[str]] = None):
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.keys) - {"threshold", "strict"})
        if unknown:
            known = ", ".join(sorted(set(self.keys) | {"threshold", "strict"}))
            raise KeypointConfigError(f"keypoints.{self.name}: unknown parameter(s) {', '.join(unknown)}; "
                                      f"known: {known}")
        self.params = params
        self.dataset_root = Path(dataset_root) if dataset_root is not None else None
        self.split = split
        self.target_categories = tuple(target_categories) if target_categories else None
        self.threshold = _number(self.name, "threshold", params.get("threshold", DEFAULT_THRESHOLD))
        self.strict = _flag(self.name, "strict", params.get("strict", False))
        self.stats: Counter = Counter()
        self.warnings: list[str] = []

    # -- interface
    @abstractmethod
    def keypoints(self, record: ImageRecord, image: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
        """{instance_id: (17, 3) float32 [x, y, confidence]} for the instances this provider found."""

    def apply(self, record: ImageRecord, image: Optional[np.ndarray] = None) -> ImageRecord:
        """A record whose instances carry the provider's keypoints where found (v = 2 if confidence passes the
        threshold, else 0); other instances are kept as they are. The input record is not modified (its
        `problems` list is shared, so problems found later on either record are seen on both)."""
        found = self.keypoints(record, image)
        if not found:
            return record
        instances = []
        for inst in record.instances:
            kp = found.get(inst.instance_id)
            if kp is not None:
                inst = dataclasses.replace(inst, keypoints=self.visibility(kp))
            instances.append(inst)
        return dataclasses.replace(record, instances=instances)

    def visibility(self, kp: np.ndarray) -> np.ndarray:
        """(17, 3) [x, y, confidence] -> [x, y, v] with v = 2 where the confidence passes the threshold, else 0."""
        out = np.array(kp, dtype=np.float32).reshape(NUM_KEYPOINTS, 3)
        conf = out[:, 2]
        visible = conf > self.threshold if self.strict else conf >= self.threshold
        out[:, 2] = np.where(visible, 2.0, 0.0)
        return out

    def describe(self) -> dict:
        return {"provider": self.name, "threshold": self.threshold, "strict": self.strict}

    # -- helpers
    def warn(self, message: str) -> None:
        self.stats["warnings"] += 1
        if len(self.warnings) < _MAX_WARNINGS:
            self.warnings.append(message)

    def _count(self, found: dict[str, np.ndarray]) -> None:
        self.stats["images"] += 1
        self.stats["instances"] += len(found)
        self.stats["instances_with_visible_keypoints"] += sum(
            int(self.visibility(kp)[:, 2].any()) for kp in found.values())


KEYPOINT_PROVIDERS: Registry[type[KeypointProvider]] = Registry("keypoint provider")


def build_keypoint_provider(name: str, params: Optional[dict], dataset_root: Optional[str | Path], *,
                            split: Optional[str] = None,
                            target_categories: Optional[Sequence[str]] = None) -> KeypointProvider:
    """The provider `name` ("annotations", "file", "estimator") with its parameters. `split` lets the file provider
    load `annotated_keypoints_{split}.json` up front (else on first use); `target_categories` limits the estimator
    to those categories (default: every non-crowd instance)."""
    try:
        cls = KEYPOINT_PROVIDERS.get(name)
    except KeyError as exc:
        raise KeypointConfigError(str(exc.args[0])) from None
    return cls(params, dataset_root, split=split, target_categories=target_categories)


def _number(provider: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise KeypointConfigError(f"keypoints.{provider}.{key}: expected a number, got {value!r}")
    return float(value)


def _flag(provider: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise KeypointConfigError(f"keypoints.{provider}.{key}: expected true or false, got {value!r}")
    return value


def _choice(provider: str, key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise KeypointConfigError(f"keypoints.{provider}.{key}: unknown value {value!r}; known: {', '.join(choices)}")
    return value


# ---------------------------------------------------------------------------------------------- annotations
@KEYPOINT_PROVIDERS.register("annotations")
class AnnotationKeypointProvider(KeypointProvider):
    """The dataset's own keypoints (COCO): nothing to add."""

    name = "annotations"

    def keypoints(self, record, image=None):
        return {inst.instance_id: np.array(inst.keypoints, dtype=np.float32)
                for inst in record.instances if inst.keypoints is not None}

    def apply(self, record, image=None):
        return record


