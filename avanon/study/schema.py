"""The recipe's `study:` section: its fields and checks (the recipe loader includes them; this module does not
import the loader)."""
from __future__ import annotations

from pathlib import Path

from avanon.schema import Field, RecipeError, is_dict, is_list, is_str, is_type, one_of, validate_section
from avanon.study.config import TASKS, run_config

_STRINGS = {"type": "array", "items": {"type": "string"}}
STUDY_SCHEMA = {
    "trainer": Field(is_str, default="torchvision", doc="training backend: torchvision or mmdet"),
    "task": Field(one_of(*TASKS), default="instance_segmentation", doc="Mask R-CNN or Keypoint R-CNN"),
    "model": Field(is_str, default="mask_rcnn_r50_fpn", doc="the model's name in results and reports"),
    "seeds": Field(is_list, default=[0, 1, 2], doc="one run per seed (distinct integers >= 0)",
                   schema={"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1,
                           "uniqueItems": True}),
    "original": Field(is_type(bool, "true or false"), default=True,
                      doc="also train on the original images"),
    "variant": Field(is_str, default="",
                     doc="label joined to each entry's variant (e.g. other_classes)"),
    "paper_table": Field(lambda v: None if v in (1, 2, 3, 4) else f"must be 1, 2, 3 or 4, got {v!r}", default=None,
                         schema={"enum": [1, 2, 3, 4]}, doc="Paper F table to print beside the results"),
    "metrics": Field(is_list, default=[], schema=_STRINGS,
                     doc="report columns, e.g. [AP, AP50, AP_person]; empty: all"),
    "val_split": Field(is_str, default="val", doc="evaluation split of the original dataset"),
    "depths": Field(is_list, default=[], schema={"type": "array", "items": {"type": "integer"}},
                    doc="ResNet depths, one run per depth (Paper F Fig. 8); empty: the config's"),
    "mirrors": Field(is_list, default=[], schema=_STRINGS, doc="names of the anonymize entries to train on; empty: all"),
    "config": Field(is_dict, default={}, doc="the avanon.study.training.engine config (model, solver, data...), "
                    "merged over its defaults"),
    "keep_checkpoints": Field(is_type(bool, "true or false"), default=False,
                              doc="keep each finished run's resume checkpoint (checkpoint.pth, about 3x the size "
                              "of model_final.pth); false: delete it once the run's result is in results.jsonl"),
}


def validate_study(recipe: dict, src: str) -> None:
    """Fill the study section's defaults and check it (an absent section means: anonymize only)."""
    if recipe.get("study") is None:
        return
    study = recipe["study"] = validate_section(recipe["study"], STUDY_SCHEMA, "study", src)
    seeds = study["seeds"]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise RecipeError(f"{src}: study.seeds: must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise RecipeError(f"{src}: study.seeds: {seeds!r} repeats a seed")
    names = {e["name"] for e in recipe["anonymize"]}
    for m in study["mirrors"]:
        if m not in names:
            raise RecipeError(f"{src}: study.mirrors: {m!r} is not the name of an anonymize entry; have: {', '.join(sorted(names))}")
    from avanon.study.training.trainers import TRAINERS

    if study["trainer"] not in TRAINERS:
        raise RecipeError(f"{src}: study.trainer: unknown trainer {study['trainer']!r}; known: {', '.join(TRAINERS.names())}")
    from avanon.study.training.config import resolve_config

    try:
        resolve_config(run_config(recipe, None, 0, Path("/nonexistent")))
    except Exception as exc:
        raise RecipeError(f"{src}: study.config: {exc}") from None


# The recipe's `study:` entry: absent (None) means anonymize only.
STUDY_FIELD = Field(lambda v: None if isinstance(v, dict) else "must be a mapping", default=None,
                    schema={"type": "object"}, doc="train and evaluate on the mirrors; absent: anonymize only")


