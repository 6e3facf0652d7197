"""The privacy-utility view of a study: per run, how private its mirror is (the optional ``privacy`` object of
the results rows) against what anonymizing cost (Δ of the main metric); report.md's "Privacy and utility" table,
privacy.csv and privacy_utility.png. Written only when some row has privacy data.

Per run (dataset, task, model, depth, variant, region, method), over its seeds:

- ``detail_kept``: the mean over seeds of the rows' ``privacy.detail_kept`` (each the median over the mirror's
  anonymized instances of avanon.anonymizers.strength.detail_kept: the share of a person's fine detail that
  survives; 1 = unchanged, 0 = none; lower is more private). One mirror serves every seed, so the seeds agree.
- ``face_recall``: the same for ``privacy.face_recall`` (faces a detector still finds; lower is more private).
- the main metric: AP_person where the table shows it, else the table's first displayed metric; its Δ and se(Δ)
  are the report's (Δ = mean(method) − mean(Original)).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from avanon.study.report.results import KEY, ORIGINAL, PRIVACY_COLUMNS, TABLE, PathLike
from avanon.study.report.tables import DASH, NA, _md_escape, _row_label, _table_title, fmt_delta, fmt_num
from avanon.study.paper_f import region_label

MAIN_METRIC = "AP_person"

PRIVACY_CSV_COLUMNS = TABLE[:4] + ["variant", "table_variant", "region", "method", "label", "n_privacy",
                                   "detail_kept", "face_recall", "metric", "mean", "original_mean", "delta",
                                   "delta_se", "n"]


def has_privacy(df: pd.DataFrame) -> bool:
    """Whether any row of a load_results frame has a privacy value."""
    cols = [c for c in PRIVACY_COLUMNS.values() if c in df.columns]
    return bool(cols) and bool(df[cols].notna().to_numpy().any())


def main_metric(metrics: list[str]) -> Optional[str]:
    """AP_person when shown, else the first shown metric (None when a table shows none)."""
    if MAIN_METRIC in metrics:
        return MAIN_METRIC
    return metrics[0] if metrics else None


def privacy_table(df: pd.DataFrame, summary: pd.DataFrame, display: dict) -> pd.DataFrame:
    """One row per run of every table that has privacy data (runs without it have NaN there), in report order.

    Columns: PRIVACY_CSV_COLUMNS (detail_kept, face_recall: means over the seeds that have them, n_privacy: how
    many; metric: the table's main metric, with its mean, original_mean, delta, delta_se, n from the summary).
    """
    if not has_privacy(df):
        return pd.DataFrame(columns=PRIVACY_CSV_COLUMNS)
    values = {}
    dk, fr = PRIVACY_COLUMNS["detail_kept"], PRIVACY_COLUMNS["face_recall"]
    for key, part in df.groupby(KEY, sort=False):
        has = part[[dk, fr]].notna().any(axis=1)
        values[key] = (part[dk].mean(), part[fr].mean(), int(has.sum()))  # NaN-skipping means
    rows = []
    runs = summary.drop_duplicates(KEY)
    for tkey, tpart in runs.groupby(TABLE, sort=False):
        if not any(values.get(tuple(r[KEY]), (np.nan, np.nan, 0))[2] for _, r in tpart.iterrows()):
            continue
        metric = main_metric(display.get(tkey, []))
        for _, r in tpart.iterrows():
            key = tuple(r[KEY])
            d, f, n_priv = values.get(key, (np.nan, np.nan, 0))
            row = {c: r[c] for c in TABLE[:4]}
            row.update(variant=r["variant"], table_variant=r["table_variant"], region=r["region"],
                       method=r["method"], label=_row_label(r), n_privacy=n_priv, detail_kept=d, face_recall=f,
                       metric=metric, mean=np.nan, original_mean=np.nan, delta=np.nan, delta_se=np.nan, n=0)
            if metric is not None:
                m = summary[(summary[KEY] == pd.Series(key, index=KEY)).all(axis=1) & (summary["metric"] == metric)]
                if not m.empty:
                    m = m.iloc[0]
                    row.update(mean=m["mean"], original_mean=m["original_mean"], delta=m["delta"],
                               delta_se=m["delta_se"], n=int(m["n"]))
            rows.append(row)
    return pd.DataFrame(rows, columns=PRIVACY_CSV_COLUMNS)


def _fmt01(x) -> str:
    return DASH if x is None or pd.isna(x) else f"{x:.2f}"


def privacy_markdown(pt: pd.DataFrame, decimals: int = 1) -> list[str]:
    """The "Privacy and utility" section of report.md (lines; empty when there is nothing to show)."""
    if pt.empty:
        return []
    intro = ("Detail kept: median over the mirror's anonymized instances of the share of a person's fine detail "
             "that survives anonymization (1 = unchanged, 0 = none; lower is more private). Face recall: share of "
             "faces a face detector still finds in the mirror (lower is more private). Δ: the table's main metric "
             "(AP_person where shown, else its first metric), mean(anonymized) − mean(Original), ± se(Δ). "
             f"{DASH}: not measured.")
    out = ["", "## Privacy and utility", "", intro]
    for tkey, part in pt.groupby(TABLE, sort=False):
        metric = part["metric"].iloc[0]
        out += ["", f"### {_table_title(dict(zip(TABLE, tkey)))}", ""]
        out.append(f"| Region | Method | Detail kept | Face recall | Δ {_md_escape(metric or NA)} |")
        out.append("|:--|:--|--:|--:|--:|")
        for _, r in part.iterrows():
            if r["method"] == ORIGINAL or pd.isna(r["delta"]):
                delta = DASH
            else:
                se = DASH if r["n"] <= 1 or pd.isna(r["delta_se"]) else fmt_num(r["delta_se"], decimals)
                delta = f"{fmt_delta(r['delta'], decimals)} ± {se}"
            out.append(f"| {region_label(r['region'])} | {_md_escape(r['label'])} | {_fmt01(r['detail_kept'])} | "
                       f"{_fmt01(r['face_recall'])} | {delta} |")
    return out


def plot_privacy(pt: pd.DataFrame, path: PathLike) -> Path:
    """Δ of the main metric against detail kept, one point per anonymized run (labelled), one panel per table;
    face blue shades, body orange shades (as delta.png), error bars se(Δ)."""
    from matplotlib.figure import Figure

    from avanon.study.report.plots import _region_colors

    tables = list(pt.groupby(TABLE, sort=False))
    fig = Figure(figsize=(7.5, 4.2 * max(1, len(tables))), dpi=100)
    if not tables:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no privacy data", ha="center", va="center")
        ax.set_axis_off()
    for i, (tkey, part) in enumerate(tables):
        ax = fig.add_subplot(len(tables), 1, i + 1)
        metric = part["metric"].iloc[0]
        ax.set_title(_table_title(dict(zip(TABLE, tkey))), fontsize=10)
        pts = part[(part["method"] != ORIGINAL) & part["detail_kept"].notna() & part["delta"].notna()]
        if pts.empty:
            ax.text(0.5, 0.5, f"no run with both detail kept and Δ {metric or ''}", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        labels = [(f"{region_label(r['region'])}: {r['label']}", r["region"]) for _, r in pts.iterrows()]
        colors = _region_colors(labels)
        for (lab, reg), (_, r) in zip(labels, pts.iterrows()):
            err = r["delta_se"] if r["n"] > 1 and not pd.isna(r["delta_se"]) else None
            ax.errorbar([r["detail_kept"]], [r["delta"]], yerr=err, fmt="o", color=colors[(lab, reg)],
                        markeredgecolor="black", markeredgewidth=0.5, capsize=2, markersize=7)
            ax.annotate(lab, (r["detail_kept"], r["delta"]), textcoords="offset points", xytext=(6, 4), fontsize=7)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlim(-0.03, 1.03)
        ax.set_xlabel("detail kept (median over instances; lower = more private)")
        ax.set_ylabel(f"Δ {metric} vs Original")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path
