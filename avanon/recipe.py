"""Recipes: YAML files that say what to anonymize and how. A recipe is data, validated at load time.

Errors name the file and the dotted key. `${VAR}` in a string is replaced by the environment variable VAR
(`${VAR:-default}` gives a default), so dataset roots can come from the environment. `--set a.b=value`
overrides are parsed as YAML values and applied before validation.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional

import yaml


class RecipeError(Exception):
    """A recipe that cannot be used; the message names the file and the key."""


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

REGION_KINDS = ("body", "face")
LINK_MODES = ("copy", "hardlink")
EXIF_FRAMES = ("auto", "oriented", "raw")


class _Field:
    def __init__(self, check: Callable[[Any], Optional[str]], default: Any = None, required: bool = False):
        self.check, self.default, self.required = check, default, required


def _is(types, what):
    types = types if isinstance(types, tuple) else (types,)

    def check(v):
        # bool is an int in Python; only accept it where a bool is asked for
        ok = isinstance(v, types) and (bool in types or not isinstance(v, bool))
        return None if ok else f"must be {what}, got {v!r}"
    return check


def _one_of(*choices):
    def check(v):
        return None if v in choices else f"must be one of {', '.join(map(str, choices))}; got {v!r}"
    return check


def _int_range(lo, hi=None):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer, got {v!r}"
        if v < lo or (hi is not None and v > hi):
            return f"must be in [{lo}, {hi if hi is not None else '∞'}], got {v}"
        return None
    return check


_str = _is(str, "a string")
_dict = _is(dict, "a mapping")
_list = _is(list, "a list")

# Sections this module validates. Other modules register theirs (training, evaluation, report) with
# `register_section` so that one recipe file holds the whole study.
SCHEMA: dict[str, Any] = {
    "name": _Field(_str, required=True),
    "description": _Field(_str, default=""),
    "seed": _Field(_int_range(0), default=0),
    "workers": _Field(_int_range(1), default=1),
    "dataset": {
        "adapter": _Field(_str, required=True),
        "root": _Field(_str, required=True),
        "split": _Field(_str, default="train"),
        "options": _Field(_dict, default={}),
    },
    "regions": {
        "body": _Field(_dict, default={}),
        "face": _Field(_dict, default={}),
    },
    "filters": _Field(_dict, default={}),
    # Keypoints for the keypoint-guided body generator: annotations (COCO) | file (the reference's
    # annotated_keypoints JSON) | estimator (top-down pose model on each mask box).
    "keypoints": {
        "provider": _Field(_str, default="annotations"),
        "params": _Field(_dict, default={}),
    },
    "anonymize": _Field(_list, default=[]),
    "output": {
        "root": _Field(_str, default="out"),
        "link": _Field(_one_of(*LINK_MODES), default="copy"),
        "exif_frame": _Field(_one_of(*EXIF_FRAMES), default="auto"),
        "jpeg_quality": _Field(_int_range(1, 100), default=100),
        "png_compression": _Field(_int_range(0, 9), default=3),
        "copy_unannotated": _Field(_is(bool, "true or false"), default=False),
    },
}

METHOD_ENTRY_KEYS = {"region", "method", "params", "name", "variant"}
_SECTION_VALIDATORS: list[Callable[[dict, str], None]] = []


def register_section(name: str, schema: dict, validator: Optional[Callable[[dict, str], None]] = None) -> None:
    """Let another module (training, report) add a top-level section with its own schema and checks."""
    SCHEMA[name] = schema
    if validator is not None:
        _SECTION_VALIDATORS.append(validator)


def _expand_env(value: Any, key: str, src: str) -> Any:
    if isinstance(value, str):
        def sub(m):
            var, default = m.group(1), m.group(2)
            if var in os.environ:
                return os.environ[var]
            if default is not None:
                return default
            raise RecipeError(f"{src}: {key}: environment variable {var} is not set (used as ${{{var}}})")
        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{key}.{k}" if key else k, src) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{key}[{i}]", src) for i, v in enumerate(value)]
    return value


def _validate(data: Any, schema: dict, prefix: str, src: str) -> dict:
    if not isinstance(data, dict):
        raise RecipeError(f"{src}: {prefix or 'recipe'}: must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(schema))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise RecipeError(f"{src}: {where}{unknown[0]}: unknown key; allowed here: {', '.join(sorted(schema))}")
    out = {}
    for key, spec in schema.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(spec, dict):
            out[key] = _validate(data.get(key, {}), spec, path, src)
            continue
        if key not in data or data[key] is None:
            if spec.required:
                raise RecipeError(f"{src}: {path}: required key is missing")
            out[key] = copy.deepcopy(spec.default)
            continue
        problem = spec.check(data[key])
        if problem:
            raise RecipeError(f"{src}: {path}: {problem}")
        out[key] = data[key]
    return out


def _validate_anonymize(entries: list, src: str) -> list[dict]:
    out = []
    seen = set()
    for i, entry in enumerate(entries):
        key = f"anonymize[{i}]"
        if not isinstance(entry, dict):
            raise RecipeError(f"{src}: {key}: must be a mapping with region and method")
        unknown = sorted(set(entry) - METHOD_ENTRY_KEYS)
        if unknown:
            raise RecipeError(f"{src}: {key}.{unknown[0]}: unknown key; allowed: {', '.join(sorted(METHOD_ENTRY_KEYS))}")
        for req in ("region", "method"):
            if req not in entry:
                raise RecipeError(f"{src}: {key}.{req}: required key is missing")
        if entry["region"] not in REGION_KINDS:
            raise RecipeError(f"{src}: {key}.region: must be one of {', '.join(REGION_KINDS)}; got {entry['region']!r}")
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            raise RecipeError(f"{src}: {key}.params: must be a mapping")
        resolved = {"region": entry["region"], "method": entry["method"], "params": params, "name": entry.get("name"),
                    "variant": entry.get("variant") or ""}
        if not isinstance(resolved["variant"], str):
            raise RecipeError(f"{src}: {key}.variant: must be a string")
        from avanon.anonymizers import ANONYMIZERS, build_anonymizer

        if entry["method"] not in ANONYMIZERS:
            raise RecipeError(f"{src}: {key}.method: unknown method {entry['method']!r}; known: {', '.join(ANONYMIZERS.names())}")
        try:
            anon = build_anonymizer(entry["method"], params)
        except Exception as exc:
            raise RecipeError(f"{src}: {key}.params: {exc}") from None
        resolved["params"] = dict(anon.params)
        resolved["name"] = entry.get("name") or f"{entry['region']}_{anon.tag}"
        if not isinstance(resolved["name"], str) or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*",
                                                                      resolved["name"]):
            raise RecipeError(f"{src}: {key}.name: {resolved['name']!r} is not a valid directory name (letters, "
                              "digits, '_', '-', '.'; not starting with '.')")
        if resolved["name"] in seen:
            raise RecipeError(f"{src}: {key}.name: {resolved['name']!r} is used twice; give one entry another name")
        seen.add(resolved["name"])
        out.append(resolved)
    return out


def _validate_dataset(dataset: dict, src: str) -> None:
    import inspect

    from dataset_adapters import ADAPTERS

    if dataset["adapter"] not in ADAPTERS:
        raise RecipeError(f"{src}: dataset.adapter: unknown adapter {dataset['adapter']!r}; known: {', '.join(ADAPTERS.names())}")
    cls = ADAPTERS.get(dataset["adapter"])
    sig = inspect.signature(cls.__init__)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    allowed = [n for n in sig.parameters if n not in ("self", "root", "split")]
    for opt in dataset["options"]:
        if not takes_any and opt not in allowed:
            raise RecipeError(
                f"{src}: dataset.options.{opt}: unknown option of adapter {dataset['adapter']!r}; allowed: {', '.join(allowed) or '(none)'}"
            )


def apply_overrides(data: dict, overrides: list[str], src: str) -> dict:
    """Apply `key.sub=value` strings (value parsed as YAML) to a raw recipe mapping."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"{src}: --set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise RecipeError(f"{src}: --set {key}: {p} is not a mapping")
            node = node.setdefault(p, {})
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise RecipeError(f"{src}: --set {key}: value is not valid YAML: {exc}") from None
    return data


def validate(data: dict, src: str = "<recipe>") -> dict:
    """Validate a raw recipe mapping and return it resolved (defaults filled, env vars expanded)."""
    import avanon.study  # noqa: F401  (registers the study section)

    data = _expand_env(data, "", src)
    resolved = _validate(data, SCHEMA, "", src)
    _validate_dataset(resolved["dataset"], src)
    resolved["anonymize"] = _validate_anonymize(resolved["anonymize"], src)
    for validator in _SECTION_VALIDATORS:
        validator(resolved, src)
    return resolved


def load_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> dict:
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise RecipeError(f"{src}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{src}: not valid YAML: {exc}") from None
    if data is None:
        raise RecipeError(f"{src}: recipe is empty")
    if not isinstance(data, dict):
        raise RecipeError(f"{src}: recipe must be a mapping at the top level")
    data = apply_overrides(data, overrides or [], src)
    resolved = validate(data, src)
    resolved["_source"] = src
    return resolved


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able object (the identity of a mirror's settings)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
