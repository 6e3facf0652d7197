"""`avanon train` / `python -m avanon.study.training`: one training run from a config file."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Optional

import torch

from avanon.study.training.config import ConfigError, load_config_file
from avanon.study.training.engine import _dist_on, dist_info

def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of one training run (`avanon train`, `python -m avanon.study.training`, torchrun)."""
    p.add_argument("--config", required=True, help="YAML or JSON config (or a recipe with a train: section)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. solver.lr=0.01")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pth")
    p.add_argument("--test-only", action="store_true", help="load OUT/model_final.pth (or the checkpoint), predict")
    p.add_argument("--trainer", default="torchvision", help="torchvision (default) or mmdet")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (a plugin that registers its trainer; `avanon run --gpus` passes the "
                        "study trainer's module)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m avanon.study.training",
                                description="Train Mask R-CNN / Keypoint R-CNN on a (mirrored) dataset.")
    args = add_train_arguments(p).parse_args(argv)
    return cmd_train(args, [sys.executable, "-m", "avanon.study.training",
                            *(argv if argv is not None else sys.argv[1:])])


def cmd_train(args, command: list[str]) -> int:
    """One run from parsed arguments; `command` is what is recorded as the run's command line."""
    from dataset_adapters import DatasetError
    from avanon.study.training.models import InitWeightsError
    from avanon.study.training.trainers import TRAINERS, TrainerUnavailable

    try:
        for module in getattr(args, "imports", None) or []:
            importlib.import_module(module)
        cfg = load_config_file(args.config, args.set)
        summary = TRAINERS.get(args.trainer)(cfg, args.out, resume=args.resume, test_only=args.test_only,
                                             argv=command)
    except (ConfigError, InitWeightsError, TrainerUnavailable, DatasetError, FileNotFoundError, KeyError,
            ImportError) as e:
        print(f"avanon.study.training: error: {e}", file=sys.stderr)
        return 2
    if dist_info()[0] == 0:
        print(json.dumps({k: v for k, v in summary.items() if not k.startswith("_")}))
    if _dist_on():
        torch.distributed.destroy_process_group()
    return 0

