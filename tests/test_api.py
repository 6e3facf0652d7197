"""The Python API (avanon's facade): the tests call only `avanon.*` (and make their own data)."""
import json

import numpy as np
import pytest

import avanon
from adapter_fixtures import make_cityscapes


def _image(h=96, w=128, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _person(h=96, w=128, box=(40, 10, 80, 90)):
    m = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def test_anonymize_image_body_mask_out_changes_the_person_only():
    img, mask = _image(), _person()
    out = avanon.anonymize_image(img, masks=[mask], region="body", method="mask_out")
    assert out.shape == img.shape and out.dtype == np.uint8
    changed = (out != img).any(axis=-1)
    assert changed[mask].mean() > 0.99  # the whole person
    far = np.ones_like(mask)
    far[:, 20:100] = False
    assert not changed[far].any()  # nothing far from the person
    assert (img == _image()).all()  # the input is not modified


def test_anonymize_image_method_params_and_validation():
    img, mask = _image(), _person()
    a = avanon.anonymize_image(img, masks=[mask], method="pixelate", size=8)
    b = avanon.anonymize_image(img, masks=[mask], method="pixelate", size=16)
    assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match="RGB uint8"):
        avanon.anonymize_image(img.astype(np.float32), masks=[mask])
    with pytest.raises(ValueError, match="image's size"):
        avanon.anonymize_image(img, masks=[mask[:10]])
    with pytest.raises(ValueError, match="region must be one of"):
        avanon.anonymize_image(img, masks=[mask], region="hands")
    with pytest.raises(Exception, match="unknown anonymizer"):
        avanon.anonymize_image(img, masks=[mask], method="scramble")


def test_anonymize_image_face_boxes():
    img = _image()
    out = avanon.anonymize_image(img, boxes=[(50, 20, 70, 44)], region="face", method="mask_out")
    changed = (out != img).any(axis=-1)
    assert changed[20:44, 50:70].all()
    assert not changed[60:, :].any()
    with pytest.raises(ValueError, match="not both"):
        avanon.anonymize_image(img, boxes=[(50, 20, 70, 44)], masks=[_person()], region="face")


def test_anonymize_image_face_from_keypoints():
    img, mask = _image(), _person()
    kps = np.zeros((17, 3), dtype=np.float32)
    kps[0] = (60, 25, 2)  # nose
    kps[1], kps[2] = (64, 21, 2), (56, 21, 2)  # eyes
    out = avanon.anonymize_image(img, masks=[mask], keypoints=[kps], region="face", method="mask_out")
    changed = (out != img).any(axis=-1)
    assert changed[21, 56] and changed[21, 64] and changed[25, 60]
    assert not changed[80:, :].any()


def test_anonymize_dataset_writes_a_mirror_and_returns_its_summary(tmp_path):
    root = tmp_path / "cs"
    make_cityscapes(root)
    summary = avanon.anonymize_dataset(dataset="cityscapes", root=root, region="body", method="blur",
                                       out=tmp_path / "anon")
    assert summary["failed"] == 0 and summary["anonymized"] == 2 and summary["copied"] == 1
    mirror = tmp_path / "anon" / "cityscapes" / "body_blur"
    assert summary["out_dir"] == str(mirror)
    assert json.loads((mirror / "summary.json").read_text())["anonymized"] == 2


def test_run_with_overrides_and_load_results(tmp_path):
    root = tmp_path / "cs"
    make_cityscapes(root)
    recipe = {"name": "api", "dataset": {"adapter": "cityscapes", "root": str(root)},
              "anonymize": [{"region": "body", "method": "mask_out"}], "output": {"root": "unused"}}
    assert avanon.run(recipe, output__root=str(tmp_path / "o"), seed=3) == 0
    run_json = json.loads((tmp_path / "o" / "cityscapes" / "body_mask_out" / "run.json").read_text())
    assert run_json["settings"]["seed"] == 3
    rows = [{"dataset": "cityscapes", "task": "instance_segmentation", "model": "mask_rcnn_r50_fpn", "depth": 50,
             "region": r, "method": m, "seed": s, "metrics": {"AP_person": ap}}
            for (r, m, ap) in (("none", "original", 20.0), ("body", "mask_out", 5.0)) for s in (0, 1)]
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = avanon.load_results(tmp_path / "study")
    assert len(df) == 4 and set(df["method"]) == {"original", "mask_out"}


def test_the_generators_keep_their_earlier_import_path():
    from avanon.generators import build_generator as new
    from avanon.realistic import build_generator, load_generator  # noqa: F401

    assert build_generator is new
