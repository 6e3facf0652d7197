"""`avanon recipe show|schema`: a recipe as it is run, and the recipe format as a JSON Schema for editors.

* `avanon recipe show RECIPE [--set KEY=VALUE ...]` prints the resolved recipe (its `base:` chain merged, the
  overrides applied, validated, every default filled, `${VAR}` expanded) as YAML in the schema's key order,
  without the bookkeeping `_` keys. The output is itself a complete recipe that loads to the same result.
* `avanon recipe schema [--out FILE]` writes a JSON Schema (draft 2020-12) of a recipe *file*: the keys, types,
  enums and defaults of every section (`regions.body`, `regions.face` by provider, `filters`, `keypoints` by
  provider, `anonymize` entries with each method's parameters, `dataset.options` by adapter, `study`), and `base`.
  A recipe with a `base:` may leave out the keys its base gives (`name`, `dataset`). Editors use it for completion
  and checking, e.g. VS Code's YAML extension with `# yaml-language-server: $schema=recipe.schema.json` on a
  recipe's first line. The schema describes; the loader's own checks (`avanon.recipe`) decide, so a `${VAR}`
  in a key with fixed values (`output.link`) is flagged by the editor and still loads when it expands to one.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from avanon.recipe import REGION_KINDS, SCHEMA, RecipeError, load_recipe
from avanon.schema import Field
from avanon.study.schema import STUDY_SCHEMA

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"  # anonymize[].name, as avanon.recipe checks it


# ------------------------------------------------------------------------------------------------ commands
def add_recipe_arguments(subparsers) -> argparse.ArgumentParser:
    """Add `recipe show` and `recipe schema` to an argparse subparsers object; the parser's `func` is cmd_recipe."""
    p = subparsers.add_parser("recipe", help="show a recipe as it is run, or write the recipe format's JSON Schema",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="recipe_command", required=True, metavar="{show,schema}")
    s = sub.add_parser("show", help="print the resolved recipe: base merged, --set applied, defaults filled")
    s.add_argument("recipe", help="recipe YAML file")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    j = sub.add_parser("schema", help="write a JSON Schema (draft 2020-12) of recipe files, for editors")
    j.add_argument("--out", metavar="FILE", help="write it here (default: stdout)")
    p.set_defaults(func=cmd_recipe)
    return p


def cmd_recipe(args: argparse.Namespace) -> int:
    """Run `recipe show` / `recipe schema`: 0 on success, 2 on a bad recipe (the message on stderr)."""
    try:
        if args.recipe_command == "show":
            sys.stdout.write(show_recipe(args.recipe, args.set))
            return 0
        text = json.dumps(recipe_json_schema(), indent=2) + "\n"
        if args.out:
            Path(args.out).write_text(text)
            print(f"{args.out}: JSON Schema of avanon recipes (draft 2020-12)")
        else:
            sys.stdout.write(text)
        return 0
    except RecipeError as exc:
        print(f"avanon: error: {exc}", file=sys.stderr)
        return 2


def _plain(value: Any) -> Any:
    """YAML-safe copy: tuples as lists, keys as they are."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def show_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> str:
    """The resolved recipe as YAML text (a header comment names the files and overrides it was built from)."""
    resolved = load_recipe(path, overrides)
    sources = resolved.get("_sources") or [str(path)]
    header = [f"# {sources[0]} resolved" + (f" (base: {', '.join(sources[1:])})" if len(sources) > 1 else "")
              + ": defaults filled, environment variables expanded"]
    header += [f"# --set {item}" for item in overrides or []]
    body = yaml.safe_dump(_plain({k: v for k, v in resolved.items() if not k.startswith("_")}), sort_keys=False,
                          default_flow_style=None, allow_unicode=True, width=120)
    return "\n".join(header) + "\n" + body


# ------------------------------------------------------------------------------------------------ schema
def _nullable(schema: dict) -> dict:
    """The schema plus null (a recipe key set to null takes its default)."""
    s = dict(schema)
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        s["type"] = types + ([] if "null" in types else ["null"])
    if "enum" in s and None not in s["enum"]:
        s["enum"] = list(s["enum"]) + [None]
    return s


def _field(field: Field, schema: Optional[dict] = None) -> dict:
    s = dict(schema if schema is not None else field.schema or {})
    if field.doc:
        s.setdefault("description", field.doc)
    if not field.required:
        s = _nullable(s)
        s["default"] = field.default
    return s


def _section(spec: dict, special: dict, path: str = "") -> dict:
    """JSON Schema of a validate_section spec; `special` maps dotted paths to schemas of free-form values."""
    props = {}
    for key, value in spec.items():
        dotted = f"{path}.{key}" if path else key
        props[key] = _section(value, special, dotted) if isinstance(value, dict) else _field(value, special.get(dotted))
    return {"type": "object", "properties": props, "additionalProperties": False}


def _required(spec: dict) -> dict:
    """`required` of a spec's keys (sections that hold a required key count as required), recursively."""
    out: dict = {"required": []}
    for key, value in spec.items():
        if isinstance(value, dict):
            inner = _required(value)
            if inner["required"]:
                out["required"].append(key)
                out.setdefault("properties", {})[key] = inner
        elif value.required:
            out["required"].append(key)
    return out


def _provider_keys(selector: str, default: str, allowed: dict[str, list[str]], inner: Optional[str] = None) -> list:
    """allOf entries: when `selector` is p (or absent, meaning `default`), the mapping (or its `inner` mapping)
    takes only allowed[p]."""
    def restrict(keys):
        names = {"propertyNames": {"enum": sorted(keys)}}
        return {"properties": {inner: names}} if inner else names

    out = [{"if": {"properties": {selector: {"const": p}}, "required": [selector]}, "then": restrict(keys)}
           for p, keys in allowed.items()]
    out.append({"if": {"not": {"required": [selector]}}, "then": restrict(allowed[default])})
    return out


def _body_schema() -> dict:
    from avanon.regions.body import BODY_KEYS, DILATION_MODES, MASK_RESIZE_MODES, parse_body_params

    defaults = dataclasses.asdict(parse_body_params({}))
    types = {
        "dilation": {"enum": list(DILATION_MODES), "description": "crop_relative: the reference's disk dilation in "
                     "the 288x160 crop; pixels: a disk of dilation_radius image pixels"},
        "dilation_radius": {"type": "integer", "minimum": 0, "description": "disk radius, crop or image pixels"},
        "min_size": {"type": "number", "minimum": 0,
                     "description": "instances whose expanded box area is below min_size^2 are skipped"},
        "keypoint_threshold": {"type": "number", "description": "keypoints with v >= this are visible"},
        "mask_resize": {"enum": list(MASK_RESIZE_MODES), "description": "how the person mask reaches the crop: "
                        "nearest (bool masks, Cityscapes) or reference_uint8 (COCO, BDD100K recipes)"},
    }
    props = {k: dict(types.get(k, {}), default=defaults[k]) for k in BODY_KEYS}
    return {"type": "object", "properties": props, "additionalProperties": False,
            "description": "full-body regions (avanon.regions.body)"}


def _face_schema() -> dict:
    from avanon.regions.face import (
        COMMON_KEYS, DEFAULT_SCORE_THRESHOLD, DETECTORS, FACE_PROVIDERS, FILE_FORMATS, KEYPOINT_DEFAULTS,
        PROVIDER_KEYS, parse_face_params,
    )

    unit = {"type": "number", "minimum": 0, "maximum": 1}
    thresholds = ", ".join(f"{p} {v}" for p, v in DEFAULT_SCORE_THRESHOLD.items())
    types = {
        "provider": {"enum": FACE_PROVIDERS.names(), "default": parse_face_params({}).provider,
                     "description": "where face boxes come from"},
        "score_threshold": {**_nullable(unit),
                            "description": f"boxes scoring below are dropped (default: {thresholds})"},
        "min_iou": {**unit, "default": 0.01, "description": "a box must overlap a person mask by more than this"},
        "file": {"type": "string", "description": "face-box JSON, relative to the dataset root or absolute"},
        "file_format": {"enum": list(FILE_FORMATS), "default": "auto"},
        "detector": {"enum": list(DETECTORS), "default": DETECTORS[0]},
        "device": {"type": "string", "default": "cpu"},
        "min_face_size": {"type": "number", "minimum": 1, "default": 20},
        "keypoint_threshold": unit,
        "min_visible": {"type": "number", "minimum": 2, "maximum": 5},
        "kp_eye_line": unit, "kp_nose_line": unit, "kp_ear_line": unit,
    }
    keys = list(COMMON_KEYS) + [k for p in PROVIDER_KEYS.values() for k in p if k not in COMMON_KEYS]
    props = {}
    for k in dict.fromkeys(keys):
        props[k] = dict(types.get(k, {"type": "number", "minimum": 0}))
        if k in KEYPOINT_DEFAULTS:
            props[k]["default"] = KEYPOINT_DEFAULTS[k]
    allowed = {p: list(COMMON_KEYS) + list(PROVIDER_KEYS[p]) for p in FACE_PROVIDERS.names()}
    return {"type": "object", "properties": props, "additionalProperties": False,
            "allOf": _provider_keys("provider", props["provider"]["default"], allowed),
            "description": "face regions (avanon.regions.face); keys of another provider are refused"}


def _filters_schema() -> dict:
    from avanon.regions.filters import FILTER_KEYS

    flag = {"type": "boolean"}
    types = {
        "categories": {"type": ["array", "null"], "items": {"type": "string"},
                       "description": "categories to anonymize (default: the adapter's target categories)"},
        "skip_crowd": dict(flag, default=True), "skip_ignore": dict(flag, default=True),
        "require_keypoints": dict(flag, default=False), "allow_empty": dict(flag, default=False),
    }
    return {"type": "object", "properties": {k: types.get(k, {}) for k in FILTER_KEYS}, "additionalProperties": False}


def _keypoints_rules() -> tuple[dict, dict, list]:
    """(provider schema, params schema, allOf restricting params by provider) of the `keypoints` section."""
    from avanon.regions.keypoints import (
        BACKENDS, CONFIDENCE_MODES, DEFAULT_THRESHOLD, FILE_FORMATS, KEYPOINT_PROVIDERS, OVERLAP_MODES,
    )

    common = {"threshold": {"type": "number", "default": DEFAULT_THRESHOLD,
                            "description": "a confidence at least this (strict: above) is visible"},
              "strict": {"type": "boolean", "default": False}}
    types = {
        "file": {"type": "string"}, "format": {"enum": list(FILE_FORMATS), "default": "auto"},
        "overlap": {"enum": list(OVERLAP_MODES), "default": "auto"}, "cocofmt": {"type": "string"},
        "min_iou": {"type": "number", "default": 0.5}, "backend": {"enum": list(BACKENDS), "default": "torchvision"},
        "weights": {"type": "string"}, "device": {"type": "string", "default": "cpu"},
        "min_size": {"type": "integer", "minimum": 32, "default": 800},
        "max_size": {"type": "integer", "minimum": 32, "default": 1333},
        "confidence": {"enum": list(CONFIDENCE_MODES), "default": "local_softmax"},
        "box_padding": {"type": "number", "default": 0.0},
        "categories": {"type": ["string", "array"], "items": {"type": "string"}},
        "mmpose_config": {"type": "string"}, "mmpose_checkpoint": {"type": "string"},
    }
    allowed = {p: list(common) + list(KEYPOINT_PROVIDERS.get(p).keys) for p in KEYPOINT_PROVIDERS.names()}
    props = dict(common)
    for keys in allowed.values():
        props.update({k: types.get(k, {}) for k in keys if k not in props})
    provider = {"enum": KEYPOINT_PROVIDERS.names()}
    params = {"type": "object", "properties": props}
    return provider, params, _provider_keys("provider", SCHEMA["keypoints"]["provider"].default, allowed, "params")


def _dataset_rules() -> tuple[dict, list]:
    """(adapter schema, allOf restricting options by adapter) of the `dataset` section."""
    from dataset_adapters import ADAPTERS

    rules = []
    for name in ADAPTERS.names():
        params = inspect.signature(ADAPTERS.get(name).__init__).parameters.values()
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
        props = {}
        for p in params:
            if p.name in ("self", "root", "split") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            ok = p.default is not p.empty and (p.default is None or isinstance(p.default, (str, int, float, bool)))
            props[p.name] = {"default": p.default} if ok else {}
        options = {"properties": props} if takes_any else {"properties": props, "additionalProperties": False}
        rules.append({"if": {"properties": {"adapter": {"const": name}}, "required": ["adapter"]},
                      "then": {"properties": {"options": options}}})
    return {"enum": ADAPTERS.names(), "description": "dataset format"}, rules


def _anonymize_schema() -> dict:
    from avanon.anonymizers import ANONYMIZERS

    rules = []
    for method in ANONYMIZERS.names():
        defaults = ANONYMIZERS.get(method).defaults
        params = {"properties": {k: {"default": v} for k, v in defaults.items()},
                  **({"propertyNames": {"enum": sorted(defaults)}} if defaults else {"maxProperties": 0})}
        rules.append({"if": {"properties": {"method": {"const": method}}, "required": ["method"]},
                      "then": {"properties": {"params": params}}})
    entry = {
        "type": "object", "required": ["region", "method"], "additionalProperties": False,
        "properties": {
            "region": {"enum": list(REGION_KINDS), "description": "which regions"},
            "method": {"enum": ANONYMIZERS.names(), "description": "which anonymizer"},
            "params": {"type": ["object", "null"], "default": {}, "description": "the method's parameters"},
            "name": {"type": ["string", "null"], "pattern": NAME_PATTERN,
                     "description": "the mirror's directory (default <region>_<tag>); unique in the recipe"},
            "variant": {"type": ["string", "null"], "default": "",
                        "description": "grouping label in results and reports (e.g. minsize32)"},
        },
        "allOf": rules,
    }
    return {"type": "array", "items": entry}


def recipe_json_schema() -> dict:
    """JSON Schema (draft 2020-12) of a recipe file, from avanon.recipe.SCHEMA, the study section's
    STUDY_SCHEMA and the region, filter, keypoint, adapter and anonymizer definitions."""
    kp_provider, kp_params, kp_rules = _keypoints_rules()
    adapter, dataset_rules = _dataset_rules()
    special = {
        "dataset.adapter": adapter, "dataset.options": {"type": "object", "description": "adapter options"},
        "regions.body": _body_schema(), "regions.face": _face_schema(), "filters": _filters_schema(),
        "keypoints.provider": kp_provider, "keypoints.params": kp_params, "anonymize": _anonymize_schema(),
    }
    top = _section(SCHEMA, special)
    props = top["properties"]
    study = _section(STUDY_SCHEMA, {})
    props["study"] = _field(SCHEMA["study"], {**study, "type": "object"})
    props["dataset"]["allOf"] = dataset_rules
    props["keypoints"]["allOf"] = kp_rules
    props["base"] = {"type": "string", "description": "a recipe this one changes (path relative to this file); "
                     "mappings merge key by key, anything else replaces"}
    props = {"base": props.pop("base"), **props}
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": "urn:avanon:recipe",
        "title": "avanon recipe",
        "description": "What to anonymize and how (docs/recipes.md). Generated by `avanon recipe schema`.",
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        # keys a recipe must give unless a base gives them
        "if": {"not": {"required": ["base"]}},
        "then": _required(SCHEMA),
    }
