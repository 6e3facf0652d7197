"""delta.png (Δ per method and metric, error bars se(Δ)) and depth.png (relative drop per ResNet depth)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from avanon.study.report.results import KEY, ORIGINAL, TABLE, PathLike
from avanon.study.report.tables import NA, _row_label, _table_title
from avanon.study.paper_f import method_label, region_label


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
        ax.set_xlabel("error bars: ± standard error of Δ over the training seeds", fontsize=7)
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
