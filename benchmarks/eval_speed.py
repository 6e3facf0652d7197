"""COCO-style evaluation speed: pycocotools vs faster-coco-eval vs avanon's wrapper, on the same predictions.

Data: a synthetic validation split (generated once under --workdir), ground truth from `ground_truth_coco`,
predictions = the ground truth jittered (shifted 0..3 px, random scores, every 5th dropped) plus low-scored false
positives up to --dets detections per image (Mask R-CNN keeps up to 100), with masks.

Timed over --repeats interleaved rounds (min and median), bbox + segm together:
  pycocotools raw   COCO index + loadRes + COCOeval evaluate/accumulate/summarize, nothing else;
  faster raw        the same with faster-coco-eval's COCO / COCOeval_faster (if installed);
  avanon[backend]   evaluate_coco(gt, predictions, backend=...): input checks, copies, per-class AP;
and, once, ground_truth_coco (per split) and optionally (--cityscapes) the official Cityscapes evaluation.
Numbers must agree between all rows (checked). Prints seconds and ratios.

    python benchmarks/eval_speed.py [--format cityscapes] [--images 40] [--size 512 1024] [--dets 100]
                                    [--repeats 5] [--cityscapes] [--workdir /tmp/avanon-eval-bench]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import time
from pathlib import Path

import numpy as np

from dataset_adapters import build_adapter
from dataset_adapters.synthetic import generate
from avanon.study.evaluation import (
    decode_mask, encode_mask, evaluate_cityscapes, evaluate_coco, faster_available, ground_truth_coco,
    results_from_ground_truth,
)


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0),
                                                                     max(-dx, 0):w - max(dx, 0)]
    return out


def make_predictions(gt: dict, dets_per_image: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    images = {im["id"]: im for im in gt["images"]}
    perfect = results_from_ground_truth(gt)
    out, per_image = [], {}
    for i, p in enumerate(perfect):
        if i % 5 == 4:
            continue
        dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
        x, y, w, h = p["bbox"]
        mask = _shift(decode_mask(p["segmentation"]), dx, dy)
        out.append(dict(p, score=float(rng.uniform(0.3, 1.0)), bbox=[x + dx, y + dy, w, h],
                        segmentation=encode_mask(mask)))
        per_image[p["image_id"]] = per_image.get(p["image_id"], 0) + 1
    n_classes = len(gt["categories"])
    for image_id, im in images.items():
        for _ in range(max(0, dets_per_image - per_image.get(image_id, 0))):  # low-scored false positives
            w, h = (float(v) for v in rng.uniform(8, 120, 2))
            x, y = float(rng.uniform(0, im["width"] - w)), float(rng.uniform(0, im["height"] - h))
            mask = np.zeros((im["height"], im["width"]), bool)
            mask[int(y):int(y + h), int(x):int(x + w)] = True
            out.append({"image_id": image_id, "category_id": int(rng.integers(1, n_classes + 1)),
                        "score": float(rng.uniform(0.05, 0.5)), "bbox": [x, y, w, h],
                        "segmentation": encode_mask(mask)})
    return out


def raw_eval(backend: str, gt: dict, preds: list[dict]) -> dict:
    """The libraries called directly, with the least copying possible (the fields loadRes / COCOeval write into
    the inputs are rewritten identically on every repeat, so nothing is copied but the segm results' dicts, which
    must lose their box so that the mask area decides small / medium / large)."""
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster":
            from faster_coco_eval import COCO, COCOeval_faster as Eval
            coco_gt = COCO(gt)
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval as Eval
            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
        for iou_type in ("bbox", "segm"):
            dts = preds if iou_type == "bbox" else [{k: v for k, v in p.items() if k != "bbox"} for p in preds]
            e = Eval(coco_gt, coco_gt.loadRes(dts), iou_type)
            e.evaluate()
            e.accumulate()
            e.summarize()
            out[iou_type] = float(e.stats[0]) * 100
    return out


def best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def interleaved(repeats: int, fns: dict) -> dict:
    """{name: (min seconds, median seconds, result)}; the contenders take turns so that load changes on a shared
    machine hit them alike."""
    times = {name: [] for name in fns}
    results = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {name: (min(v), float(np.median(v)), results[name]) for name, v in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--format", default="cityscapes", choices=("cityscapes", "bdd100k", "coco"))
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("HEIGHT", "WIDTH"))
    p.add_argument("--dets", type=int, default=100, help="detections per image (false positives fill up)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cityscapes", action="store_true", help="also time the official Cityscapes evaluation")
    p.add_argument("--workdir", default="/tmp/avanon-eval-bench")
    a = p.parse_args(argv)

    root = Path(a.workdir) / f"{a.format}_{a.images}_{a.size[0]}x{a.size[1]}"
    t = time.perf_counter()
    generate(root, a.format, {"val": a.images}, seed=0, image_size=tuple(a.size))
    print(f"dataset {root} ({a.format}, {a.images} val images {a.size[1]}x{a.size[0]}): {time.perf_counter() - t:.1f} s")
    options = {"annotation": "instances"} if a.format == "coco" else {}
    adapter = build_adapter(a.format, root, "val", categories="all", **options)
    t_gt, gt = best_of(1, lambda: ground_truth_coco(adapter))
    preds = make_predictions(gt, a.dets)
    print(f"ground truth: {len(gt['annotations'])} annotations, ground_truth_coco {t_gt:.2f} s; "
          f"predictions: {len(preds)} ({len(preds) / max(1, len(gt['images'])):.0f}/image)")

    fns = {"pycocotools raw": lambda: raw_eval("pycocotools", gt, preds),
           "avanon[pycocotools]": lambda: evaluate_coco(gt, preds, backend="pycocotools")}
    if faster_available():
        fns["faster raw"] = lambda: raw_eval("faster", gt, preds)
        fns["avanon[faster]"] = lambda: evaluate_coco(gt, preds, backend="faster")
    else:
        print("faster-coco-eval not installed: pip install 'avanon[faster-eval]' to compare it")
    rows = interleaved(a.repeats, fns)

    reference = rows["pycocotools raw"][2]
    for name, (_, _, result) in rows.items():
        for iou_type in ("bbox", "segm"):
            value = result[iou_type]["AP"] if isinstance(result[iou_type], dict) else result[iou_type]
            assert math.isclose(value, reference[iou_type], abs_tol=1e-9), (name, iou_type, value)
    print(f"\nAP bbox {reference['bbox']:.3f}, segm {reference['segm']:.3f} (identical in every row)")
    base = rows["pycocotools raw"][1]
    print(f"\n{'evaluation (bbox + segm)':<24}{'min s':>9}{'median s':>10}{'speed vs pycocotools raw':>26}")
    for name, (low, med, _) in rows.items():
        print(f"{name:<24}{low:>9.3f}{med:>10.3f}{base / med:>25.2f}x")
    print("\nwrapper overhead (avanon - raw, same backend, medians):")
    for backend, raw in (("pycocotools", "pycocotools raw"), ("faster", "faster raw")):
        if raw in rows:
            ours, theirs = rows[f"avanon[{backend}]"][1], rows[raw][1]
            print(f"  {backend:<12} {ours - theirs:+.3f} s ({(ours / theirs - 1) * 100:+.0f} %)")
    if a.cityscapes and a.format == "cityscapes":
        t = time.perf_counter()
        cs = evaluate_cityscapes(root, "val", preds, adapter)
        print(f"\nofficial Cityscapes evaluation: {time.perf_counter() - t:.2f} s "
              f"(AP {cs['AP']:.3f}, AP50 {cs['AP50']:.3f}, AP_person {cs['AP_person']:.3f})")


if __name__ == "__main__":
    main()
