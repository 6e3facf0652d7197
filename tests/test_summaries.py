"""summary.json and the console summary describe the whole mirror (computed from the manifest), whatever the
invocation: an interrupted and resumed run, a rerun and sharded runs merged all give the summary of an
uninterrupted run, except `this_run`. And a keypoint provider is needed only by what uses keypoints."""
import json

import pytest

from adapter_fixtures import make_cityscapes
from avanon.cli import main
from avanon.mirror import writer as writer_mod


def _anonymize(root, out, *extra):
    return main(["anonymize", "--dataset", "cityscapes", "--root", str(root), "--region", "body", "--method",
                 "blur", "--out", str(out), "--no-progress", *extra])


def _state(mirror) -> dict:
    d = json.loads((mirror / "summary.json").read_text())
    d.pop("this_run")
    d.pop("out_dir")
    return d


@pytest.fixture
def cityscapes(tmp_path):
    make_cityscapes(tmp_path / "cs")
    return tmp_path / "cs"


def test_resume_rerun_and_merge_give_the_uninterrupted_summary(cityscapes, tmp_path, monkeypatch, capsys):
    assert _anonymize(cityscapes, tmp_path / "ref") == 0
    reference = _state(tmp_path / "ref" / "cityscapes" / "body_blur")
    assert reference["images"] == 3 and reference["skip_reasons"] and reference["tree_files"] > 0
    assert reference["detail_kept"]["count"] == reference["instances_anonymized"] == 4

    real = writer_mod.process_image
    calls = {"n": 0}

    def dies_on_second(job, record, write=True, previous=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(job, record, write, previous)

    monkeypatch.setattr(writer_mod, "process_image", dies_on_second)
    assert _anonymize(cityscapes, tmp_path / "int") == 130
    monkeypatch.setattr(writer_mod, "process_image", real)
    mirror = tmp_path / "int" / "cityscapes" / "body_blur"
    assert _anonymize(cityscapes, tmp_path / "int") == 0
    assert _state(mirror) == reference
    this_run = json.loads((mirror / "summary.json").read_text())["this_run"]
    assert this_run["resumed"] == 1 and this_run["processed"] == 2
    capsys.readouterr()
    assert _anonymize(cityscapes, tmp_path / "int") == 0
    assert "nothing to do: 3 already done" in capsys.readouterr().out
    assert _state(mirror) == reference

    for k in range(2):
        assert _anonymize(cityscapes, tmp_path / "sh", "--shard", f"{k}/2") == 0
    sharded = tmp_path / "sh" / "cityscapes" / "body_blur"
    assert sorted(p.name for p in sharded.glob("summary-*")) == ["summary-0of2.json", "summary-1of2.json"]
    assert main(["merge", str(sharded)]) == 0
    assert not list(sharded.glob("summary-*")) and _state(sharded) == reference


def test_keypoint_provider_is_needed_only_where_keypoints_are_used(cityscapes, tmp_path):
    from avanon.recipe import validate
    from avanon.mirror.plan import make_jobs
    from avanon.schema import RecipeError
    from dataset_adapters import build_adapter

    def recipe(*entries):
        return validate({"name": "kp", "dataset": {"adapter": "cityscapes", "root": str(cityscapes)},
                         "keypoints": {"provider": "file", "params": {}}, "anonymize": list(entries),
                         "output": {"root": str(tmp_path / "o")}}, "test")

    adapter = build_adapter("cityscapes", cityscapes, "train")
    # traditional methods: the missing annotated_keypoints_train.json does not matter
    jobs = make_jobs(recipe({"region": "body", "method": "blur"}, {"region": "body", "method": "mask_out"}), adapter)
    assert all(job.keypoints_provider == "annotations" for _, job in jobs)
    # the keypoint-guided body generator needs the file: refused with the key named
    with pytest.raises(RecipeError, match="keypoints"):
        make_jobs(recipe({"region": "body", "method": "blur"},
                         {"region": "body", "method": "realistic", "params": {"weights": "random"}}), adapter)
    # the unconditional body generator does not
    jobs = make_jobs(recipe({"region": "body", "method": "realistic",
                             "params": {"weights": "random", "region_model": "body_nocse288"}}), adapter)
    assert jobs[0][1].keypoints_provider == "annotations"


def test_face_audit_in_manifest_summary_console_and_inspect(tmp_path, capsys):
    """COCO-format synthetic people with visible heads; keypoint face boxes that need all five head keypoints
    miss the people whose head shows only two to four: the audit counts them everywhere."""
    common = ["--dataset", "synthetic", "--root", str(tmp_path / "data"), "--option", "format=coco",
              "--option", "num_train=4", "--option", "num_val=0"]
    assert main(["anonymize", *common, "--region", "face", "--region-param", "provider=keypoints",
                 "--region-param", "min_visible=5", "--method", "mask_out", "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    mirror = tmp_path / "out" / "synthetic" / "face_mask_out"
    summary = json.loads((mirror / "summary.json").read_text())
    lines = [json.loads(t) for t in (mirror / "manifest.jsonl").read_text().splitlines()]
    missed = sum(len(line.get("face_missed", [])) for line in lines)
    assert missed == summary["face_missed"] > 0
    assert summary["face_visible"] == sum(line.get("face_visible", 0) for line in lines) >= missed
    assert summary["face_recall"] == pytest.approx(1 - missed / summary["face_visible"])
    assert f"face audit: {missed} of {summary['face_visible']} persons with a visible head" in out
    assert main(["inspect", *common, "--faces", "keypoints", "--face-param", "min_visible=5",
                 "--plot", str(tmp_path / "p.png")]) == 0
    assert f"{missed} of {summary['face_visible']} persons with a visible head get no face region" in \
        capsys.readouterr().out
