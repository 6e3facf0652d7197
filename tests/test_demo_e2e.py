"""End to end through the CLI on the synthetic dataset: the demo recipe, then verify every mirror."""
from pathlib import Path

import pytest

from avanon.cli import main

DEMO = Path(__file__).parent.parent / "recipes" / "demo.yaml"


@pytest.mark.slow
def test_demo_recipe_writes_verifiable_mirrors(tmp_path, capsys):
    sets = ["--set", f"dataset.root={tmp_path / 'data'}", "--set", f"output.root={tmp_path / 'out'}",
            "--set", "dataset.options.num_train=6", "--set", "dataset.options.num_val=2"]
    assert main(["run", str(DEMO), "--no-progress", "--anonymize-only", *sets]) == 0
    printed = capsys.readouterr().out
    mirrors = sorted((tmp_path / "out" / "synthetic").iterdir())
    assert [m.name for m in mirrors] == ["body_blur", "body_mask_out", "body_pixelate16", "face_blur",
                                         "face_mask_out", "face_pixelate8"]
    assert printed.count(": done: 6 images") == 6
    for m in mirrors:
        assert main(["verify", str(m)]) == 0, capsys.readouterr().out
    # the same command again resumes: nothing is redone
    assert main(["run", str(DEMO), "--no-progress", "--anonymize-only", *sets]) == 0
    assert capsys.readouterr().out.count("6 already done") == 6
    # two workers produce the same bytes as one
    assert main(["run", str(DEMO), "--no-progress", "--anonymize-only", "--only", "body_blur", "--workers", "2",
                 "--set", f"output.root={tmp_path / 'out2'}", *sets[:2], *sets[4:]]) == 0
    a, b = tmp_path / "out" / "synthetic" / "body_blur", tmp_path / "out2" / "synthetic" / "body_blur"
    assert (a / "manifest.jsonl").read_bytes() == (b / "manifest.jsonl").read_bytes()
