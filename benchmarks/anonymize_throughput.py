"""Anonymization throughput against the codec floor, measured in the same run.

For Cityscapes-sized PNGs (2048x1024) and COCO-sized JPEGs (640x480) written by the synthetic generator:
  codec floor  decode + encode + atomic write of every image, nothing else (what any mirror must pay);
  avanon       the real per-image path (sha256, region selection, anonymization on crops, encode, write);
  naive        a whole-image implementation (blur the whole image, composite with a full-size mask);
  scaling      write_mirror with 1 and 2 workers (this machine has 2 cores).
Prints images/s and ratios. Goal: avanon <= 1.3x the codec floor on one worker, near-linear scaling.

    python benchmarks/anonymize_throughput.py [--images 12] [--coco-images 40] [--workdir /tmp/avanon-bench]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from dataset_adapters import build_adapter
from dataset_adapters.synthetic import generate
from avanon.anonymizers import build_anonymizer
from avanon.mirror.imageio import atomic_write_bytes, encode_image, read_image
from avanon.mirror.plan import MirrorJob
from avanon.mirror.writer import _limit_threads, process_image, write_mirror
from avanon.regions import build_region_selector

METHODS = {"blur": {}, "mask_out": {}}


def codec_floor(adapter, records, out: Path) -> float:
    t = time.perf_counter()
    for r in records:
        img = read_image(adapter.root / r.file_name, (r.width, r.height))
        atomic_write_bytes(out / r.file_name, encode_image(img.pixels, img))
    return time.perf_counter() - t


def avanon_path(adapter, records, job: MirrorJob) -> float:
    t = time.perf_counter()
    for r in records:
        line = process_image(job, r)
        assert line["status"] in ("anonymized", "copied"), line
    return time.perf_counter() - t


def naive(adapter, records, selector, method: str, out: Path) -> float:
    """Whole-image arithmetic: full-resolution float image, full-size mask, whole-image blur."""
    t = time.perf_counter()
    for r in records:
        img = read_image(adapter.root / r.file_name, (r.width, r.height))
        sel = selector.select(r, img.pixels)
        mask = np.zeros(img.pixels.shape[:2], np.float32)
        for reg in sel.regions:
            x0, y0, x1, y1 = reg.clip_box
            mask[y0:y1, x0:x1] = np.maximum(mask[y0:y1, x0:x1], reg.image_mask)
        f = img.pixels.astype(np.float32)
        other = cv2.GaussianBlur(f, (21, 21), 7) if method == "blur" else np.full_like(f, 127.0)
        res = f * (1 - mask[..., None]) + other * mask[..., None]
        pixels = np.clip(np.rint(res), 0, 255).astype(np.uint8)
        atomic_write_bytes(out / r.file_name, encode_image(pixels, img))
    return time.perf_counter() - t


def bench_format(fmt: str, n: int, size, workdir: Path, region: str) -> None:
    root = workdir / f"{fmt}_{size[1]}x{size[0]}"
    generate(root, fmt, splits={"train": n, "val": 0}, seed=0, image_size=size)
    adapter = build_adapter(fmt, root, "train")
    records = list(adapter.images())
    persons = sum(1 for r in records for i in r.instances if i.category in adapter.target_categories)
    params = {"min_size": 8} if region == "body" else {"provider": "keypoints"} if fmt == "coco" else {
        "provider": "file", "file": "face_boxes_train.json", "file_format": fmt}
    selector = build_region_selector(region, params, {}, root, adapter.target_categories)
    _limit_threads()
    print(f"\n{fmt}: {n} images {size[1]}x{size[0]}, {persons} persons, region={region}")
    floor = min(codec_floor(adapter, records, workdir / "floor") for _ in range(2))
    print(f"  codec floor          {n / floor:7.2f} img/s  (1.00x)")
    for method in METHODS:
        job = MirrorJob(str(root), str(workdir / f"out_{fmt}_{method}"), region, params,
                        {}, tuple(adapter.target_categories), method, build_anonymizer(method, {}).params, 0)
        ours = min(avanon_path(adapter, records, job) for _ in range(2))
        nv = min(naive(adapter, records, selector, method, workdir / "naive") for _ in range(2))
        print(f"  {method:9s} avanon   {n / ours:7.2f} img/s  ({ours / floor:.2f}x codec floor)")
        print(f"  {method:9s} naive    {n / nv:7.2f} img/s  ({nv / floor:.2f}x codec floor; avanon is {nv / ours:.2f}x faster)")
    job = MirrorJob(str(root), "", region, params, {},
                    tuple(adapter.target_categories), "blur", build_anonymizer("blur", {}).params, 0)
    times = {}
    for workers in (1, 2):
        out = workdir / f"scale_{fmt}_{workers}"
        shutil.rmtree(out, ignore_errors=True)
        j = MirrorJob(**{**job.__dict__, "out_dir": str(out)})
        t = time.perf_counter()
        write_mirror(adapter, j, workers=workers, progress=False)
        times[workers] = time.perf_counter() - t
    print(f"  blur mirror, 1 worker {n / times[1]:7.2f} img/s, 2 workers {n / times[2]:7.2f} img/s "
          f"(speed-up {times[1] / times[2]:.2f}x on 2 cores)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12, help="Cityscapes-sized PNGs")
    ap.add_argument("--coco-images", type=int, default=40, help="COCO-sized JPEGs")
    ap.add_argument("--region", default="body", choices=["body", "face"])
    ap.add_argument("--workdir", help="keep data here (default: a temp dir, removed)")
    args = ap.parse_args()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="avanon-bench-"))
    try:
        bench_format("cityscapes", args.images, (1024, 2048), workdir, args.region)
        bench_format("coco", args.coco_images, (480, 640), workdir, args.region)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
