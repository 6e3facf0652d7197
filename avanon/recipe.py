"""Recipes: YAML files that say what to anonymize and how. A recipe is data, validated at load time.

Errors name the file and the dotted key. `${VAR}` in a string is replaced by the environment variable VAR
(`${VAR:-default}` gives a default), so dataset roots can come from the environment. `--set a.b=value`
overrides are parsed as YAML values and applied before validation.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from avanon.schema import (  # noqa: F401  (RecipeError and config_hash are part of this module's API)
    Field, RecipeError, config_hash, int_range, is_dict, is_list, is_str, is_type, one_of, validate_section,
)
from avanon.study.schema import STUDY_FIELD, validate_study

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

REGION_KINDS = ("body", "face")
LINK_MODES = ("copy", "hardlink")
EXIF_FRAMES = ("auto", "oriented", "raw")


# The recipe's sections; the stages' own sections (the study) are added from SECTIONS below.
SCHEMA: dict[str, Any] = {
    "name": Field(is_str, required=True),
    "description": Field(is_str, default=""),
    "seed": Field(int_range(0), default=0),
    "workers": Field(int_range(1), default=1),
    "dataset": {
        "adapter": Field(is_str, required=True),
        "root": Field(is_str, required=True),
        "split": Field(is_str, default="train"),
        "options": Field(is_dict, default={}),
    },
    "regions": {
        "body": Field(is_dict, default={}),
        "face": Field(is_dict, default={}),
    },
    "filters": Field(is_dict, default={}),
    # Keypoints for the keypoint-guided body generator: annotations (COCO) | file (the reference's
    # annotated_keypoints JSON) | estimator (top-down pose model on each mask box).
    "keypoints": {
        "provider": Field(is_str, default="annotations"),
        "params": Field(is_dict, default={}),
    },
    "anonymize": Field(is_list, default=[]),
    "output": {
        "root": Field(is_str, default="out"),
        "link": Field(one_of(*LINK_MODES), default="copy"),
        "exif_frame": Field(one_of(*EXIF_FRAMES), default="auto"),
        "jpeg_quality": Field(int_range(1, 100), default=100),
        "png_compression": Field(int_range(0, 9), default=3),
        "copy_unannotated": Field(is_type(bool, "true or false"), default=False),
    },
}

METHOD_ENTRY_KEYS = {"region", "method", "params", "name", "variant"}
# Sections that a stage declares and checks itself (see avanon.schema): name -> (field, validator).
SECTIONS: dict[str, tuple[Field, Callable[[dict, str], None]]] = {"study": (STUDY_FIELD, validate_study)}
SCHEMA.update({name: field for name, (field, _) in SECTIONS.items()})


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
    data = _expand_env(data, "", src)
    resolved = validate_section(data, SCHEMA, "", src)
    _validate_dataset(resolved["dataset"], src)
    resolved["anonymize"] = _validate_anonymize(resolved["anonymize"], src)
    for _, validator in SECTIONS.values():
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
