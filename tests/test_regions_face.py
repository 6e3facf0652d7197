"""Face regions: FDF128 geometry, one-to-one matching, every face-box file format, keypoint and detector providers."""
import json
import math
import sys

import numpy as np
import pytest

from avanon.regions import FACE_CROP, FACE_PROVIDERS, RegionConfigError, build_region_selector, keypoint_face_box
from avanon.regions import face as face_mod
from avanon.regions.face import HEAD_MODEL, KEYPOINT_DEFAULTS, FaceBox, face_region
from avanon.regions.geometry import face_box_in_crop, face_expanded_box, fdf128_expand, nearest_resize
from avanon.regions.matching import greedy_match
from dataset_adapters.base import ImageRecord, Instance


def person(x0, y0, x1, y1, iid, h=200, w=300, **kw):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return Instance.from_full_mask(m, instance_id=iid, category=kw.pop("category", "person"), **kw)


def record(instances, keys=("img1",), h=200, w=300):
    return ImageRecord("img1", "a.jpg", w, h, list(instances), lookup_keys=tuple(keys))


def selector(params, root=None, filters=None):
    return build_region_selector("face", params, filters or {}, root, ("person",))


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ----------------------------------------------------------------------------------------------------- geometry
def test_fdf128_expand_hand_worked():
    # 40x50 box: made square (width 50, x0 100 - 5), then int(50 * 0.35) = 17 more on every side.
    assert fdf128_expand((100, 100, 140, 150), (480, 640)) == (78, 83, 162, 167)


def test_fdf128_expansion_limited_by_image():
    # Near the top-left corner the square is pushed inside the image instead of leaving it.
    assert fdf128_expand((0, 0, 30, 30), (480, 640)) == (0, 0, 50, 50)


def test_fallback_to_simple_expansion():
    # Wider than the image is high: the FDF square cannot fit, so the reference falls back to a square of side
    # 1.7 * 140 = 238 around the centre (80, 45), which leaves the image.
    assert face_expanded_box((10, 0, 150, 90), (100, 300)) == ((-39, -74, 199, 164), "simple")


def test_face_crop_mask_and_image_mask():
    # box (100,100,140,150) -> expanded (78,83,162,167), factor 128/84: crop box int-cast (33, 25, 94, 102).
    assert face_box_in_crop((100, 100, 140, 150), (78, 83, 162, 167), FACE_CROP) == (33, 25, 94, 102)
    r = face_region(FaceBox((100.4, 99.6, 139.7, 150.2)), "p", (480, 640))
    assert r.exp_box == (78, 83, 162, 167) and r.clip_box == r.exp_box and r.crop_size == FACE_CROP
    expected = np.zeros(FACE_CROP, dtype=bool)
    expected[25:102, 33:94] = True
    assert np.array_equal(r.crop_mask, expected)
    back = nearest_resize(r.crop_mask, (84, 84))
    cover = np.zeros((84, 84), dtype=bool)
    cover[99 - 83:151 - 83, 100 - 78:140 - 78] = True  # floor / ceil of the float box
    assert np.array_equal(r.image_mask, back | cover)
    assert r.area == 40 * 50 and r.face_box == (100.4, 99.6, 139.7, 150.2)


def test_face_image_mask_covers_box_property():
    rng = np.random.default_rng(3)
    for _ in range(200):
        h, w = int(rng.integers(30, 300)), int(rng.integers(30, 300))
        x0, y0 = rng.uniform(0, w - 2), rng.uniform(0, h - 2)
        x1, y1 = rng.uniform(x0 + 0.5, min(w, x0 + w)), rng.uniform(y0 + 0.5, min(h, y0 + h))
        r = face_region(FaceBox((x0, y0, x1, y1)), "p", (h, w))
        full = np.zeros((h, w), dtype=bool)
        cx0, cy0, cx1, cy1 = r.clip_box
        full[cy0:cy1, cx0:cx1] = r.image_mask
        inner = full[math.floor(y0):math.ceil(y1), math.floor(x0):math.ceil(x1)]
        assert inner.all(), (h, w, x0, y0, x1, y1, r.exp_box)


# ----------------------------------------------------------------------------------------------------- matching
def test_greedy_one_to_one_by_iou():
    iou_m = np.array([[0.30, 0.20],
                      [0.25, 0.05]])
    # box0-mask0 first (0.30); box1 cannot take mask0 any more and takes mask1 (0.05 > 0.01).
    assert [(b, m) for b, m, _ in greedy_match(iou_m, [0.9, 0.9], 0.01)] == [(0, 0), (1, 1)]


def test_iou_threshold_is_strict():
    iou_m = np.array([[0.01], [0.0100001]])
    assert [(b, m) for b, m, _ in greedy_match(iou_m, [1.0, 0.5], 0.01)] == [(1, 0)]


def test_tie_on_iou_broken_by_score_then_candidate_count():
    assert [(b, m) for b, m, _ in greedy_match(np.array([[0.2], [0.2]]), [0.4, 0.8], 0.01)] == [(1, 0)]
    # Equal IoU and score: the mask with fewer candidate boxes is served first. mask1 has one candidate (box0),
    # mask0 two: (box0, mask1) wins the tie and box1 can still take mask0 (box-major order alone would strand it).
    got = greedy_match(np.array([[0.2, 0.2], [0.2, 0.0]]), [0.5, 0.5], 0.01)
    assert [(b, m) for b, m, _ in got] == [(0, 1), (1, 0)]


def test_selector_matching_drops_unmatched_boxes(tmp_path):
    # Two persons; three boxes: one per head, one far away (no overlap -> dropped); the low-score box on p2's head
    # (same box, equal IoU) loses to the higher-scored one, p3 gets nothing.
    insts = [person(20, 20, 60, 180, "p1"), person(100, 20, 140, 180, "p2"), person(200, 100, 260, 190, "p3")]
    boxes = {"img1": [[25, 22, 55, 55, 0.9], [105, 22, 135, 55, 0.95], [105, 22, 135, 55, 0.5],
                      [280, 0, 299, 10, 0.99]]}
    path = tmp_path / "faces.json"
    path.write_text(json.dumps(boxes))
    sel = selector({"provider": "file", "file": "faces.json"}, root=tmp_path).select(record(insts))
    got = {r.instance_id: r.face_box for r in sel.regions}
    assert got == {"p1": (25.0, 22.0, 55.0, 55.0), "p2": (105.0, 22.0, 135.0, 55.0)}
    assert sel.skipped == [("p3", "no_face")]


# ----------------------------------------------------------------------------------------------------- files
def _write(tmp_path, data, name="f.json"):
    (tmp_path / name).write_text(json.dumps(data))
    return name


def test_cityscapes_format(tmp_path):
    name = _write(tmp_path, {"a_leftImg8bit.png": [[25, 22, 55, 55, 0.21]]})
    s = selector({"provider": "file", "file": name, "file_format": "cityscapes"}, root=tmp_path)
    sel = s.select(record([person(20, 20, 60, 180, "p1")], keys=("a_leftImg8bit.png", "a")))
    assert len(sel.regions) == 1 and sel.regions[0].extra["score"] == pytest.approx(0.21)
    assert s.describe()["provider"]["format"] == "cityscapes" and s.describe()["params"]["score_threshold"] == 0.0
    # An explicit threshold applies to file boxes too.
    s = selector({"provider": "file", "file": name, "score_threshold": 0.3}, root=tmp_path)
    assert s.select(record([person(20, 20, 60, 180, "p1")], keys=("a_leftImg8bit.png",))).skipped == \
        [("p1", "no_face")]


def test_bdd100k_format_and_lookup_order(tmp_path):
    name = _write(tmp_path, {"7": [[25, 22, 55, 55]], "other": [[105, 22, 135, 55]]})
    s = selector({"provider": "file", "file": name}, root=tmp_path)
    assert s.describe()["provider"]["format"] == "bdd100k"
    insts = [person(20, 20, 60, 180, "p1"), person(100, 20, 140, 180, "p2")]
    sel = s.select(record(insts, keys=("missing", "7", "other")))  # first key present wins
    assert [r.instance_id for r in sel.regions] == ["p1"] and sel.skipped == [("p2", "no_face")]
    sel = s.select(record(insts, keys=("absent",)))  # image not in the file: nobody has a face
    assert sel.regions == [] and sel.skipped == [("p1", "no_face"), ("p2", "no_face")]


def test_coco_format_uses_keypoint_indices(tmp_path):
    kp = np.zeros((17, 3), dtype=np.float32)
    kp[0] = (40, 30, 2)
    crowd = person(0, 0, 10, 10, "crowd", iscrowd=True, keypoints=kp)
    nokp = person(200, 20, 240, 180, "nokp")
    a = person(20, 20, 60, 180, "a", keypoints=kp)
    b = person(100, 20, 140, 180, "b", keypoints=kp)
    # keypoint_indices index [a, b] (non-crowd persons with keypoints, annotation order). The box given to b lies
    # on a's head: the file's match is used as it is, without IoU.
    name = _write(tmp_path, {"5": {"boxes": [[25, 22, 55, 55], [110, 22, 130, 50]], "keypoint_indices": [1, 0]}})
    s = selector({"provider": "file", "file": name}, root=tmp_path)
    assert s.describe()["provider"]["format"] == "coco"
    rec = record([crowd, a, nokp, b], keys=("5",))
    sel = s.select(rec)
    assert {r.instance_id: r.face_box[:2] for r in sel.regions} == {"b": (25.0, 22.0), "a": (110.0, 22.0)}
    assert sel.skipped == [("crowd", "crowd"), ("nokp", "no_face")]
    assert all(r.extra["iou"] is None for r in sel.regions)
    # An index past the persons with keypoints is a problem of the image, never silently ignored.
    name = _write(tmp_path, {"5": {"boxes": [[25, 22, 55, 55]], "keypoint_indices": [4]}}, "bad.json")
    rec = record([a, b], keys=("5",))
    selector({"provider": "file", "file": name}, root=tmp_path).select(rec)
    assert rec.problems and "keypoint index 4" in rec.problems[0]


@pytest.mark.parametrize("content, fmt", [
    ("{not json", "auto"),
    (json.dumps([[1, 2, 3, 4]]), "auto"),
    (json.dumps({"a": [[1, 2, 3]]}), "auto"),
    (json.dumps({"a": [[1, 2, 3, 4]], "b": {"boxes": [], "keypoint_indices": []}}), "auto"),
    (json.dumps({"a": [[1, 2, 3, 4]]}), "cityscapes"),
    (json.dumps({"a": [[1, 2, 3, 4, 0.9]]}), "bdd100k"),
    (json.dumps({"a": {"boxes": [[1, 2, 3, 4]], "keypoint_indices": []}}), "coco"),
    (json.dumps({"a": [[1, 2, 3, "x"]]}), "auto"),
])
def test_malformed_file_names_the_file(tmp_path, content, fmt):
    (tmp_path / "broken.json").write_text(content)
    with pytest.raises(RegionConfigError, match=r"region\.face\.file: .*broken\.json"):
        selector({"provider": "file", "file": "broken.json", "file_format": fmt}, root=tmp_path)


def test_file_absolute_path_and_missing(tmp_path):
    path = tmp_path / "abs.json"
    path.write_text("{}")
    assert selector({"provider": "file", "file": str(path)}, root="/nonexistent").describe()
    with pytest.raises(RegionConfigError, match="region.face.file: .*does not exist"):
        selector({"provider": "file", "file": "nope.json"}, root=tmp_path)


# ----------------------------------------------------------------------------------------------------- keypoints
def _kp(points):
    kp = np.zeros((17, 3), dtype=np.float32)
    for i, (x, y) in points.items():
        kp[i] = (x, y, 2)
    return kp


def test_keypoint_box_matches_a_known_wider_face_box():
    # skimage's astronaut: MTCNN (WIDER-trained) box and its eye / nose landmarks.
    known = (181.05, 62.16, 267.75, 172.05)
    kp = _kp({0: (224.67, 128.96), 1: (246.76, 103.71), 2: (205.01, 101.73)})
    box = keypoint_face_box(kp, KEYPOINT_DEFAULTS)
    assert iou(box, known) > 0.85


def _head(yaw_deg, ipd=40.0, centre=(300.0, 300.0)):
    a = math.radians(yaw_deg)
    rot = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    pts = HEAD_MODEL @ rot.T * ipd
    return pts[:, :2] + np.array(centre)


def test_keypoint_box_frontal_from_ears_or_eyes_agree():
    pts = _head(0)
    full = keypoint_face_box(_kp(dict(enumerate(pts))), KEYPOINT_DEFAULTS)
    eyes = keypoint_face_box(_kp({1: pts[1], 2: pts[2]}), KEYPOINT_DEFAULTS)
    ears = keypoint_face_box(_kp({3: pts[3], 4: pts[4]}), KEYPOINT_DEFAULTS)
    assert full[2] - full[0] == pytest.approx(2.17 * 40, rel=1e-6)
    assert (full[3] - full[1]) / (full[2] - full[0]) == pytest.approx(1.30)
    assert iou(full, eyes) > 0.9 and iou(full, ears) > 0.9
    # The eyes sit 38.7 % down the box.
    assert (pts[1][1] - full[1]) / (full[3] - full[1]) == pytest.approx(0.387, abs=0.02)


def test_keypoint_box_profile_spans_nose_and_ear():
    pts = _head(90)
    box = keypoint_face_box(_kp({0: pts[0], 1: pts[1], 3: pts[3]}), KEYPOINT_DEFAULTS)
    for p in (pts[0], pts[3]):
        assert box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]
    assert 1.5 * 40 < box[2] - box[0] < 2.3 * 40


def test_keypoint_provider_visibility_rule():
    pts = _head(0)
    one = _kp({0: pts[0]})
    two = _kp({0: pts[0], 1: pts[1]})
    insts = [person(250, 250, 350, 400, "one", h=500, w=500, keypoints=one),
             person(260, 250, 340, 400, "two", h=500, w=500, keypoints=two),
             person(10, 10, 50, 50, "none", h=500, w=500)]
    sel = selector({"provider": "keypoints"}).select(record(insts, h=500, w=500))
    assert [r.instance_id for r in sel.regions] == ["two"]
    assert sel.skipped == [("one", "no_face"), ("none", "no_face")]
    assert sel.regions[0].extra["provider"] == "keypoints"


# ----------------------------------------------------------------------------------------------------- detector
def test_detector_mtcnn_on_astronaut():
    pytest.importorskip("facenet_pytorch")
    from skimage.data import astronaut

    image = astronaut()
    m = np.zeros(image.shape[:2], dtype=bool)
    m[30:512, 120:330] = True
    body = Instance.from_full_mask(m, instance_id="astronaut", category="person")
    sel = selector({"provider": "detector"}).select(record([body], h=512, w=512), image)
    assert len(sel.regions) == 1
    assert iou(sel.regions[0].face_box, (181.05, 62.16, 267.75, 172.05)) > 0.9


def test_detector_missing_package_gives_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    monkeypatch.setattr(face_mod, "_MTCNN_CACHE", {})
    with pytest.raises(RegionConfigError, match=r"pip install --no-deps facenet-pytorch==2\.6\.0"):
        selector({"provider": "detector"})


# ----------------------------------------------------------------------------------------------------- config
def test_registry_and_config_errors(tmp_path):
    assert FACE_PROVIDERS.names() == ["detector", "file", "keypoints", "union"]
    with pytest.raises(RegionConfigError, match=r"region\.face\.provider: unknown provider 'x'; known: detector, "
                                                 r"file, keypoints, union"):
        selector({"provider": "x"})
    with pytest.raises(RegionConfigError, match=r"region\.face\.bogus"):
        selector({"provider": "keypoints", "bogus": 1})
    with pytest.raises(RegionConfigError, match=r"region\.face\.file:"):
        selector({"provider": "keypoints", "file": "x.json"})
    with pytest.raises(RegionConfigError, match=r"region\.face\.file_format"):
        _write(tmp_path, {})
        selector({"provider": "file", "file": "f.json", "file_format": "yaml"}, root=tmp_path)
    with pytest.raises(RegionConfigError, match=r"region\.face\.min_iou"):
        selector({"provider": "keypoints", "min_iou": 2})
    with pytest.raises(RegionConfigError, match=r"region\.face\.kp_aspect"):
        selector({"provider": "keypoints", "kp_aspect": "tall"})
    with pytest.raises(RegionConfigError, match=r"region\.face\.file: the 'file' provider needs a file"):
        selector({"provider": "file"})
