"""Realistic anonymizer: sequential batch-1 (the reference) vs batched waves of non-overlapping instances.

For each generator (face_fdf128, body_triagan288, body_nocse288) a synthetic Cityscapes-sized image (1024x2048)
gets N instances laid out in a grid (most disjoint, a few overlapping, so there are several waves). The same
anonymizer settings run with ``batch: false`` (every instance alone, in paste order) and ``batch: true`` (waves,
at most --max-batch per forward); both are timed after a warm-up, and the outputs compared (bit-identical on CPU
by construction; on CUDA the number of differing pixels is printed). Prints per-instance time per generator and
the speed-up ratio. CPU always; CUDA too when available (or --devices).

    python benchmarks/realistic_batching.py                      # random weights, CPU (+ CUDA if present)
    python benchmarks/realistic_batching.py --cpu-instances 4 --gpu-instances 32 --histogram hmlo --hmlo-steps 5
    python benchmarks/realistic_batching.py --weights cache      # the real checkpoints from the weights cache
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from avanon.anonymizers import build_anonymizer
from avanon.anonymizers.realistic import plan_waves
from avanon.regions.body import BodyParams, body_region
from avanon.regions.face import FaceBox, face_region
from avanon.regions.filters import Candidate
from dataset_adapters.base import Instance

SHAPE = (1024, 2048)
GENERATORS = ("face_fdf128", "body_triagan288", "body_nocse288")


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1)
    return np.clip(base + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)


def grid(n: int, step: tuple[int, int], origin=(40, 40)) -> list[tuple[int, int]]:
    """n grid positions; every 5th one is pushed onto its predecessor so that some instances overlap."""
    cols = max(1, (SHAPE[1] - 2 * origin[0]) // step[0])
    out = []
    for i in range(n):
        r, c = divmod(i, cols)
        x, y = origin[0] + c * step[0], origin[1] + r * step[1]
        if i % 5 == 4 and out:
            x, y = out[-1][0] + step[0] // 3, out[-1][1] + step[1] // 6
        out.append((x, y))
    return out


def body_regions(n: int, keypoints: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    regions = []
    for i, (x, y) in enumerate(grid(n, (220, 300))):
        rx, ry = int(rng.integers(30, 45)), int(rng.integers(90, 120))
        cx, cy = x + 60, y + 130
        x0, y0 = max(cx - rx, 0), max(cy - ry, 0)
        x1, y1 = min(cx + rx + 1, SHAPE[1]), min(cy + ry + 1, SHAPE[0])
        yy, xx = np.mgrid[y0:y1, x0:x1]
        mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        inst = Instance(f"p{i}", "person", (x0, y0, x1, y1), mask)
        if keypoints:
            kp = np.zeros((17, 3), np.float32)
            kp[:, 0] = cx + rng.uniform(-0.7, 0.7, 17) * rx
            kp[:, 1] = np.linspace(cy - 0.8 * ry, cy + 0.8 * ry, 17)
            kp[:, 2] = 2
            inst.keypoints = kp
        regions.append(body_region(Candidate(inst, inst.box, inst.mask), SHAPE, BodyParams()))
    return sorted([r for r in regions if r is not None], key=lambda r: r.area)


def face_regions(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    regions = []
    for i, (x, y) in enumerate(grid(n, (160, 160))):
        s = int(rng.integers(28, 70))
        regions.append(face_region(FaceBox((x + 20, y + 20, x + 20 + s, y + 20 + int(s * 1.2))), f"f{i}", SHAPE))
    return sorted(regions, key=lambda r: r.area)


def timed(anonymizer, image, regions, seed: int, repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = anonymizer.anonymize(image, regions, seed)  # returns numpy: synchronised
        best = min(best, time.perf_counter() - t)
    return best, out


def run(device: str, generator: str, n: int, args) -> dict:
    image = textured(*SHAPE, seed=1)
    regions = face_regions(n) if generator.startswith("face") else body_regions(n, generator == "body_triagan288")
    weights = "random" if args.weights == "random" else None
    params = {"weights": weights, "device": device, "region_model": generator, "histogram": args.histogram,
              "truncation": "none"}
    if args.histogram == "hmlo":
        params.update(hmlo_steps=args.hmlo_steps, hmlo_threshold=0.0)  # fixed work per instance
    seq = build_anonymizer("realistic", {**params, "batch": False})
    bat = build_anonymizer("realistic", {**params, "batch": args.max_batch})
    # warm-up (generator build/load, allocator, kernels for each batch size used)
    bat.anonymize(image, regions, 0)
    seq.anonymize(image, regions[:1], 0)
    t_seq, out_seq = timed(seq, image, regions, 7, args.repeats)
    t_bat, out_bat = timed(bat, image, regions, 7, args.repeats)
    waves = plan_waves([r.clip_box for r in regions])
    diff = int((out_seq != out_bat).any(-1).sum())
    return {"device": device, "generator": generator, "instances": len(regions), "waves": len(waves),
            "largest_wave": max(map(len, waves)), "histogram": args.histogram,
            "sequential_s": round(t_seq, 4), "batched_s": round(t_bat, 4),
            "per_instance_sequential_ms": round(1000 * t_seq / len(regions), 1),
            "per_instance_batched_ms": round(1000 * t_bat / len(regions), 1),
            "speedup": round(t_seq / t_bat, 2), "differing_pixels": diff, "rowwise_linears": not args.no_rowwise}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", nargs="*", default=None, help="cpu, cuda (default: cpu, plus cuda if present)")
    ap.add_argument("--generators", nargs="*", default=list(GENERATORS), choices=GENERATORS)
    ap.add_argument("--cpu-instances", type=int, default=6)
    ap.add_argument("--gpu-instances", type=int, default=24)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1, help="timed repetitions (best of)")
    ap.add_argument("--histogram", default="none", choices=("none", "hm", "hmlo"))
    ap.add_argument("--hmlo-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--weights", default="random", choices=("random", "cache"))
    ap.add_argument("--no-rowwise", action="store_true",
                    help="plain batched GEMMs for the style affines (faster on GPU; batched != sequential in bits)")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    if args.no_rowwise:
        import avanon.anonymizers.generator_cache as generator_cache

        generator_cache.ROWWISE_LINEARS = False
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows = []
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}"
          + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    print(f"{'device':6} {'generator':16} {'n':>3} {'waves':>5} {'seq s':>8} {'batch s':>8} {'seq ms/inst':>11} "
          f"{'bat ms/inst':>11} {'speed-up':>8} {'diff px':>7}")
    for device in devices:
        n = args.cpu_instances if device == "cpu" else args.gpu_instances
        for gen in args.generators:
            r = run(device, gen, n, args)
            rows.append(r)
            print(f"{r['device']:6} {r['generator']:16} {r['instances']:>3} {r['waves']:>5} {r['sequential_s']:>8.3f} "
                  f"{r['batched_s']:>8.3f} {r['per_instance_sequential_ms']:>11.1f} "
                  f"{r['per_instance_batched_ms']:>11.1f} {r['speedup']:>7.2f}x {r['differing_pixels']:>7}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
