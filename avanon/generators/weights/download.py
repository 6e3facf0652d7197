"""Verified, resumable downloads of registry checkpoints into the cache (``avanon weights fetch``)."""
from __future__ import annotations

import errno
import hashlib
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import List, Optional, Tuple

from avanon.generators.weights.registry import (
    PathLike, WeightEntry, WeightsError, _stat_key, _store_md5, cache_dir, get_entry, verify,
)

# ----------------------------------------------------------------------------------------------------------------
# Download

_USER_AGENT = "avanon-weights (+urllib)"
_TRANSIENT = (HTTPException, ConnectionError, socket.timeout, TimeoutError)


class _Interrupted(Exception):
    pass


class _Lock:
    """Advisory exclusive lock on ``<file>.lock`` so that two fetches of one file do not interleave."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+b")
        try:
            import fcntl

            try:
                fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    self.fh.close()
                    raise WeightsError(f"another avanon process is writing {self.path.with_suffix('')}; wait for it "
                                       "to finish") from None
                raise
        except ImportError:  # not POSIX: no locking
            pass
        return self

    def __exit__(self, *exc):
        try:
            self.fh.close()
        finally:
            try:
                self.path.unlink()
            except OSError:
                pass


def _parse_content_range(value: Optional[str]) -> Tuple[Optional[int], Optional[int]]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL or None)."""
    if not value:
        return None, None
    try:
        unit, rest = value.strip().split(" ", 1)
        span, total = rest.split("/", 1)
        start = int(span.split("-", 1)[0])
        return start, (None if total.strip() == "*" else int(total))
    except ValueError:
        return None, None


def _progress(total: Optional[int], initial: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        enabled = False
    if not enabled:
        class _Null:
            def update(self, n):
                pass

            def close(self):
                pass

        return _Null()
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                file=sys.stderr, leave=False, dynamic_ncols=True)


def _download_once(url: str, part: Path, timeout: float, progress: bool, desc: str,
                   chunk_size: int) -> "hashlib._Hash":
    """One HTTP request into ``part`` (appending from its current size when the server honours Range).
    Returns the md5 of the whole ``part``. Raises _Interrupted (``part`` kept) or HTTPError/URLError."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # Range not satisfiable: the .part is probably already complete; the md5 check decides.
            _, total = _parse_content_range(err.headers.get("Content-Range"))
            err.close()
            if total is None or total == offset:
                return _hash_file(part)
            part.unlink()
            raise _Interrupted(f"server rejected resuming at byte {offset} (file is {total} bytes); restarting")
        raise
    with resp:
        code = resp.getcode()
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and code == 206:
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                # a range we did not ask for: drop the .part and start over with a plain request
                part.unlink()
                raise _Interrupted(f"server answered 'Range: bytes={offset}-' with Content-Range "
                                   f"{resp.headers.get('Content-Range')!r}; restarting from scratch")
            mode = "ab"
        else:
            # 200: the server ignored Range (or there was none): write from scratch.
            mode, offset = "wb", 0
            total = length
        if total is None and length is not None:
            total = offset + length
        h = _hash_file(part) if mode == "ab" else hashlib.md5()
        received = 0
        bar = _progress(total, offset, desc, progress)
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        # read1: whatever has arrived (up to chunk_size), so a stall loses nothing already received
                        block = resp.read1(chunk_size) if hasattr(resp, "read1") else resp.read(chunk_size)
                    except _TRANSIENT + (OSError,) as err:
                        out.flush()
                        raise _Interrupted(f"transfer interrupted after {offset + received} bytes"
                                           f"{f' of {total}' if total else ''}: {type(err).__name__}: {err}") from err
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    received += len(block)
                    bar.update(len(block))
                out.flush()
                os.fsync(out.fileno())
        finally:
            bar.close()
        if length is not None and received < length:
            raise _Interrupted(f"transfer interrupted after {offset + received} of {offset + length} bytes "
                               "(connection closed early)")
        return h


def _hash_file(path: Path) -> "hashlib._Hash":
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h


def fetch(name: str, dest: Optional[PathLike] = None, url: Optional[str] = None, *, timeout: float = 60.0,
          retries: int = 3, progress: bool = True, force: bool = False, chunk_size: int = 1 << 20,
          retry_wait: float = 1.0) -> Path:
    """Download checkpoint ``name`` into directory ``dest`` (default :func:`cache_dir`) as ``dest/<file>``.

    Streams to ``<file>.part``, resuming it with an HTTP Range request when one exists (a server that ignores Range
    restarts the file), shows a tqdm bar, verifies the md5 and only then renames atomically. ``url`` overrides the
    registry's URLs (otherwise the official URL(s), then the mirrors, are tried in order). ``timeout``: seconds per
    connect/read. ``retries``: resumptions after an interrupted transfer within this call (0: fail at once; the
    .part is kept either way, so re-running resumes). A wrong checksum removes the .part and raises. An existing
    verified file is returned without network access unless ``force``.
    """
    entry = get_entry(name)
    target_dir = Path(dest).expanduser() if dest is not None else cache_dir()
    target = target_dir / entry.file
    if target.is_file() and not force:
        try:
            return verify(target, entry)
        except WeightsError:
            pass  # corrupt: download a fresh one over it
    urls = [url] if url else list(entry.all_urls)
    if not urls:
        raise WeightsError(f"no URL known for {entry.name}; copy {entry.file} by hand and run "
                           "`avanon weights import DIR`")
    target_dir.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    failures: List[str] = []
    with _Lock(target.with_name(target.name + ".lock")):
        for u in urls:
            try:
                return _fetch_url(entry, u, target, part, timeout, retries, progress, chunk_size, retry_wait)
            except _FetchFailed as err:
                failures.append(f"{u}: {err}")
                if err.keep_part:
                    # interrupted: do not mix bytes from another server into this .part
                    break
    kept = part.exists()
    msg = [f"could not download {entry.name} ({entry.file}, md5 {entry.md5 or 'not published'}):"]
    msg += [f"  {f}" for f in failures]
    if kept:
        msg.append(f"The partial file {part} ({part.stat().st_size} bytes) is kept: run "
                   f"`avanon weights fetch {entry.name}` again to resume.")
    msg.append("Air-gapped or blocked network: download the file elsewhere, copy it by hand into a directory here "
               "and run `avanon weights import DIR`.")
    if entry.note:
        msg.append(f"Note: {entry.note}")
    raise WeightsError("\n".join(msg))


class _FetchFailed(Exception):
    def __init__(self, msg: str, keep_part: bool = False):
        super().__init__(msg)
        self.keep_part = keep_part


def _fetch_url(entry: WeightEntry, url: str, target: Path, part: Path, timeout: float, retries: int,
               progress: bool, chunk_size: int, retry_wait: float) -> Path:
    attempts = 0
    restarted_clean = False
    while True:
        resumed_from = part.stat().st_size if part.exists() else 0
        try:
            h = _download_once(url, part, timeout, progress, entry.name, chunk_size)
        except _Interrupted as err:
            attempts += 1
            if attempts > retries:
                raise _FetchFailed(str(err), keep_part=part.exists()) from None
            time.sleep(min(retry_wait * attempts, 30.0))
            continue
        except urllib.error.HTTPError as err:
            raise _FetchFailed(f"HTTP {err.code} {err.reason}", keep_part=False) from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, (socket.timeout, TimeoutError, ConnectionError)) and part.exists() \
                    and part.stat().st_size:
                attempts += 1
                if attempts > retries:
                    raise _FetchFailed(f"{type(reason).__name__}: {reason}", keep_part=True) from None
                time.sleep(min(retry_wait * attempts, 30.0))
                continue
            raise _FetchFailed(f"cannot connect: {reason}", keep_part=False) from None
        except _TRANSIENT as err:  # connect-time timeout / reset
            attempts += 1
            if attempts > retries:
                raise _FetchFailed(f"{type(err).__name__}: {err}", keep_part=part.exists()) from None
            time.sleep(min(retry_wait * attempts, 30.0))
            continue
        got = h.hexdigest()
        if entry.check_hash and entry.md5 and got != entry.md5:
            size = part.stat().st_size
            part.unlink()
            if resumed_from and not restarted_clean:
                # the old .part may have come from another file version: one clean restart
                restarted_clean = True
                continue
            raise _FetchFailed(f"md5 mismatch: expected {entry.md5}, actual {got} ({size} bytes); the partial file "
                               "was removed", keep_part=False)
        os.replace(part, target)
        try:
            _store_md5(str(target.resolve()), _stat_key(target.stat()), got)
        except OSError:
            pass
        return target


