"""Summaries (mean ± SE, Δ vs Original, relative drop), Paper F numbers beside ours, and the Markdown / CSV tables."""
from __future__ import annotations

import math
import re
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from avanon.study.report.results import KEY, ORIGINAL, TABLE, _warn, metric_columns
from avanon.study import paper_f
from avanon.study.paper_f import METHOD_ORDER, METRIC_ALIASES, REGION_ORDER, method_label, region_label


MINUS = "\u2212"  # typographic minus in the printed cells: (−34.3)



NA = "n/a"



DASH = "\u2013"



def _group_text(g) -> str:
    dataset, task, model, depth, variant = g
    return f"{dataset}/{task}/{model}/R-{depth}" + (f" variant {variant}" if variant else "")





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
              depth_table: Optional[pd.DataFrame], notes: list[str],
              extra_sections: Optional[list[str]] = None) -> str:
    out = ["# avanon report", "",
           f"Source: `{source}`", "",
           "Mean ± standard error over training seeds (n seeds), evaluated on the original validation split. "
           "Δ in parentheses = mean(anonymized) − mean(Original of the same dataset, task, model, depth and "
           f"variant). **Bold**: best anonymized value of a metric within its region group. `± {DASH}`: one seed "
           "(no standard error). `delta.png` draws each Δ as a bar with error bars ± se(Δ) = "
           "sqrt(se(anonymized)² + se(Original)²)."]
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
    if extra_sections:
        out += extra_sections  # lines, each section starting with a blank line (e.g. Privacy and utility)
    if notes:
        out += ["", "## Warnings", ""] + [f"- {_md_escape(n)}" for n in notes]
    return "\n".join(out) + "\n"



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



def build_summary(df: pd.DataFrame, paper_table=None, decimals: int = 1) -> pd.DataFrame:
    """summarize + Paper F numbers + the ``best`` flag (over every metric present)."""
    s = attach_paper(summarize(df), paper_table)
    s["best"] = _mark_best(s, decimals)
    return s
