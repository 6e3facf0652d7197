"""Iteration-based training and prediction for torchvision Mask R-CNN / Keypoint R-CNN (detectron2-style schedule,
torchvision references/detection-style code).

A run is one resolved config, written to ``OUT/config.json`` before anything else, and one output directory:

    OUT/config.json        the exact resolved config (resume refuses a different one)
    OUT/log.jsonl          one JSON object per line: a "start" event (command line, versions, world size, classes),
                           training records every ``log_period`` iterations (loss components, lr, s/it, img/s, eta
                           from the window's s/it, eta_smoothed_s from a moving average, elapsed_s),
                           checkpoint and "end" events
    OUT/checkpoint.pth     model, optimizer, lr scheduler, AMP scaler, iteration, config, RNG states of every rank;
                           written atomically every ``checkpoint_period`` iterations and at the end
    OUT/model_final.pth    the final model state dict (what --test-only and evaluation load)
    OUT/predictions_{split}.json   COCO results on the validation split (original images), after training
    OUT/metrics.json       avanon.study.evaluation.evaluate's metrics of those predictions (paper metrics + COCO AP)

Command line (one process, or one per GPU under torchrun: DDP, only rank 0 writes; see cli.py):

    avanon train --config run.yaml --out OUT [--set solver.lr=0.01] [--resume] [--test-only]
    torchrun --nproc_per_node=8 -m avanon.study.training --config run.yaml --out OUT

``solver.batch_size`` is the total batch of one iteration over all processes (detectron2's IMS_PER_BATCH), so
the same config gives the same schedule on 1 or 8 GPUs. Under DDP every process predicts a shard of the validation
split and the results are gathered; rank 0 alone scores them while the others wait on a CPU group whose timeout is
``eval_timeout_minutes`` (``dist_timeout_minutes`` is every other collective's).

GPU throughput options (none changes a CPU run): ``solver.amp`` (fp16 with a GradScaler whose state is
checkpointed, or bf16), ``solver.channels_last`` (auto: on with CUDA), ``data.pin_memory`` (auto: on with CUDA);
on CUDA images travel as uint8 and are scaled on the device. ``data.aspect_ratio_grouping`` (default on) batches
landscape and portrait images separately (`avanon.study.training.data`); with one orientation it changes nothing.

Reproducibility. Seeds: torch (+ CUDA), numpy and random are seeded with ``seed + rank`` before the model is
built; the training sample stream (`InfiniteSampler`) is a function of ``seed`` only, and each sample's flip is
drawn from a seed derived from (seed, position in the stream), so data order and augmentation do not depend on
the number of DataLoader workers and continue exactly after a resume. The RNG states of every rank are saved in
the checkpoint and restored on resume (the multi-scale size choice and RPN / ROI sampling draw from torch's
global RNG). ``torch.use_deterministic_algorithms`` is left off. What this gives, measured by the tests: on CPU
with the same torch build and thread count, a run and the same run interrupted and resumed end with bit-identical
weights; across machines, thread counts or torch versions the result is statistically the same but not bitwise.
On CUDA it is not bit-reproducible (roi_align backward and index_put use atomics; cuDNN picks algorithms) even with
the same seed; mean ± standard error over seeds is the unit of comparison, as in the paper.
"""
from __future__ import annotations

import bisect
import contextlib
import datetime
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from avanon.progress import SmoothedRate, format_seconds, progress as progress_bar
from avanon.study.training import data as tdata
from avanon.study.training.config import (  # noqa: F401  (re-exported: the engine's config API)
    AMP_MODES, CHECKPOINT, CONFIG, DEFAULT_CONFIG, LEGACY_VALUES, LOG, MODEL_FINAL, RUNTIME_KEYS, ConfigError,
    config_diff, load_config_file, resolve_config, resolve_flag, upgrade_saved_config,
)
from avanon.study.training.data import (  # noqa: F401  (re-exported: the samplers used to live here)
    GroupedBatchSampler, InfiniteSampler, _worker_init, sample_seed,
)
from avanon.study.training.models import build_model, set_channels_last

logger = logging.getLogger("avanon.study.training")


# ---------------------------------------------------------------------------------------------- distributed


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _dist_on() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_gather(obj):
    if not _dist_on():
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _barrier(group=None):
    if _dist_on():
        torch.distributed.barrier(group=group)


def _init_distributed(cfg: dict):
    """init_process_group under torchrun (timeout: dist_timeout_minutes) and a CPU (gloo) group with the long
    eval_timeout_minutes, on which the other processes wait while rank 0 scores the predictions: a wait on the
    default group would hit its timeout (NCCL's watchdog then aborts the job) when the evaluation is long."""
    if not _dist_on():
        backend = "nccl" if torch.cuda.is_available() and cfg["device"] != "cpu" else "gloo"
        torch.distributed.init_process_group(backend=backend,
                                             timeout=datetime.timedelta(minutes=cfg["dist_timeout_minutes"]))
    return torch.distributed.new_group(backend="gloo",
                                       timeout=datetime.timedelta(minutes=cfg["eval_timeout_minutes"]))


# --------------------------------------------------------------------------------------------------- solver


def lr_factor(iteration: int, solver: dict) -> float:
    """Linear warmup from warmup_factor, then gamma ** (number of steps passed)."""
    factor = solver["gamma"] ** bisect.bisect_right(solver["steps"], iteration)
    warm = solver["warmup_iterations"]
    if iteration < warm:
        alpha = iteration / warm
        factor *= solver["warmup_factor"] * (1 - alpha) + alpha
    return factor


def build_optimizer(model: torch.nn.Module, solver: dict):
    """SGD with momentum (or AdamW) over the trainable parameters, and the warmup + multistep LambdaLR."""
    params = [p for p in model.parameters() if p.requires_grad]
    if solver["optimizer"] == "adamw":
        optimizer = torch.optim.AdamW(params, lr=solver["lr"], weight_decay=solver["weight_decay"])
    else:
        optimizer = torch.optim.SGD(params, lr=solver["lr"], momentum=solver["momentum"],
                                    weight_decay=solver["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, solver))
    return optimizer, scheduler


# ------------------------------------------------------------------------------------------------- helpers


def _device(cfg: dict, local_rank: int) -> torch.device:
    want = cfg["device"]
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device cuda requested but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _autocast(amp: str, device: torch.device):
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _to(target: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in target.items()}


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "random": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    r = state["random"]
    random.setstate((r[0], tuple(r[1]), r[2]))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _JsonLog:
    """log.jsonl (rank 0) + the 'avanon.study.training' logger (stdout)."""

    def __init__(self, path: Optional[Path]):
        self.path = path

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")


def setup_logging() -> None:
    """Timestamped training lines on stdout when no one configured logging (python -m avanon.study.training);
    under `avanon` the command line's handlers (and -q/-v) apply."""
    if not logger.handlers and not logging.getLogger("avanon").handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for name in ("avanon.study.training.data", "avanon.study.training.models"):
            logging.getLogger(name).setLevel(logging.INFO)
            logging.getLogger(name).addHandler(handler)
            logging.getLogger(name).propagate = False


# ------------------------------------------------------------------------------------------------- datasets


def build_datasets(cfg: dict, train: bool = True, val: bool = True):
    """(train dataset or None, val dataset or None) for a resolved config."""
    d = cfg["data"]
    train_ds = val_ds = None
    if train:
        adapter = tdata.build_adapter_for(d, d["train_split"])
        train_ds = tdata.DetectionDataset(
            adapter, d["image_root"] or d["root"], task=cfg["task"], train=True, exclude_classes=d["exclude_classes"],
            flip_prob=d["flip_prob"], exif_frame=d["exif_frame"], drop_empty=d["drop_empty"],
            min_keypoints_per_image=d["min_keypoints_per_image"])
    if val and d["val_split"]:
        root = d["val_root"] or d["root"]
        adapter = tdata.build_adapter_for(d, d["val_split"], root)
        val_ds = tdata.DetectionDataset(adapter, root, task=cfg["task"], train=False, exif_frame=d["exif_frame"])
    return train_ds, val_ds


def model_from_config(cfg: dict, thing_classes) -> torch.nn.Module:
    m = cfg["model"]
    num_classes = 1 if cfg["task"] == "keypoints" else len(thing_classes)
    return build_model(cfg["task"], m["depth"], num_classes, m["init"], m["min_size"], m["max_size"],
                       norm=m["norm"], trainable_backbone_layers=m["trainable_backbone_layers"],
                       test_min_size=m["test_min_size"], **(m["options"] or {}))


# -------------------------------------------------------------------------------------------------- predict


def _label_to_category(dataset) -> dict[int, int]:
    """Model label -> COCO category id (1-based position in thing_classes)."""
    if getattr(dataset, "task", None) == "keypoints":
        return {1: list(dataset.thing_classes).index("person") + 1}
    return {k + 1: k + 1 for k in range(len(dataset.thing_classes))}


def outputs_to_coco(output: dict, image_id: int, label_to_category: Optional[dict] = None) -> list[dict]:
    """One torchvision detection output (CPU tensors) -> COCO result dicts (bbox xywh, score, category_id,
    segmentation as compressed RLE with str counts from masks > 0.5, keypoints as [x, y, v] * 17)."""
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].float()
    n = boxes.shape[0]
    if n == 0:
        return []
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = output["scores"].float().tolist()
    labels = output["labels"].tolist()
    rles = None
    if "masks" in output:
        masks = (output["masks"][:, 0] > 0.5).numpy().astype(np.uint8)  # N x H x W at image size
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    kps = output["keypoints"].float().reshape(n, -1).tolist() if "keypoints" in output else None
    results = []
    for i in range(n):
        cat = int(labels[i]) if label_to_category is None else label_to_category[int(labels[i])]
        r = {"image_id": int(image_id), "category_id": cat, "bbox": [round(v, 3) for v in xywh[i]],
             "score": round(scores[i], 5)}
        if rles is not None:
            rle = rles[i]
            r["segmentation"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        if kps is not None:
            r["keypoints"] = [round(v, 2) for v in kps[i]]
        results.append(r)
    return results


@torch.inference_mode()
def predict(model: torch.nn.Module, dataset, *, device: Optional[torch.device | str] = None, batch_size: int = 1,
            workers: int = 0, amp: str = "none", progress: bool = False, pin_memory: bool = False) -> list[dict]:
    """COCO result dicts for every image of `dataset` (a DetectionDataset, or any dataset of (image, target) with
    target["image_id"]). Under DDP each process predicts a shard and every process gets all results. progress: a
    bar over the images on a terminal (avanon.progress)."""
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    net = model.module if hasattr(model, "module") else model
    was_training = net.training
    net.eval()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if _dist_on() else (0, 1)
    indices = list(range(rank, len(dataset), world))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=tdata.collate, pin_memory=pin_memory)
    l2c = _label_to_category(dataset) if hasattr(dataset, "thing_classes") else None
    results: list[dict] = []
    bar = progress_bar(len(indices), "predict", progress, unit="img")
    for images, targets in loader:
        with _autocast(amp if device.type == "cuda" or amp == "bf16" else "none", device):
            outputs = net([tdata.to_device_image(im, device) for im in images])
        for out, tgt in zip(outputs, targets):
            out = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()}
            results += outputs_to_coco(out, tgt["image_id"], l2c)
        bar.update(len(images))
    bar.close()
    net.train(was_training)
    if world > 1:
        results = [r for part in _all_gather(results) for r in part]
    results.sort(key=lambda r: (r["image_id"], -r["score"]))
    return results


def write_predictions(results: list[dict], path: Path) -> None:
    _atomic_write_text(path, json.dumps(results, separators=(",", ":")))


def _evaluate(cfg: dict, val_ds, results: list[dict], out_dir: Path) -> Optional[dict]:
    """Paper metrics via avanon.study.evaluation.evaluate (writes OUT/metrics.json); None if that is unavailable.
    With exclude_classes, every average is over the remaining classes ("other classes only")."""
    try:
        from avanon.study.evaluation import evaluate
    except ImportError as e:
        logger.warning("no evaluation (avanon.study.evaluation unavailable: %s); predictions are written", e)
        return None
    t0 = time.perf_counter()
    exclude = set(cfg["data"]["exclude_classes"])
    classes = [c for c in val_ds.thing_classes if c not in exclude] if exclude else None
    out = evaluate(cfg["data"]["adapter"], val_ds.adapter, results, cfg["task"], out_dir, classes=classes)
    logger.info("metrics (%.1fs): %s", time.perf_counter() - t0,
                {k: round(v, 2) if isinstance(v, float) else v for k, v in out["paper"].items()})
    return out["paper"]


# ---------------------------------------------------------------------------------------------------- train


def _load_weights_for_test(model: torch.nn.Module, out_dir: Path) -> str:
    final, ckpt = out_dir / MODEL_FINAL, out_dir / CHECKPOINT
    if final.is_file():
        model.load_state_dict(torch.load(final, map_location="cpu", weights_only=True))
        return str(final)
    if ckpt.is_file():
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
        return str(ckpt)
    raise FileNotFoundError(f"--test-only: neither {final} nor {ckpt} exists; train first")


def train(config: dict, out_dir: str | Path, *, resume: bool = False, test_only: bool = False,
          argv: Optional[list[str]] = None, progress: bool = False) -> dict:
    """Train (or with test_only only predict) one run; returns a summary dict (also the "end" log record).
    progress: bars over the iterations and the predicted images on a terminal (avanon.progress); the log lines
    every log_period iterations are written either way.

    resume: continue from OUT/checkpoint.pth (model, optimizer, scheduler, scaler, iteration, RNG states), or start
    at iteration 0 when there is none yet (so a preemptible job can always pass it); the config must equal
    OUT/config.json except runtime keys (workers, log/checkpoint period, device). Without resume an OUT that
    already holds a checkpoint is refused."""
    setup_logging()
    cfg = resolve_config(config)
    init = cfg["model"]["init"]
    if init is not None and not Path(init).expanduser().is_file():  # fail before indexing the dataset
        from avanon.study.training.models import MissingInitFile, missing_init_message

        raise MissingInitFile(missing_init_message(Path(init), cfg["task"], cfg["model"]["depth"], "model.init"))
    out_dir = Path(out_dir)
    rank, world, local_rank = dist_info()
    wait_group = _init_distributed(cfg) if world > 1 else None
    main_process = rank == 0
    if not main_process:
        logger.setLevel(logging.WARNING)  # one log on stdout: rank 0's
    device = _device(cfg, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved_cfg = json.loads((out_dir / CONFIG).read_text()) if (out_dir / CONFIG).is_file() else None
    if resume or test_only:
        if saved_cfg is not None:
            saved_cfg, predates = upgrade_saved_config(saved_cfg)
            for path in set(predates) & set(LEGACY_VALUES):  # a run older than the option keeps its behaviour
                cfg[path[0]][path[1]] = LEGACY_VALUES[path]
                logger.info("%s predates %s: continuing with %r", out_dir, ".".join(path), LEGACY_VALUES[path])
            diff = config_diff(saved_cfg, cfg)
            if diff:
                raise ConfigError(f"{out_dir} was run with another config: " + "; ".join(diff[:10]))
    elif (out_dir / CHECKPOINT).is_file():
        raise ConfigError(f"{out_dir} already holds {CHECKPOINT}: resume it (--resume) or use another directory")
    jlog = _JsonLog(out_dir / LOG if main_process else None)
    if main_process:
        _atomic_write_text(out_dir / CONFIG, json.dumps(cfg, indent=2) + "\n")
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    seed_all(cfg["seed"] + rank)

    solver = cfg["solver"]
    if solver["batch_size"] % world:
        raise ConfigError(f"solver.batch_size {solver['batch_size']} is not divisible by {world} processes")
    if solver["amp"] == "fp16" and device.type != "cuda":
        logger.warning("solver.amp fp16 needs CUDA; training in fp32 on %s", device)
        solver = dict(solver, amp="none")
    train_ds, val_ds = build_datasets(cfg, train=not test_only, val=True)
    for ds in (train_ds, val_ds):
        if ds is not None:
            ds.uint8_images = device.type == "cuda"  # scaled to [0, 1] on the GPU: 4x less to copy
    ref = train_ds if train_ds is not None else val_ds
    if ref is None:
        raise ConfigError("test_only needs data.val_split to predict on")
    classes = ref.thing_classes
    model = model_from_config(cfg, classes).to(device)
    if world > 1 and cfg["model"]["norm"] == "sync_bn":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    channels_last = resolve_flag(solver["channels_last"], device.type == "cuda")
    if channels_last:
        set_channels_last(model)
    start = {"event": "start", "time": datetime.datetime.now().isoformat(timespec="seconds"),
             "argv": argv if argv is not None else sys.argv, "out_dir": str(out_dir), "world_size": world,
             "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
             "amp": solver["amp"], "channels_last": channels_last,
             "thing_classes": list(classes), "init": getattr(model, "init_report", None), "resume": resume,
             "test_only": test_only, "train_images": len(train_ds) if train_ds is not None else None,
             "train_skipped": train_ds.skipped if train_ds is not None else None,
             "val_images": len(val_ds) if val_ds is not None else None}
    jlog.write(start)
    logger.info("run %s: %s", out_dir, {k: start[k] for k in ("device", "world_size", "train_images", "val_images")})

    summary: dict[str, Any] = {"event": "end", "out_dir": str(out_dir)}
    if test_only:
        summary["weights"] = _load_weights_for_test(model, out_dir)
    else:
        summary.update(_train_loop(cfg, solver, model, train_ds, device, out_dir, resume, jlog, rank, world,
                                   progress and main_process))
        model = summary.pop("_model")
    if val_ds is not None and (test_only or cfg["eval_after_train"]):
        t0 = time.perf_counter()
        logger.info("predicting and evaluating on %d %s images", len(val_ds), cfg["data"]["val_split"])
        workers = cfg["data"]["eval_workers"]
        results = predict(model, val_ds, device=device, batch_size=cfg["test_batch_size"],
                          workers=min(cfg["data"]["workers"], 2) if workers is None else workers, amp=solver["amp"],
                          progress=progress and main_process,
                          pin_memory=resolve_flag(cfg["data"]["pin_memory"], device.type == "cuda"))
        path = out_dir / f"predictions_{cfg['data']['val_split']}.json"
        if main_process:
            write_predictions(results, path)
        summary.update(predictions=str(path), num_predictions=len(results),
                       predict_seconds=round(time.perf_counter() - t0, 2))
        logger.info("predictions: %d on %d images -> %s (%.1fs)", len(results), len(val_ds), path,
                    summary["predict_seconds"])
        if main_process:
            metrics = _evaluate(cfg, val_ds, results, out_dir)
            if metrics is not None:
                summary["metrics"] = metrics
    summary["time"] = datetime.datetime.now().isoformat(timespec="seconds")
    jlog.write(summary)
    _barrier(wait_group)  # the others return once rank 0's files are written (eval_timeout_minutes)
    if wait_group is not None:
        torch.distributed.destroy_process_group(wait_group)
    return summary


def _train_loop(cfg, solver, model, train_ds, device, out_dir, resume, jlog, rank, world, progress=False) -> dict:
    main_process = rank == 0
    optimizer, scheduler = build_optimizer(model, solver)
    scaler = torch.amp.GradScaler("cuda", enabled=solver["amp"] == "fp16")
    start_iter = 0
    ckpt_path = out_dir / CHECKPOINT
    if resume and not ckpt_path.is_file():
        logger.info("resume: no %s yet, starting at iteration 0", ckpt_path)  # detectron2's --resume semantics
    elif resume:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        if ckpt["scaler"]:  # empty from a run without fp16 (e.g. started on CPU), which a live scaler refuses
            scaler.load_state_dict(ckpt["scaler"])
        start_iter = int(ckpt["iteration"])
        states = ckpt["rng"]
        set_rng_state(states[rank] if rank < len(states) else states[0])
        logger.info("resumed from %s at iteration %d", ckpt_path, start_iter)
        jlog.write({"event": "resume", "iteration": start_iter})
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    total = int(solver["iterations"])
    d = cfg["data"]
    loader = tdata.train_loader(train_ds, batch_size=solver["batch_size"], seed=cfg["seed"], rank=rank,
                                world_size=world, start_iter=start_iter,
                                aspect_ratio_grouping=d["aspect_ratio_grouping"], workers=int(d["workers"]),
                                pin_memory=resolve_flag(d["pin_memory"], device.type == "cuda"),
                                prefetch_factor=int(d["prefetch_factor"]))

    def save(iteration: int) -> None:
        states = _all_gather(rng_state())
        if main_process:
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "lr_scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                               "iteration": iteration, "config": cfg, "rng": states}, ckpt_path)
            jlog.write({"event": "checkpoint", "iteration": iteration, "path": str(ckpt_path)})

    model.train()
    window: dict[str, float] = {}
    n_window, t_window, data_window = 0, 0.0, 0.0
    t_start = time.perf_counter()
    it = start_iter
    rate = SmoothedRate(beta=0.99)  # the ETA: s/it smoothed over ~100 iterations, not the last window's
    bar = progress_bar(total, f"train {out_dir.parent.name}/{out_dir.name}", progress, initial=start_iter,
                       smoothing=0.05)
    data_iter = iter(loader) if start_iter < total else None
    while it < total:
        t0 = time.perf_counter()
        images, targets = next(data_iter)
        t_data = time.perf_counter() - t0
        images = [tdata.to_device_image(im, device) for im in images]
        targets = [_to(t, device) for t in targets]
        lr = optimizer.param_groups[0]["lr"]
        with _autocast(solver["amp"], device):
            loss_dict = ddp_model(images, targets)
        loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"iteration {it + 1}: loss is {loss.item()}: "
                                     f"{ {k: float(v) for k, v in loss_dict.items()} }; lower solver.lr or set "
                                     f"solver.clip_grad_norm")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if solver["clip_grad_norm"]:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                           float(solver["clip_grad_norm"]))
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        it += 1
        rate.update(time.perf_counter() - t0)
        bar.update(1)
        for k, v in loss_dict.items():
            window[k] = window.get(k, 0.0) + float(v.detach())
        window["loss"] = window.get("loss", 0.0) + float(loss.detach())
        n_window += 1
        t_window += time.perf_counter() - t0
        data_window += t_data
        if it % cfg["log_period"] == 0 or it == total or it == start_iter + 1:
            means = {k: v / n_window for k, v in window.items()}
            if world > 1:
                means = {k: float(np.mean([m[k] for m in _all_gather(means)])) for k in means}
            s_it = t_window / n_window
            rec = {"iteration": it, "lr": lr, **{k: round(v, 5) for k, v in means.items()},
                   "s_per_iter": round(s_it, 4), "data_s": round(data_window / n_window, 4),
                   "img_per_s": round(solver["batch_size"] / s_it, 3), "eta_s": round(s_it * (total - it), 1),
                   "eta_smoothed_s": round(rate.eta(total - it), 1),
                   "elapsed_s": round(time.perf_counter() - t_start, 1)}
            jlog.write(rec)
            bar.set_postfix_str(f"loss {means['loss']:.3f}", refresh=False)
            logger.info("it %d/%d  loss %.4f (%s)  lr %.5f  %.3f s/it  %.2f img/s  eta %s", it, total,
                        means["loss"], " ".join(f"{k[5:] if k.startswith('loss_') else k} {v:.3f}"
                                                for k, v in means.items() if k != "loss"),
                        lr, s_it, rec["img_per_s"], format_seconds(rec["eta_smoothed_s"]))
            window, n_window, t_window, data_window = {}, 0, 0.0, 0.0
        if it % cfg["checkpoint_period"] == 0 and it < total:
            save(it)
    train_seconds = time.perf_counter() - t_start
    bar.close()
    del data_iter, loader
    if start_iter < total or not ckpt_path.is_file():
        save(it)
    if main_process:
        atomic_torch_save(model.state_dict(), out_dir / MODEL_FINAL)
    trained = it - start_iter
    return {"_model": model, "iterations": it, "trained_iterations": trained,
            "train_seconds": round(train_seconds, 2),
            "s_per_iter": round(train_seconds / trained, 4) if trained else None}
