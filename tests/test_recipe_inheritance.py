"""Recipe inheritance (`base:`), `avanon recipe show` and `avanon recipe schema`."""
import argparse
import json
from pathlib import Path

import pytest
import yaml

from avanon.recipe import SCHEMA, RecipeError, load_recipe, merge_recipe, read_recipe, validate
from avanon.recipe_cli import add_recipe_arguments, cmd_recipe, recipe_json_schema

RECIPE_DIR = Path(__file__).parent.parent / "recipes"
RECIPES = sorted(RECIPE_DIR.glob("*.yaml"))
ROOT_VARS = ("AVANON_CITYSCAPES_ROOT", "AVANON_BDD100K_ROOT", "AVANON_COCO_ROOT")

BASE = {"name": "base", "seed": 1,
        "dataset": {"adapter": "cityscapes", "root": "/data/cs", "options": {"masks": "polygons"}},
        "regions": {"body": {"dilation": "crop_relative", "min_size": 8}},
        "filters": {"skip_crowd": True, "skip_ignore": True},
        "anonymize": [{"region": "body", "method": "blur"}, {"region": "body", "method": "mask_out"}],
        "study": {"seeds": [0, 1, 2], "paper_table": 1, "config": {"model": {"depth": 50, "init": "r50.pth"}}}}


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _public(recipe: dict) -> dict:
    return {k: v for k, v in recipe.items() if not k.startswith("_")}


@pytest.fixture
def roots(monkeypatch):
    for var in ROOT_VARS:
        monkeypatch.setenv(var, f"/data/{var.lower()}")


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avanon")
    add_recipe_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.func is cmd_recipe
    return cmd_recipe(args)


# ------------------------------------------------------------------------------------------------ merge rule
def test_mappings_merge_recursively_lists_and_scalars_replace():
    child = {"seed": 2, "regions": {"body": {"min_size": 32}}, "anonymize": [{"region": "body", "method": "pixelate"}],
             "study": {"config": {"model": {"init": None}}}}
    merged = merge_recipe(BASE, child)
    assert merged["regions"]["body"] == {"dilation": "crop_relative", "min_size": 32}
    assert merged["anonymize"] == [{"region": "body", "method": "pixelate"}]  # a list replaces, never appends
    assert merged["seed"] == 2 and merged["dataset"] == BASE["dataset"]
    assert merged["study"]["config"]["model"] == {"depth": 50, "init": None}  # null replaces, deletes nothing
    assert merged["study"]["seeds"] == [0, 1, 2]
    assert BASE["regions"]["body"]["min_size"] == 8  # the base is not modified


def test_child_file_states_only_what_differs(tmp_path):
    _write(tmp_path / "base.yaml", BASE)
    child = _write(tmp_path / "child.yaml", "base: base.yaml\nname: child\nregions: {body: {min_size: 32}}\n"
                                           "study: {paper_table: null}\n")
    r = load_recipe(child)
    full = validate(merge_recipe(BASE, {"name": "child", "regions": {"body": {"min_size": 32}},
                                        "study": {"paper_table": None}}), "x")
    assert _public(r) == full
    assert r["regions"]["body"] == {"dilation": "crop_relative", "min_size": 32}
    assert [e["name"] for e in r["anonymize"]] == ["body_blur", "body_mask_out"]
    assert r["study"]["paper_table"] is None and r["study"]["config"]["model"]["init"] == "r50.pth"
    assert r["_source"] == str(child) and r["_sources"] == [str(child), str(tmp_path / "base.yaml")]


def test_null_takes_the_default_for_schema_keys(tmp_path):
    _write(tmp_path / "base.yaml", BASE)
    child = _write(tmp_path / "c.yaml", "base: base.yaml\nstudy: null\nregions: {body: null}\nseed: null\n")
    r = load_recipe(child)
    assert r["study"] is None and r["regions"]["body"] == {} and r["seed"] == 0


def test_chain_of_bases_relative_to_each_file(tmp_path):
    _write(tmp_path / "common" / "root.yaml", BASE)
    _write(tmp_path / "common" / "mid.yaml", "base: root.yaml\nworkers: 3\nregions: {body: {min_size: 16}}\n")
    leaf = _write(tmp_path / "paper" / "leaf.yaml", "base: ../common/mid.yaml\nname: leaf\n"
                                                    "regions: {body: {dilation: pixels}}\n")
    r = load_recipe(leaf)
    assert r["name"] == "leaf" and r["workers"] == 3 and r["seed"] == 1
    assert r["regions"]["body"] == {"dilation": "pixels", "min_size": 16}
    assert r["_sources"] == [str(leaf), str(tmp_path / "common" / "mid.yaml"), str(tmp_path / "common" / "root.yaml")]
    data, sources = read_recipe(leaf)
    assert "base" not in data and sources == r["_sources"]


def test_cycles_are_refused_naming_the_files(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    _write(a, "base: b.yaml\nname: a\n")
    _write(b, "base: a.yaml\nname: b\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(a)
    assert str(exc.value) == f"{b}: base: {a} makes a cycle: {a} -> {b} -> {a}"
    _write(a, "base: ./a.yaml\nname: a\n")
    with pytest.raises(RecipeError, match="makes a cycle"):
        load_recipe(a)


def test_missing_or_bad_base_is_refused_naming_the_file(tmp_path):
    child = _write(tmp_path / "x.yaml", "base: y.yaml\nname: x\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(child)
    assert str(exc.value) == f"{child}: base: {tmp_path / 'y.yaml'} not found"
    _write(child, "base: [y.yaml]\n")
    with pytest.raises(RecipeError, match=r"x.yaml: base: must be the path of another recipe"):
        load_recipe(child)
    _write(child, "base: y.yaml\n")
    _write(tmp_path / "y.yaml", "name: [unclosed\n")
    with pytest.raises(RecipeError, match=r"y.yaml: not valid YAML"):
        load_recipe(child)


def test_validation_errors_name_the_file_and_its_bases(tmp_path):
    _write(tmp_path / "base.yaml", dict(BASE, output={"link": "symlink"}))
    child = _write(tmp_path / "c.yaml", "base: base.yaml\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(child)
    assert str(exc.value).startswith(f"{child} (base: {tmp_path / 'base.yaml'}): output.link: must be one of")


def test_set_applies_after_the_merge(tmp_path):
    _write(tmp_path / "base.yaml", BASE)
    child = _write(tmp_path / "c.yaml", "base: base.yaml\nseed: 5\nregions: {body: {min_size: 32}}\n")
    r = load_recipe(child, ["seed=7", "regions.body.min_size=64", "study.config.model.depth=101"])
    assert r["seed"] == 7 and r["regions"]["body"] == {"dilation": "crop_relative", "min_size": 64}
    assert r["study"]["config"]["model"] == {"depth": 101, "init": "r50.pth"}
    with pytest.raises(RecipeError, match=r"base\.yaml\): base: a base recipe is merged when a recipe file is loaded"):
        load_recipe(child, ["base=other.yaml"])


# ------------------------------------------------------------------------------------------------ shipped recipes
def _load(stem: str) -> dict:
    return _public(load_recipe(RECIPE_DIR / f"{stem}.yaml"))


def _same_except(a: dict, b: dict, *keys: str) -> None:
    assert {k: v for k, v in a.items() if k not in keys} == {k: v for k, v in b.items() if k not in keys}


def _entry(recipe: dict, name: str) -> dict:
    return next(e for e in recipe["anonymize"] if e["name"] == name)


@pytest.mark.parametrize("dataset", ["cityscapes", "bdd100k"])
def test_minsize32_is_its_body_recipe_with_min_size_32_and_realistic_only(dataset, roots):
    base, r = _load(f"{dataset}_body"), _load(f"{dataset}_body_minsize32")
    assert yaml.safe_load((RECIPE_DIR / f"{dataset}_body_minsize32.yaml").read_text())["base"] == f"{dataset}_body.yaml"
    _same_except(r, base, "name", "regions", "anonymize", "study")
    assert r["regions"] == {**base["regions"], "body": {**base["regions"]["body"], "min_size": 32}}
    realistic = _entry(base, "body_realistic")
    assert r["anonymize"] == [{**realistic, "name": "body_realistic_minsize32", "variant": "minsize32"}]
    assert r["study"] == {**base["study"], "original": False}


def test_depth_is_the_body_recipe_with_depths_and_no_imagenet_file(roots):
    base, r = _load("cityscapes_body"), _load("cityscapes_body_depth")
    _same_except(r, base, "name", "study")
    model = {**base["study"]["config"]["model"], "init": None}
    assert r["study"] == {**base["study"], "depths": [18, 50, 101, 152],
                          "config": {**base["study"]["config"], "model": model}}


def test_other_classes_is_the_body_recipe_trained_without_persons(roots):
    base, r = _load("cityscapes_body"), _load("cityscapes_body_other_classes")
    _same_except(r, base, "name", "study")
    assert r["study"] == {**base["study"], "variant": "other_classes", "paper_table": None, "metrics": ["AP", "AP50"],
                          "config": {**base["study"]["config"], "data": {"exclude_classes": ["person"]}}}


def test_truncation_is_the_body_recipe_with_one_realistic_mirror_per_truncation(roots):
    base, r = _load("cityscapes_body"), _load("cityscapes_body_truncation")
    _same_except(r, base, "name", "description", "anonymize", "study")
    realistic = _entry(base, "body_realistic")
    for entry, mode in zip(r["anonymize"], ("none", "unimodal", "multimodal"), strict=True):
        assert entry["name"] == f"body_realistic_trunc_{mode}" and entry["variant"] == f"truncation_{mode}"
        assert entry["params"]["truncation"] == mode
        same = {k: v for k, v in entry["params"].items() if k not in ("truncation", "truncation_value")}
        assert same == {k: v for k, v in realistic["params"].items() if k not in ("truncation", "truncation_value")}
    assert r["study"] == {**base["study"], "paper_table": 4}


@pytest.mark.parametrize("dataset", ["cityscapes", "bdd100k", "coco"])
def test_face_recipe_is_its_body_recipe_on_face_regions(dataset, roots):
    base, r = _load(f"{dataset}_body"), _load(f"{dataset}_face")
    _same_except(r, base, "name", "description", "regions", "anonymize")
    assert r["regions"]["body"] == {} and r["regions"]["face"]["provider"] == "file"
    assert r["anonymize"] and all(e["region"] == "face" for e in r["anonymize"])


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_show_reloads_to_the_same_recipe(path, roots, tmp_path, capsys):
    assert _run(["recipe", "show", str(path), "--set", "workers=2"]) == 0
    shown = capsys.readouterr().out
    keys = set(yaml.safe_load(shown))
    assert "base" not in keys and not any(k.startswith("_") for k in keys)
    assert shown.startswith(f"# {path} resolved")
    again = load_recipe(_write(tmp_path / "shown.yaml", shown))
    assert _public(again) == _public(load_recipe(path, ["workers=2"]))
    assert again["workers"] == 2


def test_recipe_show_of_a_bad_recipe_exits_2(tmp_path, capsys):
    child = _write(tmp_path / "x.yaml", "base: y.yaml\n")
    assert _run(["recipe", "show", str(child)]) == 2
    err = capsys.readouterr().err
    assert f"{child}: base: {tmp_path / 'y.yaml'} not found" in err


# ------------------------------------------------------------------------------------------------ JSON Schema
@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = recipe_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator, data) -> list[str]:
    return [e.message for e in validator.iter_errors(data)]


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_schema_accepts_every_shipped_recipe_and_its_resolved_form(path, validator, roots):
    assert _errors(validator, yaml.safe_load(path.read_text())) == []
    assert _errors(validator, json.loads(json.dumps(_public(load_recipe(path))))) == []


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(colour="red"), "'colour' was unexpected"),
    (lambda d: d["output"].update(link="symlink"), "'symlink' is not one of"),
    (lambda d: d["anonymize"][0].update(method="smudge"), "'smudge' is not one of"),
    (lambda d: d["anonymize"][0].update(params={"sigmaa": 3}), "'sigmaa' is not one of"),
    (lambda d: d["regions"].update(face={"provider": "detector", "file": "f.json"}), "'file' is not one of"),
    (lambda d: d["keypoints"].update(provider="annotations", params={"format": "auto"}), "'format' is not one of"),
    (lambda d: d["dataset"].update(options={"labels": "cocofmt"}), "'labels' was unexpected"),
    (lambda d: d["study"].update(task="detection"), "'detection' is not one of"),
    (lambda d: d["regions"]["body"].update(min_size="big"), "'big' is not of type"),
    (lambda d: d.pop("name"), "'name' is a required property"),
])
def test_schema_rejects_unknown_keys_and_wrong_values(validator, change, message):
    data = yaml.safe_load((RECIPE_DIR / "cityscapes_body.yaml").read_text())
    change(data)
    errors = _errors(validator, data)
    assert any(message in e for e in errors), errors


def test_schema_lets_a_recipe_with_a_base_leave_out_required_keys(validator):
    assert _errors(validator, {"base": "cityscapes_body.yaml", "regions": {"body": {"min_size": 32}}}) == []
    assert _errors(validator, {"regions": {"body": {"min_size": 32}}}) != []


def test_schema_covers_every_key_the_loader_knows():
    from avanon.anonymizers import ANONYMIZERS
    from avanon.regions.body import BODY_KEYS
    from avanon.regions.face import COMMON_KEYS, PROVIDER_KEYS
    from avanon.regions.filters import FILTER_KEYS
    from avanon.study.schema import STUDY_SCHEMA

    props = recipe_json_schema()["properties"]
    assert set(props) == set(SCHEMA) | {"base"}
    regions = props["regions"]["properties"]
    assert set(regions["body"]["properties"]) == set(BODY_KEYS)
    assert all(regions["body"]["properties"][k].get("type") or regions["body"]["properties"][k].get("enum")
               for k in BODY_KEYS)
    assert set(regions["face"]["properties"]) == set(COMMON_KEYS).union(*PROVIDER_KEYS.values())
    assert set(props["filters"]["properties"]) == set(FILTER_KEYS)
    assert set(props["study"]["properties"]) == set(STUDY_SCHEMA)
    entry = props["anonymize"]["items"]
    assert entry["properties"]["method"]["enum"] == ANONYMIZERS.names()
    assert props["output"]["properties"]["jpeg_quality"] == {"type": ["integer", "null"], "minimum": 1, "maximum": 100,
                                                             "default": 100,
                                                             "description": "JPEG quality of anonymized images"}


def test_recipe_schema_command_writes_the_schema(tmp_path, capsys):
    out = tmp_path / "recipe.schema.json"
    assert _run(["recipe", "schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == recipe_json_schema()
    capsys.readouterr()
    assert _run(["recipe", "schema"]) == 0
    assert json.loads(capsys.readouterr().out)["$schema"] == "https://json-schema.org/draft/2020-12/schema"
