"""The Python API: the four things a notebook needs, without building records, selectors or jobs by hand.

    import avanon
    out = avanon.anonymize_image(image, masks=person_masks, region="body", method="blur")
    summary = avanon.anonymize_dataset(dataset="cityscapes", root="/data/cityscapes", region="body",
                                       method="mask_out", out="/data/anon")
    avanon.run("recipes/demo.yaml", study__seeds=[0])
    df = avanon.load_results("out/demo/synthetic/study/demo")

Each function validates its input exactly as the command line does (the same recipe checks, the same fail-closed
mirror writer) and raises the same errors: RecipeError, DatasetError, MirrorError, ValueError.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

import numpy as np

if TYPE_CHECKING:  # pandas is imported only when results are loaded
    import pandas as pd

PathLike = Union[str, Path]
REGIONS = ("body", "face")


def _instances(masks, keypoints, height: int, width: int):
    from dataset_adapters.base import Instance

    masks = [] if masks is None else list(masks)
    kps = [None] * len(masks) if keypoints is None else [np.asarray(k, dtype=np.float32) for k in keypoints]
    if len(kps) != len(masks):
        raise ValueError(f"got {len(masks)} masks but {len(kps)} keypoint arrays; give one (17, 3) array per mask")
    out = []
    for i, (mask, kp) in enumerate(zip(masks, kps)):
        mask = np.asarray(mask)
        if mask.shape != (height, width) or mask.dtype not in (np.bool_, np.uint8):
            raise ValueError(f"masks[{i}] must be a bool or 0/1 uint8 array of the image's size {height}x{width}, "
                             f"got {mask.dtype} {mask.shape}")
        if kp is not None and kp.shape != (17, 3):
            raise ValueError(f"keypoints[{i}] must be (17, 3) [x, y, visibility] in COCO order, got {kp.shape}")
        out.append(Instance.from_full_mask(mask.astype(bool), instance_id=str(i), category="person", keypoints=kp))
    return out


def _face_regions(boxes, height: int, width: int):
    from avanon.regions.face import FaceBox, clip_face_box, face_region

    regions = []
    for i, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        clipped = clip_face_box(tuple(box), height, width)
        if clipped is None:
            raise ValueError(f"boxes[{i}] {tuple(box)} is not a box (x0, y0, x1, y1) inside the image")
        regions.append(face_region(FaceBox(clipped), str(i), (height, width)))
    return sorted(regions, key=lambda r: r.area)


def anonymize_image(image: np.ndarray, *, masks: Optional[Sequence[np.ndarray]] = None,
                    boxes: Optional[Sequence[Sequence[float]]] = None,
                    keypoints: Optional[Sequence[np.ndarray]] = None, region: str = "body", method: str = "blur",
                    seed: int = 0, region_params: Optional[Mapping[str, Any]] = None, **params: Any) -> np.ndarray:
    """An anonymized copy of one RGB uint8 image (H, W, 3).

    region="body": `masks` are the people's masks (bool, H x W), one per person; `keypoints` optionally one
    (17, 3) COCO array per mask (the realistic body generator uses them). region="face": either `boxes`, the face
    boxes (x0, y0, x1, y1) themselves, or `masks` with `keypoints` (a head box is derived from each person's nose,
    eyes and ears), or neither (the MTCNN detector finds the faces; optional install). `region_params` are the
    recipe's `regions.<region>` keys (e.g. min_size, dilation); `**params` the method's (e.g. kernel, fill).
    """
    from avanon.anonymizers import build_anonymizer
    from avanon.regions import build_region_selector
    from dataset_adapters.base import ImageRecord

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an RGB uint8 array (H, W, 3), got {image.dtype} {image.shape}")
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    height, width = image.shape[:2]
    anonymizer = build_anonymizer(method, params)
    if region == "face" and boxes is not None:
        if masks is not None or keypoints is not None:
            raise ValueError("give face boxes, or person masks with keypoints, not both")
        return anonymizer.anonymize(image, _face_regions(boxes, height, width), seed)
    if boxes is not None:
        raise ValueError("boxes are face boxes (region='face'); body regions come from the people's masks")
    record = ImageRecord(image_id="image", file_name="image", width=width, height=height,
                         instances=_instances(masks, keypoints, height, width))
    rparams = dict(region_params or {})
    if region == "face":
        rparams.setdefault("provider", "keypoints" if keypoints is not None else "detector")
    selector = build_region_selector(region, rparams, {"skip_crowd": False, "skip_ignore": False}, None, ("person",))
    selection = selector.select(record, image)
    if record.problems:
        raise ValueError("; ".join(record.problems))
    return anonymizer.anonymize(image, selection.regions, seed)


def anonymize_dataset(*, dataset: str, root: PathLike, region: str, method: str, out: PathLike,
                      split: str = "train", params: Optional[Mapping[str, Any]] = None,
                      options: Optional[Mapping[str, Any]] = None,
                      region_params: Optional[Mapping[str, Any]] = None,
                      filters: Optional[Mapping[str, Any]] = None, name: Optional[str] = None, seed: int = 0,
                      workers: int = 1, link: str = "copy", progress: bool = False) -> dict:
    """Write one anonymized mirror of a dataset split to OUT/DATASET/NAME (as `avanon anonymize`) and return its
    summary (images anonymized / copied / failed, skip reasons, the mirror's path). Failed images are never in the
    mirror; check summary["failed"]."""
    from avanon.pipeline import write_mirrors
    from avanon.recipe import validate

    raw = {
        "name": f"anonymize-{dataset}-{region}-{method}", "seed": seed, "workers": workers,
        "dataset": {"adapter": dataset, "root": str(root), "split": split, "options": dict(options or {})},
        "regions": {region: dict(region_params or {})}, "filters": dict(filters or {}),
        "anonymize": [{"region": region, "method": method, "params": dict(params or {}),
                       **({"name": name} if name else {})}],
        "output": {"root": str(out), "link": link},
    }
    (_, _, summary), = write_mirrors(validate(raw, "anonymize_dataset"), progress=progress)
    return summary.to_dict()


def run(recipe: Union[PathLike, Mapping[str, Any]], *, only: Optional[Sequence[str]] = None,
        workers: Optional[int] = None, dry_run: bool = False, anonymize_only: bool = False,
        test_only: bool = False, progress: bool = False, **overrides: Any) -> int:
    """`avanon run`: every mirror of a recipe (a YAML path or a mapping), then its study. Overrides name nested keys
    with double underscores: run("recipes/demo.yaml", study__seeds=[0], output__root="/tmp/x"). Returns the exit
    code the command line would give (0 done, 1 failed images)."""
    from avanon.pipeline import run_recipe
    from avanon.recipe import load_recipe, validate

    sets = [f"{key.replace('__', '.')}={_yaml(value)}" for key, value in overrides.items()]
    if isinstance(recipe, Mapping):
        from avanon.recipe import apply_overrides

        resolved = validate(apply_overrides(dict(recipe), sets, "recipe"), "recipe")
    else:
        resolved = load_recipe(recipe, sets)
    return run_recipe(resolved, workers=workers, dry_run=dry_run, only=list(only) if only else None,
                      progress=progress, test_only=test_only, anonymize_only=anonymize_only)


def _yaml(value: Any) -> str:
    import json

    return json.dumps(value)  # JSON is YAML: the override parser reads it back exactly


def load_results(study_dir: PathLike) -> "pd.DataFrame":
    """The results of a study (STUDY_DIR/results.jsonl, or the file itself) as a DataFrame: one row per (run,
    seed), the metrics as columns, checked as `avanon report` checks them."""
    from avanon.study.report import load_results as _load

    return _load(study_dir)
