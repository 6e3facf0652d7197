"""The `avanon` command line: a thin layer. Each stage adds its own subcommands (pipeline: run, slurm, anonymize;
mirror: inspect, verify, merge, show; study: train, report, regress; generators: weights; recipe: show, schema).

Exit codes: 0 success; 1 finished but not clean (failed images, a mirror that does not verify, a regression);
2 bad input (recipe, dataset, paths) or a run that had to stop (full disk, permissions).
Output: results on stdout; -q shows warnings and errors only, -v adds debug detail.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from typing import Optional

from avanon import __version__
from avanon.cliutil import PipeSafe
from avanon.progress import ConsoleHandler


def _verbosity(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("-q", "--quiet", action="count", default=default, help="only warnings and errors")
    p.add_argument("-v", "--verbose", action="count", default=default, help="more detail (debug log)")


def build_parser() -> argparse.ArgumentParser:
    from avanon import pipeline
    from avanon.generators.weights.cli import add_weights_arguments, cmd_weights
    from avanon.mirror import cli as mirror_cli
    from avanon.recipe_cli import add_recipe_arguments
    from avanon.study import cli as study_cli

    p = argparse.ArgumentParser(prog="avanon", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"avanon {__version__}")
    p.add_argument("--import", dest="plugins", action="append", default=[], metavar="MODULE",
                   help="import MODULE first: a plugin that registers a trainer (or another registry entry) that "
                        "recipes name; `run --gpus` and `slurm` pass it on to their processes")
    _verbosity(p, 0)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pipeline.add_commands(sub)
    mirror_cli.add_commands(sub)
    study_cli.add_commands(sub)
    add_weights_arguments(sub).set_defaults(func=cmd_weights)
    add_recipe_arguments(sub)
    for sp in sub.choices.values():  # -q/-v also after the command: `avanon run R -v`
        _verbosity(sp, argparse.SUPPRESS)
    return p


def setup_logging(quiet: int, verbose: int) -> None:
    """The library logs to the "avanon" logger; the command line prints it: INFO as plain lines on stdout,
    warnings and errors on stderr."""
    level = logging.WARNING if quiet > verbose else logging.DEBUG if verbose > quiet else logging.INFO
    root = logging.getLogger("avanon")
    for h in list(root.handlers):
        root.removeHandler(h)
    out = ConsoleHandler("stdout")
    out.addFilter(lambda r: r.levelno < logging.WARNING)
    out.setFormatter(logging.Formatter("%(message)s"))
    err = ConsoleHandler("stderr")
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter("avanon: %(levelname)s: %(message)s".replace("%(levelname)s", "warning")))
    root.addHandler(out)
    root.addHandler(err)
    root.setLevel(level)
    root.propagate = False


def main(argv: Optional[list[str]] = None) -> int:
    if not isinstance(sys.stdout, PipeSafe):
        sys.stdout, sys.stderr = PipeSafe(sys.stdout), PipeSafe(sys.stderr)
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # the command line, as runs record it
    setup_logging(getattr(args, "quiet", 0), getattr(args, "verbose", 0))
    from avanon.mirror import MirrorError
    from avanon.schema import RecipeError
    from dataset_adapters import DatasetError

    for module in args.plugins:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            print(f"avanon: error: --import {module}: {exc}", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except (RecipeError, DatasetError, MirrorError) as exc:
        print(f"avanon: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the command was pointed at: unreadable, unwritable, full disk
        what = f"{exc.filename}: " if exc.filename else ""
        print(f"avanon: error: {what}{exc.strerror or exc} ({errno.errorcode.get(exc.errno, 'OSError')})",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avanon: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
