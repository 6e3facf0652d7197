"""Training throughput of the torchvision trainer. Default (CPU): images/s per iteration for ResNet-18 and ResNet-50
FPN Mask R-CNN at the demo size (short side 128, batch 2, the demo's reduced head widths), and the ratio R-50 / R-18.
--gpu: images/s per GPU of the standard Mask R-CNN R-50-FPN at Cityscapes-like and COCO-like training scales,
fp32 against AMP (fp16, bf16), channels_last off and on, with the ratios and detectron2's published per-GPU rate.

    python benchmarks/train_throughput.py                       # demo config, R-18 and R-50
    python benchmarks/train_throughput.py --amp bf16 --threads 1
    python benchmarks/train_throughput.py --standard --min-size 256 --max-size 512   # torchvision's widths
    python benchmarks/train_throughput.py --gpu                 # the GPU matrix (a small smoke version on CPU)
    python benchmarks/train_throughput.py --gpu --presets coco --amp-modes none fp16 --iters 50

GPU mode: torchvision's standard widths, random weights (nothing is downloaded), the paper's frozen_bn setting (a
randomly initialised ImageNet-format backbone file is written to a temp dir and loaded as `model.init`, so the model
is built exactly as with ImageNet weights: FrozenBatchNorm, conv1 and layer1 frozen; --norm bn: the from-scratch
setting). The training step is the engine's (autocast, GradScaler for fp16, channels_last via
`set_channels_last`, uint8 images scaled on the GPU); the batches are synthetic street scenes held on the GPU, so
the rate excludes data loading (the trainer overlaps it with DataLoader workers). Each configuration runs
`--warmup` untimed and `--iters` timed iterations; the multi-scale short sides are drawn from the same seed in each.
On a machine without CUDA, --gpu runs the same code at 1/8 of the sizes with the demo's reduced head widths, fp32
only, one thread, 1 + 1 iterations: a smoke test of the code path (about a minute), not a throughput figure.

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


# detectron2's published training speed of the same model (verified against detectron2's MODEL_ZOO.md, table "COCO
# Instance Segmentation Baselines with Mask R-CNN", row mask_rcnn_R_50_FPN_3x: train time 0.261 s/iter; the page
# says all numbers were obtained on servers with 8 NVIDIA V100 GPUs; IMS_PER_BATCH is 16 in its Base-RCNN-FPN config).
D2_S_PER_ITER, D2_IMAGES_PER_ITER, D2_GPUS = 0.261, 16, 8
D2_PER_GPU = D2_IMAGES_PER_ITER / D2_S_PER_ITER / D2_GPUS
D2_REFERENCE = (f"detectron2 reference: MODEL_ZOO.md (detectron2 repository), COCO instance segmentation baselines, "
                f"mask_rcnn_R_50_FPN_3x: train time {D2_S_PER_ITER} s/iter on 8 NVIDIA V100 (fp32), "
                f"{D2_IMAGES_PER_ITER} images/iter (SOLVER.IMS_PER_BATCH of its Base-RCNN-FPN config) = "
                f"{D2_IMAGES_PER_ITER} / {D2_S_PER_ITER} / {D2_GPUS} = {D2_PER_GPU:.2f} images/s per GPU; averaged "
                f"over the whole 3x training, data loading included, COCO short side 640-800, max 1333")
# Training scales of the shipped recipes (cityscapes_body.yaml, coco_body.yaml) and the synthetic image size
# (height, width) with their aspect ratio, which the model's transform resizes to those scales.
PRESETS = {
    "cityscapes": {"min_size": [800, 832, 864, 896, 928, 960, 992, 1024], "max_size": 2048, "image": (256, 512),
                   "label": "Cityscapes-like 2048x1024, short side 800-1024"},
    "coco": {"min_size": [640, 672, 704, 736, 768, 800], "max_size": 1333, "image": (240, 320),
             "label": "COCO-like 640x480 images, short side 640-800, max 1333"},
}


def _random_imagenet_file(tmp: Path) -> Path:
    """A torchvision ResNet-50 state dict with random weights: loading it builds the paper's frozen_bn model."""
    import torch
    from torchvision.models import resnet50

    torch.manual_seed(0)
    path = tmp / "random_resnet50.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    return path


def gpu_step_bench(batches, classes: int, preset: dict, amp: str, channels_last: bool, args, device, init,
                   options: dict):
    """One configuration: s/iteration and images/s of the engine's training step on `device`."""
    import torch

    from avanon.study.training.data import to_device_image
    from avanon.study.training.engine import _autocast
    from avanon.study.training.models import build_model, set_channels_last

    torch.manual_seed(0)
    model = build_model("instance_segmentation", 50, classes, init, preset["min_size"], preset["max_size"],
                        norm=None if init else "bn", **options).to(device)
    if channels_last:
        set_channels_last(model)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9,
                          weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16" and device.type == "cuda")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.iters):
        images, targets = batches[i % len(batches)]
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with _autocast(amp, device):
            losses = model([to_device_image(im, device) for im in images], list(targets))
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if cuda:
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    s_it = sum(times) / len(times)
    r = {"amp": amp, "channels_last": channels_last, "s_per_iter": round(s_it, 4),
         "img_per_s": round(len(batches[0][0]) / s_it, 2), "min_s_per_iter": round(min(times), 4)}
    if cuda:
        r["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return r


def gpu_main(args) -> int:
    import torch

    from dataset_adapters import build_adapter
    from dataset_adapters.synthetic import generate
    from avanon.study.training.data import DetectionDataset, collate

    cuda = torch.cuda.is_available()
    device = torch.device("cuda") if cuda else torch.device("cpu")
    amps = args.amp_modes or (["none", "fp16", "bf16"] if cuda else ["none"])
    if not cuda and "fp16" in amps:
        print("fp16 needs CUDA (the trainer falls back to fp32 on CPU): dropped from this run")
        amps = [a for a in amps if a != "fp16"] or ["none"]
    layouts = [m == "on" for m in args.channels_last]
    iters, warmup = (args.iters, args.warmup) if cuda else (1, 1)
    args.iters, args.warmup = iters, warmup
    options = {} if cuda else dict(DEMO_MODEL)
    if not cuda and not args.threads:
        torch.set_num_threads(1)  # busy shared cores: OpenMP spin-waiting makes 2-thread wall times useless
    if cuda:
        name = torch.cuda.get_device_name(device)
        print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {name}; Mask R-CNN R-50-FPN (torchvision "
              f"standard widths), random weights, norm {args.norm}, batch {args.batch} per GPU, "
              f"{warmup} warm-up + {iters} timed iterations per configuration")
    else:
        print(f"no CUDA: a smoke run of the GPU matrix on CPU at 1/8 of the sizes, the demo's head widths, "
              f"{torch.get_num_threads()} thread(s); the rates below are not GPU throughput")
    print(D2_REFERENCE)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        init = _random_imagenet_file(Path(tmp)) if args.norm == "frozen_bn" else None
        for key in args.presets:
            preset = dict(PRESETS[key])
            if not cuda:
                preset.update(min_size=[s // 8 for s in preset["min_size"]], max_size=preset["max_size"] // 8,
                              image=(preset["image"][0] // 4, preset["image"][1] // 4))
            root = generate(Path(tmp) / key, "cityscapes", {"train": 8, "val": 0}, seed=0, image_size=preset["image"])
            ds = DetectionDataset(build_adapter("cityscapes", root, "train", categories="all"), train=True,
                                  uint8_images=True)
            batches = []
            for b in range(4):
                images, targets = collate([ds[((b * args.batch + k) % len(ds), k)] for k in range(args.batch)])
                targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                           for t in targets]
                batches.append(([im.to(device) for im in images], targets))
            print(f"\n{key}: {preset['label']}" + ("" if cuda else f" (smoke: short side {preset['min_size'][0]}-"
                                                                   f"{preset['min_size'][-1]}, max {preset['max_size']})"))
            rows = []
            for amp in amps:
                for cl in layouts:
                    r = gpu_step_bench(batches, len(ds.thing_classes), preset, amp, cl, args, device, init,
                                       options)
                    r["preset"] = key
                    rows.append(r)
                    mem = f", peak {r['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in r else ""
                    print(f"  amp {amp:4s} channels_last {'on ' if cl else 'off'}: {r['s_per_iter']:.4f} s/iteration, "
                          f"{r['img_per_s']:.2f} images/s per {'GPU' if cuda else 'CPU process'}{mem}")
            results += rows
            by = {(r["amp"], r["channels_last"]): r["img_per_s"] for r in rows}
            base = by.get(("none", False))
            for amp in amps:
                if amp != "none" and base:
                    for cl in layouts:
                        if (amp, cl) in by and ("none", cl) in by:
                            print(f"  ratio {amp}/fp32 (channels_last {'on' if cl else 'off'}): "
                                  f"{by[(amp, cl)] / by[('none', cl)]:.2f}x")
                if (amp, True) in by and (amp, False) in by:
                    print(f"  ratio channels_last on/off ({amp}): {by[(amp, True)] / by[(amp, False)]:.2f}x")
            best = max(rows, key=lambda r: r["img_per_s"])
            if base:
                print(f"  best: amp {best['amp']}, channels_last {'on' if best['channels_last'] else 'off'}: "
                      f"{best['img_per_s'] / base:.2f}x fp32 NCHW")
            if cuda:
                print(f"  against detectron2's {D2_PER_GPU:.2f} images/s per V100 (fp32, COCO scale): fp32 NCHW "
                      f"{base / D2_PER_GPU:.2f}x, best {best['img_per_s'] / D2_PER_GPU:.2f}x" if base else "")
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": "gpu" if cuda else "gpu-smoke-on-cpu", "args": vars(args),
                                               "detectron2_per_gpu": round(D2_PER_GPU, 2),
                                               "detectron2_reference": D2_REFERENCE, "results": results}, indent=2))
    return 0


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
    g = p.add_argument_group("GPU mode")
    g.add_argument("--gpu", action="store_true", help="the GPU matrix (R-50-FPN, presets x amp x channels_last)")
    g.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=["cityscapes", "coco"])
    g.add_argument("--amp-modes", nargs="+", choices=["none", "fp16", "bf16"],
                   help="default: none fp16 bf16 with CUDA, none on CPU")
    g.add_argument("--channels-last", nargs="+", choices=["off", "on"], default=["off", "on"])
    g.add_argument("--norm", choices=["frozen_bn", "bn"], default="frozen_bn",
                   help="frozen_bn: the ImageNet-initialised setting (random weights); bn: from scratch")
    args = p.parse_args(argv)
    if args.gpu:
        if "--batch" not in (argv if argv is not None else sys.argv[1:]):
            args.batch = 2  # detectron2's 16 images on 8 GPUs
        if "--iters" not in (argv if argv is not None else sys.argv[1:]):
            args.iters, args.warmup = 20, max(args.warmup, 5)
        return gpu_main(args)

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
