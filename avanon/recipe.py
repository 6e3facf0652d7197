"""Recipes: YAML files that say what to anonymize and how. A recipe is data, validated at load time.

Errors name the file and the dotted key. `${VAR}` in a string is replaced by the environment variable VAR
(`${VAR:-default}` gives a default), so dataset roots can come from the environment.

Inheritance: `base: other.yaml` (a path relative to the recipe's own file, or absolute) makes the recipe a set of
changes to another recipe, which may itself have a base (a cycle is refused, naming the files). Merge rule, the
child over its base:

* a mapping merges key by key, recursively (`regions: {body: {min_size: 32}}` changes that one value and keeps
  the base's other `regions.body` keys);
* anything else replaces the base's value whole: a list (`anonymize:`, `study.seeds`), a scalar, a mapping over a
  non-mapping;
* `null` replaces too, it deletes nothing. For a key of the recipe schema, null means "the default", as in any
  recipe, so `study: null` drops the base's study and `study.paper_table: null` its table; inside a free-form
  mapping (`regions.*`, `filters`, `params`, `study.config`) the null stays as written for that section to read
  (`study.config.model.init: null` is "train from scratch").

`--set a.b=value` overrides (values parsed as YAML) apply after the merge. The merged and overridden mapping is
what is validated (defaults filled, `${VAR}` expanded); the mirrors' settings hash and the recorded recipe come
from that result, so a recipe resolves to the same thing whether it is written out in full or inherits.
Validation errors of an inheriting recipe name the file and its bases. `load_recipe` adds two bookkeeping keys,
which no hash covers: `_source` (the file given) and `_sources` (that file and its bases, nearest first).
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
    "name": Field(is_str, required=True, doc="the recipe's name; the study lives in OUTPUT_ROOT/ADAPTER/study/NAME"),
    "description": Field(is_str, default="", doc="free text"),
    "seed": Field(int_range(0), default=0, doc="per-image seeds derive from it and the file name"),
    "workers": Field(int_range(1), default=1, doc="parallel processes, one image each"),
    "dataset": {
        "adapter": Field(is_str, required=True, doc="dataset format"),
        "root": Field(is_str, required=True, doc="dataset root; nothing outside it is read"),
        "split": Field(is_str, default="train", doc="the split that is anonymized (the other files are copied)"),
        "options": Field(is_dict, default={}, doc="adapter options"),
    },
    "regions": {
        "body": Field(is_dict, default={}, doc="full-body regions"),
        "face": Field(is_dict, default={}, doc="face regions"),
    },
    "filters": Field(is_dict, default={}, doc="which instances are anonymized"),
    # Keypoints for the keypoint-guided body generator: annotations (COCO) | file (the reference's
    # annotated_keypoints JSON) | estimator (top-down pose model on each mask box).
    "keypoints": {
        "provider": Field(is_str, default="annotations", doc="where COCO-order keypoints come from"),
        "params": Field(is_dict, default={}, doc="the provider's parameters"),
    },
    "anonymize": Field(is_list, default=[], doc="one mirror per entry"),
    "output": {
        "root": Field(is_str, default="out", doc="mirrors go to ROOT/ADAPTER/NAME"),
        "link": Field(one_of(*LINK_MODES), default="copy", doc="hard-link untouched images instead of copying"),
        "exif_frame": Field(one_of(*EXIF_FRAMES), default="auto", doc="the frame annotations refer to"),
        "jpeg_quality": Field(int_range(1, 100), default=100, doc="JPEG quality of anonymized images"),
        "png_compression": Field(int_range(0, 9), default=3, doc="PNG compression level"),
        "copy_unannotated": Field(is_type(bool, "true or false"), default=False,
                                  doc="copy images of the split that have no annotation"),
    },
}

METHOD_ENTRY_KEYS = {"region", "method", "params", "name", "variant"}
# Sections that a stage declares and checks itself (see avanon.schema): name -> (field, validator).
# Directories beside the mirrors under OUT/ADAPTER/ (study runs, shard logs): no mirror may take these names.
RESERVED_MIRROR_NAMES = frozenset({"study", "logs"})
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
        if resolved["name"] in RESERVED_MIRROR_NAMES:
            raise RecipeError(f"{src}: {key}.name: {resolved['name']!r} is reserved: OUT/ADAPTER/{resolved['name']}/ "
                              "holds the study's runs or the shard logs, which must never land inside a mirror; "
                              "give the entry another name")
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
    if isinstance(data, dict) and "base" in data:
        raise RecipeError(f"{src}: base: a base recipe is merged when a recipe file is loaded (load_recipe); "
                          "it cannot be set here or with --set")
    data = _expand_env(data, "", src)
    resolved = validate_section(data, SCHEMA, "", src)
    _validate_dataset(resolved["dataset"], src)
    resolved["anonymize"] = _validate_anonymize(resolved["anonymize"], src)
    for _, validator in SECTIONS.values():
        validator(resolved, src)
    return resolved


def _read_mapping(path: Path, src: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{src}: not valid YAML: {exc}") from None
    if data is None:
        raise RecipeError(f"{src}: recipe is empty")
    if not isinstance(data, dict):
        raise RecipeError(f"{src}: recipe must be a mapping at the top level")
    return data


def merge_recipe(base: dict, child: dict) -> dict:
    """`child` over `base` (the module's merge rule): mappings merge recursively, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_recipe(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_recipe(path: str | Path) -> tuple[dict, list[str]]:
    """The raw recipe mapping of a file with its bases merged in (no overrides, not validated), and the files it
    was built from: the file itself, then its bases, nearest first."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise RecipeError(f"{src}: recipe file not found")
    chain: list[tuple[Path, str, dict]] = []
    seen: dict[Path, str] = {}
    while True:
        seen[path.resolve()] = src
        data = _read_mapping(path, src)
        chain.append((path, src, data))
        if "base" not in data:
            break
        base = data.pop("base")
        if not isinstance(base, str) or not base.strip():
            raise RecipeError(f"{src}: base: must be the path of another recipe (relative to this file), "
                              f"got {base!r}")
        nxt = Path(os.path.expanduser(base))
        nxt = nxt if nxt.is_absolute() else path.parent / nxt
        nsrc = os.path.normpath(str(nxt))
        if not nxt.is_file():
            raise RecipeError(f"{src}: base: {nsrc} not found")
        if nxt.resolve() in seen:
            names = [s for _, s, _ in chain] + [seen[nxt.resolve()]]
            raise RecipeError(f"{src}: base: {nsrc} makes a cycle: {' -> '.join(names)}")
        path, src = nxt, nsrc
    merged: dict = {}
    for _, _, data in reversed(chain):
        merged = merge_recipe(merged, data)
    return merged, [s for _, s, _ in chain]


def load_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> dict:
    """Read a recipe file (its `base:` chain merged), apply `--set` overrides, validate; the resolved recipe with
    `_source` (the file) and `_sources` (the file and its bases)."""
    src = str(path)
    data, sources = read_recipe(path)
    data = apply_overrides(data, overrides or [], src)
    resolved = validate(data, src if len(sources) == 1 else f"{src} (base: {', '.join(sources[1:])})")
    resolved["_source"] = src
    resolved["_sources"] = sources
    return resolved
