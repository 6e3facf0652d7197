"""Mirrored datasets: a copy of the dataset tree in which only the anonymized split's images differ.

Annotation files and untouched images are byte-identical copies (or hard links); anonymized images keep their
name and format. `manifest.jsonl` has one line per image of the split (source and output sha256, instances
anonymized and skipped with reasons, method, parameters, per-image seed); `run.json` has the resolved recipe
and package versions. Every write is atomic, so a run can be killed at any point and resumed: finished images
are skipped and the result equals an uninterrupted run byte for byte. An image that should be anonymized but
could not be is recorded as failed and never written to the mirror.
"""
from __future__ import annotations

import errno
import json
import os
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional

from dataset_adapters.base import DatasetAdapter, ImageRecord
from avanon.imageio import (
    IMAGE_SUFFIXES, ImageReadError, atomic_copy, atomic_write_bytes, encode_image, read_image, sha256_bytes,
)
from avanon.recipe import config_hash

MANIFEST = "manifest.jsonl"
RUN_FILE = "run.json"
FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
VERSIONED_PACKAGES = ("avanon", "torch", "torchvision", "numpy", "opencv-python-headless", "pillow",
                      "scikit-image", "pycocotools", "cityscapesscripts", "joblib")


class MirrorError(Exception):
    """The mirror cannot be written (unsafe output path, settings that differ from an existing mirror, full disk)."""


@dataclass(frozen=True)
class MirrorJob:
    """Everything a worker needs to anonymize one image; also the identity of the mirror's settings."""

    source_root: str
    out_dir: str
    region: str
    region_params: dict
    filters: dict
    target_categories: tuple
    method: str
    method_params: dict
    seed: int
    exif_frame: str = "auto"
    jpeg_quality: int = 100
    png_compression: int = 3
    # The selector's resolved description (defaults, derived constants, face-file hash): part of the mirror's
    # identity so that, e.g., an edited face-box file is not mixed into an existing mirror.
    region_description: Optional[dict] = None
    link: str = "copy"  # how untouched files are reproduced; not part of the identity (same bytes either way)
    keypoints_provider: str = "annotations"
    keypoints_params: Optional[dict] = None
    split: str = "train"

    def settings(self) -> dict:
        """What makes two runs produce the same mirror (paths excluded so a moved dataset still resumes)."""
        d = asdict(self)
        for key in ("out_dir", "source_root", "link"):
            d.pop(key)
        d["target_categories"] = list(self.target_categories)
        return d

    def settings_hash(self) -> str:
        return config_hash(self.settings())


@dataclass
class MirrorSummary:
    out_dir: str
    images: int = 0
    anonymized: int = 0
    copied: int = 0
    failed: int = 0
    resumed: int = 0
    instances_anonymized: int = 0
    skip_reasons: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)
    unannotated: int = 0
    tree_files_copied: int = 0
    dataset_problems: list = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False

    def add(self, line: dict) -> None:
        self.images += 1
        status = line["status"]
        if status == "anonymized":
            self.anonymized += 1
        elif status == "copied":
            self.copied += 1
        else:
            self.failed += 1
            self.failures.append((line["file"], line.get("error", "")))
        self.instances_anonymized += len(line.get("anonymized", []))
        self.skip_reasons.update(reason for _, reason in line.get("skipped", []))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skip_reasons"] = dict(sorted(self.skip_reasons.items()))
        return d


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def image_seed(seed: int, file_name: str) -> int:
    """Per-image seed from the run seed and the file name: independent of worker count and order."""
    return int(config_hash([seed, file_name])[:8], 16)


# ----------------------------------------------------------------------------------------------- worker side
_WORKER_CACHE: dict = {}


def _tools(job: MirrorJob):
    """Region selector and anonymizer, built once per process and settings (generators are expensive)."""
    key = job.settings_hash()
    if key not in _WORKER_CACHE:
        from avanon.anonymizers import build_anonymizer
        from avanon.regions import build_region_selector

        selector = build_region_selector(job.region, job.region_params, job.filters, Path(job.source_root),
                                         job.target_categories)
        keypoints = None
        if job.keypoints_provider != "annotations":
            from avanon.keypoints import build_keypoint_provider

            keypoints = build_keypoint_provider(job.keypoints_provider, job.keypoints_params, Path(job.source_root),
                                                split=job.split, target_categories=job.target_categories)
        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = (selector, build_anonymizer(job.method, job.method_params), keypoints)
    return _WORKER_CACHE[key]


def check_tools(job: MirrorJob) -> None:
    """Fail before any image when the method cannot run at all (e.g. generator weights are missing): that is
    not a per-image failure."""
    _, anonymizer, _ = _tools(job)
    check = getattr(anonymizer, "check_weights", None)
    if check is not None:
        from avanon.weights import WeightsError

        try:
            check(job.region)
        except WeightsError as exc:
            raise MirrorError(str(exc)) from None


def _limit_threads() -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:
        pass
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:
        pass


def process_image(job: MirrorJob, record: ImageRecord, write: bool = True) -> dict:
    """Anonymize (or copy) one image into the mirror and return its manifest line. Never raises for a bad
    image: the failure is recorded and no file is written. Raises only for a full or read-only disk.
    write=False (dry run): select regions and return the planned line without touching pixels."""
    src = Path(job.source_root) / record.file_name
    dst = Path(job.out_dir) / record.file_name
    seed = image_seed(job.seed, record.file_name)
    line = {"file": record.file_name, "image_id": record.image_id, "status": "failed", "region": job.region,
            "method": job.method, "params": job.method_params, "seed": seed}
    try:
        if record.problems:
            raise ImageReadError("annotation problems: " + "; ".join(record.problems))
        if not src.is_file():
            raise ImageReadError(f"missing image file {src}")
        source = src.read_bytes()  # read once: hashed, copied or decoded from memory
        line["source_sha256"] = sha256_bytes(source)
        selector, anonymizer, keypoints = _tools(job)
        loaded = None
        if getattr(selector, "needs_image", False) or getattr(keypoints, "needs_image", False):
            loaded = read_image(src, (record.width, record.height), job.exif_frame, data=source)
        if keypoints is not None:
            record = keypoints.apply(record, None if loaded is None else loaded.pixels)
        selection = selector.select(record, None if loaded is None else loaded.pixels)
        if record.problems:  # found during selection (a mask that does not fit its box, a bad face-file index)
            raise ImageReadError("annotation problems: " + "; ".join(record.problems))
        line["anonymized"] = [r.instance_id for r in selection.regions]
        line["skipped"] = [list(s) for s in selection.skipped]
        if not selection.regions:
            if write and job.link == "hardlink":
                atomic_copy(src, dst, "hardlink")
            elif write:
                atomic_write_bytes(dst, source)
            line["output_sha256"] = line["source_sha256"]
            line["status"] = "copied"
            return line
        if not write:  # a dry run plans: which instances would change; no pixels, no generator
            line["status"] = "anonymized"
            return line
        if loaded is None:
            loaded = read_image(src, (record.width, record.height), job.exif_frame, data=source)
        pixels = anonymizer.anonymize(loaded.pixels, selection.regions, seed)
        data = encode_image(pixels, loaded, job.jpeg_quality, job.png_compression)
        if write:
            atomic_write_bytes(dst, data)
        line["output_sha256"] = sha256_bytes(data)
        line["frame"] = loaded.frame
        line["status"] = "anonymized"
        return line
    except OSError as exc:
        if exc.errno in FATAL_ERRNOS:
            raise MirrorError(f"cannot write {dst}: {exc.strerror}. Free space (or fix permissions) and re-run "
                              "the same command: finished images are kept and skipped.") from exc
        return _failed(line, dst, exc, write)
    except Exception as exc:  # privacy first: whatever went wrong, the image does not enter the mirror
        return _failed(line, dst, exc, write)


def _failed(line: dict, dst: Path, exc: Exception, write: bool) -> dict:
    if write:
        dst.unlink(missing_ok=True)  # a stale output from an earlier run must not stay in the clear
    line["status"] = "failed"
    line["error"] = f"{type(exc).__name__}: {exc}"
    line.pop("output_sha256", None)
    return line


def _run_in_worker(job: MirrorJob, record: ImageRecord) -> dict:
    _limit_threads()
    return process_image(job, record)


# ----------------------------------------------------------------------------------------------- manifest
def manifest_name(shard: tuple[int, int]) -> str:
    k, n = shard
    return MANIFEST if n == 1 else f"manifest-{k}of{n}.jsonl"


def read_manifest_lines(path: Path) -> list[dict]:
    """All complete lines of a manifest; a torn last line (killed mid-write) is ignored."""
    if not path.is_file():
        return []
    out = []
    lines = path.read_text().splitlines()
    for i, text in enumerate(lines):
        if not text.strip():
            continue
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise MirrorError(f"{path}: line {i + 1} is not valid JSON; the manifest is damaged")
    return out


def read_manifest(out_dir: str | Path) -> dict[str, dict]:
    """The latest line per file over the mirror's manifest and any shard manifests."""
    out_dir = Path(out_dir)
    latest: dict[str, dict] = {}
    paths = [out_dir / MANIFEST] + sorted(p for p in out_dir.glob("manifest-*of*.jsonl"))
    for path in paths:
        for line in read_manifest_lines(path):
            latest[line["file"]] = line
    return latest


def _repair_tail(path: Path) -> None:
    """Drop a torn last line so appends start on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(cut)


def compact_manifest(out_dir: str | Path) -> Path:
    """Rewrite manifest.jsonl as one line per file, sorted, merging shard manifests; removes shard files."""
    out_dir = Path(out_dir)
    latest = read_manifest(out_dir)
    data = "".join(json.dumps(latest[k], sort_keys=True) + "\n" for k in sorted(latest))
    atomic_write_bytes(out_dir / MANIFEST, data.encode())
    for p in out_dir.glob("manifest-*of*.jsonl"):
        p.unlink()
    return out_dir / MANIFEST


# ----------------------------------------------------------------------------------------------- writer
def check_paths(source_root: Path, out_dir: Path) -> None:
    src, out = source_root.resolve(), out_dir.resolve()
    if out == src or out.is_relative_to(src):
        raise MirrorError(f"refusing to write the mirror {out} inside the source dataset {src}: "
                          "the source is never written to; choose an --out outside it")
    if src.is_relative_to(out):
        raise MirrorError(f"refusing to write the mirror {out}: it contains the source dataset {src}")


def _prepare_run_file(out_dir: Path, job: MirrorJob, run_info: dict) -> None:
    run_path = out_dir / RUN_FILE
    if run_path.is_file():
        try:
            existing = json.loads(run_path.read_text())
        except json.JSONDecodeError as exc:
            raise MirrorError(f"{run_path} is damaged ({exc}); delete the mirror directory to start over") from None
        old = existing.get("settings", {})
        new = job.settings()
        if existing.get("settings_hash") != job.settings_hash():
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise MirrorError(f"{out_dir} holds a mirror made with other settings (differ in: {', '.join(diff)}); "
                              "choose another output directory or delete it")
        return
    doc = {"settings_hash": job.settings_hash(), "settings": job.settings(), "source_root": job.source_root,
           "versions": package_versions(), **run_info}
    atomic_write_bytes(run_path, (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode())


def _in_shard(index: int, shard: tuple[int, int]) -> bool:
    return index % shard[1] == shard[0]


def write_mirror(
    adapter: DatasetAdapter,
    job: MirrorJob,
    *,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    dry_run: bool = False,
    copy_unannotated: bool = False,
    run_info: Optional[dict] = None,
    progress: bool = True,
) -> MirrorSummary:
    """Write (or with dry_run, plan) the mirror of `adapter`'s split into job.out_dir."""
    try:
        return _write_mirror(adapter, job, workers, shard, dry_run, copy_unannotated, run_info, progress)
    except OSError as exc:
        if exc.errno in FATAL_ERRNOS:
            raise MirrorError(f"cannot write to {job.out_dir}: {exc.strerror}. Free space (or fix permissions) and "
                              "re-run the same command: finished images are kept and skipped.") from exc
        raise


def _write_mirror(adapter, job, workers, shard, dry_run, copy_unannotated, run_info, progress) -> MirrorSummary:
    source_root, out_dir = Path(job.source_root), Path(job.out_dir)
    check_paths(source_root, out_dir)
    k, n = shard
    if not (n >= 1 and 0 <= k < n):
        raise MirrorError(f"invalid shard {k}/{n}: expected k/N with 0 <= k < N")
    if not dry_run:
        check_tools(job)
    summary = MirrorSummary(out_dir=str(out_dir), dry_run=dry_run)
    summary.dataset_problems = list(adapter.dataset_problems())
    start = time.perf_counter()
    manifest_path = out_dir / manifest_name(shard)
    done: dict[str, dict] = {}
    if not dry_run:
        out_dir.mkdir(parents=True, exist_ok=True)
        _prepare_run_file(out_dir, job, run_info or {})
        done = {f: l for f, l in read_manifest(out_dir).items()
                if l["status"] in ("anonymized", "copied") and (out_dir / f).is_file()}
        _repair_tail(manifest_path)

    record_files: set[str] = set()
    record_dirs: set[str] = set()

    def todo() -> Iterator[ImageRecord]:
        for index, record in enumerate(adapter.images()):
            record_files.add(record.file_name)
            record_dirs.add(str(PurePosixPath(record.file_name).parent))
            if not _in_shard(index, shard):
                continue
            if record.file_name in done:
                summary.resumed += 1
                line = done[record.file_name]
                summary.instances_anonymized += len(line.get("anonymized", []))
                continue
            yield record

    results = _results(job, todo(), workers, dry_run)
    total = len(adapter) // n + (1 if k < len(adapter) % n else 0)
    bar = _progress(total, f"{job.region}_{job.method}", progress)
    with (open(manifest_path, "a") if not dry_run else _NullFile()) as manifest:
        for line in results:
            summary.add(line)
            manifest.write(json.dumps(line, sort_keys=True) + "\n")
            manifest.flush()
            bar.update(1)
        bar.update(summary.resumed)
    bar.close()
    summary.images += summary.resumed
    _mirror_tree(adapter, out_dir, record_files, record_dirs, summary, job.link, shard, dry_run, copy_unannotated)
    if not dry_run and n == 1:
        compact_manifest(out_dir)
    summary.seconds = time.perf_counter() - start
    return summary


def _results(job: MirrorJob, records: Iterable[ImageRecord], workers: int, dry_run: bool) -> Iterator[dict]:
    if dry_run:
        return (process_image(job, r, write=False) for r in records)
    if workers <= 1:
        return (process_image(job, r) for r in records)
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=workers, return_as="generator_unordered", batch_size=1, pre_dispatch="2*n_jobs")
    return parallel(delayed(_run_in_worker)(job, r) for r in records)


def _mirror_tree(adapter, out_dir, record_files, record_dirs, summary, link, shard, dry_run, copy_unannotated):
    """Copy every other file of the dataset tree byte-identically. Images in the split's image directories
    that have no annotation record are left out unless asked for: nobody checked them for people."""
    source_root = adapter.root
    for index, rel in enumerate(adapter.tree_files()):
        if rel in record_files:
            continue
        p = PurePosixPath(rel)
        if p.suffix.lower() in IMAGE_SUFFIXES and str(p.parent) in record_dirs and not copy_unannotated:
            summary.unannotated += 1
            continue
        if not _in_shard(index, shard):
            continue
        dst = out_dir / rel
        src = source_root / rel
        if dry_run:
            summary.tree_files_copied += 1
            continue
        if dst.is_file() and dst.stat().st_size == src.stat().st_size:
            continue
        atomic_copy(src, dst, link)
        summary.tree_files_copied += 1


class _NullFile:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, _):
        pass

    def flush(self):
        pass


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)
