"""Training throughput options of the torchvision trainer: aspect-ratio grouped batches (identical to the ungrouped
ones when every image has one orientation, single-orientation batches otherwise, resumable, sharded like the
ungrouped stream), channels_last, uint8 transfer, DataLoader options, config validation and upgrade of older run
directories, and DDP on CPU (gloo, 2 processes) with a rank-0 evaluation longer than the collectives' timeout.
CUDA-only checks (fp16 GradScaler resume, channels_last on the GPU) are skipped without a GPU."""
from __future__ import annotations

import json
import socket
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset_adapters.synthetic import generate
from avanon.study.training import data as tdata
from avanon.study.training import engine
from avanon.study.training.config import ConfigError, resolve_config, resolve_flag, upgrade_saved_config
from avanon.study.training.models import build_model, set_channels_last
from training_fixtures import TINY, one_thread  # noqa: F401  (an autouse fixture)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("trainfeat") / "synthetic", "cityscapes", {"train": 5, "val": 2}, seed=0,
                    image_size=(64, 128))


def tiny_config(root: Path, **solver) -> dict:
    return {"data": {"adapter": "cityscapes", "root": str(root), "workers": 0},
            "model": {"depth": 18, "min_size": [64], "max_size": 128, "test_min_size": None, "options": dict(TINY)},
            "solver": {"batch_size": 2, "lr": 0.01, "iterations": 3, "steps": [2], "warmup_iterations": 1,
                       **solver},
            "log_period": 1, "checkpoint_period": 1, "eval_after_train": False}


def ungrouped_batches(size, batch, seed, rank=0, world=1, start_iter=0, n=10):
    """The batches the ungrouped loader forms: InfiniteSampler's per-rank stream cut into batch // world."""
    per_rank = batch // world
    it = iter(tdata.InfiniteSampler(size, seed, rank, world, start=start_iter * per_rank))
    return [[next(it) for _ in range(per_rank)] for _ in range(n)]


# --------------------------------------------------------------------------------------- aspect-ratio grouping


@pytest.mark.parametrize("size,batch,world", [(5, 2, 1), (7, 4, 2), (6, 6, 3), (3, 4, 1)])
def test_one_orientation_gives_exactly_the_ungrouped_batches(size, batch, world):
    for start in (0, 1, 4):
        for rank in range(world):
            grouped = tdata.GroupedBatchSampler([0] * size, batch, seed=3, rank=rank, world_size=world, start=start)
            assert list(islice(iter(grouped), 10)) == ungrouped_batches(size, batch, 3, rank, world, start)
    # the general bucket walk agrees with the one-group shortcut
    sampler = tdata.GroupedBatchSampler([0] * size, batch, seed=3)
    assert list(islice(sampler.global_batches(2), 6)) == list(islice(sampler.bucketed(2), 6))


def test_mixed_orientations_give_single_orientation_batches_resumable_and_sharded():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 2, size=23).tolist()
    batch, seed = 4, 5
    full = tdata.GroupedBatchSampler(groups, batch, seed=seed)
    batches = list(islice(full.global_batches(), 40))
    for b in batches:
        assert len(b) == batch and len({groups[i] for i, _ in b}) == 1
    positions = [pos for b in batches for _, pos in b]
    assert len(set(positions)) == len(positions)  # every stream position is used at most once
    # nothing is held back for long: at most batch - 1 samples per group wait in a bucket
    assert sorted(positions)[: len(positions) - 2 * (batch - 1)] == list(range(len(positions) - 2 * (batch - 1)))
    # batches come in order of completion; the samples of each keep their stream position's flip seed
    ranked = list(islice(iter(full), 40))
    assert ranked == [[(i, tdata.sample_seed(seed, pos)) for i, pos in b] for b in batches]
    # a resume at iteration k continues exactly
    for k in (1, 7, 25):
        resumed = tdata.GroupedBatchSampler(groups, batch, seed=seed, start=k)
        assert list(islice(iter(resumed), 10)) == ranked[k:k + 10]
    # two processes: each takes every other sample of the same batch (the ungrouped sharding)
    shards = [list(islice(iter(tdata.GroupedBatchSampler(groups, batch, seed=seed, rank=r, world_size=2,
                                                         start=3)), 10)) for r in range(2)]
    for k in range(10):
        merged = [x for pair in zip(shards[0][k], shards[1][k]) for x in pair]
        assert merged == ranked[3 + k]
    with pytest.raises(ValueError, match="divisible"):
        tdata.GroupedBatchSampler(groups, 3, world_size=2)


class _Fake(torch.utils.data.Dataset):
    """Images of two orientations; an item is its index, its seed and its own group, as tensors."""

    def __init__(self, groups):
        self.groups = groups

    def __len__(self):
        return len(self.groups)

    def aspect_ratio_groups(self):
        return list(self.groups)

    def __getitem__(self, key):
        index, seed = key
        return torch.tensor([index, self.groups[index]]), {"seed": int(seed)}


def _take(loader, n):
    out = []
    for images, targets in islice(iter(loader), n):
        out.append([(int(im[0]), int(im[1]), t["seed"]) for im, t in zip(images, targets)])
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_grouped_batches_resume_and_workers(workers):
    groups = [0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0]
    ds = _Fake(groups)
    straight = _take(tdata.train_loader(ds, batch_size=2, seed=1, workers=workers), 12)
    assert all(len({g for _, g, _ in b}) == 1 for b in straight)
    resumed = _take(tdata.train_loader(ds, batch_size=2, seed=1, start_iter=5, workers=workers), 7)
    assert resumed == straight[5:]
    ungrouped = _take(tdata.train_loader(ds, batch_size=2, seed=1, aspect_ratio_grouping=False), 12)
    assert any(len({g for _, g, _ in b}) == 2 for b in ungrouped)  # this stream does mix them without grouping
    one = _Fake([1] * len(groups))
    assert _take(tdata.train_loader(one, batch_size=2, seed=1, workers=workers), 12) == \
        _take(tdata.train_loader(one, batch_size=2, seed=1, aspect_ratio_grouping=False), 12)


def test_real_dataset_one_orientation_same_loader_batches(root):
    from dataset_adapters import build_adapter

    ds = tdata.DetectionDataset(build_adapter("cityscapes", root, "train", categories="all"), train=True)
    assert set(ds.aspect_ratio_groups()) == {0}
    a = tdata.train_loader(ds, batch_size=2, seed=0, start_iter=1)
    b = tdata.train_loader(ds, batch_size=2, seed=0, start_iter=1, aspect_ratio_grouping=False)
    for (ia, ta), (ib, tb) in islice(zip(a, b), 4):
        assert all(torch.equal(x, y) for x, y in zip(ia, ib))
        for x, y in zip(ta, tb):
            assert x.keys() == y.keys() and x["image_id"] == y["image_id"]
            assert all(torch.equal(x[k], y[k]) for k in x if isinstance(x[k], torch.Tensor))


def test_grouping_leaves_one_orientation_training_bit_identical(root, tmp_path):
    cfg = tiny_config(root)
    engine.train(cfg, tmp_path / "grouped")
    off = json.loads(json.dumps(cfg))
    off["data"]["aspect_ratio_grouping"] = False
    engine.train(off, tmp_path / "plain")
    a = torch.load(tmp_path / "grouped" / "model_final.pth", weights_only=True)
    b = torch.load(tmp_path / "plain" / "model_final.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = json.loads((tmp_path / "grouped" / "log.jsonl").read_text().splitlines()[0])
    assert start["channels_last"] is False and start["amp"] == "none"  # auto on CPU: off


# --------------------------------------------------------------------------------- config, images, channels_last


def test_new_options_defaults_and_validation(root):
    cfg = resolve_config(tiny_config(root))
    assert cfg["solver"]["channels_last"] == "auto" and cfg["data"]["pin_memory"] == "auto"
    assert cfg["data"]["aspect_ratio_grouping"] is True and cfg["data"]["prefetch_factor"] == 2
    assert cfg["data"]["eval_workers"] is None
    assert cfg["dist_timeout_minutes"] == 30 and cfg["eval_timeout_minutes"] == 1440
    assert resolve_flag("auto", True) and not resolve_flag("auto", False) and resolve_flag(True, False)
    bad = [({"solver": {"channels_last": "yes"}}, "solver.channels_last"),
           ({"data": {"pin_memory": 1}}, "data.pin_memory"),
           ({"data": {"aspect_ratio_grouping": "on"}}, "aspect_ratio_grouping"),
           ({"data": {"prefetch_factor": 0}}, "prefetch_factor"),
           ({"data": {"eval_workers": -1}}, "eval_workers"),
           ({"dist_timeout_minutes": 0}, "dist_timeout_minutes")]
    for override, match in bad:
        c = tiny_config(root)
        for k, v in override.items():
            c[k] = {**c[k], **v} if isinstance(v, dict) else v
        with pytest.raises(ConfigError, match=match):
            resolve_config(c)
    ok = tiny_config(root)
    ok["solver"]["channels_last"] = False
    ok["data"].update(pin_memory=True, eval_workers=0)
    resolve_config(ok)


def test_run_directory_older_than_the_options_resumes_ungrouped(root, tmp_path, monkeypatch):
    cfg = tiny_config(root)
    real_save = engine.atomic_torch_save

    def save_then_die(obj, path):
        real_save(obj, path)
        if isinstance(obj, dict) and obj.get("iteration") == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "atomic_torch_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        engine.train(cfg, tmp_path / "old")
    monkeypatch.setattr(engine, "atomic_torch_save", real_save)
    saved = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in ("eval_workers", "pin_memory", "prefetch_factor", "aspect_ratio_grouping"):
        del saved["data"][key]
    del saved["solver"]["channels_last"], saved["dist_timeout_minutes"], saved["eval_timeout_minutes"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    full, missing = upgrade_saved_config(saved)
    assert ("data", "aspect_ratio_grouping") in missing and full["data"]["aspect_ratio_grouping"] is False
    assert full["solver"]["channels_last"] == "auto"
    summary = engine.train(cfg, tmp_path / "old", resume=True)
    assert summary["iterations"] == 3
    assert json.loads((tmp_path / "old" / "config.json").read_text())["data"]["aspect_ratio_grouping"] is False


def test_uint8_images_scale_to_the_same_floats(root):
    from dataset_adapters import build_adapter

    adapter = build_adapter("cityscapes", root, "train", categories="all")
    ds = tdata.DetectionDataset(adapter, train=True)
    ds8 = tdata.DetectionDataset(adapter, train=True, uint8_images=True)
    image, _ = ds[(0, 11)]
    image8, _ = ds8[(0, 11)]
    assert image8.dtype == torch.uint8 and image.dtype == torch.float32
    assert torch.equal(tdata.to_device_image(image8, "cpu"), image)
    assert tdata.to_device_image(image, "cpu") is image


def test_channels_last_model_trains_to_the_same_losses(root):
    from dataset_adapters import build_adapter

    ds = tdata.DetectionDataset(build_adapter("cityscapes", root, "train", categories="all"), train=True)
    images, targets = tdata.collate([ds[(i, i)] for i in range(2)])
    losses = []
    for on in (False, True):
        torch.manual_seed(0)
        model = build_model("instance_segmentation", 18, len(ds.thing_classes), None, [64], 128, **TINY)
        if on:
            set_channels_last(model)
            conv = model.backbone.body.conv1.weight
            assert conv.is_contiguous(memory_format=torch.channels_last)
            batched, _ = model.transform(list(images))
            assert batched.tensors.is_contiguous(memory_format=torch.channels_last)
        model.train()
        torch.manual_seed(1)
        losses.append({k: float(v.detach()) for k, v in model(list(images), list(targets)).items()})
    assert losses[0].keys() == losses[1].keys()
    for k in losses[0]:
        assert losses[1][k] == pytest.approx(losses[0][k], rel=1e-4, abs=1e-5), k
    model = set_channels_last(model, False)
    assert model.backbone.body.conv1.weight.is_contiguous() and not model.transform.channels_last


def test_channels_last_training_run_on_cpu(root, tmp_path):
    cfg = tiny_config(root, iterations=1, steps=[], channels_last=True)
    cfg["data"].update(pin_memory=False, eval_workers=0)
    summary = engine.train(cfg, tmp_path / "cl")
    assert summary["iterations"] == 1
    start = json.loads((tmp_path / "cl" / "log.jsonl").read_text().splitlines()[0])
    assert start["channels_last"] is True


# ------------------------------------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_scaler_channels_last_and_resume(root, tmp_path, monkeypatch):
    cfg = tiny_config(root, amp="fp16")
    cfg["device"] = "cuda"
    cfg["checkpoint_period"] = 2
    engine.train(cfg, tmp_path / "straight")
    a = torch.load(tmp_path / "straight" / "checkpoint.pth", weights_only=True)
    assert a["scaler"] and a["scaler"]["scale"] > 0  # the GradScaler is live and checkpointed
    start = json.loads((tmp_path / "straight" / "log.jsonl").read_text().splitlines()[0])
    assert start["channels_last"] is True and start["amp"] == "fp16"
    real_save = engine.atomic_torch_save

    def save_then_die(obj, path):
        real_save(obj, path)
        if isinstance(obj, dict) and obj.get("iteration") == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "atomic_torch_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        engine.train(cfg, tmp_path / "resumed")
    monkeypatch.setattr(engine, "atomic_torch_save", real_save)
    at2 = torch.load(tmp_path / "resumed" / "checkpoint.pth", weights_only=True)
    seen = {}
    real_load = torch.amp.GradScaler.load_state_dict

    def spy(self, state):
        seen.update(state)
        return real_load(self, state)

    monkeypatch.setattr(torch.amp.GradScaler, "load_state_dict", spy)
    engine.train(cfg, tmp_path / "resumed", resume=True)
    assert seen and seen["scale"] == at2["scaler"]["scale"] and seen["_growth_tracker"] == \
        at2["scaler"]["_growth_tracker"]
    for amp in ("bf16", "none"):
        c = tiny_config(root, amp=amp, iterations=1, steps=[])
        c["device"] = "cuda"
        assert engine.train(c, tmp_path / f"run_{amp}")["iterations"] == 1


# -------------------------------------------------------------------------------------------- DDP (gloo, CPU)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg: dict, out: str, slow_eval_s: float) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    real_evaluate = engine._evaluate

    def slow_evaluate(*args, **kw):  # rank 0's evaluation outlasts the collectives' timeout
        time.sleep(slow_eval_s)
        result = real_evaluate(*args, **kw)
        Path(out, "evaluated").write_text("1")
        return result

    engine._evaluate = slow_evaluate
    summary = engine.train(cfg, out)
    record = {"rank": rank, "evaluated_before_return": Path(out, "evaluated").is_file(),
              "num_predictions": summary.get("num_predictions"), "iterations": summary.get("iterations")}
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_gloo_two_processes_survive_a_long_rank0_evaluation(root, tmp_path):
    import torch.multiprocessing as mp

    cfg = tiny_config(root, iterations=2, steps=[])
    cfg.update(device="cpu", eval_after_train=True, checkpoint_period=1,
               dist_timeout_minutes=0.1)  # 6 s: rank 0's evaluation below takes longer than that
    cfg["data"].update(adapter="synthetic", options={"format": "cityscapes", "num_train": 5, "num_val": 2,
                                                     "image_size": [64, 128]})
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(out), 9.0), nprocs=2, join=True)
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["iterations"] for r in records] == [2, 2]
    assert all(r["evaluated_before_return"] for r in records)  # rank 1 waited for rank 0's files
    assert records[0]["num_predictions"] == records[1]["num_predictions"]  # both hold every rank's predictions
    assert (out / "metrics.json").is_file() and (out / "predictions_val.json").is_file()
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["iteration"] == 2 and len(ckpt["rng"]) == 2
