"""The official Cityscapes instance-level evaluation (cityscapesscripts' evalInstanceLevelSemanticLabeling), run
on our predictions. Paper F Table 1 reports its AP, AP50 and person AP.

What is done, following the script's documented result format (and detectron2's CityscapesInstanceEvaluator):
per ground-truth image `<city>_<seq>_<frame>_gtFine_instanceIds.png` one text file `<city>_<seq>_<frame>_pred.txt`
with a line `masks/<name>.png <labelID> <confidence>` per predicted instance (binary PNG, non-zero = instance;
regular Cityscapes label id, not the train id). The script's own `evaluateImgLists` then does everything:
ground-truth instances (`instances2dict`, groups and instances < 100 px ignored, void overlap ignored), matching,
the PR curves and the averages over the 8 classes that have instances and are not ignoreInEval.

The script keeps its settings in a module-level args object, writes `matches.json` into the current directory,
caches the ground truth in a JSON next to its own source file by default, and calls sys.exit() on errors. We use a
copy of its args with every path under `out_dir`, run it in `out_dir` (under a lock, as the working directory is
process-wide), never reuse a ground-truth cache, and turn its exits into RuntimeError.

numpy: cityscapesscripts 2.3.0 uses `np.in1d` (deprecated in numpy 2.0, removed in 2.4: "module 'numpy' has no
attribute 'in1d'") and json-dumps `matches.json` with `default=lambda o: o.__dict__`, which fails on the numpy
integers that `count_nonzero` returns from numpy 2.3 on ("'numpy.int64' object has no attribute '__dict__'"). While
the script runs (`_numpy_compatible`), its module sees a numpy whose `in1d` is `isin(...).ravel()` (numpy's own
replacement) and its JSON writer turns numpy scalars and arrays into plain Python numbers and lists; numpy itself is
not touched. Any other AttributeError/TypeError from inside the script is re-raised naming both versions.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import shutil
import tempfile
import struct
import threading
import types
import warnings
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from dataset_adapters.base import DatasetAdapter, innermost_adapter, thing_classes_of
from avanon.study.evaluation.results import check_predictions, coco_image_ids, decode_mask

IMAGE_SUFFIX = "_leftImg8bit.png"
GT_SUFFIX = "_gtFine_instanceIds.png"
WORK_DIR = "cityscapes_eval"
_LOCK = threading.Lock()
VERSION_HINT = ("cityscapesscripts' instance-level evaluation failed inside the script; avanon works around its "
                "known numpy >= 2.3 breakages (np.in1d, numpy integers in matches.json), so this may be a new "
                "incompatibility. The tested versions are in constraints.txt: "
                "pip install -c constraints.txt numpy cityscapesscripts")


def _in1d(ar1, ar2, assume_unique=False, invert=False):
    """numpy's documented replacement for the removed `np.in1d`: `np.isin(...).ravel()` (in1d returned a flat array)."""
    return np.isin(ar1, ar2, assume_unique=assume_unique, invert=invert).ravel()


class _NumpyForCityscapesScripts(types.ModuleType):
    """The numpy module as cityscapesscripts 2.3.0 expects it: every attribute is numpy's, plus `in1d`."""

    def __init__(self) -> None:
        super().__init__(np.__name__, np.__doc__)

    def __getattr__(self, name: str) -> Any:
        if name == "in1d":
            return _in1d
        return getattr(np, name)


def _json_default(o: Any) -> Any:
    """The script's `default=lambda o: o.__dict__`, plus numpy scalars and arrays as plain Python values."""
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    return o.__dict__


def _write_json(dict_name: Any, file_name: str) -> None:
    """cityscapesscripts' writeDict2JSON (same layout: sorted keys, indent 4) that can write numpy numbers."""
    with open(file_name, "w") as f:
        f.write(json.dumps(dict_name, default=_json_default, sort_keys=True, indent=4))


@contextlib.contextmanager
def _numpy_compatible(official):
    """While the official script runs, its module's `np` and `writeDict2JSON` are the shims above (module globals of
    the script only; numpy and other modules are unchanged). Callers hold _LOCK."""
    saved = {name: getattr(official, name) for name in ("np", "writeDict2JSON")}
    official.np = _NumpyForCityscapesScripts()
    official.writeDict2JSON = _write_json
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(official, name, value)


@contextlib.contextmanager
def _working_directory(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _official_module():
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as official
    return official


def official_thing_classes() -> tuple[str, ...]:
    """The label names the official script evaluates (its `setInstanceLabels`), in its order."""
    args = type("Args", (), {})()
    _official_module().setInstanceLabels(args)
    return tuple(args.instLabels)


def _records(adapter: DatasetAdapter) -> list:
    inner = innermost_adapter(adapter)
    bare = getattr(inner, "bare_records", None)
    return list(bare() if bare is not None else adapter.images())


def _gt_file(root: Path, file_name: str) -> Path:
    """gtFine instanceIds PNG of `leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`."""
    rel = Path(file_name)
    if rel.parts[0] != "leftImg8bit" or not rel.name.endswith(IMAGE_SUFFIX):
        raise ValueError(f"{file_name} is not a Cityscapes image path (leftImg8bit/<split>/<city>/*{IMAGE_SUFFIX})")
    stem = rel.name[: -len(IMAGE_SUFFIX)]
    return root / "gtFine" / Path(*rel.parts[1:-1]) / f"{stem}{GT_SUFFIX}"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_bilevel_png(path: Path, mask: np.ndarray) -> None:
    """A binary mask as a 1-bit greyscale PNG (the script reads it with `.convert("L") != 0`).

    Written directly (rows packed with np.packbits, filter 0, zlib level 1): about 3x faster than PIL for the
    full-resolution masks of every prediction, which dominate the cost of a Cityscapes evaluation. Only the rows
    of the mask's bounding box are packed (the decoded RLE is column-major, a full copy is slow)."""
    height, width = mask.shape
    rows = np.zeros((height, 1 + (width + 7) // 8), np.uint8)  # first byte of every row: filter type 0
    nonzero = np.flatnonzero(mask.any(axis=1))
    if nonzero.size:
        y0, y1 = int(nonzero[0]), int(nonzero[-1]) + 1
        rows[y0:y1, 1:] = np.packbits(np.ascontiguousarray(mask[y0:y1], dtype=bool), axis=1)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + _png_chunk(b"IEND", b""))
    Path(path).write_bytes(data)


def write_official_results(predictions: Sequence[Mapping], records: Sequence, root: Path, results_dir: Path,
                           thing_classes: Sequence[str]) -> list[tuple[str, str]]:
    """Write the per-image result files; return [(prediction txt, gt png)] (absolute paths) for every image."""
    from cityscapesscripts.helpers.labels import name2label

    ids = coco_image_ids(records)
    by_image: dict[int, list[Mapping]] = defaultdict(list)
    for p in predictions:
        by_image[p["image_id"]].append(p)
    label_ids = {}
    for cid, name in enumerate(thing_classes, start=1):
        if name not in name2label:
            raise ValueError(f"class {name!r} is not a Cityscapes label")
        label_ids[cid] = name2label[name].id
    masks_dir = results_dir / "masks"
    masks_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    for record in records:
        gt = _gt_file(root, record.file_name)
        if not gt.is_file():
            raise FileNotFoundError(f"missing ground truth {gt} for {record.file_name}")
        stem = gt.name[: -len(GT_SUFFIX)]
        lines = []
        preds = by_image.get(ids[record.file_name], [])
        if preds:
            with Image.open(gt) as im:
                width, height = im.size
        for k, p in enumerate(preds):
            mask = decode_mask(p["segmentation"])
            if mask.shape != (height, width):
                raise ValueError(f"prediction for {record.file_name} has a {mask.shape[0]}x{mask.shape[1]} mask, "
                                 f"the image is {height}x{width} (h x w)")
            if not mask.any():
                continue  # the official script skips empty masks too
            name = f"{stem}_{k:04d}.png"
            write_bilevel_png(masks_dir / name, mask)
            lines.append(f"masks/{name} {label_ids[p['category_id']]} {float(p['score']):.9g}\n")
        txt = results_dir / f"{stem}_pred.txt"
        txt.write_text("".join(lines))
        pairs.append((str(txt.resolve()), str(gt.resolve())))
    return pairs


def run_official(pairs: Sequence[tuple[str, str]], work_dir: Path, results_dir: Path) -> dict:
    """Run `evaluateImgLists` of the official script with its args pointed at work_dir; returns its result dict
    (averages, resultApMatrix, instLabels, ...)."""
    official = _official_module()
    args = copy.copy(official.args)
    args.predictionPath = str(results_dir.resolve())
    args.predictionWalk = None
    args.gtInstancesFile = str((work_dir / "gtInstances.json").resolve())
    args.exportFile = str((work_dir / "resultInstanceLevelSemanticLabeling.json").resolve())
    args.JSONOutput = True
    args.quiet = True
    args.csv = False
    args.colorized = False
    args.distanceAvailable = False
    args.instLabels = []
    Path(args.gtInstancesFile).unlink(missing_ok=True)  # never a stale ground-truth cache
    output = io.StringIO()
    with _LOCK, _working_directory(work_dir), contextlib.redirect_stdout(output), _numpy_compatible(official):
        try:
            return official.evaluateImgLists([p for p, _ in pairs], [g for _, g in pairs], args)
        except SystemExit:
            raise RuntimeError(f"cityscapesscripts evaluation stopped: {output.getvalue().strip()[-2000:]}") from None
        except (AttributeError, TypeError) as e:
            raise RuntimeError(f"{VERSION_HINT} (cityscapesscripts {_version('cityscapesscripts')}, numpy "
                               f"{np.__version__}: {type(e).__name__}: {e})") from e


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def evaluate_cityscapes(adapter_root: str | Path, split: str, predictions: Sequence[Mapping],
                        gt_adapter: Optional[DatasetAdapter] = None, out_dir: Optional[str | Path] = None,
                        classes: Optional[Iterable[str]] = None, keep_masks: bool = False) -> dict:
    """Official Cityscapes instance-level AP of `predictions` (COCO result dicts with `segmentation`; image ids
    from `coco_image_ids` of the adapter's records, category ids = 1-based positions in its thing_classes).

    gt_adapter: the adapter whose records define the images and ids (default: a Cityscapes adapter on
    adapter_root/split). out_dir: where `cityscapes_eval/` (result files, gtInstances.json, matches.json, the
    script's result JSON) goes; default a temporary directory, removed afterwards. classes: restrict the averages
    to these class names (mean over the classes' AP, as the script averages). keep_masks: keep the PNG masks.

    Returns percent: {"AP", "AP50", "AP_<class>", "AP50_<class>" for the 8 evaluated classes}; a class without
    ground truth in the split has NaN, and the averages skip it (np.nanmean, as the script does)."""
    root = Path(adapter_root)
    if gt_adapter is None:
        from dataset_adapters.cityscapes import CityscapesAdapter
        gt_adapter = CityscapesAdapter(root, split, categories="all")
    records = _records(gt_adapter)
    if not records:
        raise ValueError(f"evaluate_cityscapes: no images in {root} split {split!r}")
    thing_classes = thing_classes_of(gt_adapter)
    ids = coco_image_ids(records)
    check_predictions(predictions, set(ids.values()), range(1, len(thing_classes) + 1), need=["segmentation"])
    temporary = out_dir is None
    base = Path(tempfile.mkdtemp(prefix="avanon-cseval-")) if temporary else Path(out_dir)
    work = base / WORK_DIR
    results_dir = work / "results"
    try:
        if results_dir.exists():
            shutil.rmtree(results_dir)
        work.mkdir(parents=True, exist_ok=True)
        pairs = write_official_results(predictions, records, root, results_dir, thing_classes)
        result = run_official(pairs, work, results_dir)
        if not keep_masks:
            shutil.rmtree(results_dir / "masks", ignore_errors=True)
        return summarize_official(result, classes)
    finally:
        if temporary:
            shutil.rmtree(base, ignore_errors=True)


def summarize_official(result: Mapping[str, Any], classes: Optional[Iterable[str]] = None) -> dict:
    """The script's result dict -> percent metrics; with `classes`, AP/AP50 averaged over those classes only
    (np.nanmean over classes and overlaps, like the script's computeAverages)."""
    labels = list(result["instLabels"])
    averages = result["averages"]
    out = {"AP": _pct(averages["allAp"]), "AP50": _pct(averages["allAp50%"])}
    if classes is not None:
        classes = list(classes)
        unknown = [c for c in classes if c not in labels]
        if unknown or not classes:
            raise ValueError(f"classes: {unknown or 'empty'}; the official evaluation has {labels}")
        aps = np.asarray(result["resultApMatrix"], dtype=np.float64)[0]  # [class, overlap], distance = inf
        o50 = int(np.flatnonzero(np.isclose(result["overlaps"], 0.5))[0])
        sel = [labels.index(c) for c in classes]
        with np.errstate(invalid="ignore"), _quiet_nan_warnings():
            out = {"AP": _pct(np.nanmean(aps[sel, :])), "AP50": _pct(np.nanmean(aps[sel, o50]))}
    for name in labels:
        out[f"AP_{name}"] = _pct(averages["classes"][name]["ap"])
    for name in labels:
        out[f"AP50_{name}"] = _pct(averages["classes"][name]["ap50%"])
    return out


@contextlib.contextmanager
def _quiet_nan_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _pct(v: Any) -> float:
    v = float(v)
    return math.nan if math.isnan(v) else v * 100.0


def load_official_result(out_dir: str | Path) -> dict:
    """The script's exported JSON of an earlier run in out_dir."""
    return json.loads((Path(out_dir) / WORK_DIR / "resultInstanceLevelSemanticLabeling.json").read_text())
