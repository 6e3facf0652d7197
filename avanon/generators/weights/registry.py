"""Checkpoint registry and offline-first lookup (the downloads, imports, centres and CLI of ``avanon weights`` live
beside it in download.py, importing.py, centres.py and cli.py).

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

    from avanon.generators.weights import resolve, fetch, import_dir, status, REGISTRY, WeightsError
    path = resolve("body_triagan288")                  # Path, verified; WeightsError when missing or corrupt
    path = resolve("face_fdf128", "/mnt/models/fdf128.ckpt")
    fetch("face_fdf128")                               # download into the cache (resumable, md5-checked)
    report = import_dir("/media/usb/checkpoints")      # copy verified files found by name or md5
    st = status("face_fdf256")                         # WeightStatus(state="ok"|"missing"|"bad_md5"|"unchecked")

CLI (wired into ``avanon`` by ``cli.add_weights_arguments`` / ``cli.cmd_weights``)::

    avanon weights list [-v] [--json]          table of every entry: status, path (exit 0)
    avanon weights check [NAME ...]            same, exit 1 when a named (default: every) entry is missing/bad
    avanon weights fetch NAME ... | --all      download (resume, md5, atomic rename) into the cache
    avanon weights import DIR                  copy files found in DIR (recursive; by name or md5) into the cache
    avanon weights compute-centers NAME        k-means centres of w for multi-modal truncation (hook, see below)

``compute-centers`` calls ``centres.compute_centers_file`` with the contract::

    compute_centers(name: str, checkpoint: Path, out: Path, *, n_samples: int = 599_552, n_centers: int = 512,
                    batch_size: int = 512, seed: int = 0, device: str = "cpu") -> Path

It samples z ~ N(0, I) through the generator's style net only, clusters w with k-means (euclidean, ``n_centers``)
and writes the centres ``[n_centers, w_dim]`` to ``out`` (default :func:`centers_path` ``(name)``, a sidecar file in
the cache), never into the official checkpoint, whose md5 must stay valid.

Exit codes of ``cmd_weights``: 0 ok; 1 ``check`` found something missing or bad (or ``import`` left entries
missing); 2 errors (bad arguments, a failed download, a checksum mismatch).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union


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
    ``builds``: the ``avanon.generators`` generator name it loads into (``None`` for non-generator weights).
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
            "tests and demos only (handled by avanon.generators, never resolved to a file). Real runs need a "
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


