"""Verify throughput: the local 8x8-tile comparison against the per-region mean comparison it replaced, measured in
the same run on the same mirrors.

Writes a synthetic dataset like the demo's (Cityscapes format) and a JPEG one (COCO format), one body-blur and one
body-mask-out mirror of each, then times `verify_mirror` twice per mirror: with the tile check (today's code) and
with the earlier comparison (mean absolute difference inside and outside the union of the regions, monkeypatched
in for the baseline). Prints images/s and the ratio; the goal is a tile check no more than 1.5x slower.

    python benchmarks/verify_throughput.py [--images 24] [--workdir /tmp/avanon-verify-bench]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from avanon.cli import main
from avanon.mirror import verify as verify_mod

EARLIER_JPEG_MEAN_TOLERANCE = 2.0


def earlier_compare(rel, got, want, owner, regions, lossless, report) -> None:
    """The comparison verify made before the tile check: whole-region means (or exact for lossless images)."""
    union = owner > 0
    for where, sel in (("outside the regions", ~union), ("inside the regions", union)):
        if not sel.any():
            continue
        diff = np.abs(got[sel].astype(np.int16) - want[sel].astype(np.int16))
        if (lossless and diff.any()) or (not lossless and diff.mean() > EARLIER_JPEG_MEAN_TOLERANCE):
            report.errors.append(f"{rel}: pixels {where} differ")


def timed_verify(mirror: Path, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        report = verify_mod.verify_mirror(mirror)
        best = min(best, time.perf_counter() - t)
        assert report.clean, report.errors[:3]
    return best


def main_(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--workdir")
    a = p.parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="avanon-verify-bench-"))
    try:
        for fmt in ("cityscapes", "coco"):
            data = work / f"data_{fmt}"
            for method in ("blur", "mask_out"):
                rc = main(["-q", "anonymize", "--dataset", "synthetic", "--root", str(data), "--option",
                           f"format={fmt}", "--option", f"num_train={a.images}", "--option", "num_val=0",
                           "--option", "person_heights=[0.45, 0.95]", "--region", "body", "--method", method,
                           "--out", str(work / "out"), "--no-progress"])
                assert rc == 0
                mirror = work / "out" / "synthetic" / f"body_{method}"
                timed_verify(mirror, 1)  # warm caches (selector, page cache)
                tiles = timed_verify(mirror)
                real = verify_mod._compare_tiles
                verify_mod._compare_tiles = earlier_compare
                try:
                    earlier = timed_verify(mirror)
                finally:
                    verify_mod._compare_tiles = real
                print(f"{fmt:10s} body_{method:9s} {a.images} images: earlier {a.images / earlier:6.1f} img/s, "
                      f"tiles {a.images / tiles:6.1f} img/s, ratio {tiles / earlier:.2f}x")
                shutil.rmtree(work / "out")
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main_()
