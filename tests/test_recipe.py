"""Recipes are validated on load; errors name the file and the key."""
from pathlib import Path

import pytest
import yaml

from avanon.recipe import RecipeError, apply_overrides, load_recipe, validate

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def _base(**over):
    d = {"name": "t", "dataset": {"adapter": "cityscapes", "root": "/data/cs"},
         "anonymize": [{"region": "body", "method": "mask_out"}]}
    d.update(over)
    return d


def _write(tmp_path, data):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_are_filled_and_mirror_names_derived():
    r = validate(_base(), "r.yaml")
    assert r["seed"] == 0 and r["workers"] == 1 and r["dataset"]["split"] == "train"
    assert r["output"]["jpeg_quality"] == 100 and r["output"]["link"] == "copy"
    assert r["anonymize"][0]["name"] == "body_mask_out"
    assert r["anonymize"][0]["params"]["fill"] == 127


@pytest.mark.parametrize("data, key", [
    (_base(colour="red"), "colour: unknown key"),
    (_base(output={"jpeg_quality": 101}), "output.jpeg_quality"),
    (_base(output={"link": "symlink"}), "output.link"),
    (_base(seed="zero"), "seed: must be an integer"),
    (_base(workers=True), "workers: must be an integer"),
    (_base(dataset={"adapter": "kitti", "root": "/x"}), "dataset.adapter: unknown adapter 'kitti'"),
    (_base(dataset={"adapter": "coco", "root": "/x", "options": {"bogus": 1}}), "dataset.options.bogus"),
    (_base(dataset={"adapter": "coco"}), "dataset.root: required"),
    (_base(anonymize=[{"region": "hand", "method": "blur"}]), "anonymize[0].region"),
    (_base(anonymize=[{"region": "body", "method": "smudge"}]), "anonymize[0].method"),
    (_base(anonymize=[{"region": "body", "method": "blur", "params": {"sigmaa": 3}}]), "anonymize[0].params"),
    (_base(anonymize=[{"region": "body", "method": "blur", "colour": 1}]), "anonymize[0].colour"),
    (_base(anonymize=[{"region": "body", "method": "blur"}, {"region": "body", "method": "blur"}]), "used twice"),
    # the study's runs and the shard logs live in OUT/ADAPTER/study and OUT/ADAPTER/logs: never inside a mirror
    (_base(anonymize=[{"region": "body", "method": "blur", "name": "study"}]), "anonymize[0].name: 'study' is reserved"),
    (_base(anonymize=[{"region": "body", "method": "blur", "name": "logs"}]), "anonymize[0].name: 'logs' is reserved"),
])
def test_bad_recipes_name_file_and_key(tmp_path, data, key):
    with pytest.raises(RecipeError) as exc:
        load_recipe(_write(tmp_path, data))
    assert str(tmp_path / "r.yaml") in str(exc.value)
    assert key in str(exc.value)


def test_env_vars_and_defaults(monkeypatch):
    monkeypatch.setenv("CS_ROOT", "/mnt/cs")
    r = validate(_base(dataset={"adapter": "cityscapes", "root": "${CS_ROOT}"},
                       output={"root": "${NOT_SET_VAR:-fallback}"}), "r.yaml")
    assert r["dataset"]["root"] == "/mnt/cs" and r["output"]["root"] == "fallback"
    monkeypatch.delenv("CS_ROOT")
    with pytest.raises(RecipeError, match=r"dataset.root: environment variable CS_ROOT is not set"):
        validate(_base(dataset={"adapter": "cityscapes", "root": "${CS_ROOT}"}), "r.yaml")


def test_set_overrides_parse_yaml_values(tmp_path):
    p = _write(tmp_path, _base())
    r = load_recipe(p, ["seed=3", "output.link=hardlink", "anonymize=[{region: face, method: blur}]"])
    assert r["seed"] == 3 and r["output"]["link"] == "hardlink"
    assert r["anonymize"][0]["name"] == "face_blur"
    with pytest.raises(RecipeError, match="expected key=value"):
        apply_overrides({}, ["seed"], "r.yaml")


def test_empty_missing_and_broken_files(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "none.yaml")
    (tmp_path / "e.yaml").write_text("")
    with pytest.raises(RecipeError, match="empty"):
        load_recipe(tmp_path / "e.yaml")
    (tmp_path / "b.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "b.yaml")


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate(path, monkeypatch):
    for var in ("AVANON_CITYSCAPES_ROOT", "AVANON_BDD100K_ROOT", "AVANON_COCO_ROOT"):
        monkeypatch.setenv(var, "/data/x")
    r = load_recipe(path)
    assert r["anonymize"], "every shipped recipe anonymizes something"
