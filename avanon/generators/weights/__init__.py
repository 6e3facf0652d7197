"""Pretrained checkpoints: the registry and offline-first lookup, verified downloads, imports from a directory, the
multi-modal truncation centres, and the ``avanon weights`` command."""
from avanon.generators.weights.download import fetch
from avanon.generators.weights.importing import ImportReport, import_dir
from avanon.generators.weights.registry import (
    LOKE, RANDOM_WEIGHTS, REGISTRY, WeightEntry, WeightStatus, WeightsError, cache_dir, cache_dirs, centers_path,
    get_entry, md5sum, resolve, status, torch_hub_checkpoints, verify,
)

__all__ = [
    "LOKE", "RANDOM_WEIGHTS", "REGISTRY", "ImportReport", "WeightEntry", "WeightStatus", "WeightsError", "cache_dir",
    "cache_dirs", "centers_path", "fetch", "get_entry", "import_dir", "md5sum", "resolve", "status",
    "torch_hub_checkpoints", "verify",
]
