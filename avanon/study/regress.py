"""`avanon regress RESULTS --baseline FILE`: a CI gate on the AP *drops* (Δ vs Original), not on raw AP.

RESULTS is a run directory holding ``results.jsonl`` or the ``.jsonl`` file itself (format: :mod:`avanon.study.report`).
Both sides are aggregated the same way (:func:`avanon.study.report.summarize`): per (dataset, task, model, depth,
variant, region, method) and metric, over the seeds,

    Δ     = mean(method) − mean(Original of the same dataset/task/model/depth/variant)
    se(Δ) = sqrt(se_method² + se_original²),   se = std(ddof=1) / sqrt(n), 0 for one seed

(an anonymization-only variant without an Original of its own is compared with the Original of variant "",
as in the report; the Original's own Δ is 0 with se 0, so its row only checks that it is there).

Check, per baseline row::

    ΔΔ        = Δ_now − Δ_baseline
    tolerance = max(floor, k · sqrt(se(Δ)_now² + se(Δ)_baseline²))
    FAIL when |ΔΔ| > tolerance

k defaults to 3 (about a 3-sigma band for the difference of two independent estimates). ``floor`` (default
1.0 AP point) keeps the gate from failing on noise when the standard errors are not informative: the CI demo
trains 2 seeds on CPU, and a 2-seed standard error rests on one degree of freedom, so it is often near zero by
chance (and is exactly 0 for a single seed); without a floor k·se would flag seed noise as a regression.
Raise it for noisier set-ups, lower it (even to 0) for real 3-seed benchmarks. Both are parameters.

Deterministic baselines. A run that reproduces to the printed digit (the CPU demo: same code, same machine kind,
deterministic training) deserves a tight gate, not the standard-error band: its baseline records
``"tolerance": {"mode": "absolute", "value": 0.5}`` (``--write-baseline --tolerance 0.5``), and then every row's
tolerance is that value, so halving an anonymization's effect fails. ``--tolerance se`` forces the standard-error
rule, ``--tolerance X`` an absolute X; the default follows the baseline file. Use the standard-error rule for
real studies on GPUs (not bit-reproducible: mean ± SE over seeds is the unit of comparison).

Rows in the baseline but not in the results fail (MISSING), as do rows whose Δ cannot be computed (no Original
in the results: N/A). Rows in the results but not in the baseline are reported (EXTRA) and pass.

Baseline file (JSON, written by :func:`write_baseline`)::

    {"format": "avanon-regress-baseline", "version": 1,
     "created": "2025-01-01T00:00:00Z", "source": "runs/demo/results.jsonl",
     "delta": "mean(method) - mean(original of the same dataset/task/model/depth/variant), over seeds",
     "rows": [{"dataset": "cityscapes", "task": "instance_segmentation", "model": "mask_rcnn_r50_fpn",
               "depth": 50, "variant": "", "region": "body", "method": "mask_out", "metric": "AP",
               "delta": -5.5, "delta_se": 0.129, "n": 3,
               "mean": 31.2, "se": 0.115, "original_n": 3, "original_variant": ""}, ...]}

``delta``, ``delta_se`` and ``n`` (and the key) are required per row; ``mean``, ``se``, ``original_n`` and
``original_variant`` are informational. Rows are sorted as the report sorts them, numbers rounded to 1e-6.

Exit status of the command: 0 every row passes, 1 any row fails, 2 bad input.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import pandas as pd

from avanon.study.report import KEY, ReportWarning, load_results, results_path, summarize

BASELINE_FORMAT = "avanon-regress-baseline"
BASELINE_VERSION = 1
DEFAULT_K = 3.0
DEFAULT_FLOOR = 1.0
ROW_KEY = KEY + ["metric"]
REQUIRED_ROW = ROW_KEY + ["delta", "delta_se", "n"]
_EPS = 1e-9  # JSON rounding must not turn |ΔΔ| == tolerance into a failure

PathLike = Union[str, Path]


class BaselineError(ValueError):
    """The baseline file is missing, not JSON, or not in the avanon-regress-baseline format."""


def _summary(results) -> pd.DataFrame:
    """A summarize() frame from a run dir / .jsonl path, a load_results frame or a summarize frame."""
    if isinstance(results, pd.DataFrame):
        if "delta" in results.columns and "metric" in results.columns:
            return results
        return summarize(results)
    return summarize(load_results(results))


def _key(row) -> tuple:
    return (str(row["dataset"]), str(row["task"]), str(row["model"]), int(row["depth"]),
            str(row["variant"] or ""), str(row["region"]), str(row["method"]), str(row["metric"]))


def _num(x, digits: int = 6) -> Optional[float]:
    if x is None or pd.isna(x):
        return None
    return round(float(x), digits)


def parse_tolerance(text) -> Optional[dict]:
    """`--tolerance`: None (follow the baseline file), "se" (the standard-error rule) or an absolute number of AP
    points as {"mode": "absolute", "value": X}."""
    if text is None or text == "baseline":
        return None
    if text == "se":
        return {"mode": "se"}
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"--tolerance must be 'se', 'baseline' or a number of AP points, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--tolerance must be a number >= 0, got {text!r}")
    return {"mode": "absolute", "value": value}


def baseline_dict(results, source: str = "", tolerance: Optional[dict] = None) -> dict:
    """The baseline of ``results`` as a dict (see the module docstring). Raises BaselineError when a Δ is n/a."""
    s = _summary(results)
    if s.empty:
        raise BaselineError("cannot write a baseline: no results")
    na = s[s["delta"].isna()]
    if not na.empty:
        what = sorted({f"{r['dataset']}/{r['task']}/{r['model']}/R-{r['depth']}"
                       + (f" variant {r['variant']}" if r["variant"] else "") for _, r in na.iterrows()})
        raise BaselineError("cannot write a baseline: no Original (so no Δ) for " + "; ".join(what))
    rows = []
    for _, r in s.iterrows():
        rows.append({"dataset": r["dataset"], "task": r["task"], "model": r["model"], "depth": int(r["depth"]),
                     "variant": r["variant"] or "", "region": r["region"], "method": r["method"],
                     "metric": r["metric"], "delta": _num(r["delta"]), "delta_se": _num(r["delta_se"]),
                     "n": int(r["n"]), "mean": _num(r["mean"]), "se": _num(r["se"]),
                     "original_n": int(r["original_n"]), "original_variant": r["original_variant"]})
    return {"format": BASELINE_FORMAT, "version": BASELINE_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source": source,
            "delta": "mean(method) - mean(original of the same dataset/task/model/depth/variant), over seeds",
            **({"tolerance": tolerance} if tolerance and tolerance.get("mode") == "absolute" else {}),
            "rows": rows}


def write_baseline(results, path: PathLike, tolerance: Optional[dict] = None) -> Path:
    """Write the baseline JSON of ``results`` (run dir, .jsonl, or a load_results/summarize frame) to ``path``.

    Atomic (temp file + rename). Raises BaselineError when a Δ cannot be computed (no Original).
    """
    source = ""
    if not isinstance(results, pd.DataFrame):
        source = str(results_path(results))
    data = baseline_dict(results, source, tolerance)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_dump(data), encoding="utf-8")
    tmp.replace(path)
    return path


def _dump(data: dict) -> str:
    """The baseline as JSON with one row per line (reviewable diffs when a baseline is updated)."""
    head = {k: v for k, v in data.items() if k != "rows"}
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()]
    rows = [f"  {json.dumps(r, ensure_ascii=False)}" for r in data["rows"]]
    lines += [' "rows": ['] + [",\n".join(rows)] + [" ]", "}"]
    return "\n".join(x for x in lines if x) + "\n"


def read_baseline(baseline) -> dict:
    """Load and validate a baseline (path or dict). Raises BaselineError naming the problem and the row."""
    where = "baseline"
    if isinstance(baseline, dict):
        data = baseline
    else:
        where = str(baseline)
        try:
            data = json.loads(Path(baseline).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BaselineError(f"{where}: no such baseline file (write one with write_baseline / "
                                f"--write-baseline)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BaselineError(f"{where}: not a readable JSON file: {e}") from None
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
        raise BaselineError(f"{where}: not an {BASELINE_FORMAT} file (no \"format\": \"{BASELINE_FORMAT}\")")
    if data.get("version") != BASELINE_VERSION:
        raise BaselineError(f"{where}: baseline version {data.get('version')!r}; this avanon reads "
                            f"{BASELINE_VERSION}")
    tol = data.get("tolerance")
    if tol is not None and not (isinstance(tol, dict) and tol.get("mode") == "absolute"
                                and isinstance(tol.get("value"), (int, float)) and not isinstance(tol["value"], bool)
                                and math.isfinite(tol["value"]) and tol["value"] >= 0):
        raise BaselineError(f"{where}: \"tolerance\" must be {{\"mode\": \"absolute\", \"value\": X >= 0}}, "
                            f"got {tol!r}")
    rows = data.get("rows")
    if not isinstance(rows, list):
        raise BaselineError(f"{where}: \"rows\" must be a list")
    seen = set()
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise BaselineError(f"{where}: rows[{i}] is not an object")
        missing = [k for k in REQUIRED_ROW if k not in r]
        if missing:
            raise BaselineError(f"{where}: rows[{i}] lacks {', '.join(missing)}")
        for k in ("delta", "delta_se"):
            if isinstance(r[k], bool) or not isinstance(r[k], (int, float)) or not math.isfinite(r[k]):
                raise BaselineError(f"{where}: rows[{i}] {k} must be a number, got {r[k]!r}")
        try:
            key = _key(r)
        except (TypeError, ValueError):
            raise BaselineError(f"{where}: rows[{i}] depth must be an integer, got {r['depth']!r}") from None
        if key in seen:
            raise BaselineError(f"{where}: rows[{i}] repeats {_key_text(key)}")
        seen.add(key)
    return data


def _key_text(key: tuple) -> str:
    dataset, task, model, depth, variant, region, method, metric = key
    v = f" [{variant}]" if variant else ""
    return f"{dataset}/{task}/{model}/R-{depth} {region}/{method}{v} {metric}"


@dataclass
class RegressReport:
    """The outcome of :func:`compare`.

    ``table``: one row per checked row, baseline order then extras, columns dataset, task, model, depth,
    variant, region, method, metric, status (pass | FAIL | MISSING | N/A | EXTRA), failed (bool), delta_base,
    se_base, n_base, delta_now, se_now, n_now, diff (ΔΔ), tolerance, reason.
    """
    table: pd.DataFrame
    k: float
    floor: float
    results: str = ""
    baseline: str = ""
    warnings: list = field(default_factory=list)
    absolute: Optional[float] = None  # the absolute tolerance of a deterministic baseline, else the SE rule

    @property
    def failed(self) -> pd.DataFrame:
        return self.table[self.table["failed"]]

    @property
    def ok(self) -> bool:
        return not bool(self.table["failed"].any())

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def failed_keys(self) -> list[str]:
        return [_key_text(_key(r)) for _, r in self.failed.iterrows()]

    def to_dict(self) -> dict:
        t = self.table.astype(object).where(self.table.notna(), None)
        return {"ok": self.ok, "k": self.k, "floor": self.floor, "results": self.results,
                "baseline": self.baseline, "rows": t.to_dict(orient="records")}

    def format(self) -> str:
        """The table of every row with its status, the failures, and a one-line verdict."""
        def f(x, d=2):
            if x is None or pd.isna(x):
                return ""
            x = round(float(x), d)
            return f"{x + 0.0 if x != 0 else 0.0:+.{d}f}"

        def g(x, d=2):
            return "" if x is None or pd.isna(x) else f"{x:.{d}f}"

        header = ["status", "dataset", "task", "model", "depth", "variant", "region", "method", "metric",
                  "Δ base", "±se", "Δ now", "±se", "ΔΔ", "tol"]
        body = []
        for _, r in self.table.iterrows():
            body.append([r["status"], r["dataset"], r["task"], r["model"], f"R-{r['depth']}", r["variant"] or "-",
                         r["region"], r["method"], r["metric"], f(r["delta_base"]), g(r["se_base"]),
                         f(r["delta_now"]), g(r["se_now"]), f(r["diff"]), g(r["tolerance"])])
        widths = [max(len(str(h)), *(len(str(b[i])) for b in body)) if body else len(str(h))
                  for i, h in enumerate(header)]
        right = set(range(9, len(header)))

        def line(cells):
            return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        out = [line(header), line(["-" * w for w in widths])] + [line(b) for b in body]
        failed = self.failed
        if not failed.empty:
            out += ["", f"FAILED ({len(failed)}):"]
            for _, r in failed.iterrows():
                out.append(f"  {_key_text(_key(r))}: {r['reason']}")
        n_extra = int((self.table["status"] == "EXTRA").sum())
        verdict = "PASS" if self.ok else "FAIL"
        out += ["", f"regress: {verdict}: {len(self.table) - n_extra} baseline rows checked, {len(failed)} failed, "
                    f"{n_extra} extra (tolerance = "
                    + (f"{self.absolute:g} AP points, a deterministic baseline" if self.absolute is not None else
                       f"max({self.floor:g}, {self.k:g}·sqrt(se_now² + se_base²))") + " on Δ vs Original)"]
        return "\n".join(out)

    __str__ = format


def compare(results, baseline, k: float = DEFAULT_K, floor: float = DEFAULT_FLOOR,
            tolerance: Optional[dict] = None) -> RegressReport:
    """Compare the Δs of ``results`` (run dir, .jsonl, or a load_results/summarize frame) with ``baseline``
    (path or dict from :func:`write_baseline`). See the module docstring for the rule. ``tolerance``: None
    follows the baseline file; {"mode": "se"} or {"mode": "absolute", "value": X} override it."""
    if k < 0 or floor < 0:
        raise ValueError(f"k ({k}) and floor ({floor}) must be >= 0")
    base = read_baseline(baseline)
    rule = tolerance or base.get("tolerance") or {"mode": "se"}
    absolute = rule["value"] if rule["mode"] == "absolute" else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        now = _summary(results)
    notes = []
    for w in caught:
        if issubclass(w.category, ReportWarning):
            notes.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    now_rows = {_key(r): r for _, r in now.iterrows()}
    out = []
    seen = set()
    for b in base["rows"]:
        key = _key(b)
        seen.add(key)
        row = dict(zip(ROW_KEY, key), delta_base=float(b["delta"]), se_base=float(b["delta_se"]),
                   n_base=int(b["n"]), delta_now=math.nan, se_now=math.nan, n_now=None, diff=math.nan,
                   tolerance=math.nan)
        r = now_rows.get(key)
        if r is None:
            row.update(status="MISSING", failed=True, reason="in the baseline but not in the results")
        elif pd.isna(r["delta"]):
            row.update(status="N/A", failed=True, n_now=int(r["n"]),
                       reason="Δ n/a: no Original for this group in the results")
        else:
            d_now, se_now = float(r["delta"]), float(r["delta_se"])
            diff = d_now - row["delta_base"]
            tol = absolute if absolute is not None else max(floor, k * math.hypot(se_now, row["se_base"]))
            bad = abs(diff) > tol + _EPS
            row.update(delta_now=d_now, se_now=se_now, n_now=int(r["n"]), diff=diff, tolerance=tol,
                       status="FAIL" if bad else "pass", failed=bad,
                       reason=(f"|ΔΔ| = |{d_now:+.2f} − ({row['delta_base']:+.2f})| = {abs(diff):.2f} > tolerance "
                               f"{tol:.2f}" if bad else ""))
        out.append(row)
    for key, r in now_rows.items():
        if key in seen:
            continue
        out.append(dict(zip(ROW_KEY, key), delta_base=math.nan, se_base=math.nan, n_base=None,
                        delta_now=float(r["delta"]), se_now=float(r["delta_se"]), n_now=int(r["n"]),
                        diff=math.nan, tolerance=math.nan, status="EXTRA", failed=False,
                        reason="not in the baseline (reported, passes)"))
    cols = ROW_KEY + ["status", "failed", "delta_base", "se_base", "n_base", "delta_now", "se_now", "n_now",
                      "diff", "tolerance", "reason"]
    table = pd.DataFrame(out, columns=cols)
    table["n_base"] = table["n_base"].astype("Int64")
    table["n_now"] = table["n_now"].astype("Int64")
    src = "" if isinstance(results, pd.DataFrame) else str(results)
    return RegressReport(table=table, k=float(k), floor=float(floor), results=src,
                         baseline="" if isinstance(baseline, dict) else str(baseline), warnings=notes,
                         absolute=absolute)
