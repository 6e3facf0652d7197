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
- Optional ``privacy`` (written by the study runner; null or absent in older files and for runs it did not
  measure): ``{"detail_kept": 0.12, "face_recall": 0.05}``, each a number in [0, 1] or null: the median over the
  mirror's anonymized instances of avanon.anonymizers.strength.detail_kept, and the share of faces a detector
  still finds in the mirror. Other keys inside it are ignored; a value of another type or outside [0, 1] is an
  error naming the line.
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

When some row has privacy data, also: a "Privacy and utility" section in ``report.md`` (per table and run:
detail kept, face recall, Δ of the main metric -- AP_person where shown, else the table's first metric),
``privacy.csv`` (the same, one row per run) and ``privacy_utility.png`` (Δ of the main metric against detail
kept, one labelled point per anonymized run, face blue / body orange); see :mod:`avanon.study.report.privacy`.
Without privacy data the report is exactly as before.

"Best" compares means rounded to the printed precision (ties are all bold) and is marked only where a region
group holds at least two anonymized rows with a value.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

from avanon.study.report.plots import plot_delta, plot_depth
from avanon.study.report.privacy import has_privacy, plot_privacy, privacy_markdown, privacy_table  # noqa: F401
from avanon.study.report.results import (  # noqa: F401  (the report API)
    KEY, RESULTS_FILE, PathLike, ReportWarning, ResultsError, load_results, metric_columns, results_path,
)
from avanon.study.report.tables import (  # noqa: F401
    _display_metrics, _markdown, _wide, build_summary, depth_table, fmt_cell, fmt_delta, summarize,
)


# ----------------------------------------------------------------------------------------------------- reading


# ---------------------------------------------------------------------------------------------- statistics


# ------------------------------------------------------------------------------------------------ Paper F


# ---------------------------------------------------------------------------------------------- formatting


# --------------------------------------------------------------------------------------------------- plots


# -------------------------------------------------------------------------------------------------- report


def write_report(run_dir: PathLike, out_dir: Optional[PathLike] = None, metrics: Optional[Sequence[str]] = None,
                 paper_table=None, decimals: int = 1, plots: bool = True) -> dict[str, Path]:
    """Write report.md, report.csv, report_long.csv, delta.png (and depth.png when several depths are present;
    privacy.csv and privacy_utility.png when some row has privacy data).

    run_dir: RUN_DIR holding results.jsonl, or the .jsonl file. out_dir: default RUN_DIR/report.
    metrics: the metrics to show (default: every metric all runs of a table have). paper_table: None (each row's
    own ``paper_table``), an int / ints (Tables 1-4 for every row), or False (no paper numbers).
    plots=False skips the PNGs (matplotlib is most of the run time).
    Returns {"markdown", "csv", "long_csv", "delta_png"[, "depth_png"][, "privacy_csv", "privacy_png"]} -> path.
    Raises ResultsError on bad input; ReportWarnings raised while reading are re-issued and listed in report.md.
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
        pt = privacy_table(df, summary, display)
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
                                           dt if not dt.empty else None, notes,
                                           privacy_markdown(pt, decimals)), encoding="utf-8")
    wide.to_csv(paths["csv"], index=False, float_format="%.6g")
    summary.to_csv(paths["long_csv"], index=False, float_format="%.6g")
    if not pt.empty:
        paths["privacy_csv"] = out / "privacy.csv"
        pt.to_csv(paths["privacy_csv"], index=False, float_format="%.6g")
    if plots:
        paths["delta_png"] = plot_delta(summary, display, out / "delta.png")
    if plots and not dt.empty:
        paths["depth_png"] = plot_depth(dt, out / "depth.png")
    if plots and not pt.empty:
        paths["privacy_png"] = plot_privacy(pt, out / "privacy_utility.png")
    return paths
