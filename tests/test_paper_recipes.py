"""Every shipped Paper F recipe is complete: it validates and dry-runs (mirrors and study planned) on a dataset in
its real on-disk format, made by the synthetic generator, without weights or a GPU."""
from pathlib import Path

import pytest

from avanon.cli import main
from avanon.recipe import load_recipe
from dataset_adapters.synthetic import generate

RECIPES = sorted(p for p in (Path(__file__).parent.parent / "recipes").glob("*.yaml") if not p.stem.startswith("demo"))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("paper")
    return {fmt: generate(base / fmt, fmt, splits={"train": 3, "val": 1}, seed=0) for fmt in
            ("cityscapes", "bdd100k", "coco")}


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_paper_recipe_dry_runs(recipe, roots, tmp_path, monkeypatch, capsys):
    fmt = recipe.stem.split("_")[0]
    monkeypatch.setenv(f"AVANON_{fmt.upper()}_ROOT", str(roots[fmt]))
    monkeypatch.setenv("AVANON_WEIGHTS", str(tmp_path / "no-weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    rc = main(["run", str(recipe), "--dry-run", "--no-progress", "--set", f"output.root={tmp_path / 'out'}"])
    captured = capsys.readouterr()
    out, both = captured.out, captured.out + captured.err
    assert rc == 0, both
    assert ": plan: 3 images" in out
    assert "would train" in out
    if any(e["method"] == "realistic" for e in load_recipe(recipe)["anonymize"]):  # the resolved recipe (base:)
        assert "warning" in both.lower() and "avanon weights fetch" in both  # the real run would stop before any work
    assert not (tmp_path / "out").exists()
