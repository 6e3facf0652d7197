"""The study end to end on a tiny synthetic dataset: mirrors -> training -> evaluation -> results -> report ->
regress, resumable; recipe validation of the study section."""
import json
from pathlib import Path

import pytest
import yaml

from avanon.cli import main
from avanon.recipe import RecipeError, load_recipe

DEMO = Path(__file__).parent.parent / "recipes" / "demo.yaml"


def _tiny(tmp_path):
    return ["--set", f"dataset.root={tmp_path / 'data'}", "--set", f"output.root={tmp_path / 'out'}",
            "--set", "dataset.options.num_train=4", "--set", "dataset.options.num_val=2",
            "--set", "study.config.solver.iterations=2", "--set", "study.config.solver.steps=[1]",
            "--set", "study.mirrors=[body_mask_out]", "--set", "study.seeds=[0, 1]"]


@pytest.mark.slow
def test_demo_study_runs_resumes_reports_and_gates(tmp_path, capsys):
    args = ["run", str(DEMO), "--no-progress", *_tiny(tmp_path)]
    assert main(args) == 0
    sdir = tmp_path / "out" / "synthetic" / "study" / "demo"
    lines = [json.loads(t) for t in (sdir / "results.jsonl").read_text().splitlines()]
    assert sorted((l["mirror"], l["seed"]) for l in lines) == [("body_mask_out", 0), ("body_mask_out", 1),
                                                               ("original", 0), ("original", 1)]
    for line in lines:
        assert set(line["metrics"]) >= {"AP", "AP50", "AP_person", "box_AP_person"}
        assert line["region"] == ("none" if line["mirror"] == "original" else "body")
        run = Path(line["run_dir"])
        cfg = json.loads((run / "config.json").read_text())
        # trained on the mirror (or the original), evaluated on the ORIGINAL validation split
        expect = sdir.parent.parent / "body_mask_out" if line["mirror"] != "original" else tmp_path / "data"
        assert Path(cfg["data"]["image_root"]) == expect.resolve()
        assert Path(cfg["data"]["val_root"]) == (tmp_path / "data").resolve()
        assert cfg["seed"] == line["seed"]
    assert (sdir / "report" / "report.md").is_file()
    capsys.readouterr()
    # resumable: nothing is trained again
    assert main(args) == 0
    assert "study: nothing to do; 4 runs done earlier" in capsys.readouterr().out
    # the regression gate passes on its own baseline and fails on a tampered one
    base = tmp_path / "baseline.json"
    assert main(["regress", str(sdir), "--baseline", str(base), "--write-baseline"]) == 0
    assert main(["regress", str(sdir), "--baseline", str(base)]) == 0
    doc = json.loads(base.read_text())
    row = next(r for r in doc["rows"] if r["method"] == "mask_out" and r["metric"] == "AP_person")
    row["delta"] += 25.0
    base.write_text(json.dumps(doc))
    assert main(["regress", str(sdir), "--baseline", str(base)]) == 1


def test_study_section_is_validated(tmp_path):
    raw = yaml.safe_load(DEMO.read_text())
    for bad, key in [({"seeds": []}, "study.seeds"), ({"seeds": [0, 0]}, "study.seeds"),
                     ({"mirrors": ["nope"]}, "study.mirrors"), ({"trainer": "keras"}, "study.trainer"),
                     ({"colour": 1}, "study.colour"), ({"task": "pose"}, "study.task"),
                     ({"config": {"solver": {"lrr": 0.1}}}, "study.config")]:
        data = dict(raw, study={**raw["study"], **bad})
        p = tmp_path / "r.yaml"
        p.write_text(yaml.safe_dump(data))
        with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
            load_recipe(p)


def test_dry_run_plans_the_study(tmp_path, capsys):
    assert main(["run", str(DEMO), "--no-progress", "--dry-run", *_tiny(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("would train") == 4
    assert not (tmp_path / "out").exists()
