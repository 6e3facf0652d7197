"""Training on mirrors: dataset targets, model building and initialisation, the training loop (checkpoint, log,
resume, test-only), COCO results of `predict`, and the MMDetection config generator. Tiny models on tiny synthetic
images, so the whole file runs in well under a minute on 2 CPU cores."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from dataset_adapters import build_adapter
from dataset_adapters.synthetic import generate
from avanon.study.training import data as tdata
from avanon.study.training import engine
from avanon.study.training.mmdet_config import mmdet_config_dict, mmdet_config_text, parse_config_text
from avanon.study.training.models import (
    InitWeightsError, MissingInitFile, build_model, init_kind, published_urls,
)
from avanon.study.training.trainers import TRAINERS, TrainerUnavailable, check_mmdet, prepare_mmdet_run
from training_fixtures import TINY, one_thread  # noqa: F401  (an autouse fixture)

CITYSCAPES_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
# torchvision's widths cut down so that an iteration on 64x128 images takes a fraction of a second


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("train") / "synthetic", "cityscapes", {"train": 4, "val": 2}, seed=0,
                    image_size=(64, 128))


def tiny_config(root: Path, **solver) -> dict:
    return {"data": {"adapter": "cityscapes", "root": str(root), "workers": 0},
            "model": {"depth": 18, "min_size": [64], "max_size": 128, "test_min_size": None, "options": dict(TINY)},
            "solver": {"batch_size": 2, "lr": 0.01, "iterations": 3, "steps": [2], "warmup_iterations": 1,
                       **solver},
            "log_period": 1, "checkpoint_period": 1, "eval_after_train": False}


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------------ data


def test_dataset_targets_in_torchvision_format(root):
    adapter = build_adapter("cityscapes", root, "train", categories="all")
    ds = tdata.DetectionDataset(adapter, train=True, flip_prob=0.0)
    assert ds.thing_classes == CITYSCAPES_CLASSES and len(ds) == 4
    records = list(adapter.images())
    n_train_targets = 0
    for k, (image, target) in enumerate(ds[i] for i in range(len(ds))):
        rec = records[k]
        assert image.dtype == torch.float32 and image.shape == (3, rec.height, rec.width)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        n = len(target["labels"])
        assert target["boxes"].shape == (n, 4) and target["boxes"].dtype == torch.float32
        assert target["masks"].shape == (n, rec.height, rec.width) and target["masks"].dtype == torch.uint8
        assert bool((target["boxes"][:, 2:] > target["boxes"][:, :2]).all())
        assert set(target["labels"].tolist()) <= set(range(1, 9)) and not target["iscrowd"].any()
        expected = [i for i in rec.instances if not (i.iscrowd or i.ignore) and i.category in CITYSCAPES_CLASSES]
        assert n == len(expected)  # every non-crowd instance of an evaluated class, nothing else
        for j, inst in enumerate(expected):
            assert target["labels"][j] == CITYSCAPES_CLASSES.index(inst.category) + 1
            assert target["boxes"][j].tolist() == [float(v) for v in inst.box]
            assert np.array_equal(target["masks"][j].numpy().astype(bool), inst.full_mask(rec.height, rec.width))
        n_train_targets += n
    assert n_train_targets > 0
    # crowd groups exist in the data and are only in evaluation targets (iscrowd=1)
    crowds = sum(i.iscrowd for r in records for i in r.instances)
    ev = tdata.DetectionDataset(adapter, train=False)
    assert sum(int(ev[i][1]["iscrowd"].sum()) for i in range(len(ev))) == crowds


def test_exclude_classes_and_mirror_image_root(root, tmp_path):
    adapter = build_adapter("cityscapes", root, "train", categories="all")
    mirror = tmp_path / "mirror"
    shutil.copytree(root, mirror)
    records = list(adapter.images())
    # the mirror holds another picture for the first image and lacks the last one (a failed image)
    Image.fromarray(np.full((64, 128, 3), 7, np.uint8)).save(mirror / records[0].file_name)
    (mirror / records[-1].file_name).unlink()
    ds = tdata.DetectionDataset(adapter, mirror, exclude_classes=["person"], flip_prob=0.0)
    assert len(ds) == 3 and ds.skipped == {"image missing from image_root": 1}
    image, target = ds[0]
    assert torch.allclose(image, torch.full_like(image, 7 / 255))
    assert 1 not in set(torch.cat([ds[i][1]["labels"] for i in range(len(ds))]).tolist())
    with pytest.raises(ValueError, match="not classes of this dataset"):
        tdata.DetectionDataset(adapter, exclude_classes=["pedestrian"])


def test_hflip_boxes_masks_and_keypoint_swap():
    image = torch.arange(2 * 3 * 4 * 10, dtype=torch.float32).reshape(2, 3, 4, 10)[0]
    masks = torch.zeros(1, 4, 10, dtype=torch.uint8)
    masks[0, 1:3, 1:4] = 1
    kps = torch.zeros(1, 17, 3)
    kps[0, 5] = torch.tensor([2.0, 1.0, 2])  # left shoulder
    kps[0, 6] = torch.tensor([3.0, 1.0, 1])  # right shoulder
    target = {"boxes": torch.tensor([[1.0, 1.0, 4.0, 3.0]]), "masks": masks, "keypoints": kps}
    flipped, t = tdata.hflip(image, target)
    assert torch.equal(flipped, image.flip(-1))
    assert t["boxes"].tolist() == [[6.0, 1.0, 9.0, 3.0]]
    assert torch.equal(t["masks"][0, 1:3, 6:9], torch.ones(2, 3, dtype=torch.uint8)) and int(t["masks"].sum()) == 6
    assert t["keypoints"][0, 6].tolist() == [8.0, 1.0, 2.0]  # the left shoulder is now the right one
    assert t["keypoints"][0, 5].tolist() == [7.0, 1.0, 1.0]
    assert t["keypoints"][0, 0].tolist() == [0.0, 0.0, 0.0]  # unlabelled stays all-zero
    twice = tdata.hflip(*tdata.hflip(image, target))[1]
    assert torch.equal(twice["keypoints"], kps) and torch.equal(twice["boxes"], target["boxes"])


def test_keypoint_targets(tmp_path):
    coco_root = generate(tmp_path / "coco", "coco", {"train": 2, "val": 0}, seed=1, image_size=(64, 96))
    ds = tdata.DetectionDataset(build_adapter("coco", coco_root, "train", categories="all"), task="keypoints",
                                flip_prob=0.0)
    _, target = ds[0]
    n = len(target["labels"])
    assert target["keypoints"].shape == (n, 17, 3) and "masks" not in target
    assert set(target["labels"].tolist()) <= {1}
    assert tdata.coco_image_ids(list(ds.adapter.images())) == {s.file_name: s.image_id for s in ds.samples}


def test_sampler_is_resumable_and_shards_like_distributed_sampler():
    full = engine.InfiniteSampler(5, seed=3)
    stream = [x for _, x in zip(range(40), iter(full))]
    assert sorted(i for i, _ in stream[:5]) == list(range(5))  # an epoch is a permutation
    resumed = engine.InfiniteSampler(5, seed=3, start=7)
    assert [x for _, x in zip(range(10), iter(resumed))] == stream[7:17]
    shards = [engine.InfiniteSampler(5, seed=3, rank=r, world_size=2) for r in range(2)]
    parts = [[x for _, x in zip(range(10), iter(s))] for s in shards]
    assert [x for pair in zip(*parts) for x in pair] == stream[:20]


def test_lr_schedule_warmup_and_steps():
    solver = {"gamma": 0.1, "steps": [10, 20], "warmup_iterations": 5, "warmup_factor": 0.001}
    assert engine.lr_factor(0, solver) == pytest.approx(0.001)
    assert engine.lr_factor(5, solver) == 1.0 and engine.lr_factor(9, solver) == 1.0
    assert engine.lr_factor(10, solver) == pytest.approx(0.1) and engine.lr_factor(25, solver) == pytest.approx(0.01)
    assert engine.lr_factor(2, solver) < engine.lr_factor(3, solver) < 1.0


# ----------------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_mask_rcnn_every_depth(depth):
    model = build_model("instance_segmentation", depth, num_classes=8, min_size=[64, 80], max_size=128, **TINY)
    assert model.roi_heads.box_predictor.cls_score.out_features == 9  # 8 classes + background
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 9
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)  # scratch: plain BN
    assert all(p.requires_grad for p in model.parameters())  # scratch: every layer trains
    assert model.transform.min_size == (64, 80) and model.transform.max_size == 128


def test_keypoint_rcnn_builds_and_trains_one_step():
    standard = build_model("keypoints", 50, num_classes=1)  # torchvision's keypointrcnn_resnet50_fpn layout
    convs = [m for m in standard.roi_heads.keypoint_head if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8 and standard.roi_heads.keypoint_predictor.kps_score_lowres.in_channels == 512
    model = build_model("keypoints", 18, num_classes=1, min_size=64, max_size=96, keypoint_head_channels=32,
                        keypoint_head_layers=2, **{k: v for k, v in TINY.items() if not k.startswith("mask")})
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 17
    kps = torch.zeros(1, 17, 3)
    kps[0, :, :2] = torch.tensor([20.0, 20.0]) + torch.arange(17)[:, None].float()
    kps[0, :, 2] = 2
    target = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1]), "keypoints": kps}
    losses = model([torch.rand(3, 64, 96)], [target])
    assert set(losses) >= {"loss_keypoint", "loss_classifier"} and all(torch.isfinite(v) for v in losses.values())


def test_imagenet_backbone_state_dict_loads(tmp_path):
    from torchvision.models import resnet18
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(1)
    reference = resnet18(weights=None)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(reference.state_dict(), path)
    assert init_kind(torch.load(path, weights_only=True)) == "imagenet"
    model = build_model("instance_segmentation", 18, 3, init=path, min_size=64, max_size=128)
    body = model.backbone.body
    assert model.init_report["kind"] == "imagenet"
    assert torch.equal(body.conv1.weight, reference.conv1.weight)
    assert torch.equal(body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(body.layer2[0].bn1.running_var, reference.layer2[0].bn1.running_var)
    assert isinstance(body.bn1, FrozenBatchNorm2d)  # pretrained: frozen BN (torchvision / detectron2)
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad  # trainable_backbone_layers 3
    with pytest.raises(InitWeightsError, match="wrong depth"):
        build_model("instance_segmentation", 34, 3, init=path)


def test_detector_state_dict_round_trip_and_head_reinit(tmp_path, caplog):
    torch.manual_seed(0)
    a = build_model("instance_segmentation", 18, 3, min_size=64, max_size=128)
    path = tmp_path / "detector.pth"
    torch.save({"model": a.state_dict(), "iteration": 5}, path)  # a training checkpoint works too
    b = build_model("instance_segmentation", 18, 3, init=path, norm="bn", trainable_backbone_layers=5)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.init_report["kind"] == "detector" and not b.init_report["reinitialised"]
    with caplog.at_level("INFO", logger="avanon.study.training.models"):
        c = build_model("instance_segmentation", 18, 5, init=path, norm="bn", trainable_backbone_layers=5)
    reinit = c.init_report["reinitialised"]
    assert {r.split()[0] for r in reinit} == {
        "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias",
        "roi_heads.mask_predictor.mask_fcn_logits.weight", "roi_heads.mask_predictor.mask_fcn_logits.bias"}
    assert "re-initialised" in caplog.text
    assert torch.equal(c.backbone.fpn.layer_blocks[0][0].weight, a.backbone.fpn.layer_blocks[0][0].weight)
    # a torchvision detector file initialises a frozen-BN model: BN statistics become FrozenBatchNorm buffers
    d = build_model("instance_segmentation", 18, 3, init=path)
    assert torch.equal(d.backbone.body.bn1.running_mean, a.backbone.body.bn1.running_mean)


def test_missing_init_file_names_key_and_url(tmp_path):
    with pytest.raises(MissingInitFile) as err:
        build_model("instance_segmentation", 50, 8, init=tmp_path / "resnet50.pth", init_key="train.model.init")
    text = str(err.value)
    assert "train.model.init" in text and str(tmp_path / "resnet50.pth") in text and "never downloads" in text
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in text
    assert "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth" in text
    assert isinstance(err.value, FileNotFoundError)
    urls = published_urls("keypoints", 50)
    assert any("keypointrcnn_resnet50_fpn_coco" in u for u in urls.values())
    assert len(published_urls("instance_segmentation", 18)) == 1  # torchvision has no R-18 detector


# ----------------------------------------------------------------------------------------------------- engine


def test_train_writes_checkpoint_log_and_resumes_bit_identically(root, tmp_path, monkeypatch):
    cfg = tiny_config(root)
    cfg["checkpoint_period"] = 2
    straight = engine.train(cfg, tmp_path / "straight")
    out = tmp_path / "straight"
    for name in ("config.json", "log.jsonl", "checkpoint.pth", "model_final.pth"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text()) == engine.resolve_config(cfg)
    records = log_records(out)
    assert records[0]["event"] == "start" and records[0]["thing_classes"] == list(CITYSCAPES_CLASSES)
    its = [r for r in records if "iteration" in r and "loss" in r]
    assert [r["iteration"] for r in its] == [1, 2, 3]
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg", "lr",
            "s_per_iter", "img_per_s"} <= set(its[0])
    assert its[0]["lr"] == pytest.approx(0.01 * 0.001) and its[2]["lr"] == pytest.approx(0.001)  # warmup, step
    assert straight["iterations"] == 3 and records[-1]["event"] == "end"

    # the same run, interrupted right after the checkpoint of iteration 2, then resumed (with a worker process)
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
    assert at2["iteration"] == 2
    with pytest.raises(engine.ConfigError, match="resume it"):
        engine.train(cfg, tmp_path / "resumed")  # no silent restart over a checkpoint
    resumed_cfg = json.loads(json.dumps(cfg))
    resumed_cfg["data"]["workers"] = 1  # a runtime key: may differ on resume
    summary = engine.train(resumed_cfg, tmp_path / "resumed", resume=True)
    assert summary["iterations"] == 3 and summary["trained_iterations"] == 1
    assert {"event": "resume", "iteration": 2} in log_records(tmp_path / "resumed")

    # the optimizer state restored at iteration 2 is the saved one: the resumed run ends where the straight run did
    a = torch.load(out / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 3
    assert a["lr_scheduler"]["last_epoch"] == b["lr_scheduler"]["last_epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]) for k in sa)

    other = json.loads(json.dumps(cfg))
    other["solver"]["lr"] = 0.02
    with pytest.raises(engine.ConfigError, match="solver.lr"):
        engine.train(other, tmp_path / "resumed", resume=True)


def test_predict_returns_valid_coco_results_and_test_only(root, tmp_path):
    cfg = tiny_config(root, iterations=2, steps=[])
    cfg["eval_after_train"] = True
    # the synthetic adapter (a wrapper around the Cityscapes reader): COCO-style evaluation, quicker
    cfg["data"].update(adapter="synthetic", options={"format": "cityscapes", "num_train": 4, "num_val": 2,
                                                     "image_size": [64, 128]})
    summary = engine.train(cfg, tmp_path / "run")
    results = json.loads(Path(summary["predictions"]).read_text())
    assert results and summary["num_predictions"] == len(results)
    val = build_adapter("cityscapes", root, "val", categories="all")
    records = list(val.images())
    ids = tdata.coco_image_ids(records)
    sizes = {ids[r.file_name]: (r.height, r.width) for r in records}
    for r in results:
        assert r["image_id"] in sizes and 1 <= r["category_id"] <= len(CITYSCAPES_CLASSES)
        assert len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0 and 0 <= r["score"] <= 1
        assert isinstance(r["segmentation"]["counts"], str)
        mask = mask_utils.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"]})
        assert mask.shape == sizes[r["image_id"]]
    try:
        import avanon.study.evaluation  # noqa: F401
    except ImportError:
        pass
    else:
        metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert set(summary["metrics"]) >= {"AP", "AP50", "AP_person"} and "coco" in metrics

    again = engine.train(cfg, tmp_path / "run", test_only=True)
    assert again["weights"].endswith("model_final.pth")
    assert json.loads(Path(again["predictions"]).read_text()) == results  # same weights, same predictions


def test_outputs_to_coco_masks_and_keypoints():
    masks = torch.zeros(2, 1, 6, 8)
    masks[0, 0, 1:3, 2:5] = 0.9
    masks[0, 0, 4, 4] = 0.5  # not above the 0.5 threshold
    masks[1, 0, 5, 7] = 0.7
    kps = torch.rand(2, 17, 3)
    out = {"boxes": torch.tensor([[2.0, 1.0, 5.0, 3.0], [7.0, 5.0, 8.0, 6.0]]), "labels": torch.tensor([3, 1]),
           "scores": torch.tensor([0.9, 0.2]), "masks": masks, "keypoints": kps}
    res = engine.outputs_to_coco(out, 17)
    assert [r["category_id"] for r in res] == [3, 1] and res[0]["bbox"] == [2.0, 1.0, 3.0, 2.0]
    for r, m in zip(res, masks[:, 0]):
        decoded = mask_utils.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"]})
        assert np.array_equal(decoded, (m > 0.5).numpy().astype(np.uint8))
    assert len(res[0]["keypoints"]) == 51 and res[0]["image_id"] == 17
    assert engine.outputs_to_coco({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)},
                                  1) == []


def test_config_errors(root, tmp_path):
    with pytest.raises(engine.ConfigError, match="solver.lrr"):
        engine.resolve_config({"data": {"adapter": "cityscapes", "root": "x"}, "solver": {"lrr": 1}})
    with pytest.raises(engine.ConfigError, match="data.root"):
        engine.resolve_config({"data": {"adapter": "cityscapes"}})
    cfg = engine.resolve_config({"data": {"adapter": "cityscapes", "root": "x"}, "solver": {"amp": True},
                                 "model": {"min_size": 600}})
    assert cfg["solver"]["amp"] == "fp16" and cfg["model"]["min_size"] == [600]
    with pytest.raises(FileNotFoundError, match="train first"):
        engine.train(tiny_config(root), tmp_path / "empty", test_only=True)


def test_resume_without_checkpoint_starts_at_zero(root, tmp_path):
    summary = engine.train(tiny_config(root, iterations=1), tmp_path / "fresh", resume=True)
    assert summary["iterations"] == summary["trained_iterations"] == 1


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  data: {adapter: cityscapes, root: /data}\n  solver: {lr: 0.02}\n")
    cfg = engine.load_config_file(path, ["solver.lr=0.01", "model.depth=18", "data.exclude_classes=[person]"])
    assert cfg["solver"]["lr"] == 0.01 and cfg["model"]["depth"] == 18 and cfg["data"]["exclude_classes"] == ["person"]


# ------------------------------------------------------------------------------------------------------ mmdet


def test_mmdet_config_is_the_same_model_and_schedule(tmp_path):
    cfg = engine.resolve_config({
        "data": {"adapter": "cityscapes", "root": "/data/cityscapes", "image_root": "/anon/body_mask_out"},
        "model": {"depth": 101, "init": None, "min_size": [800, 1024], "max_size": 2048, "test_min_size": 1024},
        "solver": {"batch_size": 8, "lr": 0.01, "iterations": 24000, "steps": [18000], "warmup_iterations": 1000,
                   "clip_grad_norm": 5.0},
        "seed": 2})
    text = mmdet_config_text(cfg, CITYSCAPES_CLASSES, "/o/ann/train.json", "/o/ann/val.json", "/o", num_gpus=2)
    ns = parse_config_text(text)
    assert ns == mmdet_config_dict(cfg, CITYSCAPES_CLASSES, "/o/ann/train.json", "/o/ann/val.json", "/o", 2)
    model = ns["model"]
    assert model["type"] == "MaskRCNN" and model["backbone"]["depth"] == 101
    assert model["backbone"]["norm_cfg"] == {"type": "BN", "requires_grad": True}
    assert model["backbone"]["frozen_stages"] == -1  # scratch: every stage trains
    assert model["neck"]["in_channels"] == [256, 512, 1024, 2048]
    assert model["roi_head"]["bbox_head"]["num_classes"] == 8 and model["roi_head"]["mask_head"]["num_classes"] == 8
    train, val = ns["train_dataloader"], ns["val_dataloader"]
    assert train["batch_size"] == 4 and train["dataset"]["data_prefix"] == {"img": "/anon/body_mask_out/"}
    assert val["dataset"]["data_prefix"] == {"img": "/data/cityscapes/"}  # evaluation on the ORIGINAL images
    assert train["dataset"]["ann_file"] == "/o/ann/train.json" and ns["val_evaluator"]["ann_file"] == "/o/ann/val.json"
    assert ns["metainfo"]["classes"] == CITYSCAPES_CLASSES
    assert train["dataset"]["pipeline"][2]["scales"] == [(2048, 800), (2048, 1024)]
    assert ns["test_pipeline"][1]["scale"] == (2048, 1024)
    assert ns["train_cfg"] == {"type": "IterBasedTrainLoop", "max_iters": 24000, "val_interval": 24000}
    assert ns["param_scheduler"][0]["end"] == 1000 and ns["param_scheduler"][1]["milestones"] == [18000]
    assert ns["optim_wrapper"]["optimizer"] == {"type": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
    assert ns["optim_wrapper"]["clip_grad"] == {"max_norm": 5.0, "norm_type": 2}
    assert ns["randomness"]["seed"] == 2 and ns["load_from"] is None
    # ImageNet init: frozen BN and torchvision's trainable layers 3 = mmdet's frozen_stages 1
    pre = engine.resolve_config({"data": {"adapter": "cityscapes", "root": "/d"},
                                 "model": {"depth": 50, "init": "/w/resnet50-0676ba61.pth"}})
    backbone = parse_config_text(mmdet_config_text(pre, ("person",), "a", "b", "/o"))["model"]["backbone"]
    assert backbone["frozen_stages"] == 1 and backbone["norm_eval"] is True
    assert backbone["init_cfg"] == {"type": "Pretrained", "checkpoint": "/w/resnet50-0676ba61.pth"}
    with pytest.raises(ValueError, match="keypoints"):
        mmdet_config_text(engine.resolve_config({"task": "keypoints", "data": {"adapter": "coco", "root": "/d"}}),
                          ("person",), "a", "b", "/o")


def test_mmdet_run_files_and_missing_backend(root, tmp_path):
    pytest.importorskip("avanon.study.evaluation")
    cfg = tiny_config(root)
    path = prepare_mmdet_run(cfg, tmp_path / "mm")
    ns = parse_config_text(path.read_text())
    train_ann = json.loads(Path(ns["train_dataloader"]["dataset"]["ann_file"]).read_text())
    assert [c["name"] for c in train_ann["categories"]] == list(CITYSCAPES_CLASSES)
    assert len(train_ann["images"]) == 4 and train_ann["annotations"]
    try:
        check_mmdet()
    except TrainerUnavailable as e:
        assert "mmcv" in str(e) and "torchvision" in str(e)
        with pytest.raises(TrainerUnavailable):
            TRAINERS.get("mmdet")(cfg, tmp_path / "mm2")
    assert {"mmdet", "torchvision"} <= set(TRAINERS.names())  # the built-ins (tests may register more)


def test_mmdet_trains_when_installed(root, tmp_path):
    pytest.importorskip("mmdet")
    try:
        check_mmdet()
    except TrainerUnavailable as e:
        pytest.skip(str(e).splitlines()[-1])
    cfg = tiny_config(root, iterations=2)
    cfg["model"]["options"] = {}
    summary = TRAINERS.get("mmdet")(cfg, tmp_path / "mm")
    assert summary["trainer"] == "mmdet" and (tmp_path / "mm" / "last_checkpoint").is_file()


def test_avanon_train_cli_config_resume_and_test_only(root, tmp_path, capsys):
    """`avanon train` as the README documents it: --config and --out, --set, then --resume and --test-only."""
    from avanon.cli import main

    cfg_path = tmp_path / "run.json"
    cfg_path.write_text(json.dumps(tiny_config(root, iterations=2, steps=[])))
    out = tmp_path / "x"
    assert main(["train", "--config", str(cfg_path), "--out", str(out), "--set", "checkpoint_period=1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["iterations"] == 2 and (out / "model_final.pth").is_file()
    assert log_records(out)[0]["argv"][-4:] == ["--out", str(out), "--set", "checkpoint_period=1"]
    # resuming a finished run trains nothing more; --test-only predicts from model_final.pth without training
    assert main(["train", "--config", str(cfg_path), "--out", str(out), "--set", "checkpoint_period=1",
                 "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["trained_iterations"] == 0
    assert main(["train", "--config", str(cfg_path), "--out", str(out), "--set", "checkpoint_period=1",
                 "--test-only"]) == 0
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
