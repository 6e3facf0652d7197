"""The pieces every recipe section is validated with: a field (check + default), the checks, the error type, and
the stable hash of resolved settings. A leaf module, so that each stage can declare its own section's schema
without importing the recipe loader (which imports every stage)."""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Callable, Optional


class RecipeError(Exception):
    """A recipe that cannot be used; the message names the file and the key."""


class Field:
    """One recipe key: `check(value)` returns a problem or None; `default` fills an absent (or null) key.

    `schema` (a JSON Schema fragment for the value) and `doc` (one line) only describe the key for editors
    (`avanon recipe schema`); validation is `check`. Without `schema`, the check's own `schema` attribute is used
    (the checks below set one)."""

    def __init__(self, check: Callable[[Any], Optional[str]], default: Any = None, required: bool = False,
                 schema: Optional[dict] = None, doc: str = ""):
        self.check, self.default, self.required = check, default, required
        self.schema = schema if schema is not None else getattr(check, "schema", None)
        self.doc = doc


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object", list: "array"}


def is_type(types, what):
    types = types if isinstance(types, tuple) else (types,)

    def check(v):
        # bool is an int in Python; only accept it where a bool is asked for
        ok = isinstance(v, types) and (bool in types or not isinstance(v, bool))
        return None if ok else f"must be {what}, got {v!r}"
    names = [_JSON_TYPES[t] for t in types if t in _JSON_TYPES]
    if names:
        check.schema = {"type": names[0] if len(names) == 1 else names}
    return check


def one_of(*choices):
    def check(v):
        return None if v in choices else f"must be one of {', '.join(map(str, choices))}; got {v!r}"
    check.schema = {"enum": list(choices)}
    return check


def int_range(lo, hi=None):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer, got {v!r}"
        if v < lo or (hi is not None and v > hi):
            return f"must be in [{lo}, {hi if hi is not None else '∞'}], got {v}"
        return None
    check.schema = {"type": "integer", "minimum": lo, **({"maximum": hi} if hi is not None else {})}
    return check


is_str = is_type(str, "a string")
is_dict = is_type(dict, "a mapping")
is_list = is_type(list, "a list")


def validate_section(data: Any, schema: dict, prefix: str, src: str) -> dict:
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
            out[key] = validate_section(data.get(key, {}), spec, path, src)
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


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able object (the identity of a mirror's settings)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
