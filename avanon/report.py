"""`avanon report RUN_DIR`: Paper-F-style tables (mean ± standard error, Δ vs Original) and plots of a benchmark.

Input: ``RUN_DIR/results.jsonl`` (or the path of a ``.jsonl`` file), written by the training pipeline, one JSON
object per line, one line per finished (mirror, seed) training run::

    {"dataset": "cityscapes", "task": "instance_segmentation", "model": "mask_rcnn_r50_fpn", "depth": 50,
     "region": "body", "method": "mask_out", "variant": "", "mirror": "body_mask_out", "seed": 0,
     "metrics": {"AP": 31.2, "AP50": 53.2, "AP_person": 0.7}, "paper_table": 1}

- Required keys: ``dataset``, ``task``, ``model``, ``depth``, ``region``, ``method``, ``seed``, ``metrics``.
  A line without one of them is an error that names the file, the line and the missing keys.
  ``depth`` may be null when the model name says it (``..._r101_...``).
- Optional: ``variant`` (default ``""``; e.g. ``minsize32``, ``other_classes``, ``truncation_none``), ``mirror``
  (informational; two different mirrors must not share one (dataset, task, model, depth, variant, region, method):
  give them distinct variants), ``paper_table`` (1-4 or null: the Paper F table the row reproduces).
- ``region`` is ``none`` for the Original (unanonymized) training set, whose ``method`` is ``original``.
- ``metrics`` maps free-form metric names to numbers (null: not measured). Paper F's names are ``AP``, ``AP50``,
  ``AP_person`` (instance segmentation) and ``box_AP``, ``kp_AP`` (keypoints); ``bbox_AP``/``AP_bbox`` and
  ``keypoints_AP``/``AP_kp`` are read as ``box_AP`` and ``kp_AP``.
- Blank lines are skipped. A last line that is not valid JSON (a run killed mid-write) is ignored with a
  warning; invalid JSON anywhere else is an error naming the line. A (run, seed) that appears twice (a re-run)
  counts once, the later line wins, with a warning.

Statistics, per (dataset, task, model, depth, variant, region, method) and metric, over the seeds:

- mean; standard error ``se = std(ddof=1) / sqrt(n)``; ``n`` seeds. With one seed there is no standard error:
  ``se`` is 0 in the CSVs and the cell reads ``36.7 ± –``.
- ``Δ = mean(method) − mean(Original)`` where the Original is the one of the same dataset, task, model, depth
  and variant. A variant without an Original of its own (an anonymization-only variant such as
  ``truncation_none`` or ``minsize32``) is compared with the Original of variant ``""`` and shown in that table,
  labelled with its variant, with a note. No Original at all: Δ is n/a, with a warning.
  ``se(Δ) = sqrt(se_method² + se_original²)`` (independent training runs); the Original's own Δ is 0 (se 0).
- relative drop (Paper F Fig. 8) ``= (mean(Original) − mean(method)) / mean(Original)``.

Output (``RUN_DIR/report/`` unless ``out_dir``): ``report.md`` (one table per dataset/task/model/depth/variant,
rows grouped Original, face, body; one column per metric; cells ``mean ± se (Δ)``; the best anonymized value of
each metric within its region group in bold; Paper F's number beside each metric when a table is known),
``report.csv`` (the same table, one row per method, numbers and cells per metric, ``<metric>_best`` flags),
``report_long.csv`` (one row per method and metric), ``delta.png`` (Δ per method, grouped by metric, face blue /
body orange, error bars se(Δ)) and, when several ResNet depths are present, ``depth.png`` (relative drop per depth,
like Paper F Fig. 8) plus a table of it in ``report.md``.

"Best" compares means rounded to the printed precision (ties are all bold) and is marked only where a region
group holds at least two anonymized rows with a value.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from avanon import paper_f
from avanon.paper_f import METHOD_ORDER, METRIC_ALIASES, METRIC_ORDER, REGION_ORDER, method_label, region_label

RESULTS_FILE = "results.jsonl"
REQUIRED_KEYS = ("dataset", "task", "model", "depth", "region", "method", "seed", "metrics")
OPTIONAL_KEYS = {"variant": "", "mirror": "", "paper_table": None}
# A run's identity (without the seed) and the group a Δ is taken within.
KEY = ["dataset", "task", "model", "depth", "variant", "region", "method"]
GROUP = ["dataset", "task", "model", "depth", "variant"]
TABLE = ["dataset", "task", "model", "depth", "table_variant"]
FIXED_COLUMNS = set(KEY) | {"seed", "mirror", "paper_table", "line"}
ORIGINAL = "original"
MINUS = "\u2212"  # typographic minus in the printed cells: (−34.3)
NA = "n/a"
DASH = "\u2013"

PathLike = Union[str, Path]


class ResultsError(ValueError):
    """results.jsonl cannot be read: missing, malformed, or a line without a required key."""


class ReportWarning(UserWarning):
    """Something the report worked around: a truncated last line, a duplicate run, no Original to compare with."""


def _warn(msg: str) -> None:
    warnings.warn(msg, ReportWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------------- reading

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
    <NA>), line (1-based line number), then one float column per metric (NaN where a run lacks it), metrics in
    Paper F's order first (AP, AP50, AP_person, box_AP, kp_AP), the rest in order of first appearance.
    ``df.attrs["metrics"]`` lists the metric columns, ``df.attrs["source"]`` the file.
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
    df = df[KEY + ["mirror", "seed", "paper_table", "line"] + metrics]
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
    return df


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a load_results frame, in report order."""
    m = df.attrs.get("metrics")
    if m:
        return [c for c in m if c in df.columns]
    return [c for c in df.columns if c not in FIXED_COLUMNS]


def _group_text(g) -> str:
    dataset, task, model, depth, variant = g
    return f"{dataset}/{task}/{model}/R-{depth}" + (f" variant {variant}" if variant else "")


def _key_text(r) -> str:
    v = f" variant {r['variant']}" if r["variant"] else ""
    return f"{r['dataset']}/{r['task']}/{r['model']}/R-{r['depth']}{v} {r['region']}/{r['method']}"


# ---------------------------------------------------------------------------------------------- statistics

def _rank(value, order: Sequence[str]) -> tuple:
    return (order.index(value), "") if value in order else (len(order), str(value))


def _sort(df: pd.DataFrame, metrics: Optional[Sequence[str]] = None) -> pd.DataFrame:
    if df.empty:
        return df
    sort = pd.DataFrame({
        "a": list(zip(df["dataset"], df["task"], [_family(m) for m in df["model"]], df["depth"], df["model"])),
        "tv": df["table_variant"] if "table_variant" in df else df["variant"],
        "r": [_rank(x, REGION_ORDER) for x in df["region"]],
        "m": [_rank(x, METHOD_ORDER) for x in df["method"]],
        "v": df["variant"],
        "k": [_rank(x, list(metrics or [])) for x in df["metric"]] if "metric" in df else 0,
    }, index=df.index)
    order = sorted(df.index, key=lambda i: tuple(sort.loc[i]))
    return df.loc[order].reset_index(drop=True)


def summarize(df: pd.DataFrame, metrics: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Aggregate a load_results frame over seeds: one row per run key and metric.

    Columns: dataset, task, model, depth, variant, region, method, metric, n, seeds, mean, se, paper_table,
    table_variant (the table the row is shown in), original_variant (whose Original Δ is against; None: no
    Original), original_n, original_mean, original_se, delta, delta_se, rel_drop. See the module docstring for
    the formulas. Warns (ReportWarning) once per group that has no Original.
    """
    metrics = list(metrics) if metrics is not None else metric_columns(df)
    rows = []
    for key, part in df.groupby(KEY, sort=False):
        pts = sorted({int(x) for x in part["paper_table"].dropna()})
        for m in metrics:
            if m not in part:
                continue
            vals = part[m].to_numpy(dtype=float)
            ok = ~np.isnan(vals)
            vals = vals[ok]
            if vals.size == 0:
                continue
            n = int(vals.size)
            se = float(np.std(vals, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
            rows.append(dict(zip(KEY, key), metric=m, n=n,
                             seeds=",".join(str(s) for s in sorted(part["seed"][ok])),
                             mean=float(vals.mean()), se=se, paper_table=pts[0] if pts else None))
    base = KEY + ["metric", "n", "seeds", "mean", "se", "paper_table"]
    derived = ["table_variant", "original_variant", "original_n", "original_mean", "original_se", "delta",
               "delta_se", "rel_drop"]
    cols = base + derived
    s = pd.DataFrame(rows, columns=base)
    if s.empty:
        return pd.DataFrame(columns=cols + ["has_original"])
    originals = {}
    for _, r in s[s["method"] == ORIGINAL].iterrows():
        originals[(r["dataset"], r["task"], r["model"], r["depth"], r["variant"], r["metric"])] = r
    has_original = {k[:5] for k in originals}
    warned = set()
    ext = {c: [] for c in derived}
    for _, r in s.iterrows():
        g = (r["dataset"], r["task"], r["model"], r["depth"], r["variant"])
        if g in has_original:
            ref_variant = r["variant"]
        elif r["variant"] and (g[:4] + ("",)) in has_original:
            ref_variant = ""
        else:
            ref_variant = None
        # A variant with an Original of its own is its own experiment (its own table); any other variant is an
        # anonymization-only variant, shown in the table of variant "" and compared with its Original.
        ext["table_variant"].append(r["variant"] if g in has_original else "")
        ext["original_variant"].append(ref_variant)
        o = originals.get(g[:4] + (ref_variant, r["metric"])) if ref_variant is not None else None
        if ref_variant is None and g not in warned:
            warned.add(g)
            _warn(f"no Original (method 'original') for {_group_text(g)}: Δ shown as {NA}")
        if o is None:
            ext["original_n"].append(np.nan)
            ext["original_mean"].append(np.nan)
            ext["original_se"].append(np.nan)
            ext["delta"].append(np.nan)
            ext["delta_se"].append(np.nan)
            ext["rel_drop"].append(np.nan)
            continue
        ext["original_n"].append(o["n"])
        ext["original_mean"].append(o["mean"])
        ext["original_se"].append(o["se"])
        if r["method"] == ORIGINAL:
            ext["delta"].append(0.0)
            ext["delta_se"].append(0.0)
            ext["rel_drop"].append(0.0)
        else:
            ext["delta"].append(r["mean"] - o["mean"])
            ext["delta_se"].append(math.hypot(r["se"], o["se"]))
            ext["rel_drop"].append((o["mean"] - r["mean"]) / o["mean"] if o["mean"] != 0 else np.nan)
    for c, v in ext.items():
        s[c] = v
    s["has_original"] = [v is not None for v in ext["original_variant"]]
    s["paper_table"] = s["paper_table"].astype("Int64")
    s["original_n"] = s["original_n"].astype("Int64")
    return _sort(s, metrics)


# ------------------------------------------------------------------------------------------------ Paper F

def _paper_tables_for(paper_table) -> Optional[list[int]]:
    """None -> per row (from results); False/'none'/[] -> no paper numbers; int or ints -> those tables."""
    if paper_table is None:
        return None
    if paper_table is False or (isinstance(paper_table, str) and paper_table.lower() in ("none", "off", "")):
        return []
    return paper_f._tables(paper_table)


def attach_paper(summary: pd.DataFrame, paper_table=None) -> pd.DataFrame:
    """Add paper_mean, paper_se, paper_delta, paper_source_table (the table it is printed in) to a summary.

    ``paper_table``: None uses each row's own ``paper_table``; an int or a list of ints looks every row up in
    those tables (first hit wins); False or "none" adds empty columns.
    """
    s = summary.copy()
    tables = _paper_tables_for(paper_table)
    index = {}
    needed = tables if tables is not None else sorted({int(t) for t in s["paper_table"].dropna()})
    for t in needed:
        for _, p in paper_f.paper_rows(t).iterrows():
            index.setdefault((t, p["dataset"], p["task"], p["region"], p["method"], p["variant"], p["metric"]), p)
    out = {"paper_mean": [], "paper_se": [], "paper_delta": [], "paper_source_table": []}
    for _, r in s.iterrows():
        hit = None
        if int(r["depth"]) == paper_f.PAPER_DEPTH:
            method, variant = paper_f.canonical_method(r["method"], r["variant"])
            row_tables = tables if tables is not None else (
                [int(r["paper_table"])] if not pd.isna(r["paper_table"]) else [])
            for t in row_tables:
                hit = index.get((t, r["dataset"], r["task"], r["region"], method, variant, r["metric"]))
                if hit is not None:
                    break
        out["paper_mean"].append(hit["mean"] if hit is not None else np.nan)
        out["paper_se"].append(hit["se"] if hit is not None else np.nan)
        out["paper_delta"].append(hit["delta"] if hit is not None else np.nan)
        out["paper_source_table"].append(hit["source_table"] if hit is not None else None)
    for c, v in out.items():
        s[c] = v
    s["paper_source_table"] = s["paper_source_table"].astype("Int64")
    return s


# ---------------------------------------------------------------------------------------------- formatting

def fmt_num(x: float, decimals: int = 1) -> str:
    if x is None or pd.isna(x):
        return NA
    t = f"{x:.{decimals}f}"
    if float(t) == 0:
        t = f"{0:.{decimals}f}"
    return t.replace("-", MINUS)


def fmt_delta(x: float, decimals: int = 1) -> str:
    """+0.3, −0.3, 0.0 (a value that rounds to zero has no sign), n/a."""
    if x is None or pd.isna(x):
        return NA
    t = f"{abs(x):.{decimals}f}"
    if float(t) == 0:
        return t
    return ("+" if x > 0 else MINUS) + t


def fmt_cell(mean: float, se: float, n: Optional[int], delta: Optional[float], original: bool,
             decimals: int = 1) -> str:
    """``36.4 ± 0.2 (−0.3)``; the Original has no Δ; one seed: ``± –``; no value: ``–``."""
    if mean is None or pd.isna(mean):
        return DASH
    se_text = DASH if (n is not None and not pd.isna(n) and int(n) <= 1) or pd.isna(se) else fmt_num(se, decimals)
    text = f"{fmt_num(mean, decimals)} ± {se_text}"
    if not original:
        text += f" ({fmt_delta(delta, decimals)})"
    return text


def _mark_best(s: pd.DataFrame, decimals: int) -> pd.Series:
    best = pd.Series(False, index=s.index)
    anon = s[(s["method"] != ORIGINAL) & s["mean"].notna()]
    for _, part in anon.groupby(TABLE + ["region", "metric"], sort=False):
        if len(part) < 2:
            continue
        rounded = part["mean"].round(decimals)
        best.loc[part.index[rounded == rounded.max()]] = True
    return best


def _table_title(t: dict) -> str:
    v = f" · variant {t['table_variant']}" if t["table_variant"] else ""
    return f"{t['dataset']} · {t['task'].replace('_', ' ')} · {t['model']} · R-{t['depth']}{v}"


def _row_label(r) -> str:
    label = method_label(r["method"])
    if r["variant"] != r["table_variant"]:
        label += f" [{r['variant']}]"
    return label


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _display_metrics(df: pd.DataFrame, summary: pd.DataFrame, requested: Optional[Sequence[str]]) -> dict:
    """Per table: the metrics to show. Default: every metric that every run of the table has."""
    table_of = {tuple(r[KEY]): r["table_variant"] for _, r in summary.drop_duplicates(KEY).iterrows()}
    runs = df.copy()
    runs["table_variant"] = [table_of.get(tuple(r[KEY])) for _, r in runs.iterrows()]
    out = {}
    all_metrics = metric_columns(df)
    order = list(dict.fromkeys(tuple(r) for r in summary[TABLE].itertuples(index=False)))
    parts = dict(list(runs.groupby(TABLE, sort=False)))
    for key in order:
        part = parts[key]
        present = [m for m in all_metrics if part[m].notna().all()]
        if requested is not None:
            show = []
            for m in requested:
                m = METRIC_ALIASES.get(m, m)
                if m in part and part[m].notna().any():
                    show.append(m)
                else:
                    _warn(f"metric {m!r} asked for is not in the results of {_table_title(dict(zip(TABLE, key)))}")
            present = show
        out[key] = present
    return out


def _wide(summary: pd.DataFrame, display: dict, decimals: int) -> pd.DataFrame:
    """One row per run key (the Paper F table layout), numbers and cells per metric."""
    have_paper = summary["paper_mean"].notna().any()
    all_metrics = []
    for ms in display.values():
        all_metrics += [m for m in ms if m not in all_metrics]
    rows = []
    for key, part in summary.groupby(KEY + ["table_variant"], sort=False):
        first = part.iloc[0]
        tkey = tuple(first[TABLE])
        shown = display.get(tkey, [])
        row = {k: first[k] for k in KEY}
        row.update(table_variant=first["table_variant"], label=_row_label(first),
                   region_label=region_label(first["region"]), n=int(part["n"].max()), seeds=first["seeds"],
                   has_original=bool(first["has_original"]), original_variant=first["original_variant"],
                   paper_table=first["paper_table"])
        by_metric = {r["metric"]: r for _, r in part.iterrows()}
        original = first["method"] == ORIGINAL
        for m in all_metrics:
            r = by_metric.get(m) if m in shown else None
            get = (lambda c: r[c]) if r is not None else (lambda c: np.nan)
            row[f"{m}_mean"] = get("mean")
            row[f"{m}_se"] = get("se")
            row[f"{m}_n"] = get("n")
            row[f"{m}_delta"] = get("delta")
            row[f"{m}_delta_se"] = get("delta_se")
            row[f"{m}_best"] = bool(r["best"]) if r is not None else False
            row[f"{m}_cell"] = (fmt_cell(r["mean"], r["se"], r["n"], r["delta"], original, decimals)
                                if r is not None else "")
            if have_paper:
                row[f"{m}_paper_mean"] = get("paper_mean")
                row[f"{m}_paper_se"] = get("paper_se")
                row[f"{m}_paper_delta"] = get("paper_delta")
                row[f"{m}_paper_cell"] = (fmt_cell(r["paper_mean"], r["paper_se"], None, r["paper_delta"],
                                                   original, decimals)
                                          if r is not None and not pd.isna(r["paper_mean"]) else "")
        rows.append(row)
    return pd.DataFrame(rows)


def _markdown(source: str, summary: pd.DataFrame, wide: pd.DataFrame, display: dict, decimals: int,
              depth_table: Optional[pd.DataFrame], notes: list[str]) -> str:
    out = [f"# avanon report", "",
           f"Source: `{source}`", "",
           "Mean ± standard error over training seeds (n seeds), evaluated on the original validation split. "
           "Δ in parentheses = mean(anonymized) − mean(Original of the same dataset, task, model, depth and "
           f"variant). **Bold**: best anonymized value of a metric within its region group. `± {DASH}`: one seed "
           "(no standard error)."]
    for tkey, part in wide.groupby(TABLE, sort=False):
        t = dict(zip(TABLE, tkey))
        metrics = display.get(tkey, [])
        tsum = summary[(summary[TABLE] == pd.Series(tkey, index=TABLE)).all(axis=1)]
        paper_cols = {m for m in metrics if tsum[(tsum["metric"] == m)]["paper_mean"].notna().any()}
        header = ["Region", "Method", "n"]
        for m in metrics:
            header.append(m)
            if m in paper_cols:
                header.append(f"{m} (Paper F)")
        out += ["", f"## {_table_title(t)}", ""]
        out.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
        out.append("|" + "|".join([":--", ":--", "--:"] + ["--:"] * (len(header) - 3)) + "|")
        for _, r in part.iterrows():
            cells = [region_label(r["region"]), _md_escape(r["label"]), str(r["n"])]
            for m in metrics:
                c = r[f"{m}_cell"] or DASH
                cells.append(f"**{c}**" if r[f"{m}_best"] else c)
                if m in paper_cols:
                    cells.append(r.get(f"{m}_paper_cell") or DASH)
            out.append("| " + " | ".join(cells) + " |")
        foot = []
        if paper_cols:
            srcs = sorted({int(x) for x in tsum["paper_source_table"].dropna()})
            foot.append("Paper F: the published mean ± standard error (Δ) of Hukkelås & Lindseth (CVPRW 2023), "
                        + ", ".join(f"Table {x}" for x in srcs) + " (ResNet-50).")
        for _, r in part.iterrows():
            if not r["has_original"]:
                foot.append(f"{_md_escape(r['label'])}: no Original to compare with: Δ {NA}.")
            elif r["method"] != ORIGINAL and r["original_variant"] == "" and r["variant"]:
                foot.append(f"{_md_escape(r['label'])}: no Original trained with variant `{r['variant']}`; Δ is "
                            f"against the Original above.")
        foot = list(dict.fromkeys(foot))
        if foot:
            out.append("")
            out += [f"- {f}" for f in foot]
    if depth_table is not None and not depth_table.empty:
        out += ["", "## Relative drop per ResNet depth (Paper F Fig. 8)", "",
                "relative drop = (Original − anonymized) / Original, per depth, in percent (negative: the "
                "anonymized training set did better).", ""]
        depths = sorted(depth_table["depth"].unique())
        header = ["Dataset", "Task", "Region", "Method", "Metric"] + [f"R-{d}" for d in depths]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join([":--"] * 5 + ["--:"] * len(depths)) + "|")
        for key, part in depth_table.groupby(["dataset", "task", "family", "variant", "region", "method",
                                              "metric"], sort=False):
            d = dict(zip(["dataset", "task", "family", "variant", "region", "method", "metric"], key))
            label = method_label(d["method"]) + (f" [{d['variant']}]" if d["variant"] else "")
            vals = {int(r["depth"]): r["rel_drop"] for _, r in part.iterrows()}
            cells = [d["dataset"], d["task"].replace("_", " "), region_label(d["region"]), _md_escape(label),
                     d["metric"]]
            cells += [fmt_num(100 * vals[x], decimals) + "%" if x in vals and not pd.isna(vals[x]) else DASH
                      for x in depths]
            out.append("| " + " | ".join(cells) + " |")
    if notes:
        out += ["", "## Warnings", ""] + [f"- {_md_escape(n)}" for n in notes]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------- plots

def _family(model: str) -> str:
    return re.sub(r"r(?:esnet)?-?\d{2,3}", "r*", model, flags=re.IGNORECASE)


def depth_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Relative drop per depth for every anonymized run present at two or more ResNet depths (else empty)."""
    s = summary[(summary["method"] != ORIGINAL)].copy()
    if s.empty:
        return s.assign(family=[])
    s["family"] = [_family(m) for m in s["model"]]
    keep = []
    for _, part in s.groupby(["dataset", "task", "family", "variant", "region", "method", "metric"], sort=False):
        if part["depth"].nunique() >= 2 and part["rel_drop"].notna().any():
            keep.append(part)
    if not keep:
        return s.iloc[0:0]
    return pd.concat(keep).sort_values(["dataset", "task", "family", "variant", "depth"], kind="stable")


_REGION_CMAPS = {"face": "Blues", "body": "Oranges"}


def _region_colors(labels_regions: list[tuple[str, str]]):
    from matplotlib import colormaps

    colors = {}
    for region in dict.fromkeys(r for _, r in labels_regions):
        members = [lab for lab, r in labels_regions if r == region]
        cmap = colormaps[_REGION_CMAPS.get(region, "Greys")]
        shades = np.linspace(0.45, 0.9, len(members)) if len(members) > 1 else [0.7]
        for lab, x in zip(members, shades):
            colors[(lab, region)] = cmap(x)
    return colors


def plot_delta(summary: pd.DataFrame, display: dict, path: PathLike) -> Path:
    """Δ per method, one panel per table, bars grouped by metric; face blue shades, body orange shades."""
    from matplotlib.figure import Figure

    tables = list(display.items())
    fig = Figure(figsize=(9, 3.4 * max(1, len(tables))), dpi=100)
    if not tables:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no results", ha="center", va="center")
        ax.set_axis_off()
    for i, (tkey, metrics) in enumerate(tables):
        ax = fig.add_subplot(len(tables), 1, i + 1)
        t = dict(zip(TABLE, tkey))
        tsum = summary[(summary[TABLE] == pd.Series(tkey, index=TABLE)).all(axis=1)
                       & (summary["method"] != ORIGINAL) & summary["metric"].isin(metrics)]
        runs = []
        for _, r in tsum.drop_duplicates(KEY).iterrows():
            runs.append((f"{region_label(r['region'])}: {_row_label(r)}", r["region"], tuple(r[KEY])))
        ax.set_title(_table_title(t), fontsize=10)
        if not runs or tsum["delta"].isna().all():
            ax.text(0.5, 0.5, f"Δ {NA} (no Original or no anonymized runs)", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        colors = _region_colors([(lab, reg) for lab, reg, _ in runs])
        width = 0.8 / max(2, len(runs))
        span = width * len(runs)
        x = np.arange(len(metrics))
        for j, (lab, reg, key) in enumerate(runs):
            part = tsum[(tsum[KEY] == pd.Series(key, index=KEY)).all(axis=1)].set_index("metric")
            ys = [part["delta"].get(m, np.nan) for m in metrics]
            es = [part["delta_se"].get(m, np.nan) for m in metrics]
            ax.bar(x - span / 2 + width * (j + 0.5), ys, width, yerr=es, capsize=2, label=lab,
                   color=colors[(lab, reg)], edgecolor="black", linewidth=0.4)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, metrics)
        ax.set_ylabel("Δ vs Original (AP points)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def plot_depth(dt: pd.DataFrame, path: PathLike) -> Path:
    """Relative drop (%) per ResNet depth, one panel per anonymized run, bars per depth grouped by metric."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    groups = list(dt.groupby(["dataset", "task", "family", "variant", "region", "method"], sort=False))
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), dpi=100)
    depths_all = sorted(dt["depth"].unique())
    cmap = colormaps["viridis"]
    for i, (key, part) in enumerate(groups):
        d = dict(zip(["dataset", "task", "family", "variant", "region", "method"], key))
        ax = fig.add_subplot(nrows, ncols, i + 1)
        metrics = list(dict.fromkeys(part["metric"]))
        depths = sorted(part["depth"].unique())
        width = 0.8 / len(depths)
        x = np.arange(len(metrics))
        for j, dep in enumerate(depths):
            p = part[part["depth"] == dep].set_index("metric")
            ys = [100 * p["rel_drop"].get(m, np.nan) for m in metrics]
            ax.bar(x - 0.4 + width * (j + 0.5), ys, width, label=f"R-{dep}",
                   color=cmap(depths_all.index(dep) / max(1, len(depths_all) - 1) * 0.85))
        ax.set_xticks(x, metrics)
        ax.axhline(0, color="black", linewidth=0.8)
        v = f" [{d['variant']}]" if d["variant"] else ""
        ax.set_title(f"{d['dataset']}: {region_label(d['region'])} {method_label(d['method'])}{v}", fontsize=9)
        ax.set_ylabel("relative drop (%)")
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


# -------------------------------------------------------------------------------------------------- report

def build_summary(df: pd.DataFrame, paper_table=None, decimals: int = 1) -> pd.DataFrame:
    """summarize + Paper F numbers + the ``best`` flag (over every metric present)."""
    s = attach_paper(summarize(df), paper_table)
    s["best"] = _mark_best(s, decimals)
    return s


def write_report(run_dir: PathLike, out_dir: Optional[PathLike] = None, metrics: Optional[Sequence[str]] = None,
                 paper_table=None, decimals: int = 1, plots: bool = True) -> dict[str, Path]:
    """Write report.md, report.csv, report_long.csv, delta.png (and depth.png when several depths are present).

    run_dir: RUN_DIR holding results.jsonl, or the .jsonl file. out_dir: default RUN_DIR/report.
    metrics: the metrics to show (default: every metric all runs of a table have). paper_table: None (each row's
    own ``paper_table``), an int / ints (Tables 1-4 for every row), or False (no paper numbers).
    plots=False skips the PNGs (matplotlib is most of the run time).
    Returns {"markdown", "csv", "long_csv", "delta_png"[, "depth_png"]} -> path. Raises ResultsError on bad
    input; ReportWarnings raised while reading are re-issued and listed in report.md.
    """
    src = results_path(run_dir)
    out = Path(out_dir) if out_dir is not None else src.parent / "report"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        df = load_results(src)
        summary = build_summary(df, paper_table, decimals)
        display = _display_metrics(df, summary, metrics)
        wide = _wide(summary, display, decimals)
        dt = depth_table(summary)
    notes = []
    for w in caught:
        if issubclass(w.category, ReportWarning):
            notes.append(str(w.message))
            warnings.warn(str(w.message), ReportWarning, stacklevel=2)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "csv": out / "report.csv", "long_csv": out / "report_long.csv"}
    paths["markdown"].write_text(_markdown(str(src), summary, wide, display, decimals,
                                           dt if not dt.empty else None, notes), encoding="utf-8")
    wide.to_csv(paths["csv"], index=False, float_format="%.6g")
    summary.to_csv(paths["long_csv"], index=False, float_format="%.6g")
    if plots:
        paths["delta_png"] = plot_delta(summary, display, out / "delta.png")
    if plots and not dt.empty:
        paths["depth_png"] = plot_depth(dt, out / "depth.png")
    return paths


# ------------------------------------------------------------------------------------------------------ CLI

def add_report_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("run_dir", help="RUN_DIR holding results.jsonl (or the .jsonl file)")
    p.add_argument("--out", help="output folder (default RUN_DIR/report)")
    p.add_argument("--metrics", help="comma-separated metrics to show (default: every metric all runs have)")
    p.add_argument("--paper-table", action="append",
                   help="Paper F table (1-4) to put beside ours, repeatable; 'none' for none "
                        "(default: each result's own paper_table)")
    p.add_argument("--decimals", type=int, default=1, help="printed precision (default 1, as Paper F)")
    p.add_argument("--no-plots", action="store_true", help="tables only, no PNGs")
    return p


def cmd_report(args) -> int:
    """Run `avanon report`; 0 written, 2 bad input. Warnings go to stderr."""
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    pt = None
    if args.paper_table:
        pt = False if any(x.lower() == "none" for x in args.paper_table) else [int(x) for x in args.paper_table]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        try:
            paths = write_report(args.run_dir, args.out, metrics=metrics, paper_table=pt, decimals=args.decimals,
                                 plots=not args.no_plots)
        except (ResultsError, ValueError) as e:
            print(f"avanon report: {e}", file=sys.stderr)
            return 2
    for w in caught:
        if issubclass(w.category, ReportWarning):
            print(f"avanon report: warning: {w.message}", file=sys.stderr)
    for name, p in paths.items():
        print(f"{name}: {p}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = add_report_arguments(argparse.ArgumentParser(prog="avanon report", description=__doc__.splitlines()[0]))
    return cmd_report(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
