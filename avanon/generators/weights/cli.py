"""``avanon weights list|check|fetch|import|compute-centers``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

from avanon.generators.weights.download import fetch
from avanon.generators.weights.importing import import_dir
from avanon.generators.weights.registry import (
    REGISTRY, WeightStatus, WeightsError, _names, cache_dirs, centers_path, get_entry, resolve, status,
    torch_hub_checkpoints,
)

# ----------------------------------------------------------------------------------------------------------------
# CLI


def add_weights_arguments(subparsers) -> argparse.ArgumentParser:
    """Add ``avanon weights {list,check,fetch,import,compute-centers}`` to ``subparsers``; dispatch with
    :func:`cmd_weights`."""
    w = subparsers.add_parser(
        "weights", help="list, check, download or import the pretrained checkpoints",
        description="Checkpoints are looked up in: a recipe's explicit path, $AVANON_WEIGHTS (default "
                    "~/.cache/avanon/weights), then $TORCH_HOME/hub/checkpoints (where DeepPrivacy2 saved them). "
                    "Every file is md5-verified.")
    ws = w.add_subparsers(dest="weights_command", required=True)

    lst = ws.add_parser("list", help="every known checkpoint, its status and path")
    lst.add_argument("-v", "--verbose", action="store_true", help="also URLs, md5 and notes")
    lst.add_argument("--json", action="store_true", help="machine-readable output")

    chk = ws.add_parser("check", help="verify checkpoints; exit 1 when one is missing or corrupt")
    chk.add_argument("names", nargs="*", help="checkpoint names (default: all)")
    chk.add_argument("--path", action="append", default=[], metavar="NAME=FILE",
                     help="check an explicit file for NAME (as a recipe would name it)")
    chk.add_argument("--json", action="store_true")

    f = ws.add_parser("fetch", help="download checkpoints into the cache (resumable, md5-verified)")
    f.add_argument("names", nargs="*", help="checkpoint names")
    f.add_argument("--all", action="store_true", help="every checkpoint that has a URL")
    f.add_argument("--dest", help="directory to write to (default: the avanon cache)")
    f.add_argument("--url", help="download from this URL instead (one name only)")
    f.add_argument("--timeout", type=float, default=60.0, help="seconds per connect/read (default 60)")
    f.add_argument("--retries", type=int, default=3, help="resumptions after an interrupted transfer (default 3)")
    f.add_argument("--force", action="store_true", help="download even when a verified file exists")
    f.add_argument("--no-progress", action="store_true")

    im = ws.add_parser("import", help="copy checkpoints found in DIR (by file name or md5) into the cache")
    im.add_argument("directory", metavar="DIR")
    im.add_argument("--dest", help="directory to write to (default: the avanon cache)")
    im.add_argument("--no-md5-scan", action="store_true", help="match by file name only (do not hash other files)")

    cc = ws.add_parser("compute-centers", help="k-means centres of w for multi-modal truncation (sidecar file)")
    cc.add_argument("name", help="generator checkpoint name, e.g. face_fdf128")
    cc.add_argument("--path", help="explicit checkpoint file (default: resolved as usual)")
    cc.add_argument("--out", help="output file (default: <cache>/NAME.w_centers.pt)")
    cc.add_argument("--n-samples", type=int, default=599_552, help="w samples (reference: 600e3 -> 599,552)")
    cc.add_argument("--n-centers", type=int, default=512)
    cc.add_argument("--batch-size", type=int, default=512)
    cc.add_argument("--seed", type=int, default=0)
    cc.add_argument("--device", default="cpu")
    w.set_defaults(func=cmd_weights)
    return w


def _table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(line.rstrip() for line in out)


_STATE_TEXT = {"ok": "ok", "unchecked": "present (no md5)", "missing": "missing", "bad_md5": "BAD MD5"}


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _print_status(statuses: List[WeightStatus], as_json: bool, verbose: bool) -> None:
    if as_json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
        return
    rows = [[s.name, _short(s.file), _STATE_TEXT[s.state], str(s.path or "-")] for s in statuses]
    print(_table(rows, ["name", "file", "status", "path"]))
    print(f"\ncache: {', '.join(str(d) for d in cache_dirs())}   torch hub: {torch_hub_checkpoints()}")
    for s in statuses:
        if s.state == "bad_md5":
            print(f"\n{s.name}: {s.message}")
    if verbose:
        for s in statuses:
            e = REGISTRY[s.name]
            print(f"\n{e.name}  ({e.kind}{', builds ' + e.builds if e.builds else ''})")
            print(f"  file:   {e.file}")
            print(f"  md5:    {e.md5 or 'none published (check_hash=False)'}")
            for u in e.urls:
                print(f"  url:    {u}")
            for u in e.mirrors:
                print(f"  mirror: {u}")
            print(f"  source: {e.source}")
            if e.note:
                print(f"  note:   {e.note}")
    missing = [s.name for s in statuses if s.state == "missing"]
    if missing:
        print(f"\nmissing: {' '.join(missing)} -> `avanon weights fetch NAME`, or copy the files by hand and "
              "`avanon weights import DIR` (air-gapped sites); -v shows URLs and md5.")


def _parse_paths(items: List[str]) -> Dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise WeightsError(f"--path {item!r}: expected NAME=FILE")
        k, v = item.split("=", 1)
        get_entry(k)
        out[k] = v
    return out


def cmd_weights(args) -> int:
    """Run ``avanon weights ...``: 0 ok, 1 something missing/bad (check, import), 2 errors."""
    try:
        sub = args.weights_command
        if sub in ("list", "check"):
            paths = _parse_paths(getattr(args, "path", []) or [])
            names = _names(getattr(args, "names", None) or None)
            statuses = [status(n, paths.get(n)) for n in names]
            _print_status(statuses, args.json, getattr(args, "verbose", False))
            if sub == "check":
                return 0 if all(s.ok for s in statuses) else 1
            return 0
        if sub == "fetch":
            if args.all:
                names = [n for n in _names() if REGISTRY[n].all_urls]
            else:
                names = [get_entry(n).name for n in args.names]
            if not names:
                raise WeightsError("name the checkpoints to fetch (see `avanon weights list`) or pass --all")
            if args.url and len(names) != 1:
                raise WeightsError("--url needs exactly one checkpoint name")
            failed = 0
            for n in names:
                try:
                    p = fetch(n, dest=args.dest, url=args.url, timeout=args.timeout, retries=args.retries,
                              progress=not args.no_progress, force=args.force)
                    print(f"{n}: ok  {p}")
                except WeightsError as err:
                    failed += 1
                    print(f"avanon: error: {err}", file=sys.stderr)
            return 2 if failed else 0
        if sub == "import":
            rep = import_dir(args.directory, dest=args.dest, by_md5=not args.no_md5_scan)
            for line in rep.lines():
                print(line)
            if not rep.imported and not rep.already:
                print(f"nothing recognised in {args.directory} (file names: "
                      f"{', '.join(REGISTRY[n].file for n in _names())})")
            return 1 if rep.missing or rep.rejected else 0
        if sub == "compute-centers":
            return _cmd_compute_centers(args)
        raise WeightsError(f"unknown weights command {sub!r}")
    except WeightsError as err:
        print(f"avanon: error: {err}", file=sys.stderr)
        return 2


def _cmd_compute_centers(args) -> int:
    entry = get_entry(args.name)
    if entry.builds is None:
        raise WeightsError(f"{entry.name} is not a generator checkpoint; centres exist only for generators")
    from avanon.generators.weights.centres import cmd_compute_centers as compute

    ckpt = resolve(entry.name, args.path)
    out = Path(args.out).expanduser() if args.out else centers_path(entry.name)
    result = compute(entry.builds, ckpt, out, n_samples=args.n_samples, n_centers=args.n_centers,
                     batch_size=args.batch_size, seed=args.seed, device=args.device)
    print(f"{entry.name}: centres written to {result or out}")
    return 0
