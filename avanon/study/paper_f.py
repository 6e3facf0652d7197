"""Paper F's published numbers (Hukkelås & Lindseth, CVPRW 2023, Tables 1-4), in avanon's names.

The numbers ship as package data, ``avanon/study/data/paper_f_tables.csv`` (transcribed from the paper's tables),
one row per cell::

    table,dataset,task,model,region,method,metric,mean,stderr,delta

Names are mapped to the ones the training pipeline writes into ``results.jsonl`` (see :mod:`avanon.study.report`):

- ``region`` and ``metric`` are the same (``none``/``face``/``body``; ``AP``, ``AP50``, ``AP_person`` for
  instance segmentation, ``box_AP`` and ``kp_AP`` for keypoints).
- ``method`` is the same except for Table 4's latent-sampling ablation, which avanon expresses as the
  method ``realistic`` with a ``variant``::

      realistic_no_truncation          -> method realistic, variant truncation_none
      realistic_unimodal_truncation    -> method realistic, variant truncation_unimodal
      realistic_multimodal_truncation  -> method realistic, variant truncation_multimodal

  (multi-modal truncation is the default of every other realistic body row, so Table 1's ``realistic`` row and
  Table 4's multi-modal row hold the same numbers).
- Every table is ResNet-50 (``depth`` 50).
- Table 4 has no Original row: its Δ are against Table 1's Cityscapes Original, so ``paper_rows(4)`` includes
  those three rows (``source_table`` 1).

``stderr`` is renamed ``se`` and ``delta`` is the paper's printed Δ (not recomputed).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Iterable, Optional, Union

import pandas as pd

TABLES = (1, 2, 3, 4)
PAPER_DEPTH = 50

# Paper F Table 4 method name -> (avanon method, variant)
PAPER_METHOD_TO_OURS = {
    "realistic_no_truncation": ("realistic", "truncation_none"),
    "realistic_unimodal_truncation": ("realistic", "truncation_unimodal"),
    "realistic_multimodal_truncation": ("realistic", "truncation_multimodal"),
}
OURS_TO_PAPER_METHOD = {v: k for k, v in PAPER_METHOD_TO_OURS.items()}

# Display names in the paper's wording (the CSV and the JSON keep the raw names).
METHOD_LABELS = {
    "original": "Original",
    "blur": "Blur",
    "mask_out": "Mask-out",
    "pixelate": "Pixelation",
    "realistic": "Realistic",
    "realistic_hm": "Realistic + HM",
    "realistic_hmlo": "Realistic + HM-LO",
    "realistic_hr_faces": "Realistic + HR Faces",
}
REGION_LABELS = {"none": "Original", "face": "Face", "body": "Body"}
# Row order of the tables: the paper's, then anything else alphabetically.
METHOD_ORDER = ["original", "blur", "mask_out", "pixelate", "realistic", "realistic_hm", "realistic_hmlo",
                "realistic_hr_faces"]
REGION_ORDER = ["none", "face", "body"]
METRIC_ORDER = ["AP", "AP50", "AP_person", "box_AP", "kp_AP"]
# Other spellings of Paper F's metric names that results may use; read as the paper's name.
METRIC_ALIASES = {"bbox_AP": "box_AP", "AP_bbox": "box_AP", "keypoints_AP": "kp_AP", "AP_kp": "kp_AP"}

TableSpec = Union[int, Iterable[int]]


def _csv_text() -> str:
    # one name per joinpath: Traversable.joinpath takes several only from Python 3.11
    return resources.files("avanon.study").joinpath("data").joinpath("paper_f_tables.csv").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _raw() -> pd.DataFrame:
    import io

    df = pd.read_csv(io.StringIO(_csv_text()), dtype={"table": int, "mean": float, "stderr": float,
                                                       "delta": float})
    return df


def load_tables() -> pd.DataFrame:
    """Every published cell, as in the CSV (paper names). A copy: callers may modify it."""
    return _raw().copy()


def from_paper_method(paper_method: str) -> tuple[str, str]:
    """Paper F method name -> (avanon method, variant)."""
    return PAPER_METHOD_TO_OURS.get(paper_method, (paper_method, ""))


def canonical_method(method: str, variant: Optional[str] = "") -> tuple[str, str]:
    """(method, variant) as results may spell them -> the pair paper_rows uses.

    A result row that spells the ablation as Paper F does (method ``realistic_no_truncation``, no variant) maps to
    ``("realistic", "truncation_none")``; everything else is returned unchanged.
    """
    variant = variant or ""
    if not variant and method in PAPER_METHOD_TO_OURS:
        return PAPER_METHOD_TO_OURS[method]
    return method, variant


def _tables(table: TableSpec) -> list[int]:
    items = [table] if isinstance(table, (int, str)) else list(table)
    out = []
    for t in items:
        try:
            t = int(t)
        except (TypeError, ValueError):
            raise ValueError(f"Paper F table {t!r}: expected one of {TABLES}") from None
        if t not in TABLES:
            raise ValueError(f"Paper F table {t}: expected one of {TABLES}")
        out.append(t)
    return out


def paper_rows(table: TableSpec) -> pd.DataFrame:
    """The published cells of one Paper F table (or several), in avanon's names.

    Columns: table (the table asked for), source_table (where the number is printed; 1 for Table 4's Original),
    dataset, task, model, depth (50), region, method, variant, paper_method, metric, mean, se, delta.
    """
    raw = _raw()
    frames = []
    for t in _tables(table):
        part = raw[raw["table"] == t].copy()
        part["source_table"] = t
        if t == 4:
            orig = raw[(raw["table"] == 1) & (raw["method"] == "original")].copy()
            orig["source_table"] = 1
            part = pd.concat([orig, part], ignore_index=True)
        part["table"] = t
        frames.append(part)
    df = pd.concat(frames, ignore_index=True)
    mapped = df["method"].map(from_paper_method)
    df["paper_method"] = df["method"]
    df["method"] = [m for m, _ in mapped]
    df["variant"] = [v for _, v in mapped]
    df["depth"] = PAPER_DEPTH
    df = df.rename(columns={"stderr": "se"})
    return df[["table", "source_table", "dataset", "task", "model", "depth", "region", "method", "variant",
               "paper_method", "metric", "mean", "se", "delta"]].reset_index(drop=True)


def lookup(table: TableSpec, *, dataset: str, task: str, region: str, method: str, variant: str = "",
           metric: str, depth: Optional[int] = PAPER_DEPTH) -> Optional[dict]:
    """One published cell as a dict (mean, se, delta, table, source_table), or None when the paper has none.

    Matches on dataset, task, region, method/variant (see :func:`canonical_method`), metric and depth (the paper
    is ResNet-50 only); the model name is not compared (the task names the architecture).
    """
    if depth is not None and int(depth) != PAPER_DEPTH:
        return None
    method, variant = canonical_method(method, variant)
    metric = METRIC_ALIASES.get(metric, metric)
    df = paper_rows(table)
    hit = df[(df["dataset"] == dataset) & (df["task"] == task) & (df["region"] == region)
             & (df["method"] == method) & (df["variant"] == variant) & (df["metric"] == metric)]
    if hit.empty:
        return None
    r = hit.iloc[0]
    return {"mean": float(r["mean"]), "se": float(r["se"]), "delta": float(r["delta"]),
            "table": int(r["table"]), "source_table": int(r["source_table"])}


def method_label(method: str) -> str:
    """The paper's wording of a method ("mask_out" -> "Mask-out"); unknown names are returned as they are."""
    return METHOD_LABELS.get(method, method)


def region_label(region: str) -> str:
    return REGION_LABELS.get(region, region.capitalize() if region else region)
