"""Dataset adapters, registered by the names recipes use: coco, cityscapes, bdd100k (and the synthetic generator)."""
from dataset_adapters.base import (  # noqa: F401
    ADAPTERS, COCO_KEYPOINT_NAMES, DatasetAdapter, DatasetError, ImageRecord, Instance, build_adapter,
)
from dataset_adapters import bdd100k, cityscapes, coco, synthetic  # noqa: F401  (registration)
