"""BDD100K adapter: the same scene as bitmask, Scalabel RLE and COCO-format JSON decodes to the same instances."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from adapter_fixtures import BddObject, bdd_scene, box_mask, rle_of, write_bdd, write_image, write_json
from dataset_adapters import DatasetError, build_adapter
from dataset_adapters.bdd100k import Bdd100kAdapter

FIRST, SECOND, THIRD = "0a0a0b1a-7c39d841.jpg", "0a0b16e2-93f8c456.jpg", "0a1c3a2d-fb8ac2e7.jpg"


@pytest.fixture
def bdd_root(tmp_path):
    write_bdd(tmp_path, "train", bdd_scene())
    return tmp_path


def by_id(adapter):
    return {r.image_id: r for r in adapter.images()}


def comparable(record):
    return [(i.category, i.iscrowd, i.ignore, i.box, i.mask.tobytes()) for i in record.instances]


def test_three_label_formats_give_the_same_instances(bdd_root):
    decoded = {fmt: list(Bdd100kAdapter(bdd_root, "train", labels=fmt).images())
               for fmt in ("bitmask", "rle", "cocofmt")}
    for fmt, records in decoded.items():
        assert [r.image_id for r in records] == [FIRST, SECOND, THIRD], fmt
        assert all(r.problems == [] for r in records), fmt
        assert [comparable(r) for r in records] == [comparable(r) for r in decoded["bitmask"]], fmt
    first = decoded["bitmask"][0]
    assert [(i.category, i.iscrowd, i.ignore) for i in first.instances] == [
        ("pedestrian", False, False), ("rider", False, False), ("pedestrian", True, False),
        ("pedestrian", False, True)]
    pedestrian = first.instances[0]
    assert pedestrian.box == (2, 4, 14, 40)
    assert pedestrian.area == 12 * 36 - 4 * 20  # the car, labelled later, covers columns 10..13 from row 20
    assert decoded["bitmask"][1].instances == [] and decoded["bitmask"][2].instances == []


def test_instance_ids_per_format(bdd_root):
    ids = {fmt: [i.instance_id for i in by_id(Bdd100kAdapter(bdd_root, "train", labels=fmt))[FIRST].instances]
           for fmt in ("bitmask", "rle", "cocofmt")}
    assert ids == {"bitmask": ["1", "3", "4", "5"], "rle": ["101", "103", "104", "105"],
                   "cocofmt": ["1", "3", "4", "5"]}


def test_bitmask_flag_bits(tmp_path):
    scene = {"a.jpg": [BddObject("1", "rider", box_mask(1, 1, 9, 9), crowd=True, ignore=True, occluded=True,
                                 truncated=True),
                       BddObject("2", "bicycle", box_mask(10, 1, 20, 9))]}
    write_bdd(tmp_path, "val", scene, formats=("bitmask",))
    (record,) = Bdd100kAdapter(tmp_path, "val").images()
    (rider,) = record.instances
    assert (rider.category, rider.iscrowd, rider.ignore, rider.instance_id) == ("rider", True, True, "1")


def test_auto_prefers_bitmask_then_rle_then_cocofmt(bdd_root):
    assert Bdd100kAdapter(bdd_root, "train").labels == "bitmask"
    for path in sorted((bdd_root / "labels/ins_seg/bitmasks/train").iterdir()):
        path.unlink()
    (bdd_root / "labels/ins_seg/bitmasks/train").rmdir()
    assert Bdd100kAdapter(bdd_root, "train").labels == "rle"
    (bdd_root / "labels/ins_seg/rles/ins_seg_train.json").unlink()
    assert Bdd100kAdapter(bdd_root, "train").labels == "cocofmt"
    (bdd_root / "jsons/ins_seg_train_cocofmt.json").unlink()
    with pytest.raises(DatasetError) as err:
        Bdd100kAdapter(bdd_root, "train")
    for looked_for in ("bitmasks/train", "rles/ins_seg_train.json", "jsons/ins_seg_train_cocofmt.json"):
        assert looked_for in str(err.value)


def test_explicit_source_must_exist_and_options_are_checked(tmp_path):
    write_bdd(tmp_path, "train", bdd_scene(), formats=("bitmask",))
    with pytest.raises(DatasetError, match="rles/ins_seg_train.json"):
        Bdd100kAdapter(tmp_path, "train", labels="rle")
    with pytest.raises(DatasetError, match="dataset.options.masks: unknown option"):
        build_adapter("bdd100k", tmp_path, "train", masks="polygons")
    with pytest.raises(DatasetError, match="dataset.options: bdd100k: labels must be one of"):
        build_adapter("bdd100k", tmp_path, "train", labels="polygons")
    with pytest.raises(DatasetError, match="dataset.options.labels: expected a string, got 5"):
        build_adapter("bdd100k", tmp_path, "train", labels=5)
    with pytest.raises(ValueError, match="labels"):
        Bdd100kAdapter(tmp_path, "train", labels="polygons")
    with pytest.raises(DatasetError, match="images/10k/val"):
        Bdd100kAdapter(tmp_path, "val")


def test_lookup_keys_use_cocofmt_ids_when_present(tmp_path):
    write_bdd(tmp_path, "train", bdd_scene())
    records = list(Bdd100kAdapter(tmp_path, "train", labels="bitmask").images())
    assert records[0].lookup_keys == ("1", FIRST, "0a0a0b1a-7c39d841")
    assert records[1].lookup_keys[0] == "2"
    (tmp_path / "jsons/ins_seg_train_cocofmt.json").unlink()
    record = next(Bdd100kAdapter(tmp_path, "train", labels="rle").images())
    assert record.lookup_keys == (FIRST, "0a0a0b1a-7c39d841")
    assert (record.file_name, record.width, record.height) == (f"images/10k/train/{FIRST}", 64, 48)


def test_len_counts_images_on_disk(bdd_root):
    adapter = build_adapter("bdd100k", bdd_root, "train")
    assert len(adapter) == 3


def test_missing_or_bad_bitmask_is_a_record_problem(bdd_root):
    masks = bdd_root / "labels/ins_seg/bitmasks/train"
    (masks / "0a0b16e2-93f8c456.png").unlink()
    Image.fromarray(np.zeros((48, 60, 4), np.uint8)).save(masks / "0a1c3a2d-fb8ac2e7.png")
    records = by_id(Bdd100kAdapter(bdd_root, "train", labels="bitmask"))
    assert records[FIRST].problems == []
    assert "missing bitmask" in records[SECOND].problems[0]
    assert "60x48" in records[THIRD].problems[0]
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(masks / "0a1c3a2d-fb8ac2e7.png")
    assert "RGBA" in by_id(Bdd100kAdapter(bdd_root, "train"))[THIRD].problems[0]


def test_rle_of_wrong_size_and_missing_frame(bdd_root):
    path = bdd_root / "labels/ins_seg/rles/ins_seg_train.json"
    data = json.loads(path.read_text())
    data["frames"][0]["labels"][0]["rle"] = rle_of(box_mask(1, 1, 5, 5, width=32, height=48))
    del data["frames"][1]
    write_json(path, data["frames"])  # a bare list of frames is accepted as well
    records = by_id(Bdd100kAdapter(bdd_root, "train", labels="rle"))
    assert len(records[FIRST].problems) == 1
    assert "label 101" in records[FIRST].problems[0] and "differs from the image size" in records[FIRST].problems[0]
    assert len(records[FIRST].instances) == 3
    assert "no frame" in records[SECOND].problems[0]


def test_cocofmt_size_mismatch_and_missing_image_entry(bdd_root):
    path = bdd_root / "jsons/ins_seg_train_cocofmt.json"
    data = json.loads(path.read_text())
    data["images"][0]["width"] = 32
    second = next(im["id"] for im in data["images"] if im["file_name"] == SECOND)
    data["images"] = [im for im in data["images"] if im["file_name"] != SECOND]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != second]
    write_json(path, data)
    records = by_id(Bdd100kAdapter(bdd_root, "train", labels="cocofmt"))
    assert "32x48" in records[FIRST].problems[0] and records[FIRST].instances == []
    assert "no image entry" in records[SECOND].problems[0]
    assert records[THIRD].problems == []


def test_labels_without_images_are_dataset_problems(bdd_root):
    (bdd_root / "images/10k/train" / SECOND).unlink()
    for fmt in ("bitmask", "rle", "cocofmt"):
        adapter = Bdd100kAdapter(bdd_root, "train", labels=fmt)
        problems = adapter.dataset_problems()
        assert len(problems) == 1 and SECOND in problems[0] and "not in images/10k/train" in problems[0], fmt
        assert len(adapter) == 2


def test_cocofmt_annotation_pointing_nowhere(bdd_root):
    path = bdd_root / "jsons/ins_seg_train_cocofmt.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["image_id"] = 999
    write_json(path, data)
    with pytest.raises(DatasetError, match="annotation 1: image_id 999 is not the integer id of an image"):
        list(Bdd100kAdapter(bdd_root, "train", labels="cocofmt").images())


def test_truncated_label_json(bdd_root):
    rle = bdd_root / "labels/ins_seg/rles/ins_seg_train.json"
    rle.write_text(rle.read_text()[:100])
    with pytest.raises(DatasetError, match="ins_seg_train.json"):
        list(Bdd100kAdapter(bdd_root, "train", labels="rle").images())
    coco = bdd_root / "jsons/ins_seg_train_cocofmt.json"
    coco.write_text(coco.read_text()[:100])
    with pytest.raises(DatasetError, match="ins_seg_train_cocofmt.json"):
        list(Bdd100kAdapter(bdd_root, "train", labels="cocofmt").images())
    # With bitmasks the broken COCO-format file only costs the numeric lookup keys.
    adapter = Bdd100kAdapter(bdd_root, "train", labels="bitmask")
    records = list(adapter.images())
    assert records[0].lookup_keys == (FIRST, "0a0a0b1a-7c39d841") and records[0].problems == []
    assert "ins_seg_train_cocofmt.json" in adapter.dataset_problems()[0]


def test_tree_files(bdd_root):
    write_image(bdd_root / "images/10k/val/v.jpg")
    write_image(bdd_root / "images/100k/train/x.jpg")
    write_json(bdd_root / "jsons/det_train_cocofmt.json", {})
    write_json(bdd_root / "labels/sem_seg/masks.json", {})
    write_json(bdd_root / "face_boxes_train.json", {})
    write_json(bdd_root / "annotated_keypoints_train.json", {})
    files = list(Bdd100kAdapter(bdd_root, "train").tree_files())
    assert len(files) == len(set(files))
    assert set(files) == {
        *(f"images/10k/train/{n}" for n in (FIRST, SECOND, THIRD)), "images/10k/val/v.jpg",
        *(f"labels/ins_seg/bitmasks/train/{n[:-4]}.png" for n in (FIRST, SECOND, THIRD)),
        "labels/ins_seg/rles/ins_seg_train.json", "jsons/ins_seg_train_cocofmt.json",
        "face_boxes_train.json", "annotated_keypoints_train.json",
    }


# ------------------------------------------------------------------------------------------- categories="all"


def test_thing_classes_are_the_ins_seg_classes():
    assert Bdd100kAdapter.thing_classes == (
        "pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def test_categories_all_same_instances_in_every_label_format(bdd_root):
    decoded = {fmt: list(Bdd100kAdapter(bdd_root, "train", labels=fmt, categories="all").images())
               for fmt in ("bitmask", "rle", "cocofmt")}
    for fmt, records in decoded.items():
        assert all(r.problems == [] for r in records), fmt
        assert [comparable(r) for r in records] == [comparable(r) for r in decoded["bitmask"]], fmt
    first, second, third = decoded["bitmask"]
    assert [(i.category, i.iscrowd, i.ignore) for i in first.instances] == [
        ("pedestrian", False, False), ("car", False, False), ("rider", False, False), ("pedestrian", True, False),
        ("pedestrian", False, True)]
    car = first.instances[1]
    assert car.box == (10, 20, 30, 44) and car.area == 20 * 24
    assert [i.category for i in second.instances] == ["car"] and third.instances == []
    # human mode leaves the cars out
    assert by_id(Bdd100kAdapter(bdd_root, "train"))[SECOND].instances == []


def test_categories_all_every_class_and_bitmask_flags(tmp_path):
    names = Bdd100kAdapter.thing_classes
    scene = {"a.jpg": [BddObject(str(k), name, box_mask(1 + 7 * k, 1, 7 + 7 * k, 30), crowd=(name == "car"))
                       for k, name in enumerate(names)]}
    write_bdd(tmp_path, "val", scene)
    for fmt in ("bitmask", "rle", "cocofmt"):
        (record,) = Bdd100kAdapter(tmp_path, "val", labels=fmt, categories="all").images()
        assert [i.category for i in record.instances] == list(names), fmt
        assert [i.iscrowd for i in record.instances] == [n == "car" for n in names], fmt


def test_categories_option_is_checked(bdd_root):
    with pytest.raises(ValueError, match="categories"):
        Bdd100kAdapter(bdd_root, "train", categories="people")
    assert build_adapter("bdd100k", bdd_root, "train", categories="all").categories == "all"
