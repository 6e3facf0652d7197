"""Cityscapes adapter: instanceIds and polygons decoding agree with cityscapesscripts, bad inputs, keys, tree."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adapter_fixtures import (
    CITYSCAPES_SCENE, cityscapes_polygons, make_cityscapes, official_instance_image, write_cityscapes_frame,
    write_json,
)
from dataset_adapters import DatasetError, build_adapter
from dataset_adapters.cityscapes import CityscapesAdapter

ZURICH = "zurich_000001_000019_leftImg8bit.png"


@pytest.fixture
def cs_root(tmp_path):
    make_cityscapes(tmp_path)
    return tmp_path


def by_id(adapter):
    return {r.image_id: r for r in adapter.images()}


def test_human_instances_from_instance_ids(cs_root):
    record = by_id(CityscapesAdapter(cs_root, "train"))[ZURICH]
    assert record.problems == []
    assert (record.width, record.height) == (64, 48)
    summary = [(i.instance_id, i.category, i.iscrowd) for i in record.instances]
    # person 24002 is wholly behind 24003, so the PNG has no pixel of it; the two persongroups are one crowd.
    assert summary == [("24", "person", True), ("25", "rider", True), ("24000", "person", False),
                       ("24001", "person", False), ("24003", "person", False), ("25000", "rider", False)]
    first, second = record.instances[2], record.instances[3]
    assert first.box == (2, 5, 13, 41)
    assert not first.mask[10 - 5:, 8 - 2:].any()  # overwritten by the second person, drawn later
    assert second.box == (8, 10, 21, 45)


def test_instance_ids_polygons_and_official_image_agree(cs_root):
    official = official_instance_image(CITYSCAPES_SCENE)
    from_png = by_id(CityscapesAdapter(cs_root, "train"))[ZURICH].instances
    from_json = by_id(CityscapesAdapter(cs_root, "train", masks="polygons"))[ZURICH].instances
    assert [i.instance_id for i in from_png] == [i.instance_id for i in from_json]
    for a, b in zip(from_png, from_json, strict=True):
        assert (a.category, a.iscrowd, a.box) == (b.category, b.iscrowd, b.box)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.full_mask(48, 64), official == int(a.instance_id))


def test_order_len_and_lookup_keys(cs_root):
    adapter = CityscapesAdapter(cs_root, "train")
    records = list(adapter.images())
    assert len(adapter) == 3
    assert [r.file_name for r in records] == [
        "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
        "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png",
        "leftImg8bit/train/zurich/zurich_000001_000019_leftImg8bit.png",
    ]
    assert records[1].instances == []
    assert records[2].lookup_keys == (ZURICH, "zurich_000001_000019",
                                      "leftImg8bit/train/zurich/zurich_000001_000019_leftImg8bit.png")
    assert records[2].image_id == ZURICH


def test_missing_gtfine_file_is_a_record_problem(cs_root):
    (cs_root / "gtFine/train/aachen/aachen_000000_000019_gtFine_instanceIds.png").unlink()
    (cs_root / "gtFine/train/aachen/aachen_000001_000019_gtFine_polygons.json").unlink()
    for masks, bad in [("instance_ids", "aachen_000000"), ("polygons", "aachen_000001")]:
        records = list(CityscapesAdapter(cs_root, "train", masks=masks).images())
        failed = [r for r in records if r.problems]
        assert len(failed) == 1 and bad in failed[0].image_id
        assert "missing gtFine file" in failed[0].problems[0] and bad in failed[0].problems[0]


def test_instance_ids_png_of_wrong_size_or_dtype(cs_root):
    png = cs_root / "gtFine/train/zurich/zurich_000001_000019_gtFine_instanceIds.png"
    Image.fromarray(np.zeros((48, 60), np.uint16)).save(png)
    assert "60x48" in by_id(CityscapesAdapter(cs_root, "train"))[ZURICH].problems[0]
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(png)
    assert "16-bit" in by_id(CityscapesAdapter(cs_root, "train"))[ZURICH].problems[0]
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(png)
    record = by_id(CityscapesAdapter(cs_root, "train"))[ZURICH]
    assert record.instances == [] and "RGB" in record.problems[0]


@pytest.mark.parametrize("polygons, reason", [
    (cityscapes_polygons([("person", [[1, 1], [5, 1], [5, 5]])], width=32), "32x48"),
    (cityscapes_polygons([("pedestrian", [[1, 1], [5, 1], [5, 5]])]), "unknown label 'pedestrian'"),
    ({"imgWidth": 64, "imgHeight": 48}, "not a valid polygons JSON"),
])
def test_bad_polygons_json_is_a_record_problem(tmp_path, polygons, reason):
    write_cityscapes_frame(tmp_path, "train", "ulm", 0, 1, cityscapes_polygons([]), instance_ids=False,
                           polygons_json=False)
    write_json(tmp_path / "gtFine/train/ulm/ulm_000000_000001_gtFine_polygons.json", polygons)
    (record,) = CityscapesAdapter(tmp_path, "train", masks="polygons").images()
    assert record.instances == [] and reason in record.problems[0]


def test_split_and_options_are_checked(cs_root):
    with pytest.raises(DatasetError, match="splits present: \\['train', 'val'\\]"):
        CityscapesAdapter(cs_root, "test")
    with pytest.raises(DatasetError, match="dataset.options.labels: unknown option"):
        build_adapter("cityscapes", cs_root, "train", labels="bitmask")
    with pytest.raises(DatasetError, match="dataset.options.masks: expected a string"):
        build_adapter("cityscapes", cs_root, "train", masks=["polygons"])
    with pytest.raises(ValueError, match="masks"):
        CityscapesAdapter(cs_root, "train", masks="coarse")
    with pytest.raises(DatasetError, match="root"):
        CityscapesAdapter(cs_root / "nowhere", "train")


def test_tree_files(cs_root):
    (cs_root / "README").write_text("not part of the tree")
    write_json(cs_root / "gtCoarse" / "x.json", {})
    files = list(build_adapter("cityscapes", cs_root, "val").tree_files())
    assert len(files) == len(set(files))
    assert "face_boxes_train.json" in files
    assert "camera/train/aachen/aachen_000000_000019_camera.json" in files
    assert "leftImg8bit/train/zurich/zurich_000001_000019_leftImg8bit.png" in files
    assert "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png" in files
    assert "gtFine/val/lindau/lindau_000000_000019_gtFine_instanceIds.png" in files
    assert "gtFine/train/aachen/aachen_000000_000019_gtFine_polygons.json" in files
    assert len(files) == 4 * 3 + 2  # image + polygons + instanceIds per frame, camera, face boxes
    assert not any(f.startswith("gtCoarse") or f == "README" for f in files)


# ------------------------------------------------------------------------------------------- categories="all"


def test_thing_classes_are_the_official_evaluation_labels():
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as official

    args = type("Args", (), {})()
    official.setInstanceLabels(args)
    assert CityscapesAdapter.thing_classes == tuple(args.instLabels) == (
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def test_categories_all_yields_every_evaluated_class(cs_root):
    for masks in ("instance_ids", "polygons"):
        record = by_id(CityscapesAdapter(cs_root, "train", masks=masks, categories="all"))[ZURICH]
        summary = [(i.instance_id, i.category, i.iscrowd) for i in record.instances]
        assert summary == [("24", "person", True), ("25", "rider", True), ("24000", "person", False),
                           ("24001", "person", False), ("24003", "person", False), ("25000", "rider", False),
                           ("26000", "car", False)], masks
        official = official_instance_image(CITYSCAPES_SCENE)
        car = record.instances[-1]
        np.testing.assert_array_equal(car.full_mask(48, 64), official == 26000)
    # the default stays human-only
    human = by_id(CityscapesAdapter(cs_root, "train"))[ZURICH]
    assert [i.category for i in human.instances if i.category not in ("person", "rider")] == []


def test_categories_all_groups_are_crowd_and_ignored_classes_left_out(tmp_path):
    write_cityscapes_frame(tmp_path, "val", "ulm", 0, 1, cityscapes_polygons([
        ("caravan", [[1, 1], [10, 1], [10, 10], [1, 10]]),      # hasInstances but ignoreInEval
        ("trailer", [[12, 1], [20, 1], [20, 10], [12, 10]]),    # hasInstances but ignoreInEval
        ("cargroup", [[22, 1], [40, 1], [40, 20], [22, 20]]),
        ("truck", [[1, 20], [20, 20], [20, 40], [1, 40]]),
        ("bicyclegroup", [[42, 20], [60, 20], [60, 40], [42, 40]]),
        ("motorcycle", [[42, 41], [60, 41], [60, 47], [42, 47]]),
    ]))
    (record,) = CityscapesAdapter(tmp_path, "val", categories="all").images()
    assert [(i.instance_id, i.category, i.iscrowd) for i in record.instances] == [
        ("26", "car", True), ("33", "bicycle", True), ("27000", "truck", False), ("32000", "motorcycle", False)]
    (human,) = CityscapesAdapter(tmp_path, "val").images()
    assert human.instances == []


def test_categories_option_is_checked(cs_root):
    with pytest.raises(ValueError, match="categories"):
        CityscapesAdapter(cs_root, "train", categories="vehicles")
    assert build_adapter("cityscapes", cs_root, "train", categories="all").categories == "all"
