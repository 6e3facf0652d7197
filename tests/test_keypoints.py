"""Keypoint providers: the reference's keypoint files mapped to the right instances (Cityscapes: detectron2's row
order and cityscapesscripts' instance numbering; BDD100K: cocofmt annotation order), the top-down estimator's
mechanics on random weights, and `avanon inspect --keypoints`."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage

from avanon.regions.keypoints import (
    KEYPOINT_PROVIDERS, TORCHVISION_KEYPOINT_URL, KeypointConfigError, LoaderEntry, build_keypoint_provider,
    cityscapes_instance_values, cityscapes_loader_order,
)
from dataset_adapters import build_adapter
from dataset_adapters import synthetic as S
from tests.adapter_fixtures import write_image, write_json

SPLITS = {"train": 12, "val": 1}
OVERLAPS = ["raster"] + (["shapely"] if importlib.util.find_spec("shapely") else [])


@pytest.fixture(scope="module")
def cs_root(tmp_path_factory) -> Path:
    return S.generate(tmp_path_factory.mktemp("kp") / "cs", "cityscapes", SPLITS, seed=0)


@pytest.fixture(scope="module")
def bdd_root(tmp_path_factory) -> Path:
    return S.generate(tmp_path_factory.mktemp("kp") / "bdd", "bdd100k", SPLITS, seed=0)


def _scene_of_cityscapes(record, size) -> S.Scene:
    index = {S.cityscapes_stem("train", i)[1]: i for i in range(SPLITS["train"])}
    return S.scene_for(0, "train", index[record.image_id[: -len("_leftImg8bit.png")]], size)


def _assert_same_visible(kp: np.ndarray, truth: np.ndarray, threshold: float = 0.3) -> None:
    """The file's keypoints with conf >= threshold are exactly the ground truth's v == 2 ones, at the same place."""
    visible = kp[:, 2] >= threshold
    np.testing.assert_array_equal(visible, truth[:, 2] == 2)
    np.testing.assert_allclose(kp[visible, :2], truth[visible, :2])


# --------------------------------------------------------------------------------------------------- Cityscapes
@pytest.mark.parametrize("overlap", OVERLAPS)
def test_cityscapes_file_rows_map_to_scene_ground_truth(cs_root, overlap):
    adapter = build_adapter("cityscapes", cs_root, "train")
    provider = build_keypoint_provider("file", {"overlap": overlap}, cs_root, split="train")
    size = tuple(S.read_params(cs_root)["image_size"])
    checked, multi, crowds = 0, 0, 0
    for record in adapter.images():
        scene = _scene_of_cityscapes(record, size)
        persons = [o for o in scene.objects if o.kind == "person"]
        multi += len(persons) >= 2
        crowds += sum(o.kind == "crowd" for o in scene.objects)
        found = provider.keypoints(record)
        # cityscapesscripts numbers persons in polygon file order = scene drawing order
        assert set(found) == {str(24000 + k) for k in range(len(persons))}
        for k, person in enumerate(persons):
            _assert_same_visible(found[str(24000 + k)], person.keypoints)
            checked += 1
    assert checked >= 20 and multi >= 3 and crowds >= 1  # the order matters in these scenes
    assert provider.stats["warnings"] == 0 and provider.stats["images"] == SPLITS["train"]


def test_apply_fills_keypoints_v2_without_touching_the_record(cs_root):
    adapter = build_adapter("synthetic", cs_root, "train", format="cityscapes", num_train=12, num_val=1)
    provider = build_keypoint_provider("file", {}, cs_root)  # split from the record's path, file loaded lazily
    size = tuple(S.read_params(cs_root)["image_size"])
    from avanon.regions import build_region_selector

    selector = build_region_selector("body", {}, {}, cs_root, ("person",))
    for record in list(adapter.images())[:4]:
        out = provider.apply(record)
        assert all(inst.keypoints is None for inst in record.instances)  # input untouched
        scene = _scene_of_cityscapes(record, size)
        persons = {str(24000 + k): o for k, o in enumerate(o for o in scene.objects if o.kind == "person")}
        for inst in out.instances:
            if inst.instance_id in persons:
                assert set(np.unique(inst.keypoints[:, 2])) <= {0.0, 2.0}
                np.testing.assert_array_equal(inst.keypoints[:, 2] == 2, persons[inst.instance_id].keypoints[:, 2] == 2)
            else:
                assert inst.keypoints is None  # riders and groups get none
        regions = selector.select(out).regions
        assert regions and all(r.keypoints is not None for r in regions)
        for r in regions:
            assert int(r.keypoints[:, 2].sum()) <= int((persons[r.instance_id].keypoints[:, 2] == 2).sum())


def _doc(objects, w=120, h=80):
    return {"imgWidth": w, "imgHeight": h, "objects": objects}


def _rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# A: covered completely by the later car (detectron2 drops it: no row); B: a row; G: a group row (crowd);
# C: 'deleted' key present with value 0 (detectron2 skips it, cityscapesscripts still numbers it);
# D: a row; a license plate (id -1) over D changes nothing; E: deleted = 1 (skipped and not numbered by both).
RULE_OBJECTS = [
    {"label": "road", "polygon": _rect(0, 60, 119, 79)},
    {"label": "person", "polygon": _rect(10, 10, 20, 40)},        # A
    {"label": "car", "polygon": _rect(5, 5, 30, 50)},
    {"label": "person", "polygon": _rect(40, 10, 50, 40)},        # B
    {"label": "persongroup", "polygon": _rect(55, 20, 70, 30)},   # G
    {"label": "person", "polygon": _rect(75, 10, 80, 40), "deleted": 0},  # C
    {"label": "person", "polygon": _rect(90, 10, 100, 40)},       # D
    {"label": "license plate", "polygon": _rect(88, 8, 102, 42)},
    {"label": "person", "polygon": _rect(104, 10, 110, 40), "deleted": 1},  # E
]


@pytest.mark.parametrize("overlap", OVERLAPS)
def test_loader_order_follows_detectron2_rules(overlap):
    order = cityscapes_loader_order(_doc(RULE_OBJECTS), overlap)
    assert order == [LoaderEntry(6, False, 24003), LoaderEntry(4, True, None), LoaderEntry(3, False, 24001)]


def test_instance_values_match_cityscapesscripts():
    annotation = Annotation()
    annotation.fromJsonText(json.dumps(_doc(RULE_OBJECTS)))
    ids = np.asarray(createInstanceImage(annotation, "ids"))
    values = cityscapes_instance_values(RULE_OBJECTS)
    assert values == {1: 24000, 2: 26000, 3: 24001, 5: 24002, 6: 24003}
    for index, value in values.items():
        (x0, y0), (x1, y1) = RULE_OBJECTS[index]["polygon"][0], RULE_OBJECTS[index]["polygon"][2]
        if index != 1:  # A is hidden under the car
            assert ids[(y0 + y1) // 2, (x0 + x1) // 2] == value
    assert 24000 not in ids


def _cityscapes_tree(root: Path, objects, rows) -> Path:
    stem = "town_000000_000019"
    write_image(root / "leftImg8bit" / "train" / "town" / f"{stem}_leftImg8bit.png", 120, 80)
    write_json(root / "gtFine" / "train" / "town" / f"{stem}_gtFine_polygons.json", _doc(objects))
    write_json(root / "annotated_keypoints_train.json", {f"{stem}_leftImg8bit.png": rows})
    return root


def _row(marker: float, conf: float = 0.9):
    return [[marker, marker + j, conf] for j in range(17)]


def test_cityscapes_rows_skip_groups_and_covered_persons(tmp_path):
    root = _cityscapes_tree(tmp_path / "cs", RULE_OBJECTS, [_row(1.0), _row(2.0, 0.0), _row(3.0, 0.2)])
    adapter = build_adapter("cityscapes", root, "train", masks="polygons")
    record = next(iter(adapter.images()))
    assert {i.instance_id for i in record.instances} >= {"24001", "24003"}
    provider = build_keypoint_provider("file", {}, root, split="train")
    found = provider.keypoints(record)
    assert set(found) == {"24003", "24001"}  # the group row is skipped, C (24002) has no row
    assert found["24003"][0, 0] == 1.0 and found["24001"][0, 0] == 3.0
    out = provider.apply(record)
    kps = {i.instance_id: i.keypoints for i in out.instances}
    assert (kps["24003"][:, 2] == 2).all() and (kps["24001"][:, 2] == 0).all()
    assert kps.get("24002") is None


def test_cityscapes_row_count_mismatch_gives_no_keypoints(tmp_path):
    root = _cityscapes_tree(tmp_path / "cs", RULE_OBJECTS, [_row(1.0), _row(2.0)])
    record = next(iter(build_adapter("cityscapes", root, "train", masks="polygons").images()))
    provider = build_keypoint_provider("file", {}, root, split="train")
    assert provider.keypoints(record) == {}
    assert provider.stats["row_count_mismatch"] == 1 and "2 rows" in provider.warnings[0]
    assert provider.apply(record) is record and not record.problems  # never a failed image for this


def test_file_provider_errors(tmp_path, cs_root):
    with pytest.raises(KeypointConfigError, match="does not exist"):
        build_keypoint_provider("file", {}, tmp_path, split="train")
    with pytest.raises(KeypointConfigError, match="unknown parameter"):
        build_keypoint_provider("file", {"fiel": "x.json"}, cs_root)
    with pytest.raises(KeypointConfigError, match="unknown keypoint provider"):
        build_keypoint_provider("vitpose", {}, cs_root)
    assert KEYPOINT_PROVIDERS.names() == ["annotations", "estimator", "file"]


# ------------------------------------------------------------------------------------------------------ BDD100K
@pytest.mark.parametrize("labels", ["bitmask", "rle", "cocofmt"])
def test_bdd_file_rows_map_to_scene_ground_truth(bdd_root, labels):
    adapter = build_adapter("bdd100k", bdd_root, "train", labels=labels)
    provider = build_keypoint_provider("file", {}, bdd_root, split="train")
    size = tuple(S.read_params(bdd_root)["image_size"])
    index = {S.bdd_name(0, "train", i) + ".jpg": i for i in range(SPLITS["train"])}
    checked = 0
    for record in adapter.images():
        scene = S.scene_for(0, "train", index[record.image_id], size)
        found = provider.keypoints(record)
        by_mask = {inst.instance_id: inst for inst in record.instances}
        persons = [o for o in scene.objects if o.kind == "person"]
        assert len(found) == len(persons)
        for person in persons:
            full = person.full_mask(scene.height, scene.width)
            match = [iid for iid, inst in by_mask.items()
                     if inst.area == full.sum() and (inst.full_mask(scene.height, scene.width) == full).all()]
            assert len(match) == 1
            _assert_same_visible(found[match[0]], person.keypoints)
            checked += 1
    assert checked >= 20 and provider.stats["warnings"] == 0


# ---------------------------------------------------------------------------------------------------- estimator
@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    import torch
    from torchvision.models.detection import keypointrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_keypoints=17)
    path = tmp_path_factory.mktemp("weights") / "keypointrcnn_random.pth"
    torch.save(model.state_dict(), path)
    return path


SMALL = {"min_size": 128, "max_size": 256}  # torchvision's resize: small, for speed


@pytest.fixture(scope="module")
def estimator(random_weights):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny inputs: one thread is as fast and immune to busy CI neighbours
    yield build_keypoint_provider("estimator", {"weights": str(random_weights), **SMALL}, None,
                                  target_categories=("person",))
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def estimated(estimator, cs_root):
    """(record, image, keypoints, backbone calls) of an image with >= 3 persons."""
    from avanon.mirror.imageio import read_image

    adapter = build_adapter("cityscapes", cs_root, "train")
    record = next(r for r in adapter.images()
                  if sum(i.category == "person" and not i.iscrowd for i in r.instances) >= 3)
    image = read_image(cs_root / record.file_name, (record.width, record.height)).pixels
    calls = []
    handle = estimator.model.model.backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        found = estimator.keypoints(record, image)
    finally:
        handle.remove()
    return record, image, found, len(calls)


def test_estimator_weights_round_trip(estimator, random_weights):
    import torch

    saved = torch.load(random_weights, map_location="cpu", weights_only=True)
    loaded = estimator.model.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k].cpu()) for k in saved)


def test_estimator_one_forward_shapes_boxes_and_determinism(estimator, estimated):
    record, image, found, calls = estimated
    assert calls == 1  # every instance of the image in one forward
    targets = {i.instance_id: i for i in record.instances if i.category == "person" and not i.iscrowd}
    assert set(found) == set(targets)
    for iid, kp in found.items():
        assert kp.shape == (17, 3) and kp.dtype == np.float32
        x0, y0, x1, y1 = targets[iid].box
        assert (kp[:, 0] >= x0).all() and (kp[:, 0] <= x1).all() and (kp[:, 1] >= y0).all() and (kp[:, 1] <= y1).all()
        assert ((kp[:, 2] >= 0) & (kp[:, 2] <= 1 + 1e-5)).all()  # local softmax mass
    again = estimator.keypoints(record, image)
    assert all(np.array_equal(found[k], again[k]) for k in found)


def test_estimator_visibility_threshold(estimator, estimated):
    record, image, found, _ = estimated
    conf = np.concatenate([kp[:, 2] for kp in found.values()])
    thr = float(np.median(conf))
    for inst in record.instances:
        if inst.instance_id in found:
            v = estimator.visibility(found[inst.instance_id])
            np.testing.assert_array_equal(v[:, :2], found[inst.instance_id][:, :2])
            np.testing.assert_array_equal(v[:, 2] == 2, found[inst.instance_id][:, 2] >= estimator.threshold)
    estimator.threshold = thr
    try:
        out = estimator.apply(record, image)
    finally:
        estimator.threshold = 0.3
    for inst in out.instances:
        if inst.instance_id in found:
            np.testing.assert_array_equal(inst.keypoints[:, 2] == 2, found[inst.instance_id][:, 2] >= thr)
            assert set(np.unique(inst.keypoints[:, 2])) <= {0.0, 2.0}
        else:
            assert inst.keypoints is None
    assert 0 < sum(int((i.keypoints[:, 2] == 2).sum()) for i in out.instances if i.keypoints is not None) < conf.size


def test_estimator_missing_weights_names_the_url(tmp_path):
    with pytest.raises(KeypointConfigError) as err:
        build_keypoint_provider("estimator", {"weights": str(tmp_path / "missing.pth")}, None)
    assert TORCHVISION_KEYPOINT_URL in str(err.value) and "never downloads" in str(err.value)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(KeypointConfigError, match="cannot read weights"):
        build_keypoint_provider("estimator", {"weights": str(bad)}, None)


def test_mmpose_backend_needs_mmpose(tmp_path):
    if importlib.util.find_spec("mmpose") is not None:
        pytest.skip("mmpose is installed")
    ckpt = tmp_path / "vitpose.pth"
    ckpt.write_bytes(b"x")
    with pytest.raises(KeypointConfigError, match="mmpose"):
        build_keypoint_provider("estimator", {"backend": "mmpose", "mmpose_config": "cfg.py",
                                              "mmpose_checkpoint": str(ckpt)}, None)


# -------------------------------------------------------------------------------------- annotations + inspect
def test_annotations_provider_is_a_no_op(tmp_path):
    root = S.generate(tmp_path / "coco", "coco", {"train": 2, "val": 0}, seed=0)
    record = next(iter(build_adapter("coco", root, "train").images()))
    provider = build_keypoint_provider("annotations", {}, root)
    assert provider.apply(record) is record
    found = provider.keypoints(record)
    assert found and all(np.array_equal(found[i.instance_id], i.keypoints) for i in record.instances
                         if i.keypoints is not None)


def test_inspect_reports_keypoint_fraction_after_provider(cs_root, tmp_path, capsys):
    from avanon.cli import main

    out_json = tmp_path / "stats.json"
    rc = main(["inspect", "--dataset", "cityscapes", "--root", str(cs_root), "--keypoints", "file",
               "--plot", str(tmp_path / "sizes.png"), "--json", str(out_json)])
    assert rc == 0
    d = json.loads(out_json.read_text())
    size = tuple(S.read_params(cs_root)["image_size"])
    persons = [o for i in range(SPLITS["train"]) for o in S.scene_for(0, "train", i, size).objects
               if o.kind == "person"]
    expected = sum(bool((o.keypoints[:, 2] == 2).any()) for o in persons) / len(persons)
    assert d["target_instances"] == len(persons)
    assert d["keypoint_provider"] == "file" and d["keypoint_fraction_provider"] == pytest.approx(expected)
    assert 0 < expected < 1
    assert f"instances with keypoints: {100 * expected:.1f} %" in capsys.readouterr().out
    rc = main(["inspect", "--dataset", "cityscapes", "--root", str(cs_root), "--keypoints", "estimator",
               "--keypoints-param", f"weights={tmp_path / 'none.pth'}", "--plot", str(tmp_path / "s.png")])
    assert rc == 2 and TORCHVISION_KEYPOINT_URL in capsys.readouterr().err
