"""Checkpoint registry, offline-first lookup, verified download and import: ``avanon weights ...``.

Every pretrained file avanon can use is one :class:`WeightEntry` in :data:`REGISTRY` (name, file name, md5, URLs,
what it builds). Nothing here needs the network at run time: :func:`resolve` finds a file locally or raises a
:class:`WeightsError` that says exactly how to get it, online or by hand on an air-gapped machine.

Where files are looked for (:func:`resolve`), in this order:

1. an explicit path (a recipe's ``weights: /path/file``, or a directory holding the registry's file name); it must
   exist, there is no fallback;
2. the avanon cache: ``$AVANON_WEIGHTS`` (several directories may be given, separated by ``os.pathsep``; the first
   is where ``fetch`` / ``import`` write), else ``~/.cache/avanon/weights``;
3. where DeepPrivacy2 itself (``tops.download_file``) saved them: ``$TORCH_HOME/hub/checkpoints/<file>``
   (``TORCH_HOME`` defaults to ``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch``). The file name is the basename of
   the URL path, e.g. the long LOKE id, or ``fdh_styleganL_nocse.ckpt``; ViTPose uses an explicit name.

Every file found is md5-verified unless the entry has ``check_hash=False`` (the reference had no md5 for it).
md5 results are cached per (absolute path, size, mtime_ns, inode) in memory and in ``<cache>/.md5-cache.json``,
so repeated checks of multi-hundred-MB files cost a ``stat``.

Python API::

    from avanon.weights import resolve, fetch, import_dir, status, REGISTRY, WeightsError
    path = resolve("body_triagan288")                  # Path, verified; WeightsError when missing or corrupt
    path = resolve("face_fdf128", "/mnt/models/fdf128.ckpt")
    fetch("face_fdf128")                               # download into the cache (resumable, md5-checked)
    report = import_dir("/media/usb/checkpoints")      # copy verified files found by name or md5
    st = status("face_fdf256")                         # WeightStatus(state="ok"|"missing"|"bad_md5"|"unchecked")

CLI (wired into ``avanon`` by :func:`add_weights_arguments` / :func:`cmd_weights`)::

    avanon weights list [-v] [--json]          table of every entry: status, path (exit 0)
    avanon weights check [NAME ...]            same, exit 1 when a named (default: every) entry is missing/bad
    avanon weights fetch NAME ... | --all      download (resume, md5, atomic rename) into the cache
    avanon weights import DIR                  copy files found in DIR (recursive; by name or md5) into the cache
    avanon weights compute-centers NAME        k-means centres of w for multi-modal truncation (hook, see below)

``compute-centers`` calls ``avanon.realistic.compute_centers`` (owned by the realistic module) with the contract::

    compute_centers(name: str, checkpoint: Path, out: Path, *, n_samples: int = 599_552, n_centers: int = 512,
                    batch_size: int = 512, seed: int = 0, device: str = "cpu") -> Path

It samples z ~ N(0, I) through the generator's style net only, clusters w with k-means (euclidean, ``n_centers``)
and writes the centres ``[n_centers, w_dim]`` to ``out`` (default :func:`centers_path` ``(name)``, a sidecar file in
the cache), never into the official checkpoint, whose md5 must stay valid.

Exit codes of ``cmd_weights``: 0 ok; 1 ``check`` found something missing or bad (or ``import`` left entries
missing); 2 errors (bad arguments, a failed download, a checksum mismatch).
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

__all__ = [
    "LOKE",
    "REGISTRY",
    "WeightEntry",
    "WeightStatus",
    "WeightsError",
    "ImportReport",
    "cache_dir",
    "cache_dirs",
    "torch_hub_checkpoints",
    "get_entry",
    "md5sum",
    "verify",
    "resolve",
    "status",
    "fetch",
    "import_dir",
    "centers_path",
    "add_weights_arguments",
    "cmd_weights",
]

PathLike = Union[str, os.PathLike]

LOKE = "https://api.loke.aws.unit.no/dlr-gui-backend-resources-content/v2/contents/links/"
_HF_FACE = "https://huggingface.co/spaces/haakohu/deep_privacy2_face/resolve/main/torch_home/hub/checkpoints/"
_HF_BODY = "https://huggingface.co/spaces/haakohu/deep_privacy2/resolve/main/torch_home/hub/checkpoints/"

RANDOM_WEIGHTS = "random"


class WeightsError(RuntimeError):
    """A checkpoint is missing, corrupt, or could not be downloaded / imported. The message says what to do."""


@dataclass(frozen=True)
class WeightEntry:
    """One supported checkpoint.

    ``file``: the name it has on disk (what DeepPrivacy2 saved under ``$TORCH_HOME/hub/checkpoints/``).
    ``urls``: official URL(s), tried in order by :func:`fetch`; ``mirrors``: unofficial copies tried afterwards
    (every download is md5-verified, so a wrong mirror cannot install a wrong file).
    ``builds``: the ``avanon.realistic`` generator name it loads into (``None`` for non-generator weights).
    ``check_hash=False``: the reference publishes no md5 (``md5`` is then ``None``); files are accepted by name.
    """

    name: str
    file: str
    md5: Optional[str]
    urls: Tuple[str, ...]
    builds: Optional[str]
    kind: str
    source: str
    note: str = ""
    mirrors: Tuple[str, ...] = ()
    check_hash: bool = True

    @property
    def all_urls(self) -> Tuple[str, ...]:
        return tuple(self.urls) + tuple(u for u in self.mirrors if u not in self.urls)

    @property
    def url(self) -> str:
        return self.all_urls[0] if self.all_urls else ""


def _basename(url: str) -> str:
    """What ``tops.download_file`` names a download: the basename of the URL path."""
    from urllib.parse import urlparse

    return os.path.basename(urlparse(url).path)


def _entry(name, url, md5, builds, kind, source, note="", mirrors_base=(), file=None, check_hash=True):
    file = file or _basename(url)
    return WeightEntry(name=name, file=file, md5=md5, urls=(url,), builds=builds, kind=kind, source=source,
                       note=note, mirrors=tuple(base + file for base in mirrors_base), check_hash=check_hash)


_LOKE_HINT = ("LOKE links are unreliable: deep_privacy2 issue #39 (2026-01) reports the checkpoint download link "
              "dead, and a third-party script notes LOKE answering HTTP 502. Issue #39 points to copies in the "
              "author's Hugging Face Space haakohu/deep_privacy2_face under torch_home/hub/checkpoints/. If fetch "
              "fails, get the file with this exact name (or any name: md5 identifies it) on a connected machine and "
              "run `avanon weights import DIR`.")


REGISTRY: Dict[str, WeightEntry] = {e.name: e for e in [
    _entry("face_fdf128",
           LOKE + "66d803c0-55ce-44c0-9d53-815c2c0e6ba4eb458409-9e91-45d1-bce0-95c8a47a57218b102fdf-bea3-44dc-aac4-"
                  "0fb1d370ef1c",
           "bccd4403e7c9bca682566ff3319e8176", "face_fdf128", "generator",
           "DeepPrivacy2 configs/fdf/stylegan_fdf128.py (face, 128x128; the paper's face model)",
           note="Mirror (unverified guess: the face Space of issue #39 may hold only the 256 model): Hugging Face "
                "Space haakohu/deep_privacy2_face. " + _LOKE_HINT,
           mirrors_base=(_HF_FACE,)),
    _entry("face_fdf256",
           LOKE + "89660f04-5c11-4dbf-adac-cbe2f11b0aeea25cbf78-7558-475a-b3c7-03f5c10b7934646b0720-ca0a-4d53-aded-"
                  "daddbfa45c9e",
           "e8e32190528af2ed75f0cb792b7f2b07", "face_fdf256", "generator",
           "DeepPrivacy2 configs/fdf/stylegan.py (face, 256x256; COCO HR-face refinement)",
           note="Mirror: Hugging Face Space haakohu/deep_privacy2_face (issue #39); a third-party script downloads "
                "this exact file name from it. " + _LOKE_HINT,
           mirrors_base=(_HF_FACE,)),
    _entry("body_nocse288",
           "https://folk.ntnu.no/haakohu/checkpoints/deep_privacy2/fdh_styleganL_nocse.ckpt",
           "fda0d809741bc67487abada793975c37", "body_nocse288", "generator",
           "DeepPrivacy2 configs/fdh/styleganL_nocse.py (full body, mask-only, 288x160)",
           note="The official URL is DEAD (deep_privacy2 issue #33, open since 2024-11; no replacement published). "
                "If you have an old DeepPrivacy2 install, the file is $TORCH_HOME/hub/checkpoints/"
                "fdh_styleganL_nocse.ckpt (found automatically) or import it with `avanon weights import DIR`. "
                "Without it, anonymize bodies with body_triagan288 (the paper's generator; give persons keypoints, "
                "e.g. from a pose estimator) or a traditional method."),
    _entry("body_triagan288",
           LOKE + "e62a306a-5295-47dd-8a0e-4f7c05b9ecd44c9fbc76-5ce2-4dd0-9454-04776bef2745659fbec7-fa0a-485b-8501-"
                  "c94a2439b601",
           "b649410e831b45f7800a89c738b411ce", "body_triagan288", "generator",
           "DeepPrivacy2 configs/fdh/triagan/L_im288.py via configs/anonymizers/FB_triagan.py (full body, "
           "keypoint-guided TriA-GAN, 288x160; the paper's body model)",
           note="Mirror (unverified guess): Hugging Face Space haakohu/deep_privacy2. " + _LOKE_HINT,
           mirrors_base=(_HF_BODY,)),
    _entry("pose_vitpose_h",
           LOKE + "a33b6ada-4d2f-4ef7-8f83-b33f58b69f5b2a62e181-2131-467d-a900-027157a08571d761fad4-785b-4b84-8596-"
                  "8932c7857e44",
           None, None, "pose",
           "DeepPrivacy2 dp2/detection/models/vit_pose/vit_pose.py VitPoseModel('vit_huge') (ViTPose-H, COCO "
           "multi-task; top-down keypoints for the body generator)",
           file="vit-h-multi-coco-dbc06d4337.pth", check_hash=False,
           note="The reference downloads it with check_hash=False and publishes no md5, so avanon accepts the file "
                "by name without verification (`avanon weights import` recognises it by file name only). "
                + _LOKE_HINT),
]}

# Display order of the built-in entries (entries added later, e.g. by tests, follow alphabetically).
_ORDER_HINT = ("face_fdf128", "face_fdf256", "body_nocse288", "body_triagan288", "pose_vitpose_h")


def _names(names: Optional[Iterable[str]] = None) -> List[str]:
    if names:
        return [get_entry(n).name for n in names]
    known = [n for n in _ORDER_HINT if n in REGISTRY]
    return known + sorted(n for n in REGISTRY if n not in known)


def get_entry(name: str) -> WeightEntry:
    if name == RANDOM_WEIGHTS:
        raise WeightsError(
            f"weights {RANDOM_WEIGHTS!r} is not a checkpoint file: it means randomly initialised generators, for "
            "tests and demos only (handled by avanon.realistic, never resolved to a file). Real runs need a "
            f"checkpoint: one of {', '.join(_names())}; see `avanon weights list`.")
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown checkpoint {name!r}; known: {', '.join(_names())}") from None


# ----------------------------------------------------------------------------------------------------------------
# Directories


def cache_dirs() -> List[Path]:
    """Every avanon cache directory: ``$AVANON_WEIGHTS`` (``os.pathsep``-separated) else ``~/.cache/avanon/weights``.
    The first is the one written to."""
    env = os.environ.get("AVANON_WEIGHTS", "").strip()
    if env:
        dirs = [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
        if dirs:
            return dirs
    return [Path("~/.cache/avanon/weights").expanduser()]


def cache_dir() -> Path:
    """Where ``fetch`` and ``import`` write (the first of :func:`cache_dirs`)."""
    return cache_dirs()[0]


def torch_hub_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` as torch (and DeepPrivacy2's ``tops.download_file``) computes it, without
    importing torch."""
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        torch_home = os.path.join(xdg, "torch")
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


def centers_path(name: str) -> Path:
    """Default sidecar file for the multi-modal-truncation centres computed for checkpoint ``name``."""
    return cache_dir() / f"{get_entry(name).name}.w_centers.pt"


# ----------------------------------------------------------------------------------------------------------------
# md5 with a (path, size, mtime) keyed cache

_MD5_CACHE_FILE = ".md5-cache.json"
_md5_lock = threading.Lock()
_md5_memory: Dict[str, Tuple[Tuple[int, int, int], str]] = {}


def _md5_cache_file() -> Path:
    return cache_dir() / _MD5_CACHE_FILE


def _load_md5_disk() -> Dict[str, list]:
    try:
        data = json.loads(_md5_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _stat_key(st: os.stat_result) -> Tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _store_md5(key: str, stamp: Tuple[int, int, int], digest: str) -> None:
    with _md5_lock:
        _md5_memory[key] = (stamp, digest)
        target = _md5_cache_file()
        try:
            data = _load_md5_disk()
            data[key] = [*stamp, digest]
            # forget files that no longer exist, so the cache cannot grow without bound
            data = {k: v for k, v in data.items() if os.path.exists(k)}
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
            os.replace(tmp, target)
        except OSError:
            pass  # a read-only cache only costs recomputation


def _cached_md5(key: str, stamp: Tuple[int, int, int]) -> Optional[str]:
    hit = _md5_memory.get(key)
    if hit and hit[0] == stamp:
        return hit[1]
    disk = _load_md5_disk().get(key)
    if isinstance(disk, list) and len(disk) == 4 and tuple(disk[:3]) == stamp and isinstance(disk[3], str):
        _md5_memory[key] = (stamp, disk[3])
        return disk[3]
    return None


def md5sum(path: PathLike, use_cache: bool = True, chunk: int = 1 << 22) -> str:
    """Hex md5 of a file; cached by (absolute path, size, mtime_ns, inode) when ``use_cache``."""
    p = Path(path)
    st = p.stat()
    key = str(p.resolve())
    if use_cache:
        hit = _cached_md5(key, _stat_key(st))
        if hit:
            return hit
    h = hashlib.md5()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    digest = h.hexdigest()
    if use_cache and _stat_key(p.stat()) == _stat_key(st):
        _store_md5(key, _stat_key(st), digest)
    return digest


def verify(path: PathLike, entry: Union[str, WeightEntry]) -> Path:
    """Raise :class:`WeightsError` unless ``path`` is a file whose md5 is the entry's (no check when the registry
    has no hash). Returns the path."""
    entry = entry if isinstance(entry, WeightEntry) else get_entry(entry)
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p} is not a file")
    if entry.check_hash and entry.md5:
        got = md5sum(p)
        if got != entry.md5:
            raise WeightsError(
                f"md5 mismatch for {entry.name} at {p}: expected {entry.md5}, actual {got} (size "
                f"{p.stat().st_size} bytes). The file is corrupt, truncated or a different checkpoint. Delete it and "
                f"run `avanon weights fetch {entry.name}`, or copy the right file by hand and run "
                f"`avanon weights import DIR`.")
    return p


# ----------------------------------------------------------------------------------------------------------------
# Lookup


def _explicit_candidate(entry: WeightEntry, path: PathLike) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        return p / entry.file
    return p


def candidates(name: str) -> List[Path]:
    """The implicit locations searched for ``name``, in order (cache directories, then the torch hub cache)."""
    entry = get_entry(name)
    out: List[Path] = []
    for d in cache_dirs() + [torch_hub_checkpoints()]:
        p = d / entry.file
        if p not in out:
            out.append(p)
    return out


def _missing_message(entry: WeightEntry, looked: Sequence[Path], explicit: Optional[Path] = None) -> str:
    md5 = entry.md5 if entry.md5 else "none published (not verified)"
    lines = [f"checkpoint {entry.name!r} not found: file {entry.file}, md5 {md5}."]
    if explicit is not None:
        lines.append(f"The path given for it does not exist: {explicit}")
    lines.append("Looked in: " + ", ".join(str(p) for p in looked))
    urls = entry.all_urls
    if urls:
        lines.append(f"URL: {urls[0]}")
        for u in urls[1:]:
            lines.append(f"  mirror: {u}")
    lines.append(f"Download it into {cache_dir()} with:  avanon weights fetch {entry.name}")
    lines.append("Air-gapped sites: download the URL on a connected machine, copy the file by hand (any name, it is "
                 f"recognised by name or md5) into a directory here, then run:  avanon weights import DIR")
    lines.append(f"(or put it at {cache_dir() / entry.file}, or name its path in the recipe's weights, or set "
                 "AVANON_WEIGHTS to a directory holding it).")
    if entry.note:
        lines.append(f"Note: {entry.note}")
    return "\n".join(lines)


def resolve(name: str, path: Optional[PathLike] = None) -> Path:
    """The verified local file of checkpoint ``name``.

    ``path`` (a recipe's explicit file, or a directory holding the registry file name) must exist and verify; it is
    never silently replaced by another copy. Otherwise the cache directories, then ``$TORCH_HOME/hub/checkpoints``
    are searched; a corrupt copy is skipped (with a warning) when a good one exists elsewhere.
    Raises :class:`WeightsError` (missing: names file, md5, URL and the fetch/import commands; corrupt: names the
    expected and actual md5).
    """
    if name == RANDOM_WEIGHTS or (path is not None and str(path) == RANDOM_WEIGHTS):
        get_entry(RANDOM_WEIGHTS)  # raises the explanation
    entry = get_entry(name)
    if path is not None and str(path).strip():
        p = _explicit_candidate(entry, path)
        if not p.is_file():
            raise WeightsError(_missing_message(entry, [p], explicit=p))
        return verify(p, entry)
    looked = candidates(name)
    bad: List[WeightsError] = []
    for p in looked:
        if not p.is_file():
            continue
        try:
            return verify(p, entry)
        except WeightsError as err:
            bad.append(err)
    if bad:
        if len(bad) > 1:
            raise WeightsError("\n".join(str(b) for b in bad))
        raise bad[0]
    raise WeightsError(_missing_message(entry, looked))


@dataclass
class WeightStatus:
    name: str
    file: str
    state: str  # "ok" | "unchecked" (present, no md5 published) | "missing" | "bad_md5"
    path: Optional[Path]
    message: str = ""
    actual_md5: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.state in ("ok", "unchecked")

    def as_dict(self) -> dict:
        return {"name": self.name, "file": self.file, "state": self.state,
                "path": str(self.path) if self.path else None, "actual_md5": self.actual_md5,
                "message": self.message}


def status(name: str, path: Optional[PathLike] = None) -> WeightStatus:
    """Like :func:`resolve` but never raises for missing or bad files."""
    entry = get_entry(name)
    try:
        p = resolve(name, path)
    except WeightsError as err:
        explicit = _explicit_candidate(entry, path) if path is not None and str(path).strip() else None
        looked = [explicit] if explicit is not None else candidates(name)
        present = [p for p in looked if p.is_file()]
        if present:
            return WeightStatus(entry.name, entry.file, "bad_md5", present[0], str(err), md5sum(present[0]))
        return WeightStatus(entry.name, entry.file, "missing", None, str(err))
    state = "ok" if (entry.check_hash and entry.md5) else "unchecked"
    return WeightStatus(entry.name, entry.file, state, p, "", entry.md5 if state == "ok" else None)


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
    try:
        from avanon import realistic
        compute = getattr(realistic, "compute_centers")
    except (ImportError, AttributeError):
        raise WeightsError("compute-centers needs avanon.realistic.compute_centers, which this installation does "
                           "not provide") from None
    ckpt = resolve(entry.name, args.path)
    out = Path(args.out).expanduser() if args.out else centers_path(entry.name)
    result = compute(entry.builds, ckpt, out, n_samples=args.n_samples, n_centers=args.n_centers,
                     batch_size=args.batch_size, seed=args.seed, device=args.device)
    print(f"{entry.name}: centres written to {result or out}")
    return 0
