"""COCO adapter: decoding against pycocotools' own annToMask, bad inputs, lookup keys, tree files."""
from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from adapter_fixtures import (
    box_mask, coco_ann, coco_image, make_coco, rle_of, write_coco, write_image, write_json,
)
from dataset_adapters import DatasetError, build_adapter
from dataset_adapters.coco import CocoAdapter, compressed_rle_total


@pytest.fixture
def coco_root(tmp_path):
    make_coco(tmp_path)
    return tmp_path


def records_by_id(adapter):
    return {r.image_id: r for r in adapter.images()}


def test_decodes_person_annotations_like_ann_to_mask(coco_root):
    adapter = build_adapter("coco", coco_root, "train")
    oracle = COCO(str(coco_root / "annotations/person_keypoints_train2017.json"))
    record = records_by_id(adapter)["139"]
    assert (record.file_name, record.width, record.height) == ("train2017/000000000139.jpg", 64, 48)
    assert [i.instance_id for i in record.instances] == ["1001", "1002", "1003"]  # JSON order, car left out
    assert record.problems == []
    for inst in record.instances:
        ann = oracle.anns[int(inst.instance_id)]
        assert inst.category == "person"
        np.testing.assert_array_equal(inst.full_mask(48, 64), oracle.annToMask(ann).astype(bool))
        rows, cols = np.nonzero(inst.mask)
        assert rows.min() == 0 and cols.min() == 0  # tight box
        assert inst.mask.shape == (inst.box[3] - inst.box[1], inst.box[2] - inst.box[0])
        assert inst.keypoints.dtype == np.float32 and inst.keypoints.shape == (17, 3)
        np.testing.assert_array_equal(inst.keypoints.flatten(), np.asarray(ann["keypoints"], np.float32))
    polygons, crowd, compressed = record.instances
    assert not polygons.iscrowd and crowd.iscrowd and not compressed.iscrowd
    assert crowd.num_keypoints == 0
    assert compressed.box == (42, 25, 50, 47)


def test_every_image_in_sorted_order_and_len(coco_root):
    adapter = CocoAdapter(coco_root, "train")
    records = list(adapter.images())
    assert len(adapter) == 3
    assert [r.image_id for r in records] == ["139", "285", "632"]
    assert records[1].instances == []
    assert (records[2].width, records[2].height) == (40, 30)
    assert list(r.image_id for r in adapter.images()) == ["139", "285", "632"]  # stable on a second pass


def test_lookup_keys(coco_root):
    record = records_by_id(CocoAdapter(coco_root, "train"))["139"]
    assert record.lookup_keys == ("139", "000000000139.jpg", "000000000139")


def test_person_category_is_found_by_name(tmp_path):
    categories = [{"id": 7, "name": "dog"}, {"id": 12, "name": "person"}]
    write_coco(tmp_path, "val", [coco_image(1)],
               [coco_ann(1, 1, [[1, 1, 9, 1, 9, 9]], category_id=12), coco_ann(2, 1, [[1, 1, 9, 1, 9, 9]], 7)],
               categories=categories)
    (record,) = CocoAdapter(tmp_path, "val").images()
    assert [i.instance_id for i in record.instances] == ["1"]


def test_instances_json_and_annotation_file(tmp_path):
    write_coco(tmp_path, "val", [coco_image(5)], [coco_ann(9, 5, [[1, 1, 20, 1, 20, 20]])], annotation="instances")
    (record,) = CocoAdapter(tmp_path, "val", annotation="instances").images()
    assert record.instances[0].keypoints is None and record.instances[0].instance_id == "9"
    (tmp_path / "annotations/instances_val2017.json").rename(tmp_path / "mine.json")
    adapter = CocoAdapter(tmp_path, "val", annotation_file="mine.json")
    assert len(adapter) == 1 and "mine.json" in list(adapter.tree_files())


def test_images_dir_option(coco_root):
    (coco_root / "train2017").rename(coco_root / "pictures")
    adapter = CocoAdapter(coco_root, "train", images_dir="pictures")
    assert next(adapter.images()).file_name == "pictures/000000000139.jpg"
    assert "pictures/000000000139.jpg" in list(adapter.tree_files())


def test_options_are_checked(coco_root):
    with pytest.raises(DatasetError, match="dataset.options.colour: unknown option"):
        build_adapter("coco", coco_root, "train", colour="red")
    with pytest.raises(ValueError, match="annotation"):
        CocoAdapter(coco_root, "train", annotation="captions")
    for bad in (str(coco_root / "annotations/person_keypoints_train2017.json"), "../x.json", "a/./b.json"):
        with pytest.raises(DatasetError, match="not a plain relative path"):
            build_adapter("coco", coco_root, "train", annotation_file=bad)
    with pytest.raises(DatasetError, match="annotation_file: expected a path relative to the dataset root"):
        build_adapter("coco", coco_root, "train", annotation_file=5)


def test_missing_annotation_file_names_it(coco_root):
    with pytest.raises(DatasetError, match="person_keypoints_val2017.json"):
        CocoAdapter(coco_root, "val")


def test_truncated_json_names_file_and_error(coco_root):
    path = coco_root / "annotations/person_keypoints_train2017.json"
    path.write_text(path.read_text()[:-40])
    adapter = CocoAdapter(coco_root, "train")
    with pytest.raises(DatasetError, match=r"person_keypoints_train2017\.json.*(Expecting|Unterminated)"):
        len(adapter)


def test_annotations_that_do_not_attach_refuse_the_dataset(tmp_path):
    """A duplicate image id or an annotation pointing nowhere would drop a person silently: the dataset is refused
    and the message names the entry."""
    write_coco(tmp_path, "train", [coco_image(1), coco_image(1)], [coco_ann(124, 1, [[1, 1, 9, 1, 9, 9]])])
    with pytest.raises(DatasetError, match=r"images\[1\].*image id 1 is listed twice"):
        len(CocoAdapter(tmp_path, "train"))
    write_coco(tmp_path, "train", [coco_image(1)],
               [coco_ann(123, 999, [[1, 1, 9, 1, 9, 9]]), coco_ann(124, 1, [[1, 1, 9, 1, 9, 9]])])
    with pytest.raises(DatasetError, match="annotation 123: image_id 999 is not the integer id of an image"):
        len(CocoAdapter(tmp_path, "train"))


@pytest.mark.parametrize("segmentation, reason", [
    (rle_of(box_mask(1, 1, 5, 5, width=32, height=48)), "differs from the image size"),
    (rle_of(box_mask(1, 1, 5, 5, width=32, height=48), compressed=False), "differs from the image size"),
    ({"size": [48, 64], "counts": [10, 20]}, "covers 30 pixels"),
    ({"size": [48, 64], "counts": "PP5"}, "covers"),
    ({"size": [48, 64], "counts": "\x01\x02"}, "invalid character"),
    ({"size": [48, 64], "counts": "0\u00e9"}, "non-ASCII"),
    ({"size": [48], "counts": "0"}, "size"),
    ([[1, 2, 3, 4, 5, 6, 7]], "odd number"),
    ([], "empty"),
    ("not a mask", "neither polygons nor RLE"),
])
def test_bad_masks_are_record_problems(tmp_path, segmentation, reason):
    write_coco(tmp_path, "train", [coco_image(1)],
               [coco_ann(77, 1, segmentation), coco_ann(78, 1, [[1, 1, 9, 1, 9, 9]])])
    (record,) = CocoAdapter(tmp_path, "train").images()
    assert len(record.problems) == 1
    assert "annotation 77" in record.problems[0] and reason in record.problems[0]
    assert [i.instance_id for i in record.instances] == ["78"]


def test_bad_keypoints_are_a_record_problem(tmp_path):
    ann = coco_ann(5, 1, [[1, 1, 9, 1, 9, 9]], keypoints=[1.0, 2.0, 2.0])
    write_coco(tmp_path, "train", [coco_image(1)], [ann])
    (record,) = CocoAdapter(tmp_path, "train").images()
    assert "annotation 5" in record.problems[0] and "51" in record.problems[0]


def test_degenerate_polygon_parts_are_dropped(tmp_path):
    write_coco(tmp_path, "train", [coco_image(1)], [coco_ann(5, 1, [[1, 1, 30, 1, 30, 30], [40, 40, 45, 45]])])
    (record,) = CocoAdapter(tmp_path, "train").images()
    assert record.problems == [] and record.instances[0].box[2] <= 31


def test_compressed_rle_total_matches_pycocotools():
    rng = np.random.default_rng(0)
    for shape in [(48, 64), (7, 3), (100, 1)]:
        mask = rng.random(shape) < 0.3
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert compressed_rle_total(rle["counts"]) == shape[0] * shape[1]


def test_tree_files(coco_root):
    write_coco(coco_root, "val", [coco_image(1)], [])
    write_image(coco_root / "test2017" / "000000000009.jpg")
    write_json(coco_root / "boxes_train2017.json", {})
    write_json(coco_root / "other" / "x.json", {})
    (coco_root / "README.txt").write_text("not part of the tree")
    files = list(CocoAdapter(coco_root, "train").tree_files())
    assert files == sorted(files) and len(files) == len(set(files))
    assert set(files) == {
        "annotations/person_keypoints_train2017.json", "annotations/person_keypoints_val2017.json",
        "train2017/000000000139.jpg", "train2017/000000000285.jpg", "train2017/000000000632.jpg",
        "val2017/000000000001.jpg", "test2017/000000000009.jpg", "boxes_train2017.json",
    }


def test_json_is_loaded_once(coco_root, monkeypatch):
    import dataset_adapters.coco as coco_module

    calls = []
    original = coco_module.load_json
    monkeypatch.setattr(coco_module, "load_json", lambda path: calls.append(path) or original(path))
    adapter = CocoAdapter(coco_root, "train")
    len(adapter), list(adapter.images()), adapter.dataset_problems(), list(adapter.images())
    assert len(calls) == 1



# ------------------------------------------------------------------------------------------- categories="all"


def test_categories_all_yields_every_category(coco_root):
    adapter = CocoAdapter(coco_root, "train", categories="all")
    record = records_by_id(adapter)["139"]
    assert [(i.instance_id, i.category, i.iscrowd) for i in record.instances] == [
        ("1001", "person", False), ("1002", "person", True), ("1003", "person", False), ("1004", "car", False)]
    oracle = COCO(str(coco_root / "annotations/person_keypoints_train2017.json"))
    car = record.instances[3]
    np.testing.assert_array_equal(car.full_mask(48, 64), oracle.annToMask(oracle.anns[1004]).astype(bool))
    assert car.keypoints is None
    assert [i.instance_id for i in records_by_id(CocoAdapter(coco_root, "train"))["139"].instances] == [
        "1001", "1002", "1003"]


def test_thing_classes_follow_the_json_category_ids(tmp_path):
    categories = [{"id": 12, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "dog"}]
    write_coco(tmp_path, "val", [coco_image(1)],
               [coco_ann(1, 1, [[1, 1, 9, 1, 9, 9]], category_id=12), coco_ann(2, 1, [[1, 1, 9, 1, 9, 9]], 7)],
               categories=categories, annotation="instances")
    for mode in ("human", "all"):
        adapter = CocoAdapter(tmp_path, "val", annotation="instances", categories=mode)
        assert adapter.thing_classes == ("car", "dog", "person")
        assert adapter.category_json_ids == (3, 7, 12)
    (record,) = CocoAdapter(tmp_path, "val", annotation="instances", categories="all").images()
    assert [i.category for i in record.instances] == ["person", "dog"]


def test_thing_classes_of_person_keypoints_json(coco_root):
    write_coco(coco_root, "val", [coco_image(1)], [], categories=[{"id": 1, "name": "person"}])
    assert CocoAdapter(coco_root, "val").thing_classes == ("person",)
    assert CocoAdapter(coco_root, "train").thing_classes == ("person", "car")  # the fixture's JSON has both


def test_categories_option_is_checked(coco_root):
    with pytest.raises(ValueError, match="categories"):
        CocoAdapter(coco_root, "train", categories="person")
    assert build_adapter("coco", coco_root, "train", categories="all").categories == "all"
