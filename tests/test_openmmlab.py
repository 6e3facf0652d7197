"""The OpenMMLab backends end to end (opt-in: marker `openmmlab`): the `mmdet` trainer (training from the generated
MMDetection 3.x config on a mirror, evaluation on the ORIGINAL val split by avanon's own evaluator, the study's
results row, resume, seeds, test-only) and the keypoint estimator's `mmpose` backend (the file provider's format
and COCO order). Tiny synthetic data and tiny models: about a minute on 2 CPU cores.

They need mmdet 3.x with a compiled mmcv (mmcv.ops) and mmpose, which scripts/install_openmmlab.sh installs into
the active virtual environment (docs/openmmlab.md); without them every test here is skipped, saying so. Run:

    scripts/install_openmmlab.sh && python -m pytest -q -m openmmlab
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from training_fixtures import TINY, one_thread  # noqa: F401  (an autouse fixture)


def _openmmlab_missing() -> str | None:
    for module in ("mmengine", "mmcv", "mmdet", "mmpose"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    try:
        from mmcv.ops import RoIAlign  # noqa: F401  (mmcv-lite has no ops)
        import mmdet  # noqa: F401  (asserts its mmcv range)
        import mmpose  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


_MISSING = _openmmlab_missing()
pytestmark = [
    pytest.mark.openmmlab,
    pytest.mark.skipif(_MISSING is not None,
                       reason=f"OpenMMLab stack not usable ({_MISSING}); install it with scripts/install_openmmlab.sh "
                              "(docs/openmmlab.md), then: python -m pytest -q -m openmmlab"),
]

# The torchvision tests' tiny widths (tests/test_training.py): an iteration on 64x128 images takes a fraction of
# a second.
SYNTHETIC = {"format": "cityscapes", "num_train": 4, "num_val": 2, "seed": 0, "image_size": [64, 128]}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from dataset_adapters.synthetic import generate

    return generate(tmp_path_factory.mktemp("mm") / "synthetic", "cityscapes", {"train": 4, "val": 2}, seed=0,
                    image_size=(64, 128))


def tiny_config(root: Path, seed: int = 0, iterations: int = 4, **extra) -> dict:
    return {"seed": seed, "threads": 1,
            "data": {"adapter": "synthetic", "root": str(root), "options": dict(SYNTHETIC), "workers": 0},
            "model": {"depth": 18, "min_size": [64], "max_size": 128, "test_min_size": None, "options": dict(TINY)},
            "solver": {"optimizer": "adamw", "batch_size": 2, "lr": 0.001, "weight_decay": 0.05,
                       "iterations": iterations, "steps": [iterations - 1], "warmup_iterations": 1,
                       "clip_grad_norm": 10.0},
            "log_period": 1, "checkpoint_period": 2, **extra}


def final_weights(out: Path) -> dict:
    import torch

    return torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------------ mmdet


def test_mmdet_study_trains_evaluates_on_the_original_and_writes_results(tmp_path):
    """A study with trainer mmdet: a mirror, training from the generated config, avanon's evaluation on the
    ORIGINAL val split, one results.jsonl row per run, the report, and the run directory of the torchvision
    trainer (metrics.json, model_final.pth; the finished run's checkpoint.pth deleted)."""
    import avanon
    from avanon.study.evaluation import evaluate
    from avanon.study.training import data as tdata

    recipe = {
        "name": "mm", "seed": 0, "workers": 1,
        "dataset": {"adapter": "synthetic", "root": str(tmp_path / "data"), "split": "train",
                    "options": dict(SYNTHETIC)},
        "regions": {"body": {"dilation": "crop_relative", "min_size": 8}},
        "filters": {"skip_crowd": True, "skip_ignore": True},
        "anonymize": [{"region": "body", "method": "mask_out"}],
        "output": {"root": str(tmp_path / "out")},
        "study": {"trainer": "mmdet", "model": "mask_rcnn_r18_tiny_mmdet", "seeds": [0],
                  "metrics": ["AP", "AP_person"],
                  "config": {k: v for k, v in tiny_config(tmp_path / "data").items() if k not in ("seed", "data")}
                  | {"data": {"workers": 0}}},
    }
    path = tmp_path / "mm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert avanon.run(path) == 0
    sdir = tmp_path / "out" / "synthetic" / "study" / "mm"
    rows = [json.loads(line) for line in (sdir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["mirror"] for r in rows) == ["body_mask_out", "original"]
    for row in rows:
        assert row["model"] == "mask_rcnn_r18_tiny_mmdet" and row["seed"] == 0
        assert {"AP", "AP50", "AP_person"} <= set(row["metrics"])
        run = Path(row["run_dir"])
        assert (run / "metrics.json").is_file() and (run / "model_final.pth").is_file()
        assert not (run / "checkpoint.pth").exists()  # dropped once the result is recorded
        cfg = json.loads((run / "config.json").read_text())
        ns = (run / "mmdet_config.py").read_text()
        mirror = tmp_path / "out" / "synthetic" / "body_mask_out"
        if row["mirror"] == "body_mask_out":
            assert cfg["data"]["image_root"] == str(mirror.resolve()) and f"'{mirror.resolve()}/'" in ns
        # the same evaluation code path: avanon's evaluate on the predictions gives metrics.json's numbers
        preds = json.loads((run / "predictions_val.json").read_text())
        assert preds and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(preds[0])
        adapter = tdata.build_adapter_for(cfg["data"], "val", cfg["data"]["val_root"])
        again = evaluate(cfg["data"]["adapter"], adapter, preds, cfg["task"])
        assert again["paper"] == json.loads((run / "metrics.json").read_text())["paper"]
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        assert log[0]["event"] == "start" and log[-1]["event"] == "end" and log[-1]["trainer"] == "mmdet"
        assert [r["iteration"] for r in log if "iteration" in r and "loss" in r] == [1, 2, 3, 4]
        assert log[-1]["s_per_iter"] > 0 and log[-1]["metrics"]["AP"] == row["metrics"]["AP"]
        assert all(row["metrics"][k] == v for k, v in log[-1]["metrics"].items() if k in row["metrics"])
    assert (sdir / "report" / "report.md").is_file()


def test_mmdet_seeds_resume_and_test_only(data_root, tmp_path, monkeypatch):
    """Same seed: bit-identical weights (CPU); another seed: other weights; a run interrupted after its checkpoint
    at iteration 2 and resumed ends with the uninterrupted run's weights; --test-only re-evaluates model_final.pth
    to the same metrics; TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set by the trainer, not by the user."""
    import os

    from mmengine.runner import IterBasedTrainLoop

    from avanon.study.training.config import ConfigError
    from avanon.study.training.trainers import TRAINERS

    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    train = TRAINERS.get("mmdet")
    a = train(tiny_config(data_root, eval_after_train=True), tmp_path / "a")
    assert a["trained_iterations"] == 4 and a["metrics"] and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    b = train(tiny_config(data_root, eval_after_train=False), tmp_path / "b")
    assert "metrics" not in b
    assert same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))
    train(tiny_config(data_root, seed=1, eval_after_train=False), tmp_path / "c")
    assert not same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "c"))

    # interrupted in iteration 3, after the checkpoint of iteration 2
    original = IterBasedTrainLoop.run_iter
    calls = []

    def crash(self, data_batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return original(self, data_batch)

    monkeypatch.setattr(IterBasedTrainLoop, "run_iter", crash)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data_root, eval_after_train=False), tmp_path / "r")
    monkeypatch.setattr(IterBasedTrainLoop, "run_iter", original)
    assert (tmp_path / "r" / "checkpoint.pth").is_file() and not (tmp_path / "r" / "model_final.pth").exists()
    with pytest.raises(ConfigError, match="resume"):  # a checkpoint and no resume: refused, as torchvision's
        train(tiny_config(data_root, eval_after_train=False), tmp_path / "r")
    with pytest.raises(ConfigError, match="another config"):
        train(tiny_config(data_root, iterations=6, eval_after_train=False), tmp_path / "r", resume=True)
    r = train(tiny_config(data_root, eval_after_train=False), tmp_path / "r", resume=True)
    assert r["trained_iterations"] == 2
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert {"event": "resume", "iteration": 2} in log
    assert same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "r"))
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ

    t = train(tiny_config(data_root, eval_after_train=True), tmp_path / "a", test_only=True)
    assert t["weights"].endswith("model_final.pth") and t["metrics"] == a["metrics"]


# ------------------------------------------------------------------------------------------------------ mmpose


@pytest.fixture(scope="module")
def cs_record(data_root):
    from avanon.mirror.imageio import read_image
    from dataset_adapters import build_adapter

    adapter = build_adapter("cityscapes", data_root, "train")
    record = next(r for r in adapter.images()
                  if sum(i.category == "person" and not i.iscrowd for i in r.instances) >= 2)
    return record, read_image(data_root / record.file_name, (record.width, record.height)).pixels


@pytest.fixture(scope="module")
def mmpose_random():
    from avanon.regions.keypoints import build_keypoint_provider

    return build_keypoint_provider("estimator", {"backend": "mmpose", "mmpose_checkpoint": "random"}, None,
                                   target_categories=("person",))


def test_mmpose_provider_has_the_file_providers_format(mmpose_random, cs_record, data_root):
    from avanon.regions.keypoints import build_keypoint_provider

    record, image = cs_record
    found = mmpose_random.keypoints(record, image)
    reference = build_keypoint_provider("file", {}, data_root, split="train").keypoints(record)
    persons = {i.instance_id for i in record.instances if i.category == "person" and not i.iscrowd}
    assert set(found) == persons and set(reference) <= persons
    for iid, kp in found.items():
        ref = reference.get(iid, next(iter(reference.values())))
        assert kp.shape == ref.shape == (17, 3) and kp.dtype == ref.dtype == np.float32
        inst = next(i for i in record.instances if i.instance_id == iid)
        x0, y0, x1, y1 = inst.box
        # image coordinates inside the model's input crop: the box padded by 1.25 and widened to 192:256 (a random
        # model puts them anywhere in it)
        w, h = x1 - x0, y1 - y0
        half_w, half_h = 0.625 * max(w, 0.75 * h) + 1, 0.625 * max(h, w / 0.75) + 1
        assert np.all(np.isfinite(kp))
        assert (np.abs(kp[:, 0] - (x0 + x1) / 2) <= half_w).all() and (np.abs(kp[:, 1] - (y0 + y1) / 2) <= half_h).all()
    again = build_keypoint_provider("estimator", {"backend": "mmpose", "mmpose_checkpoint": "random"}, None,
                                    target_categories=("person",)).keypoints(record, image)
    assert all(np.array_equal(found[k], again[k]) for k in found)  # random init is seeded
    out = mmpose_random.apply(record, image)
    kps = [i.keypoints for i in out.instances if i.instance_id in found]
    assert kps and all(k.shape == (17, 3) and set(np.unique(k[:, 2])) <= {0.0, 2.0} for k in kps)
    assert mmpose_random.describe()["weights"] == "random"


def test_mmpose_checkpoint_round_trip_and_coco_order(mmpose_random, cs_record, tmp_path):
    import torch

    from avanon.regions.keypoints import build_keypoint_provider
    from avanon.regions.keypoints.estimator import COCO_KEYPOINT_NAMES, _coco_index

    record, image = cs_record
    ckpt = tmp_path / "pose.pth"
    torch.save({"state_dict": mmpose_random.model.model.state_dict(),
                "meta": {"dataset_meta": mmpose_random.model.model.dataset_meta}}, ckpt)
    loaded = build_keypoint_provider("estimator", {"backend": "mmpose", "mmpose_checkpoint": str(ckpt)}, None,
                                     target_categories=("person",))
    a, b = mmpose_random.keypoints(record, image), loaded.keypoints(record, image)
    assert all(np.allclose(a[k], b[k]) for k in a)
    # the model's keypoints are put in COCO order by name (here: a model with them reversed, plus extra ones)
    names = list(reversed(COCO_KEYPOINT_NAMES)) + ["left_big_toe"]
    index = _coco_index({"keypoint_id2name": dict(enumerate(names))})
    assert [names[i] for i in index] == list(COCO_KEYPOINT_NAMES)
    assert list(_coco_index(mmpose_random.model.model.dataset_meta)) == list(range(17))


def test_mmpose_missing_weights_fail_with_an_actionable_error(tmp_path):
    from avanon.regions.keypoints import KeypointConfigError, build_keypoint_provider

    for params in ({"backend": "mmpose"}, {"backend": "mmpose", "mmpose_checkpoint": str(tmp_path / "no.pth")}):
        with pytest.raises(KeypointConfigError) as err:
            build_keypoint_provider("estimator", params, None)
        msg = str(err.value)
        assert "mmpose_checkpoint" in msg and "model zoo" in msg and "never downloads" in msg and "random" in msg
    with pytest.raises(KeypointConfigError, match="not a file"):
        build_keypoint_provider("estimator", {"backend": "mmpose", "mmpose_config": str(tmp_path / "c.py"),
                                              "mmpose_checkpoint": "random"}, None)


def test_mmpose_builtin_is_the_model_zoo_architecture():
    """The built-in config has the parameters (names and shapes) of mmpose's own td-hm_res50 COCO 256x192 config
    (shipped inside the mmpose package), so that model-zoo checkpoint loads into it."""
    import mmpose
    from mmengine.config import Config
    from mmpose.apis import init_model

    from avanon.regions.keypoints.estimator import mmpose_builtin_config

    packaged = (Path(mmpose.__file__).parent / ".mim" / "configs" / "body_2d_keypoint" / "topdown_heatmap" / "coco"
                / "td-hm_res50_8xb64-210e_coco-256x192.py")
    if not packaged.is_file():
        pytest.skip(f"this mmpose does not ship {packaged.name}")
    zoo = init_model(Config.fromfile(str(packaged)), None, device="cpu").state_dict()
    ours = init_model(Config(mmpose_builtin_config()), None, device="cpu").state_dict()
    assert zoo.keys() == ours.keys() and all(zoo[k].shape == ours[k].shape for k in zoo)
