"""Reading results.jsonl (the format is described in the package docstring): one row per (run, seed), checked."""
from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd

from avanon.study import paper_f
from avanon.study.paper_f import METRIC_ALIASES, METRIC_ORDER


RESULTS_FILE = "results.jsonl"



REQUIRED_KEYS = ("dataset", "task", "model", "depth", "region", "method", "seed", "metrics")



OPTIONAL_KEYS = {"variant": "", "mirror": "", "paper_table": None}



# A run's identity (without the seed) and the group a Δ is taken within.
KEY = ["dataset", "task", "model", "depth", "variant", "region", "method"]



GROUP = ["dataset", "task", "model", "depth", "variant"]



TABLE = ["dataset", "task", "model", "depth", "table_variant"]



# The optional per-row ``privacy`` object: its keys and the frame columns they are read into (present only when
# some row of the file has privacy data, so a file without it loads exactly as before).
PRIVACY_KEYS = ("detail_kept", "face_recall")



PRIVACY_COLUMNS = {k: f"privacy_{k}" for k in PRIVACY_KEYS}



FIXED_COLUMNS = set(KEY) | {"seed", "mirror", "paper_table", "line"} | set(PRIVACY_COLUMNS.values())



ORIGINAL = "original"



PathLike = Union[str, Path]



class ResultsError(ValueError):
    """results.jsonl cannot be read: missing, malformed, or a line without a required key."""



class ReportWarning(UserWarning):
    """Something the report worked around: a truncated last line, a duplicate run, no Original to compare with."""



def _warn(msg: str) -> None:
    warnings.warn(msg, ReportWarning, stacklevel=3)



def results_path(path: PathLike) -> Path:
    """RUN_DIR -> RUN_DIR/results.jsonl; a file path is returned as it is."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    if not p.is_file():
        raise ResultsError(f"{p}: no such results file (expected RUN_DIR/{RESULTS_FILE} or a .jsonl file)")
    return p



def _depth_from_model(model: str) -> Optional[int]:
    m = re.search(r"(?:^|[_\-])r(?:esnet)?-?(\d{2,3})(?:$|[_\-])", model, flags=re.IGNORECASE)
    return int(m.group(1)) if m else None



def _as_int(value, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float)
                                                                         and not value.is_integer()):
        raise ResultsError(f"{where}: {what} must be an integer, got {value!r}")
    return int(value)



def _parse_privacy(privacy, where: str) -> dict:
    """The optional ``privacy`` object -> {column: float} for the values given (null or absent: not measured)."""
    if privacy is None:
        return {}
    if not isinstance(privacy, dict):
        raise ResultsError(f"{where}: privacy must be an object like {{\"detail_kept\": 0.2, \"face_recall\": "
                           f"0.1}} or null, got {privacy!r}")
    out = {}
    for k in PRIVACY_KEYS:
        v = privacy.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            raise ResultsError(f"{where}: privacy.{k} must be a number in [0, 1] or null, got {v!r}")
        out[PRIVACY_COLUMNS[k]] = float(v)
    return out



def _parse_row(obj, where: str) -> dict:
    if not isinstance(obj, dict):
        raise ResultsError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise ResultsError(f"{where}: missing key(s) {', '.join(missing)} "
                           f"(a results line needs {', '.join(REQUIRED_KEYS)})")
    row = {}
    for k in ("dataset", "task", "model", "region", "method"):
        v = obj[k]
        if not isinstance(v, str) or not v:
            raise ResultsError(f"{where}: {k} must be a non-empty string, got {v!r}")
        row[k] = v
    variant = obj.get("variant", "")
    if variant is None:
        variant = ""
    if not isinstance(variant, str):
        raise ResultsError(f"{where}: variant must be a string, got {variant!r}")
    row["variant"] = variant
    mirror = obj.get("mirror", "") or ""
    row["mirror"] = str(mirror)
    depth = obj["depth"]
    if depth is None:
        depth = _depth_from_model(row["model"])
        if depth is None:
            raise ResultsError(f"{where}: depth is null and the model name {row['model']!r} does not say it")
    row["depth"] = _as_int(depth, "depth", where)
    row["seed"] = _as_int(obj["seed"], "seed", where)
    pt = obj.get("paper_table")
    if pt is not None:
        pt = _as_int(pt, "paper_table", where)
        if pt not in paper_f.TABLES:
            raise ResultsError(f"{where}: paper_table {pt} is not a Paper F table {paper_f.TABLES} (or null)")
    row["paper_table"] = pt
    row.update(_parse_privacy(obj.get("privacy"), where))
    metrics = obj["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise ResultsError(f"{where}: metrics must be a non-empty object of name: number")
    values = {}
    for name, v in metrics.items():
        if v is None:
            v = math.nan
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ResultsError(f"{where}: metric {name!r} must be a number or null, got {v!r}")
        canon = METRIC_ALIASES.get(name, name)
        if canon in FIXED_COLUMNS:
            raise ResultsError(f"{where}: metric name {name!r} clashes with a results key")
        if canon != name and canon in metrics:
            continue  # both spellings present: the canonical one wins
        values[canon] = float(v)
    return row, values



def load_results(run_dir: PathLike) -> pd.DataFrame:
    """Read RUN_DIR/results.jsonl (or a .jsonl path) into one row per (run, seed).

    Columns: dataset, task, model, depth, variant, region, method, mirror, seed, paper_table (Int64, may be
    <NA>), line (1-based line number), then -- only when some row has a ``privacy`` value --
    privacy_detail_kept and privacy_face_recall (float, NaN where a row lacks the value), then one float column
    per metric (NaN where a run lacks it), metrics in Paper F's order first (AP, AP50, AP_person, box_AP, kp_AP),
    the rest in order of first appearance. ``df.attrs["metrics"]`` lists the metric columns,
    ``df.attrs["source"]`` the file, ``df.attrs["privacy"]`` whether the privacy columns are there.
    Raises ResultsError (a ValueError) naming the line for bad input; warns (ReportWarning) about a truncated
    last line and duplicate runs.
    """
    path = results_path(run_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot read: {e}") from None
    lines = text.split("\n")
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    last = nonblank[-1] if nonblank else -1
    records, metric_names = [], []
    for i in nonblank:
        where = f"{path} line {i + 1}"
        try:
            obj = json.loads(lines[i])
        except json.JSONDecodeError as e:
            if i == last:
                _warn(f"{where}: not valid JSON ({e.msg}); a truncated last line (a run still writing or killed "
                      f"mid-write) is ignored")
                continue
            raise ResultsError(f"{where}: not valid JSON ({e.msg})") from None
        row, values = _parse_row(obj, where)
        row["line"] = i + 1
        for name in values:
            if name not in metric_names:
                metric_names.append(name)
        row.update(values)
        records.append(row)
    if not records:
        raise ResultsError(f"{path}: no finished runs (the file is empty)")
    metrics = [m for m in METRIC_ORDER if m in metric_names] + [m for m in metric_names if m not in METRIC_ORDER]
    df = pd.DataFrame.from_records(records)
    for m in metrics:
        if m not in df:
            df[m] = np.nan
    privacy = [c for c in PRIVACY_COLUMNS.values() if c in df.columns]
    if privacy:
        for c in PRIVACY_COLUMNS.values():
            if c not in df:
                df[c] = np.nan
        privacy = list(PRIVACY_COLUMNS.values())
    df = df[KEY + ["mirror", "seed", "paper_table", "line"] + privacy + metrics]
    df["paper_table"] = df["paper_table"].astype("Int64")
    df["depth"] = df["depth"].astype(int)
    df["seed"] = df["seed"].astype(int)

    dup = df.duplicated(KEY + ["seed"], keep="last")
    if dup.any():
        for _, r in df[dup].iterrows():
            later = df[(df[KEY + ["seed"]] == r[KEY + ["seed"]]).all(axis=1)]["line"].max()
            _warn(f"{path} line {r['line']}: run {_key_text(r)} seed {r['seed']} appears again on line {later}; "
                  f"the later line is used")
        df = df[~dup].reset_index(drop=True)
    for key, part in df.groupby(KEY, sort=False):
        mirrors = sorted({m for m in part["mirror"] if m})
        if len(mirrors) > 1:
            raise ResultsError(f"{path}: runs {_key_text(dict(zip(KEY, key)))} come from different mirrors "
                               f"({', '.join(mirrors)}); give them distinct 'variant's (lines "
                               f"{', '.join(str(x) for x in part['line'])})")
    df.attrs["metrics"] = metrics
    df.attrs["source"] = str(path)
    df.attrs["privacy"] = bool(privacy)
    return df



def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a load_results frame, in report order."""
    m = df.attrs.get("metrics")
    if m:
        return [c for c in m if c in df.columns]
    return [c for c in df.columns if c not in FIXED_COLUMNS]

def _key_text(r) -> str:
    v = f" variant {r['variant']}" if r["variant"] else ""
    return f"{r['dataset']}/{r['task']}/{r['model']}/R-{r['depth']}{v} {r['region']}/{r['method']}"
