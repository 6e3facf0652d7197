"""Realistic anonymization, the whole mirror path: images/s of the streaming pipeline against today's per-image
path and the reference's batch-1 sequential path, on synthetic Cityscapes-size and COCO-size datasets.

Three ways to write the same mirror (same settings hash; on CPU the same bytes):

* ``stream``      pipeline=stream: CPU work in worker processes, crops of many images in one forward pass
                  (avanon.mirror.stream), batch auto (16 on CUDA; 1 on CPU, where batches are slower per crop);
* ``per_image``   pipeline=per_image, batch auto: each image in a worker, waves of its own people batched;
* ``batch1``      pipeline=per_image, batch=false: every person alone, as the reference.

Besides images/s the script prints the share of the wall time the device spends in the generator's forward passes
(CUDA events around each pass; on CPU the host time of the passes) and the ratios stream/batch1 and
stream/per_image measured in the same run. Random weights are fine: the cost does not depend on their values.

    python benchmarks/realistic_pipeline.py                         # CPU: small and short
    python benchmarks/realistic_pipeline.py --device cuda --images 64 --workers 8
    python benchmarks/realistic_pipeline.py --device cuda --json $OUT/realistic_pipeline.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from avanon.anonymizers.realistic import RealisticAnonymizer
from avanon.cli import main

SIZES = {"cityscapes": ("cityscapes", [1024, 2048]), "coco": ("coco", [480, 640])}
MODES = {"stream": ["pipeline=stream", "batch=auto"], "per_image": ["pipeline=per_image", "batch=auto"],
         "batch1": ["pipeline=per_image", "batch=false"]}  # batch auto: 16 on CUDA, 1 on CPU (faster there)


class ForwardTimer:
    """Wraps RealisticAnonymizer._forward: the device time of every forward pass (CUDA events) or, on CPU, its
    host time."""

    def __init__(self):
        self.events, self.host = [], 0.0
        self._real = RealisticAnonymizer._forward

    def __enter__(self):
        timer = self

        def timed(anon, model, items):
            if anon._device().type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = timer._real(anon, model, items)
                end.record()
                timer.events.append((start, end))
                return out
            t = time.perf_counter()
            out = timer._real(anon, model, items)
            timer.host += time.perf_counter() - t
            return out

        RealisticAnonymizer._forward = timed
        return self

    def __exit__(self, *exc):
        RealisticAnonymizer._forward = self._real

    def busy_seconds(self) -> float:
        if self.events:
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.events) / 1000 + self.host
        return self.host


def run_mode(root: Path, fmt: str, size, images: int, region: str, mode: str, device: str, workers: int,
             out: Path) -> dict:
    argv = ["anonymize", "--dataset", "synthetic", "--root", str(root), "--option", f"format={fmt}",
            "--option", f"num_train={images}", "--option", "num_val=1", "--option", f"image_size={size}",
            "--region", region, "--method", "realistic", "--param", "weights=random", "--param", f"device={device}",
            "--out", str(out), "--name", mode, "--no-progress", "-q", "--workers", str(workers)]
    for p in MODES[mode]:
        argv += ["--param", p]
    with ForwardTimer() as timer:
        t = time.perf_counter()
        rc = main(argv)
        wall = time.perf_counter() - t
        busy = timer.busy_seconds()
    summary = json.loads((out / "synthetic" / mode / "summary.json").read_text())
    seconds = summary["this_run"]["seconds"]
    return {"mode": mode, "rc": rc, "images": summary["images"], "instances": summary["instances_anonymized"],
            "seconds": seconds, "images_per_s": summary["images"] / seconds, "wall_with_setup": wall,
            # per-image modes with workers run the generator in the workers, where this process cannot time it
            "busy_fraction": (busy / seconds if seconds else 0.0) if (mode == "stream" or workers <= 1) else None}


def main_(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=None, help="images per dataset (default 48 on CUDA, 3 on CPU)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sizes", default="cityscapes,coco")
    ap.add_argument("--regions", default="body", help="body and/or face (face uses the keypoint face boxes)")
    ap.add_argument("--modes", default="stream,per_image,batch1")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    images = args.images or (48 if args.device.startswith("cuda") else 3)
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name(0)})" if args.device.startswith("cuda") else
             f", {torch.get_num_threads()} threads") + f", {images} images per dataset, {args.workers} workers")
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="avanon-pipeline-"))
    try:
        for name in args.sizes.split(","):
            fmt, size = SIZES[name]
            region_list = [r for r in args.regions.split(",") if r]
            for region in region_list:
                if region == "face" and fmt != "coco":
                    continue  # the synthetic keypoints (face boxes from keypoints) are in the COCO format
                root = tmp / f"{name}-data"
                results = {}
                for mode in args.modes.split(","):
                    r = run_mode(root, fmt, size, images, region, mode, args.device, args.workers,
                                 tmp / f"{name}-{region}-{mode}")
                    r.update(dataset=name, region=region, size=size)
                    results[mode] = r
                    rows.append(r)
                    busy = ("n/a (in workers)" if r["busy_fraction"] is None else
                            f"{100 * r['busy_fraction']:5.1f} % of the wall time")
                    print(f"{name:10s} {region:4s} {mode:9s} {r['images']:4d} images {r['instances']:4d} people "
                          f"{r['seconds']:8.2f} s  {r['images_per_s']:7.2f} img/s  generator busy {busy}")
                if "stream" in results:
                    for base in ("batch1", "per_image"):
                        if base in results:
                            ratio = results["stream"]["images_per_s"] / results[base]["images_per_s"]
                            print(f"{'':10s} {region:4s} stream / {base}: {ratio:.2f}x")
                            results["stream"][f"ratio_vs_{base}"] = ratio
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main_()
