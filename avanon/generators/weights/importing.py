"""Import checkpoints found in a directory (by name or md5) into the cache (``avanon weights import``)."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from avanon.generators.weights.registry import (
    REGISTRY, PathLike, WeightEntry, WeightsError, _names, _stat_key, _store_md5, cache_dir, md5sum, status, verify,
)

# ----------------------------------------------------------------------------------------------------------------
# Import

_SKIP_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".mp4", ".avi", ".mov", ".mkv",
                  ".json", ".txt", ".md", ".csv", ".yaml", ".yml", ".py", ".html", ".xml", ".log", ".part",
                  ".lock", ".tmp"}


@dataclass
class ImportReport:
    imported: List[Tuple[str, Path, Path]] = field(default_factory=list)   # (name, source, destination)
    already: List[Tuple[str, Path]] = field(default_factory=list)          # (name, existing verified file)
    rejected: List[Tuple[str, Path, str]] = field(default_factory=list)    # (name, source, reason)
    missing: List[str] = field(default_factory=list)                       # entries still not available

    def lines(self) -> List[str]:
        out = [f"imported  {n:<16} {src} -> {dst}" for n, src, dst in self.imported]
        out += [f"present   {n:<16} {p}" for n, p in self.already]
        out += [f"rejected  {n:<16} {src}: {why}" for n, src, why in self.rejected]
        out += [f"missing   {n}" for n in self.missing]
        return out


def _iter_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if p.is_file():
                yield p


def _copy_verified(entry: WeightEntry, src: Path, dst_dir: Path) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / entry.file
    tmp = dst_dir / f".{entry.file}.import-{os.getpid()}.tmp"
    try:
        with open(src, "rb") as fi, open(tmp, "wb") as fo:
            shutil.copyfileobj(fi, fo, 1 << 22)
            fo.flush()
            os.fsync(fo.fileno())
        if entry.check_hash and entry.md5:
            got = md5sum(tmp, use_cache=False)
            if got != entry.md5:
                raise WeightsError(f"copy of {src} has md5 {got}, expected {entry.md5} (disk or read error?)")
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    if entry.check_hash and entry.md5:
        _store_md5(str(dst.resolve()), _stat_key(dst.stat()), entry.md5)
    return dst


def import_dir(directory: PathLike, dest: Optional[PathLike] = None, *, names: Optional[Iterable[str]] = None,
               by_md5: bool = True, min_bytes: int = 1 << 20) -> ImportReport:
    """Copy registry checkpoints found anywhere under ``directory`` into ``dest`` (default :func:`cache_dir`).

    A file is recognised by its registry file name, or (``by_md5``; for entries with an md5) by its md5 whatever
    its name; files smaller than ``min_bytes`` and obvious non-checkpoints (images, text, ...) are not hashed.
    Every file is verified before an atomic copy; a name match with a wrong md5 is reported as rejected.
    The report's ``missing`` lists the selected entries still unavailable after the import (see :func:`status`).
    """
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise WeightsError(f"{root} is not a directory")
    dst_dir = Path(dest).expanduser() if dest is not None else cache_dir()
    selected = _names(names)
    entries = [REGISTRY[n] for n in selected]
    by_file = {e.file: e for e in entries}
    by_hash = {e.md5: e for e in entries if e.check_hash and e.md5}
    report = ImportReport()
    done: set = set()

    def already_ok(e: WeightEntry) -> Optional[Path]:
        p = dst_dir / e.file
        if p.is_file():
            try:
                return verify(p, e)
            except WeightsError:
                return None
        return None

    for p in _iter_files(root):
        if p.name.endswith((".part", ".lock")) or (p.name.startswith(".") and p.name.endswith(".tmp")):
            continue
        e = by_file.get(p.name)
        digest = None
        if e is None and by_md5 and by_hash and p.suffix.lower() not in _SKIP_SUFFIXES:
            try:
                if p.stat().st_size >= min_bytes:
                    digest = md5sum(p)
                    e = by_hash.get(digest)
            except OSError:
                continue
        if e is None or e.name in done:
            continue
        existing = already_ok(e)
        if existing is not None:  # a verified copy is already in the destination (or DIR is the cache itself)
            report.already.append((e.name, existing))
            done.add(e.name)
            continue
        try:
            verify(p, e)
        except WeightsError as err:
            report.rejected.append((e.name, p, str(err).split(". ")[0]))
            continue
        try:
            dst = _copy_verified(e, p, dst_dir)
        except (OSError, WeightsError) as err:
            report.rejected.append((e.name, p, f"copy failed: {err}"))
            continue
        report.imported.append((e.name, p, dst))
        done.add(e.name)
    for n in selected:
        if n not in done and not status(n).ok:
            report.missing.append(n)
    return report


