"""Training backends by the names recipes use: TRAINERS.get(name)(config, out_dir, resume=..., test_only=...
[, progress=...]; the study runner passes progress to a trainer that accepts it).

- "torchvision" (default): avanon.study.training.engine.train.
- "mmdet" (optional): the same Mask R-CNN run as an MMDetection 3.x config (avanon.study.training.mmdet_config), run by
  mmengine's Runner. It needs mmdet 3.x with a *compiled* mmcv 2.x (mmcv.ops); see `MMDET_INSTALL` and
  scripts/install_openmmlab.sh. A run directory holds what the torchvision trainer's does (config.json, log.jsonl,
  checkpoint.pth while it trains, model_final.pth, predictions_{val_split}.json, metrics.json from
  avanon.study.evaluation.evaluate on the ORIGINAL validation split), plus mmdet_config.py, annotations/ (the COCO
  JSON the config reads), last_checkpoint and mmengine's own timestamped log folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from avanon.registry import Registry

TRAINERS: Registry[Callable[..., dict]] = Registry("trainer")

MMDET_INSTALL = """\
the mmdet trainer needs MMDetection 3.x and a compiled mmcv 2.x (mmcv.ops); mmcv-lite is not enough.
- In this project's environment (torch 2.14): scripts/install_openmmlab.sh installs mmengine, mmcv 2.1.0
  (compiled from source once, measured 33 minutes on 2 busy CPU cores, then cached), mmdet 3.3.0 and mmpose 1.3.2
  into the active virtual environment without touching torch; docs/openmmlab.md explains every step.
- With torch <= 2.1 on a machine with network: pip install -U openmim && mim install "mmcv==2.1.0" && pip install
  "mmdet==3.3.0" (OpenMMLab's prebuilt mmcv wheels).
Or use trainer "torchvision" (the default), which trains the same model with torch and torchvision only."""


class TrainerUnavailable(RuntimeError):
    """An optional training backend that is not installed (the message says how to install it)."""


@TRAINERS.register("torchvision")
def torchvision_trainer(config: dict, out_dir: str | Path, *, resume: bool = False, test_only: bool = False,
                        argv: Optional[list[str]] = None, progress: bool = False) -> dict:
    from avanon.study.training.engine import train

    return train(config, out_dir, resume=resume, test_only=test_only, argv=argv, progress=progress)


def check_mmdet() -> None:
    """Raise TrainerUnavailable unless mmdet imports and mmcv has its compiled ops."""
    try:
        import mmdet  # noqa: F401
        from mmcv.ops import RoIAlign  # noqa: F401  (mmcv-lite has no ops)
        from mmengine.runner import Runner  # noqa: F401
    except Exception as e:  # ImportError, or mmdet's own version assertion
        raise TrainerUnavailable(f"{MMDET_INSTALL}\n(import failed: {type(e).__name__}: {e})") from None


def prepare_mmdet_run(config: dict, out_dir: str | Path, num_gpus: int = 1) -> Path:
    """Resolve the config, export the train (mirror) / val (original) annotations as COCO JSON and write
    OUT/config.json and OUT/mmdet_config.py; returns the mmdet config path. Needs no mmdet."""
    from avanon.study.training import data as tdata
    from avanon.study.training.config import CONFIG, resolve_config
    from avanon.study.training.mmdet_config import export_annotations, mmdet_config_text

    cfg = resolve_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = cfg["data"]
    train_adapter = tdata.build_adapter_for(d, d["train_split"])
    classes = tdata.thing_classes_of(train_adapter)
    train_ann = export_annotations(train_adapter, out / "annotations" / f"{d['train_split']}.json",
                                   exclude_classes=d["exclude_classes"], image_root=Path(d["image_root"] or d["root"]))
    val_root = d["val_root"] or d["root"]
    val_ann = export_annotations(tdata.build_adapter_for(d, d["val_split"], val_root),
                                 out / "annotations" / f"{d['val_split']}.json")
    (out / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    path = out / "mmdet_config.py"
    path.write_text(mmdet_config_text(cfg, classes, str(train_ann), str(val_ann), str(out), num_gpus))
    return path


@contextlib.contextmanager
def _torch_full_load():
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 while mmengine runs: its checkpoints hold more than tensors (message
    hub, optimizer and scheduler state, numpy scalars), which torch >= 2.6's weights_only default refuses on
    resume. Only the run's own files and the user's init checkpoint are loaded this way; the previous value is
    restored afterwards."""
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _check_run_dir(cfg: dict, out: Path, resume: bool, test_only: bool) -> None:
    """The torchvision trainer's rules: resume / test-only need the same config (runtime keys aside); a directory
    holding a checkpoint is refused without resume."""
    from avanon.study.training.config import CHECKPOINT, CONFIG, ConfigError, config_diff, upgrade_saved_config

    saved = out / CONFIG
    if resume or test_only:
        if saved.is_file():
            diff = config_diff(upgrade_saved_config(json.loads(saved.read_text()))[0], cfg)
            if diff:
                raise ConfigError(f"{out} was run with another config: " + "; ".join(diff[:10]))
    elif (out / CHECKPOINT).is_file():
        raise ConfigError(f"{out} already holds {CHECKPOINT}: resume it (--resume) or use another directory")


def _mmdet_hook(cfg: dict, log_path: Optional[Path], start_iter_box: dict):
    """An mmengine Hook: log.jsonl records like the torchvision trainer's (losses, lr, s/it every log_period), the
    RNG states of torch / numpy / random in every checkpoint, restored at the first batch after a resume (after
    mmengine has skipped the batches already trained), so that a resumed CPU run continues as the uninterrupted one."""
    from mmengine.hooks import Hook

    from avanon.study.training.engine import rng_state, set_rng_state

    log_period = int(cfg["log_period"])
    total = int(cfg["solver"]["iterations"])

    def write(record: dict) -> None:
        if log_path is not None:
            with open(log_path, "a") as f:
                f.write(json.dumps(record, default=str) + "\n")

    class _RestoreAtFirstBatch:
        """Wraps the train loop's data iterator: passes `skip` batches through, then restores the RNG states
        before loading the next one."""

        def __init__(self, inner, skip: int, state: dict):
            self.inner, self.skip, self.state = inner, skip, state

        def __iter__(self):
            return self

        def __next__(self):
            if self.skip <= 0 and self.state is not None:
                set_rng_state(self.state)
                self.state = None
            self.skip -= 1
            return next(self.inner)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    class AvanonRunHook(Hook):
        priority = "VERY_LOW"

        def __init__(self):
            self.rng = None
            self.window: dict[str, float] = {}
            self.n = 0
            self.t_window = 0.0
            self.t_last = None
            self.t_start = None

        def before_save_checkpoint(self, runner, checkpoint):
            checkpoint["avanon_rng"] = rng_state()

        def after_load_checkpoint(self, runner, checkpoint):
            self.rng = checkpoint.get("avanon_rng")

        def before_train(self, runner):
            start_iter_box["start"] = runner.iter
            if runner.iter:
                write({"event": "resume", "iteration": runner.iter})

        def before_train_epoch(self, runner):
            loop = runner.train_loop
            if self.rng is not None and runner.iter > 0 and hasattr(loop, "dataloader_iterator"):
                loop.dataloader_iterator = _RestoreAtFirstBatch(loop.dataloader_iterator, runner.iter, self.rng)
            self.rng = None
            self.t_start = self.t_last = time.perf_counter()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            now = time.perf_counter()
            self.t_window += now - self.t_last
            self.t_last = now
            self.n += 1
            for k, v in (outputs or {}).items():
                if k.startswith("loss") or k == "acc":
                    self.window[k] = self.window.get(k, 0.0) + float(v.detach() if hasattr(v, "detach") else v)
            it = runner.iter + 1
            if it % log_period == 0 or it == total or self.n == 1 and it == start_iter_box["start"] + 1:
                s_it = self.t_window / self.n
                write({"iteration": it, "lr": runner.optim_wrapper.get_lr()["lr"][0],
                       **{k: round(v / self.n, 5) for k, v in self.window.items()}, "s_per_iter": round(s_it, 4),
                       "img_per_s": round(cfg["solver"]["batch_size"] / s_it, 3),
                       "eta_s": round(s_it * (total - it), 1), "elapsed_s": round(now - self.t_start, 1)})
                self.window, self.n, self.t_window = {}, 0, 0.0

        def after_train(self, runner):
            start_iter_box["train_seconds"] = time.perf_counter() - (self.t_start or time.perf_counter())

    return AvanonRunHook()


def mmdet_predict(runner, dataloader_cfg) -> list[dict]:
    """COCO results (the torchvision trainer's format: avanon.study.training.engine.outputs_to_coco) of the
    runner's model on a test dataloader: boxes and masks in original image coordinates, category ids = the
    dataset's (1-based positions in thing_classes). Under DDP each process predicts a shard; all get all."""
    import torch
    from mmengine.dist import all_gather_object, get_world_size

    from avanon.study.training.engine import outputs_to_coco

    loader = runner.build_dataloader(dataloader_cfg)
    cat_ids = list(loader.dataset.cat_ids)
    model = runner.model
    model.eval()
    results: list[dict] = []
    with torch.no_grad():
        for data in loader:
            for sample in model.test_step(data):
                pred = sample.pred_instances
                labels = pred.labels.cpu().tolist()
                out = {"boxes": pred.bboxes.detach().float().cpu(), "scores": pred.scores.detach().float().cpu(),
                       "labels": torch.tensor([cat_ids[k] for k in labels], dtype=torch.int64)}
                if "masks" in pred:
                    out["masks"] = pred.masks.detach().cpu()[:, None].float()
                results += outputs_to_coco(out, int(sample.img_id))
    if get_world_size() > 1:
        results = [r for part in all_gather_object(results) for r in part]
    results.sort(key=lambda r: (r["image_id"], -r["score"]))
    return results


@TRAINERS.register("mmdet")
def mmdet_trainer(config: dict, out_dir: str | Path, *, resume: bool = False, test_only: bool = False,
                  argv: Optional[list[str]] = None, progress: bool = False) -> dict:
    """Train (or test) with MMDetection's Runner on the generated config, then predict the ORIGINAL validation
    split with the trained model and score it with avanon.study.evaluation.evaluate, the torchvision trainer's
    evaluation (same metrics, same metrics.json). Under torchrun the Runner is launched with launcher="pytorch".

    resume: continue from OUT/checkpoint.pth (mmengine's checkpoint: model, optimizer, schedulers, iteration, and
    avanon's RNG states), or start at iteration 0 when there is none; the config must equal OUT/config.json except
    runtime keys. test_only: predict and evaluate with OUT/model_final.pth (or the checkpoint).
    progress: unused (mmengine logs its own lines)."""
    check_mmdet()
    import torch
    from mmengine.config import Config
    from mmengine.runner import Runner

    from avanon.study.evaluation import evaluate
    from avanon.study.training import data as tdata
    from avanon.study.training.config import CHECKPOINT, MODEL_FINAL, resolve_config
    from avanon.study.training.engine import atomic_torch_save

    cfg_resolved = resolve_config(config)
    out = Path(out_dir)
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    _check_run_dir(cfg_resolved, out, resume, test_only)
    path = prepare_mmdet_run(config, out, num_gpus=world)
    cfg = Config.fromfile(str(path))
    cfg.launcher = "pytorch" if world > 1 else "none"
    if cfg_resolved["device"] == "cpu" or not torch.cuda.is_available():
        cfg.env_cfg.dist_cfg = {"backend": "gloo"}
    # avanon evaluates (below); mmengine's own validation at the last iteration would only repeat it with CocoMetric
    val_dataloader = cfg.val_dataloader
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    if cfg_resolved["threads"]:
        torch.set_num_threads(int(cfg_resolved["threads"]))
    log_path = out / "log.jsonl" if rank == 0 else None
    ckpt = out / CHECKPOINT
    summary: dict = {"event": "end", "out_dir": str(out), "trainer": "mmdet", "mmdet_config": str(path)}
    box: dict = {}
    t_run = time.perf_counter()
    with _torch_full_load():
        if test_only:
            weights = out / MODEL_FINAL if (out / MODEL_FINAL).is_file() else ckpt
            if not weights.is_file():
                raise FileNotFoundError(f"--test-only: neither {out / MODEL_FINAL} nor {ckpt} exists; train first")
            cfg.load_from = None
            runner = Runner.from_cfg(cfg)
            runner.load_checkpoint(str(weights), map_location="cpu")
            summary["weights"] = str(weights)
        else:
            resume_now = resume and ckpt.is_file()
            cfg.resume = resume_now
            if resume_now:  # explicit: with a detector init in load_from mmengine would resume from that
                cfg.load_from = str(ckpt)
            runner = Runner.from_cfg(cfg)
            runner.register_hook(_mmdet_hook(cfg_resolved, log_path, box))
            if log_path is not None:
                with open(log_path, "a") as f:
                    f.write(json.dumps({"event": "start", "trainer": "mmdet",
                                        "argv": argv if argv is not None else sys.argv, "out_dir": str(out),
                                        "world_size": world, "torch": torch.__version__,
                                        "threads": torch.get_num_threads(), "resume": resume_now,
                                        "mmdet_config": str(path)}, default=str) + "\n")
            runner.train()
            model = runner.model.module if hasattr(runner.model, "module") else runner.model
            if rank == 0:
                atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / MODEL_FINAL)
            total = int(cfg_resolved["solver"]["iterations"])
            trained = total - int(box.get("start", 0))
            seconds = float(box.get("train_seconds", 0.0))
            summary.update(iterations=total, trained_iterations=trained, train_seconds=round(seconds, 2),
                           s_per_iter=round(seconds / trained, 4) if trained else None)
        if val_dataloader is not None and (test_only or cfg_resolved["eval_after_train"]):
            t0 = time.perf_counter()
            d = cfg_resolved["data"]
            results = mmdet_predict(runner, val_dataloader)
            pred_path = out / f"predictions_{d['val_split']}.json"
            summary.update(predictions=str(pred_path), num_predictions=len(results),
                           predict_seconds=round(time.perf_counter() - t0, 2))
            if rank == 0:
                pred_path.write_text(json.dumps(results, separators=(",", ":")))
                val_adapter = tdata.build_adapter_for(d, d["val_split"], d["val_root"] or d["root"])
                exclude = set(d["exclude_classes"])
                classes = ([c for c in tdata.thing_classes_of(val_adapter) if c not in exclude]
                           if exclude else None)
                evaluation = evaluate(d["adapter"], val_adapter, results, cfg_resolved["task"], out, classes=classes)
                summary["metrics"] = evaluation["paper"]
    summary["seconds"] = round(time.perf_counter() - t_run, 2)
    if log_path is not None:
        with open(log_path, "a") as f:
            f.write(json.dumps(summary, default=str) + "\n")
    return summary
