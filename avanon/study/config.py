"""Where a study lives and the engine config of each of its runs, derived from a validated recipe."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

RESULTS = "results.jsonl"
TASKS = ("instance_segmentation", "keypoints")


def study_enabled(recipe: dict) -> bool:
    return recipe.get("study") is not None


def resolved_study(recipe: dict) -> dict:
    """The study section, defaults filled at validation."""
    return recipe["study"]


def study_dir(recipe: dict) -> Path:
    return Path(recipe["output"]["root"]) / recipe["dataset"]["adapter"] / "study" / recipe["name"]


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def run_config(recipe: dict, mirror_dir: Optional[Path], seed: int, out_dir: Path) -> dict:
    """The engine config of one run: the recipe's study.config, the dataset (annotations and validation images
    from the original root, training images from the mirror), and the seed."""
    study = resolved_study(recipe)
    ds = recipe["dataset"]
    root = str(Path(ds["root"]).resolve())
    data = {"adapter": ds["adapter"], "root": root, "image_root": str(mirror_dir.resolve()) if mirror_dir else root,
            "options": dict(ds["options"]), "train_split": ds["split"], "val_split": study["val_split"],
            "val_root": root, "exif_frame": recipe["output"]["exif_frame"]}
    base = {"task": study["task"], "seed": int(seed), "data": data}
    return _deep_merge(base, study["config"]) | {"seed": int(seed), "task": study["task"]}


