"""Training throughput of the torchvision trainer on CPU: images/s per iteration for ResNet-18 and ResNet-50 FPN
Mask R-CNN at the demo size (short side 128, batch 2, the demo's reduced head widths), and the ratio R-50 / R-18.

    python benchmarks/train_throughput.py                       # demo config, R-18 and R-50
    python benchmarks/train_throughput.py --amp bf16 --threads 1
    python benchmarks/train_throughput.py --standard --min-size 256 --max-size 512   # torchvision's widths

Real synthetic street scenes go through the real DetectionDataset (so the number of positive ROIs, which drives
the mask head's cost, is realistic). Each depth runs `--warmup` untimed iterations, then `--iters` timed ones.
Besides wall time it reports the process CPU time per iteration (user + system of all threads): on a machine shared
with other jobs, wall time is inflated by contention, CPU time much less so (and with 2 threads on 2 busy cores
OpenMP's spin-waiting makes wall time useless: measure with --threads 1 there).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The demo model (recipes/demo.yaml, train.model); --set key=value overrides the model options.
DEMO_MODEL = {"fpn_channels": 64, "representation_size": 256, "mask_head_channels": 128, "mask_head_layers": 2,
              "rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 500, "rpn_pre_nms_top_n_test": 500,
              "rpn_post_nms_top_n_test": 300, "box_batch_size_per_image": 128}


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench(depth: int, dataset, args, options: dict) -> dict:
    import torch

    from avanon.study.training.data import collate
    from avanon.study.training.engine import InfiniteSampler
    from avanon.study.training.models import build_model

    torch.manual_seed(0)
    model = build_model("instance_segmentation", depth, len(dataset.thing_classes), None, args.min_size,
                        args.max_size, **options)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9,
                          weight_decay=1e-4)
    it = iter(InfiniteSampler(len(dataset), seed=0))
    wall, cpu = [], []
    for i in range(args.warmup + args.iters):
        images, targets = collate([dataset[next(it)] for _ in range(args.batch)])
        t0, c0 = time.perf_counter(), _cpu_seconds()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            losses = model(list(images), list(targets))
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= args.warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(_cpu_seconds() - c0)
    s_it = sum(wall) / len(wall)
    return {"depth": depth, "s_per_iter": round(s_it, 3), "img_per_s": round(args.batch / s_it, 3),
            "cpu_s_per_iter": round(sum(cpu) / len(cpu), 3), "min_s_per_iter": round(min(wall), 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, nargs="+", default=[18, 50])
    p.add_argument("--min-size", type=int, nargs="+", default=[128])
    p.add_argument("--max-size", type=int, default=256)
    p.add_argument("--amp", choices=["none", "bf16"], default="none", help="bf16 autocast (CPU)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--standard", action="store_true", help="torchvision's standard widths instead of the demo's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model option override")
    p.add_argument("--data", help="a synthetic Cityscapes-format root (default: generated in a temp dir)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    import torch
    import yaml

    if args.threads:
        torch.set_num_threads(args.threads)
    from dataset_adapters import build_adapter
    from dataset_adapters.synthetic import generate
    from avanon.study.training.data import DetectionDataset

    options = {} if args.standard else dict(DEMO_MODEL)
    for item in args.set:
        k, v = item.split("=", 1)
        options[k] = yaml.safe_load(v)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else generate(Path(tmp) / "synthetic", "cityscapes",
                                                          {"train": 16, "val": 0}, seed=0)
        dataset = DetectionDataset(build_adapter("cityscapes", root, "train", categories="all"), train=True)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}; batch {args.batch}, min_size {args.min_size}, max_size {args.max_size}, "
              f"amp {args.amp}, model options {options}")
        results = []
        for depth in args.depth:
            r = bench(depth, dataset, args, options)
            results.append(r)
            print(f"R-{depth}: {r['s_per_iter']:.3f} s/iteration ({r['min_s_per_iter']:.3f} best), "
                  f"{r['img_per_s']:.2f} images/s, {r['cpu_s_per_iter']:.2f} CPU-s/iteration")
    by = {r["depth"]: r for r in results}
    if 18 in by and 50 in by:
        ratio = by[50]["s_per_iter"] / by[18]["s_per_iter"]
        print(f"R-50 / R-18 time per iteration: {ratio:.2f}x "
              f"(CPU time: {by[50]['cpu_s_per_iter'] / by[18]['cpu_s_per_iter']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "options": options, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
