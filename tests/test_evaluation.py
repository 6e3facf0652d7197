"""Evaluation: id conventions, ground truth from the adapters, COCO-style AP (both backends), the official
Cityscapes instance evaluation, and the dispatcher. Perfect predictions (the ground truth as results) must give
AP 100; shifted or missing ones must lower it; crowds must be ignored."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from adapter_fixtures import (
    BddObject, box_mask, coco_ann, coco_image, coco_keypoints, make_cityscapes, make_coco, official_instance_image,
    CITYSCAPES_SCENE, write_bdd, write_coco,
)
from dataset_adapters import ImageRecord, build_adapter
from avanon.study.evaluation import (
    category_ids, coco_image_ids, decode_mask, encode_mask, evaluate, evaluate_cityscapes, evaluate_coco,
    faster_available, ground_truth_coco, official_thing_classes, results_from_detections,
    results_from_ground_truth,
)
from avanon.study.evaluation import cityscapes_eval

BACKENDS = ["pycocotools", pytest.param("faster", marks=pytest.mark.skipif(
    not faster_available(), reason="faster-coco-eval is not installed (optional extra 'faster-eval')"))]
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# --------------------------------------------------------------------------------------------------- helpers


def shift_rle(rle: dict, dx: int, dy: int) -> dict:
    mask = decode_mask(rle)
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0),
                                                                     max(-dx, 0):w - max(dx, 0)]
    return encode_mask(out)


def shifted(pred: dict, dx: int, dy: int) -> dict:
    p = dict(pred)
    x, y, w, h = p["bbox"]
    p["bbox"] = [x + dx, y + dy, w, h]
    if "segmentation" in p:
        p["segmentation"] = shift_rle(p["segmentation"], dx, dy)
    if "keypoints" in p:
        kps = np.asarray(p["keypoints"], dtype=float).reshape(17, 3)
        kps[:, 0] += dx
        kps[:, 1] += dy
        p["keypoints"] = kps.ravel().tolist()
    return p


def jittered(preds: list[dict], seed: int = 0) -> list[dict]:
    """Shifted by 0..3 px, random scores, every 5th dropped, plus a few false positives."""
    rng = np.random.default_rng(seed)
    out = []
    for i, p in enumerate(preds):
        if i % 5 == 4:
            continue
        q = shifted(p, int(rng.integers(-3, 4)), int(rng.integers(-3, 4)))
        q["score"] = float(rng.uniform(0.05, 1.0))
        out.append(q)
        if i % 7 == 0:
            fp = shifted(p, 40, 10)
            fp["score"] = float(rng.uniform(0.05, 1.0))
            out.append(fp)
    return out


def is100(*values: float) -> bool:
    """pycocotools' precision is tp / (tp + fp + eps): a class with one instance scores 99.99999999999997."""
    return all(v == pytest.approx(100.0, abs=1e-9) for v in values)


def assert_same_numbers(a: dict, b: dict):
    assert a.keys() == b.keys()
    for t in a:
        assert a[t].keys() == b[t].keys(), t
        for k in a[t]:
            x, y = a[t][k], b[t][k]
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=1e-9), (t, k, x, y)


# -------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def synthetic_roots(tmp_path_factory):
    from dataset_adapters.synthetic import generate

    base = tmp_path_factory.mktemp("synthetic")
    return {fmt: generate(base / fmt, fmt, splits={"val": 4}, seed=0) for fmt in ("cityscapes", "bdd100k", "coco")}


@pytest.fixture(scope="module")
def cs_gt(synthetic_roots):
    adapter = build_adapter("cityscapes", synthetic_roots["cityscapes"], "val", categories="all")
    return adapter, ground_truth_coco(adapter)


@pytest.fixture
def cs_fixture(tmp_path):
    """The adapter-test scene (persons, riders, a car, person and rider groups) as the val split."""
    make_cityscapes(tmp_path)
    adapter = build_adapter("cityscapes", tmp_path, "val", categories="all")
    return tmp_path, adapter, ground_truth_coco(adapter)


# ------------------------------------------------------------------------------------------------------- ids


def record(image_id: str, file_name: str) -> ImageRecord:
    return ImageRecord(image_id=image_id, file_name=file_name, width=1, height=1)


def test_coco_image_ids_numeric_kept_else_position():
    assert coco_image_ids([record("139", "a/139.jpg"), record("7", "a/7.jpg")]) == {"a/139.jpg": 139, "a/7.jpg": 7}
    assert coco_image_ids([record("x.png", "c/x.png"), record("7", "c/7.png")]) == {"c/x.png": 1, "c/7.png": 2}
    assert coco_image_ids([record("07", "a"), record("7", "b")]) == {"a": 1, "b": 2}  # numeric but colliding
    assert coco_image_ids([]) == {}


def test_category_ids_are_positions_in_thing_classes(synthetic_roots):
    adapter = build_adapter("bdd100k", synthetic_roots["bdd100k"], "val", categories="all")
    assert category_ids(adapter) == {n: i for i, n in enumerate(adapter.thing_classes, start=1)}
    assert category_ids(("person", "car")) == {"person": 1, "car": 2}
    synthetic = build_adapter("synthetic", synthetic_roots["bdd100k"].parent / "wrapped", "val", format="bdd100k",
                              num_train=0, num_val=2, categories="all")
    assert category_ids(synthetic)["pedestrian"] == 1


def test_results_from_detections_torchvision_style():
    masks = np.zeros((2, 1, 10, 12), np.float32)
    masks[0, 0, 2:5, 3:7] = 0.9
    masks[1, 0, 0:2, 0:2] = 0.4  # below the threshold: empty
    res = results_from_detections(5, np.array([[3, 2, 7, 5], [0, 0, 2, 2]]), np.array([1, 3]),
                                  np.array([0.9, 0.2]), masks=masks, keypoints=np.ones((2, 17, 3)))
    assert [r["category_id"] for r in res] == [1, 3] and res[0]["image_id"] == 5
    assert res[0]["bbox"] == [3.0, 2.0, 4.0, 3.0]
    assert isinstance(res[0]["segmentation"]["counts"], str)
    assert decode_mask(res[0]["segmentation"]).sum() == 12 and not decode_mask(res[1]["segmentation"]).any()
    assert len(res[1]["keypoints"]) == 51
    json.dumps(res)


# ------------------------------------------------------------------------------------------------ ground truth


def test_ground_truth_from_cityscapes_matches_the_instance_image(cs_fixture):
    _, adapter, gt = cs_fixture
    assert [c["name"] for c in gt["categories"]] == list(adapter.thing_classes)
    assert [c["id"] for c in gt["categories"]] == list(range(1, 9))
    (image,) = gt["images"]
    assert image == {"id": 1, "file_name": "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png",
                     "width": 64, "height": 48}
    official = official_instance_image(CITYSCAPES_SCENE)
    values = [24, 25, 24000, 24001, 24003, 25000, 26000]  # groups first (pixel value order), person 24002 hidden
    assert [(a["category_id"], a["iscrowd"]) for a in gt["annotations"]] == [
        (1, 1), (2, 1), (1, 0), (1, 0), (1, 0), (2, 0), (3, 0)]
    for ann, value in zip(gt["annotations"], values, strict=True):
        mask = official == value
        np.testing.assert_array_equal(decode_mask(ann["segmentation"]), mask)
        assert ann["area"] == mask.sum()
        rows, cols = np.nonzero(mask)
        assert ann["bbox"] == [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()]
        assert isinstance(ann["segmentation"]["counts"], str)
    json.dumps(gt)


def test_ground_truth_needs_all_categories(cs_fixture):
    root, _, _ = cs_fixture
    with pytest.raises(ValueError, match="categories='all'"):
        ground_truth_coco(build_adapter("cityscapes", root, "val"))


def test_ground_truth_bdd_crowd_and_ignore_are_crowd(tmp_path):
    write_bdd(tmp_path, "val", {"a.jpg": [
        BddObject("1", "pedestrian", box_mask(2, 4, 14, 40)),
        BddObject("2", "car", box_mask(20, 20, 40, 44)),
        BddObject("3", "pedestrian", box_mask(42, 2, 62, 22), crowd=True),
        BddObject("4", "bicycle", box_mask(44, 26, 52, 46), ignore=True)]})
    gt = ground_truth_coco(build_adapter("bdd100k", tmp_path, "val", categories="all"))
    assert [(a["category_id"], a["iscrowd"], a["ignore"]) for a in gt["annotations"]] == [
        (1, 0, 0), (3, 0, 0), (1, 1, 0), (8, 1, 1)]


def test_ground_truth_problem_images_raise_unless_not_strict(cs_fixture):
    root, _, _ = cs_fixture
    (root / "gtFine/val/lindau/lindau_000000_000019_gtFine_instanceIds.png").write_bytes(b"broken")
    adapter = build_adapter("cityscapes", root, "val", categories="all")
    with pytest.raises(ValueError, match="annotation problems"):
        ground_truth_coco(adapter)
    assert ground_truth_coco(adapter, strict=False)["annotations"] == []


# ------------------------------------------------------------------------------------------------ COCO-style


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["cityscapes", "bdd100k"])
def test_perfect_predictions_give_100(synthetic_roots, fmt, backend):
    adapter = build_adapter(fmt, synthetic_roots[fmt], "val", categories="all")
    gt = ground_truth_coco(adapter)
    result = evaluate_coco(gt, results_from_ground_truth(gt), backend=backend)
    present = {gt["categories"][a["category_id"] - 1]["name"] for a in gt["annotations"] if not a["iscrowd"]}
    assert {"person" if fmt == "cityscapes" else "pedestrian", "car"} <= present
    for iou_type in ("bbox", "segm"):
        r = result[iou_type]
        assert is100(r["AP"], r["AP50"], r["AP75"])
        for name in adapter.thing_classes:  # a key per class: 100 where there is ground truth, NaN elsewhere
            assert is100(r[f"AP_{name}"]) if name in present else math.isnan(r[f"AP_{name}"]), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_shifted_or_missing_predictions_lower_ap(cs_gt, backend):
    _, gt = cs_gt
    perfect = results_from_ground_truth(gt)
    person = 1
    persons = [p for p in perfect if p["category_id"] == person]
    others = [p for p in perfect if p["category_id"] != person]
    assert len(persons) >= 4
    missing = evaluate_coco(gt, others + persons[1:], backend=backend)
    moved = evaluate_coco(gt, others + [shifted(persons[0], 6, 0)] + persons[1:], backend=backend)
    for result in (missing, moved):
        for iou_type in ("bbox", "segm"):
            assert result[iou_type]["AP_person"] < 100.0
            assert result[iou_type]["AP"] < 100.0
            assert is100(result[iou_type]["AP_car"])
    # a box shifted by 6 px still overlaps at IoU 0.5 for a big person, but not at 0.95
    assert moved["segm"]["AP_person"] < 100.0 and missing["bbox"]["AP50"] < 100.0
    # a low-scored false positive lowers AP less than a high-scored one
    fp = shifted(persons[0], 60, 0)
    low = evaluate_coco(gt, perfect + [dict(fp, score=0.01)], backend=backend)["segm"]["AP_person"]
    high = evaluate_coco(gt, perfect + [dict(fp, score=1.0)], backend=backend)["segm"]["AP_person"]
    assert high < 100.0 and is100(low)  # ranked after every true positive: no precision lost at any recall


@pytest.mark.parametrize("backend", BACKENDS)
def test_crowd_ground_truth_is_ignored(cs_fixture, backend):
    _, _, gt = cs_fixture
    perfect = results_from_ground_truth(gt)
    crowd_as_detections = [dict(p, score=0.99) for p in results_from_ground_truth(gt, include_crowd=True)
                           if p not in perfect]
    assert len(crowd_as_detections) == 2  # the person group and the rider group
    for preds in (perfect, perfect + crowd_as_detections):
        result = evaluate_coco(gt, preds, backend=backend)
        assert is100(result["segm"]["AP"], result["bbox"]["AP"])
    # the same detections without the crowd flag in the ground truth: false positives... and misses
    no_crowd = dict(gt, annotations=[dict(a, iscrowd=0) for a in gt["annotations"]])
    assert evaluate_coco(no_crowd, perfect, backend=backend)["segm"]["AP"] < 100.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_classes_restriction(cs_gt, backend):
    _, gt = cs_gt
    others = [p for p in results_from_ground_truth(gt) if p["category_id"] != 1]
    full = evaluate_coco(gt, others, backend=backend)
    assert full["segm"]["AP_person"] == 0.0 and full["segm"]["AP"] < 100.0
    rest = [c["name"] for c in gt["categories"] if c["name"] != "person"]
    restricted = evaluate_coco(gt, others, backend=backend, classes=rest)
    assert is100(restricted["segm"]["AP"], restricted["bbox"]["AP"])
    assert "AP_person" not in restricted["segm"] and "AP_car" in restricted["segm"]
    by_id = evaluate_coco(gt, others, backend=backend, classes=[2, 3, 4, 5, 6, 7, 8])
    assert_same_numbers(by_id, restricted)
    with pytest.raises(ValueError, match="unknown class"):
        evaluate_coco(gt, others, classes=["pedestrian"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_predictions_give_zero(cs_gt, backend):
    _, gt = cs_gt
    result = evaluate_coco(gt, [], iou_types=("bbox", "segm"), backend=backend)
    for iou_type in ("bbox", "segm"):
        assert result[iou_type]["AP"] == result[iou_type]["AP50"] == result[iou_type]["AP_person"] == 0.0
        assert math.isnan(result[iou_type]["AP_truck"])  # no ground truth


def test_bad_predictions_are_named(cs_gt):
    _, gt = cs_gt
    good = results_from_ground_truth(gt)[0]
    with pytest.raises(ValueError, match="image_id 999"):
        evaluate_coco(gt, [dict(good, image_id=999)])
    with pytest.raises(ValueError, match="category_id 9"):
        evaluate_coco(gt, [dict(good, category_id=9)])
    no_mask = {k: v for k, v in good.items() if k != "segmentation"}
    with pytest.raises(ValueError, match="segmentation"):
        evaluate_coco(gt, [no_mask], iou_types=("segm",))
    assert evaluate_coco(gt, [no_mask], iou_types=("bbox",))["bbox"]["AP"] > 0
    with pytest.raises(ValueError, match="keypoints"):
        evaluate_coco(gt, [good], iou_types=("keypoints",))


@pytest.mark.skipif(not faster_available(), reason="faster-coco-eval is not installed")
@pytest.mark.parametrize("fmt", ["cityscapes", "bdd100k", "coco"])
def test_backends_give_the_same_numbers(synthetic_roots, fmt):
    options = {"annotation": "person_keypoints"} if fmt == "coco" else {}
    adapter = build_adapter(fmt, synthetic_roots[fmt], "val", categories="all", **options)
    gt = ground_truth_coco(adapter)
    iou_types = ("bbox", "segm", "keypoints") if fmt == "coco" else ("bbox", "segm")
    preds = jittered(results_from_ground_truth(gt, min_keypoints=1), seed=1)
    a = evaluate_coco(gt, preds, iou_types, backend="pycocotools")
    b = evaluate_coco(gt, preds, iou_types, backend="faster")
    assert 0 < a["segm"]["AP"] < 100
    assert_same_numbers(a, b)


def test_evaluation_does_not_modify_inputs(cs_gt):
    _, gt = cs_gt
    preds = jittered(results_from_ground_truth(gt))
    before = json.dumps([gt, preds], sort_keys=True)
    evaluate_coco(gt, preds, backend="pycocotools")
    evaluate_coco(gt, preds)
    assert json.dumps([gt, preds], sort_keys=True) == before


# ------------------------------------------------------------------------------------------------- keypoints


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("source", ["json", "adapter"])
def test_keypoints_perfect_100_and_shifted_lower(synthetic_roots, backend, source):
    adapter = build_adapter("coco", synthetic_roots["coco"], "val", categories="all")
    gt = ground_truth_coco(adapter, source=source)
    assert gt["categories"][0]["name"] == "person" and len(gt["categories"][0]["keypoints"]) == 17
    perfect = results_from_ground_truth(gt, min_keypoints=1)
    result = evaluate_coco(gt, perfect, ("bbox", "keypoints"), backend=backend)
    assert is100(result["keypoints"]["AP"], result["keypoints"]["AP_person"])
    assert "APs" not in result["keypoints"] and "APm" in result["keypoints"]
    assert is100(result["bbox"]["AP"])
    moved = [shifted(p, 4, 0) if i % 2 == 0 else p for i, p in enumerate(perfect)]
    assert evaluate_coco(gt, moved, ("keypoints",), backend=backend)["keypoints"]["AP"] < 100.0


def test_coco_json_route_equals_the_official_file(tmp_path):
    """Category ids 1 and 3 in the JSON become 1 and 2; the numbers equal pycocotools on the original file."""
    make_coco(tmp_path)
    images = [coco_image(139), coco_image(285), coco_image(632, width=40, height=30)]
    anns = [coco_ann(1, 139, [[5, 5, 25, 5, 25, 40, 5, 40]], keypoints=coco_keypoints(1)),
            coco_ann(2, 139, [[30, 10, 60, 10, 60, 40, 30, 40]], category_id=3),
            coco_ann(3, 632, [[2, 2, 30, 2, 30, 25, 2, 25]], keypoints=coco_keypoints(3)),
            coco_ann(4, 285, [[0, 0, 20, 0, 20, 20, 0, 20]], category_id=3)]
    for a in anns:  # official-style areas and boxes (polygon geometry, not mask pixels)
        xs, ys = a["segmentation"][0][0::2], a["segmentation"][0][1::2]
        a["bbox"] = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        a["area"] = float(a["bbox"][2] * a["bbox"][3])
    path = write_coco(tmp_path, "val", images, anns, annotation="instances")
    adapter = build_adapter("coco", tmp_path, "val", annotation="instances", categories="all")
    gt = ground_truth_coco(adapter)  # auto = the JSON for COCO
    assert [(c["id"], c["name"]) for c in gt["categories"]] == [(1, "person"), (2, "car")]
    assert [a["category_id"] for a in gt["annotations"]] == [1, 2, 1, 2]
    preds = jittered(results_from_ground_truth(gt), seed=3) + [shifted(results_from_ground_truth(gt)[1], 3, 1)]
    ours = evaluate_coco(gt, preds, backend="pycocotools")
    original_ids = {1: 1, 2: 3}
    official = COCO(str(path))
    for iou_type in ("bbox", "segm"):
        dts = [dict(p, category_id=original_ids[p["category_id"]]) for p in preds]
        if iou_type == "segm":
            dts = [{k: v for k, v in d.items() if k != "bbox"} for d in dts]
        e = COCOeval(official, official.loadRes(dts), iou_type)
        e.evaluate(), e.accumulate(), e.summarize()
        assert ours[iou_type]["AP"] == pytest.approx(e.stats[0] * 100)
        assert ours[iou_type]["AP50"] == pytest.approx(e.stats[1] * 100)


def test_coco_adapter_and_json_routes_agree_on_synthetic_data(synthetic_roots):
    """The synthetic JSON's areas and boxes are the masks', so both routes give identical numbers."""
    adapter = build_adapter("coco", synthetic_roots["coco"], "val", annotation="instances", categories="all")
    from_json = ground_truth_coco(adapter, source="json")
    from_adapter = ground_truth_coco(adapter, source="adapter")
    assert [im["id"] for im in from_json["images"]] == [im["id"] for im in from_adapter["images"]]
    preds = jittered(results_from_ground_truth(from_adapter), seed=2)
    assert_same_numbers(evaluate_coco(from_json, preds, backend="pycocotools"),
                        evaluate_coco(from_adapter, preds, backend="pycocotools"))
    with pytest.raises(ValueError, match="COCO-format"):
        ground_truth_coco(build_adapter("bdd100k", synthetic_roots["bdd100k"], "val", categories="all"),
                          source="json")


# ---------------------------------------------------------------------------------------- official Cityscapes


def test_official_eval_runs_on_the_installed_numpy(cs_gt, tmp_path):
    """Runs the real script end to end (np.in1d, matches.json with numpy values) on whatever numpy is installed."""
    adapter, gt = cs_gt
    result = evaluate_cityscapes(adapter.root, "val", results_from_ground_truth(gt), adapter, tmp_path)
    assert result["AP"] == result["AP50"] == result["AP_person"] == 100.0
    work = tmp_path / "cityscapes_eval"
    assert (work / "matches.json").is_file() and (work / "gtInstances.json").is_file()
    exported = json.loads((work / "resultInstanceLevelSemanticLabeling.json").read_text())
    assert exported["averages"]["allAp"] == pytest.approx(1.0)
    assert not (work / "results" / "masks").exists()  # removed unless keep_masks


def test_official_eval_runs_as_on_numpy_2_4(cs_gt, tmp_path, monkeypatch):
    """What numpy >= 2.3 changed, simulated on any numpy: no np.in1d (removed in 2.4) and count_nonzero returning
    numpy integers (2.3), which the script json-dumps into matches.json. The shims make both work, and leave numpy
    and the script's module as they were."""
    adapter, gt = cs_gt
    official = cityscapes_eval._official_module()
    had_in1d = hasattr(np, "in1d")
    monkeypatch.delattr(np, "in1d", raising=False)
    count_nonzero = np.count_nonzero
    monkeypatch.setattr(np, "count_nonzero", lambda *a, **k: np.int64(count_nonzero(*a, **k)))
    before = (official.np, official.writeDict2JSON)
    result = evaluate_cityscapes(adapter.root, "val", results_from_ground_truth(gt), adapter, tmp_path)
    assert result["AP"] == result["AP50"] == result["AP_person"] == 100.0
    matches = json.loads((tmp_path / "cityscapes_eval" / "matches.json").read_text())
    preds = [p for image in matches.values() for label in image["prediction"].values() for p in label]
    assert preds and all(type(p["pixelCount"]) is int and p["pixelCount"] > 0 for p in preds)
    assert (official.np, official.writeDict2JSON) == before
    assert not hasattr(np, "in1d")
    monkeypatch.undo()
    assert hasattr(np, "in1d") == had_in1d


def test_in1d_shim_is_numpys_in1d():
    a = np.array([[1, 5, 7], [0, 24, 3]])
    got = cityscapes_eval._in1d(a, [0, 5, 24])
    assert got.shape == (6,) and got.tolist() == [False, True, False, True, True, False]
    assert cityscapes_eval._in1d(a, [0, 5], invert=True).tolist() == [True, False, True, False, True, True]
    if hasattr(np, "in1d"):  # numpy < 2.4: the real one agrees
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            np.testing.assert_array_equal(np.in1d(a, [0, 5, 24]), got)


def test_json_writer_writes_numpy_numbers(tmp_path):
    class Obj:
        def __init__(self):
            self.x = np.float32(0.5)

    data = {"n": np.int64(3), "f": np.float64(0.25), "b": np.bool_(True), "a": np.arange(3), "o": Obj(), "i": 1}
    cityscapes_eval._write_json(data, str(tmp_path / "m.json"))
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"n": 3, "f": 0.25, "b": True, "a": [0, 1, 2], "o": {"x": 0.5}, "i": 1}
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=4)  # the script's layout


def test_official_eval_perfect_shifted_missing(cs_gt, tmp_path):
    adapter, gt = cs_gt
    perfect = results_from_ground_truth(gt)
    assert official_thing_classes() == adapter.thing_classes
    result = evaluate_cityscapes(adapter.root, "val", perfect, adapter, tmp_path / "a")
    for name in adapter.thing_classes:
        present = any(a["category_id"] == adapter.thing_classes.index(name) + 1 for a in gt["annotations"])
        assert result[f"AP_{name}"] == 100.0 if present else math.isnan(result[f"AP_{name}"])
    persons = [p for p in perfect if p["category_id"] == 1]
    others = [p for p in perfect if p["category_id"] != 1]
    big = max(persons, key=lambda p: p["bbox"][2] * p["bbox"][3])
    moved = evaluate_cityscapes(adapter.root, "val", [shifted(big, 3, 0) if p is big else p for p in perfect],
                                adapter, tmp_path / "b")
    missing = evaluate_cityscapes(adapter.root, "val", others + [p for p in persons if p is not big], adapter,
                                  tmp_path / "c")
    for r in (moved, missing):
        assert r["AP_person"] < 100.0 and r["AP"] < 100.0 and r["AP_car"] == 100.0
    assert moved["AP50_person"] == 100.0  # 3 px on a big person keeps IoU > 0.5
    empty = evaluate_cityscapes(adapter.root, "val", [], adapter)  # temporary directory
    assert empty["AP"] == empty["AP_person"] == 0.0
    restricted = evaluate_cityscapes(adapter.root, "val", others, adapter, classes=["rider", "car", "bicycle"])
    assert restricted["AP"] == 100.0 and restricted["AP_person"] == 0.0


@pytest.mark.parametrize("shape", [(48, 64), (7, 13), (5, 1), (256, 512)])
def test_bilevel_png_reads_back_as_the_script_reads_it(tmp_path, shape):
    from PIL import Image

    mask = np.random.default_rng(shape[0]).random(shape) < 0.3
    for m in (mask, np.zeros(shape, bool), decode_mask(encode_mask(mask))):  # C and Fortran order
        cityscapes_eval.write_bilevel_png(tmp_path / "m.png", m)
        with Image.open(tmp_path / "m.png") as im:
            assert im.size == shape[::-1]
            np.testing.assert_array_equal(np.array(im.convert("L")) != 0, m)


def test_official_eval_ignores_groups(cs_fixture, tmp_path):
    root, adapter, gt = cs_fixture
    perfect = results_from_ground_truth(gt)
    groups = [dict(p, score=0.99) for p in results_from_ground_truth(gt, include_crowd=True) if p not in perfect]
    for preds in (perfect, perfect + groups):
        result = evaluate_cityscapes(root, "val", preds, adapter, tmp_path)
        assert result["AP"] == result["AP_person"] == result["AP_rider"] == 100.0


def test_official_eval_checks_predictions(cs_fixture):
    root, adapter, gt = cs_fixture
    good = results_from_ground_truth(gt)[0]
    with pytest.raises(ValueError, match="image_id"):
        evaluate_cityscapes(root, "val", [dict(good, image_id=2)], adapter)
    with pytest.raises(ValueError, match="segmentation"):
        evaluate_cityscapes(root, "val", [{k: v for k, v in good.items() if k != "segmentation"}], adapter)
    small = dict(good, segmentation=encode_mask(np.ones((10, 10), bool)))
    with pytest.raises(ValueError, match="10x10"):
        evaluate_cityscapes(root, "val", [small], adapter)


def test_official_eval_failure_inside_the_script_is_explained(cs_fixture, monkeypatch):
    """A new numpy/cityscapesscripts incompatibility is re-raised naming both versions and the constraints file."""
    root, adapter, gt = cs_fixture
    official = cityscapes_eval._official_module()

    def broken(*args, **kwargs):
        raise AttributeError("module 'numpy' has no attribute 'something_removed'")

    monkeypatch.setattr(official, "evaluateImgLists", broken)
    with pytest.raises(RuntimeError, match=rf"constraints.txt.*numpy {np.__version__}.*something_removed"):
        evaluate_cityscapes(root, "val", results_from_ground_truth(gt), adapter)


def test_official_eval_exit_becomes_an_error(cs_fixture, monkeypatch):
    root, adapter, gt = cs_fixture
    official = cityscapes_eval._official_module()
    monkeypatch.setattr(official, "evaluateImgLists", lambda *a: official.printError("something is wrong"))
    with pytest.raises(RuntimeError, match="something is wrong"):
        evaluate_cityscapes(root, "val", results_from_ground_truth(gt), adapter)


# ------------------------------------------------------------------------------------------------ dispatcher


def test_evaluate_cityscapes_dataset(cs_gt, tmp_path):
    adapter, gt = cs_gt
    out = evaluate("cityscapes", adapter, results_from_ground_truth(gt), "instance_segmentation", tmp_path)
    assert out["paper"] == {"AP": 100.0, "AP50": 100.0, "AP_person": 100.0}
    assert out["cityscapes"]["AP_person"] == 100.0
    assert is100(out["coco"]["segm"]["AP"], out["coco"]["bbox"]["AP"])
    assert json.loads((tmp_path / "metrics.json").read_text())["paper"]["AP"] == 100.0


def test_evaluate_bdd_and_synthetic(synthetic_roots, tmp_path):
    adapter = build_adapter("bdd100k", synthetic_roots["bdd100k"], "val", categories="all")
    gt = ground_truth_coco(adapter)
    preds = [p for p in results_from_ground_truth(gt) if p["category_id"] != 1]  # no pedestrians
    out = evaluate("bdd100k", adapter, preds, "instance_segmentation", tmp_path)
    assert "cityscapes" not in out and out["paper"]["AP_person"] == 0.0 and out["paper"]["AP"] < 100.0
    other = evaluate("bdd100k", adapter, preds, "instance_segmentation", classes=adapter.thing_classes[1:])
    assert is100(other["paper"]["AP"])
    wrapped = build_adapter("synthetic", synthetic_roots["cityscapes"].parent / "syn_cs", "val",
                            format="cityscapes", num_train=0, num_val=2, categories="all")
    syn_gt = ground_truth_coco(wrapped)
    syn = evaluate("synthetic", wrapped, results_from_ground_truth(syn_gt), "instance_segmentation")
    assert "cityscapes" not in syn and is100(syn["paper"]["AP"]) and syn["meta"]["format"] == "cityscapes"
    official = evaluate("synthetic", wrapped, results_from_ground_truth(syn_gt), "instance_segmentation",
                        official_cityscapes=True)
    assert official["cityscapes"]["AP"] == 100.0


def test_evaluate_coco_keypoints(synthetic_roots):
    adapter = build_adapter("coco", synthetic_roots["coco"], "val", categories="all")
    gt = ground_truth_coco(adapter)
    out = evaluate("coco", adapter, results_from_ground_truth(gt, min_keypoints=1), "keypoints", gt=gt)
    assert out["paper"].keys() == {"box_AP", "kp_AP"} and is100(*out["paper"].values())
    with pytest.raises(ValueError, match="task"):
        evaluate("coco", adapter, [], "panoptic", gt=gt)
