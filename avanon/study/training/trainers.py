"""Training backends by the names recipes use: TRAINERS.get(name)(config, out_dir, resume=..., test_only=...
[, progress=...]; the study runner passes progress to a trainer that accepts it).

- "torchvision" (default): avanon.study.training.engine.train.
- "mmdet" (optional): the same Mask R-CNN run as an MMDetection 3.x config (avanon.study.training.mmdet_config), run by
  mmengine's Runner. It needs mmdet 3.x with a *compiled* mmcv 2.x (mmcv.ops); see `MMDET_INSTALL`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional

from avanon.registry import Registry

TRAINERS: Registry[Callable[..., dict]] = Registry("trainer")

MMDET_INSTALL = """\
the mmdet trainer needs MMDetection 3.x and a compiled mmcv 2.x (mmcv.ops); mmcv-lite is not enough.
- With torch <= 2.1 (CUDA or CPU) on a machine with network: pip install -U openmim && mim install "mmcv==2.1.0"
  && pip install "mmdet==3.3.0" (OpenMMLab's prebuilt mmcv wheels).
- With torch 2.14 (this project's pin) mmcv 2.1.0 must be built from source: pip install "setuptools<81", then
  build mmcv 2.1.0 with --no-build-isolation and -std=c++20 added to its setup.py compile flags (C++17 fails
  against ATen; about 20 minutes, CPU-only), then pip install "mmdet==3.3.0".
- Resuming an mmengine run on torch >= 2.6 needs TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (set by this trainer).
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


@TRAINERS.register("mmdet")
def mmdet_trainer(config: dict, out_dir: str | Path, *, resume: bool = False, test_only: bool = False,
                  argv: Optional[list[str]] = None, progress: bool = False) -> dict:
    """Train (or test) with MMDetection's Runner on the generated config. Under torchrun the Runner is launched
    with launcher="pytorch". progress: unused (mmengine logs its own lines)."""
    check_mmdet()
    from mmengine.config import Config
    from mmengine.runner import Runner

    world = int(os.environ.get("WORLD_SIZE", 1))
    path = prepare_mmdet_run(config, out_dir, num_gpus=world)
    cfg = Config.fromfile(str(path))
    cfg.launcher = "pytorch" if world > 1 else "none"
    out = Path(out_dir)
    if resume or test_only:
        os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    if test_only:
        last = out / "last_checkpoint"
        if not last.is_file():
            raise FileNotFoundError(f"--test-only: {last} does not exist; train first")
        cfg.load_from = last.read_text().strip()
        metrics = Runner.from_cfg(cfg).test()
    else:
        cfg.resume = resume
        runner = Runner.from_cfg(cfg)
        runner.train()  # validates on the original split at the last iteration (CocoMetric, logged by mmengine)
        metrics = None
    return {"event": "end", "out_dir": str(out), "trainer": "mmdet", "mmdet_config": str(path),
            "metrics": dict(metrics) if metrics else None}
