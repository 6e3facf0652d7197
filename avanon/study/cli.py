"""The study stage's commands: `avanon train` (one training run), `report` and `regress`."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Optional

from avanon.study.regress import (
    DEFAULT_FLOOR, DEFAULT_K, BaselineError, compare, parse_tolerance, read_baseline, write_baseline,
)
from avanon.study.report import ReportWarning, ResultsError, write_report


def add_commands(sub) -> None:
    from avanon.study.training.cli import add_train_arguments

    t = sub.add_parser("train", help="one training run: --config, --out, --resume, --test-only (torchrun works "
                       "with python -m avanon.study.training)")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)
    r = sub.add_parser("report", help="Paper-F style tables and plots of a run's results")
    add_report_arguments(r)
    r.set_defaults(func=cmd_report)
    g = sub.add_parser("regress", help="compare a run's AP deltas with a committed baseline")
    add_regress_arguments(g)
    g.set_defaults(func=cmd_regress)


def cmd_train(args) -> int:
    from avanon.study.training.cli import cmd_train as train_run

    return train_run(args, ["avanon", *getattr(args, "argv", sys.argv[1:])])


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


def add_regress_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("results", help="run directory holding results.jsonl, or the .jsonl file")
    p.add_argument("--baseline", required=True, help="baseline JSON (from --write-baseline)")
    p.add_argument("--tolerance-floor", type=float, default=DEFAULT_FLOOR,
                   help=f"smallest tolerance on a Δ, in AP points (default {DEFAULT_FLOOR}: 2-seed CPU demo noise)")
    p.add_argument("--k", type=float, default=DEFAULT_K,
                   help=f"tolerance in standard errors of the Δ difference (default {DEFAULT_K:g})")
    p.add_argument("--tolerance", default="baseline", metavar="baseline|se|X",
                   help="baseline (default): the rule the baseline file records; se: the standard-error rule; X: an "
                        "absolute tolerance in AP points (with --write-baseline: recorded in the file, for "
                        "deterministic runs such as the CPU demo)")
    p.add_argument("--write-baseline", action="store_true",
                   help="write the baseline FILE from RESULTS instead of comparing (exit 0)")
    p.add_argument("--json", help="also write the comparison as JSON here")
    return p


def cmd_regress(args) -> int:
    """Run `avanon regress`: 0 pass (or baseline written), 1 a regression, 2 bad input."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ReportWarning)
            tolerance = parse_tolerance(args.tolerance)
            if args.write_baseline:
                path = write_baseline(args.results, args.baseline, tolerance)
                report = None
            else:
                report = compare(args.results, args.baseline, k=args.k, floor=args.tolerance_floor,
                                 tolerance=tolerance)
    except (ResultsError, BaselineError, ValueError) as e:
        print(f"avanon regress: {e}", file=sys.stderr)
        return 2
    for w in caught:
        if issubclass(w.category, ReportWarning):
            print(f"avanon regress: warning: {w.message}", file=sys.stderr)
    if report is None:
        n = len(read_baseline(path)["rows"])
        print(f"avanon regress: wrote baseline {path} ({n} rows)")
        return 0
    print(report.format())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    return report.exit_code


def report_main(argv: Optional[list[str]] = None) -> int:
    """`avanon report` as a function of its own arguments."""
    p = add_report_arguments(argparse.ArgumentParser(prog="avanon report"))
    return cmd_report(p.parse_args(argv))


def regress_main(argv: Optional[list[str]] = None) -> int:
    """`avanon regress` as a function of its own arguments."""
    p = add_regress_arguments(argparse.ArgumentParser(prog="avanon regress"))
    return cmd_regress(p.parse_args(argv))
