"""Filters: every instance not anonymized is reported once, with a reason from the fixed vocabulary."""
from collections import Counter

import numpy as np
import pytest

from avanon.regions import SKIP_REASONS, RegionConfigError, build_region_selector
from dataset_adapters.base import ImageRecord, Instance


def inst(iid, category="person", box=(10, 10, 40, 90), h=100, w=100, **kw):
    m = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = box
    m[max(y0, 0):y1, max(x0, 0):x1] = True
    return Instance.from_full_mask(m, instance_id=iid, category=category, **kw)


KP = np.zeros((17, 3), dtype=np.float32)
KP[5] = (20, 30, 2)


def scene():
    empty = Instance(instance_id="empty", category="person", box=(5, 5, 8, 8), mask=np.zeros((3, 3), dtype=bool),
                     keypoints=KP)
    outside = Instance(instance_id="outside", category="person", box=(120, 5, 130, 20),
                       mask=np.ones((15, 10), dtype=bool), keypoints=KP)
    broken = Instance(instance_id="broken", category="person", box=(0, 0, 10, 10), mask=np.ones((4, 4), dtype=bool),
                      keypoints=KP)
    return [
        inst("ok", keypoints=KP),
        inst("rider", category="rider"),
        inst("crowd", iscrowd=True),
        inst("ignored", ignore=True),
        inst("nokp"),
        inst("tiny", box=(60, 60, 62, 62), keypoints=KP),
        empty, outside, broken,
    ]


def select(filters, kind="body", params=None):
    rec = ImageRecord("1", "a.jpg", 100, 100, scene())
    sel = build_region_selector(kind, params or {}, filters, None, ("person",)).select(rec)
    return rec, sel


def test_every_skip_has_a_reason():
    rec, sel = select({"require_keypoints": True})
    assert [r.instance_id for r in sel.regions] == ["ok"]
    assert dict(sel.skipped) == {
        "rider": "category:rider", "crowd": "crowd", "ignored": "ignore", "nokp": "no_keypoints",
        "tiny": "too_small", "empty": "empty_mask", "outside": "outside_image", "broken": "invalid_mask"}
    assert [s[0] for s in sel.skipped] == [i.instance_id for i in rec.instances if i.instance_id != "ok"]
    vocabulary = {r for r in SKIP_REASONS if ":" not in r}
    assert all(reason in vocabulary or reason.startswith("category:") for _, reason in sel.skipped)
    assert len(sel.regions) + len(sel.skipped) == len(rec.instances)
    # A mask that contradicts its box is an annotation problem: the writer must fail the image.
    assert rec.problems and "broken" in rec.problems[0]


def test_reason_counts_for_the_manifest():
    _, sel = select({})
    counts = Counter(reason for _, reason in sel.skipped)
    assert counts == Counter({"category:rider": 1, "crowd": 1, "ignore": 1, "too_small": 1, "empty_mask": 1,
                              "outside_image": 1, "invalid_mask": 1})
    assert sorted(r.instance_id for r in sel.regions) == ["nokp", "ok"]


def test_switches_and_categories():
    _, sel = select({"skip_crowd": False, "skip_ignore": False, "categories": ["person", "rider"]})
    assert sorted(r.instance_id for r in sel.regions) == ["crowd", "ignored", "nokp", "ok", "rider"]
    _, sel = select({"categories": ["rider"]})
    assert [r.instance_id for r in sel.regions] == ["rider"]
    assert dict(sel.skipped)["ok"] == "category:person"


def test_face_selection_reports_no_face():
    _, sel = select({"require_keypoints": True}, kind="face", params={"provider": "keypoints"})
    assert sel.regions == [] and dict(sel.skipped)["ok"] == "no_face"  # only a shoulder is labelled
    assert dict(sel.skipped)["tiny"] == "no_face"  # faces have no size filter


def test_mask_partly_outside_is_clipped():
    m = np.ones((30, 30), dtype=bool)
    part = Instance(instance_id="edge", category="person", box=(-10, 80, 20, 110), mask=m)
    rec = ImageRecord("1", "a.jpg", 100, 100, [part])
    sel = build_region_selector("body", {"min_size": 0}, {}, None, ("person",)).select(rec)
    r = sel.regions[0]
    assert r.area == 20 * 20 and r.extra["tight_box"] == (0, 80, 20, 100)


@pytest.mark.parametrize("kind, params, filters, key", [
    ("hand", {}, {}, r"region\.kind: unknown region kind 'hand'"),
    ("body", {"dilate": 4}, {}, r"region\.body\.dilate: unknown parameter"),
    ("body", {"dilation": "disk"}, {}, r"region\.body\.dilation: unknown mode 'disk'"),
    ("body", {"dilation_radius": -1}, {}, r"region\.body\.dilation_radius"),
    ("body", {"dilation_radius": 2.5}, {}, r"region\.body\.dilation_radius"),
    ("body", {"min_size": "big"}, {}, r"region\.body\.min_size"),
    ("body", {}, {"crowd": True}, r"region\.filters\.crowd: unknown parameter"),
    ("body", {}, {"skip_crowd": "yes"}, r"region\.filters\.skip_crowd"),
    ("body", {}, {"categories": "person"}, r"region\.filters\.categories"),
    ("face", {"provider": "keypoints", "dilation": "pixels"}, {}, r"region\.face\.dilation: unknown parameter"),
])
def test_config_errors_name_the_key(kind, params, filters, key):
    with pytest.raises(RegionConfigError, match=key):
        build_region_selector(kind, params, filters, None, ("person",))


def test_describe_is_resolved():
    d = build_region_selector("body", {"min_size": 32}, None, None, ("pedestrian",)).describe()
    assert d["params"]["min_size"] == 32 and d["params"]["dilation_radius"] == 4
    assert d["filters"] == {"categories": ["pedestrian"], "skip_crowd": True, "skip_ignore": True,
                            "require_keypoints": False}
