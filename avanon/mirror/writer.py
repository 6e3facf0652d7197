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
import math
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional

from dataset_adapters.base import (
    DatasetAdapter, DatasetError, ImageRecord, check_relative, innermost_adapter, resolve_inside,
)
from avanon.anonymizers.strength import detail_kept
from avanon.mirror.manifest import (
    RUN_FILE, MirrorError, _repair_tail, compact_manifest, manifest_name, read_manifest,
)
from avanon.mirror.plan import MirrorJob, image_seed, package_versions, split_image_rule
from avanon.mirror.imageio import (
    IMAGE_SUFFIXES, ImageReadError, atomic_copy, atomic_write_bytes, encode_image, header_frame, read_image,
    sha256_bytes, sha256_file,
)
from avanon.schema import config_hash

FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
# Temp files of atomic writes: `.NAME.tmp-PID` (see imageio); a killed run leaves them behind.
TEMP_FILE = re.compile(r"^\..+\.tmp-(\d+)$")


@dataclass
class MirrorSummary:
    """The state of a mirror (or of one shard of it), computed from its manifest after every run, resume, rerun or
    merge, so that it equals the summary of an uninterrupted run; plus what this invocation did (`this_run`)."""

    out_dir: str
    images: int = 0
    anonymized: int = 0
    copied: int = 0
    failed: int = 0
    instances_anonymized: int = 0
    skip_reasons: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)
    face_missed: int = 0  # persons with a visible head (>= 2 head keypoints) that got no face region
    face_visible: int = 0  # persons with a visible head among the target persons of face mirrors
    detail_kept: dict = field(default_factory=dict)  # summary of the per-instance anonymization strength
    tree_files: int = 0
    unannotated: int = 0
    tree_failures: list = field(default_factory=list)
    dataset_problems: list = field(default_factory=list)
    dry_run: bool = False
    # this invocation only
    processed: int = 0
    resumed: int = 0
    tree_files_copied: int = 0
    stale_temp_files_removed: int = 0
    seconds: float = 0.0

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
        self.face_missed += len(line.get("face_missed", []))
        self.face_visible += int(line.get("face_visible", 0))

    def recount(self, lines: Iterable[dict]) -> None:
        """Set the mirror's state from its manifest lines (this invocation's counters are kept)."""
        from avanon.anonymizers.strength import summarize_detail

        self.images = self.anonymized = self.copied = self.failed = self.instances_anonymized = 0
        self.face_missed = self.face_visible = 0
        self.skip_reasons, self.failures = Counter(), []
        kept = []
        for line in lines:
            self.add(line)
            kept.extend(v for v in (line.get("detail_kept") or {}).values() if v is not None)
        self.detail_kept = summarize_detail(kept)

    @property
    def face_recall(self) -> Optional[float]:
        return None if not self.face_visible else 1.0 - self.face_missed / self.face_visible

    def to_dict(self) -> dict:
        """summary.json: the mirror's state, then `this_run` (what differs between a resumed and an uninterrupted
        run: timings and counts of work done now)."""
        d = asdict(self)
        d["skip_reasons"] = dict(sorted(self.skip_reasons.items()))
        d["face_recall"] = self.face_recall
        d["this_run"] = {k: d.pop(k) for k in ("processed", "resumed", "tree_files_copied",
                                               "stale_temp_files_removed", "seconds")}
        return d


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
            from avanon.regions.keypoints import build_keypoint_provider

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
        from avanon.generators.weights import WeightsError

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


def mirror_path(out_dir: str | Path, rel: str) -> Path:
    """out_dir/rel, refusing any path that would land outside the mirror (a '..' in a name, or a symlink that
    somebody placed inside the mirror and that leads elsewhere, e.g. back into the source)."""
    try:
        check_relative(rel, "mirror path")
    except DatasetError as exc:
        raise MirrorError(str(exc)) from None
    out_dir = Path(out_dir)
    dst = out_dir / rel
    real_out = Path(os.path.realpath(out_dir))
    parent = Path(os.path.realpath(dst.parent))
    if not parent.is_relative_to(real_out) or (dst.is_symlink()):
        raise MirrorError(f"{dst} would be written outside the mirror {real_out} (a symlink inside the mirror "
                          "leads elsewhere); refusing to write. Remove the symlink or choose another --out")
    return dst


def _write(dst: Path, data: Optional[bytes] = None, src: Optional[Path] = None, link: str = "copy") -> None:
    """Every write of the mirror: atomic, and fatal when it fails (a mirror that cannot be written is not a
    problem of one image: permissions, a full disk or a file-size limit stop the run with a clear message)."""
    try:
        if data is not None:
            atomic_write_bytes(dst, data)
        else:
            atomic_copy(src, dst, link)
    except OSError as exc:
        raise MirrorError(f"cannot write {dst}: {exc.strerror or exc}. Fix it (free space, permissions, file "
                          "size limit) and re-run the same command: finished images are kept and skipped.") from exc


def _resumable(previous: Optional[dict], source_sha: str, record_sha: str, dst: Path) -> bool:
    """A finished image is kept only when its source bytes, its annotation record and its output are exactly the
    ones the manifest recorded; anything else is redone."""
    if not previous or previous.get("status") not in ("anonymized", "copied"):
        return False
    if previous.get("source_sha256") != source_sha or previous.get("record_sha256") != record_sha:
        return False
    try:
        return dst.is_file() and not dst.is_symlink() and sha256_file(dst) == previous.get("output_sha256")
    except OSError:
        return False


def process_image(job: MirrorJob, record: ImageRecord, write: bool = True, previous: Optional[dict] = None) -> dict:
    """Anonymize (or copy) one image into the mirror and return its manifest line. Never raises for a bad
    image: the failure is recorded and no file is written. Raises MirrorError only when the mirror itself cannot
    be written (full or read-only disk, permissions, a path leading outside it).
    write=False (dry run): select regions and return the planned line without touching pixels.
    previous: the manifest line of an earlier run; when it still holds (same source, record and output), the
    line is returned with "_resumed" set and nothing is written."""
    dst = mirror_path(job.out_dir, record.file_name)
    seed = image_seed(job.seed, record.file_name)
    line = {"file": record.file_name, "image_id": record.image_id, "status": "failed", "region": job.region,
            "method": job.method, "params": job.method_params, "seed": seed}
    try:
        line["record_sha256"] = record.content_hash()
        if record.problems:
            raise ImageReadError("annotation problems: " + "; ".join(record.problems))
        src = resolve_inside(Path(job.source_root), record.file_name)
        if not src.is_file():
            raise ImageReadError(f"missing image file {src}")
        source = src.read_bytes()  # read once: hashed, copied or decoded from memory
        line["source_sha256"] = sha256_bytes(source)
        if write and _resumable(previous, line["source_sha256"], line["record_sha256"], dst):
            return dict(previous, _resumed=True)
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
        if job.region == "face":  # the audit: persons whose head is visible by its own evidence but got no face
            line["face_missed"] = list(selection.face_missed)
            line["face_visible"] = len(selection.face_visible)
        if not selection.regions:
            # Copied in the clear only when the annotation provably describes this very image: its size (from
            # the header, in the EXIF frame the policy picks) must equal the annotation's.
            header_frame(source, src, (record.width, record.height), job.exif_frame)
            if write:
                _write(dst, src=src, link="hardlink") if job.link == "hardlink" else _write(dst, data=source)
            line["output_sha256"] = line["source_sha256"]
            line["status"] = "copied"
            return line
        if not write:  # a dry run plans: which instances would change; no pixels, no generator
            line["status"] = "anonymized"
            return line
        if loaded is None:
            loaded = read_image(src, (record.width, record.height), job.exif_frame, data=source)
        pixels = anonymizer.anonymize(loaded.pixels, selection.regions, seed)
        kept = {r.instance_id: detail_kept(loaded.pixels, pixels, r) for r in selection.regions}
        line["detail_kept"] = {k: (round(v, 4) if math.isfinite(v) else None) for k, v in kept.items()}
        data = encode_image(pixels, loaded, job.jpeg_quality, job.png_compression)
        _write(dst, data=data)
        line["output_sha256"] = sha256_bytes(data)
        line["frame"] = loaded.frame
        line["status"] = "anonymized"
        return line
    except MirrorError:  # the mirror cannot be written: stop the run
        raise
    except Exception as exc:  # privacy first: whatever else went wrong, the image does not enter the mirror
        return _failed(line, dst, exc, write)


def _failed(line: dict, dst: Path, exc: Exception, write: bool) -> dict:
    if write:
        try:
            dst.unlink(missing_ok=True)  # a stale output from an earlier run must not stay in the clear
        except OSError as err:
            raise MirrorError(f"cannot remove the stale output {dst} of a failed image: {err.strerror}; remove "
                              "it by hand (it may show a person in the clear) and re-run") from err
    line["status"] = "failed"
    line["error"] = f"{type(exc).__name__}: {exc}"
    line.pop("output_sha256", None)
    return line


def _run_in_worker(job: MirrorJob, record: ImageRecord, previous: Optional[dict]) -> dict:
    _limit_threads()
    return process_image(job, record, previous=previous)


# ----------------------------------------------------------------------------------------------- writer
def check_paths(source_root: Path, out_dir: Path) -> None:
    src, out = source_root.resolve(), out_dir.resolve()
    if out == src or out.is_relative_to(src):
        raise MirrorError(f"refusing to write the mirror {out} inside the source dataset {src}: "
                          "the source is never written to; choose an --out outside it")
    if src.is_relative_to(out):
        raise MirrorError(f"refusing to write the mirror {out}: it contains the source dataset {src}")


def dataset_fingerprint(adapter: DatasetAdapter, index: list[tuple[str, tuple[str, ...]]]) -> str:
    """What makes a dataset the same one for resuming: its format, split and the file names of its split.
    Contents may change (changed images and annotations are redone); another image list is another dataset."""
    return config_hash({"adapter": innermost_adapter(adapter).name, "split": adapter.split,
                        "images": sorted(f for f, _ in index)})


def _prepare_run_file(out_dir: Path, job: MirrorJob, run_info: dict, fingerprint: str, images: int) -> None:
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
        if existing.get("dataset_fingerprint") != fingerprint:
            was = existing.get("dataset_images", "an unknown number of")
            raise MirrorError(f"{out_dir} holds a mirror of another dataset (its split had {was} images, this one "
                              f"has {images}, or other file names); mixing two datasets in one mirror is refused: "
                              "choose another output directory or delete it")
        return
    doc = {"settings_hash": job.settings_hash(), "settings": job.settings(), "source_root": job.source_root,
           "dataset_fingerprint": fingerprint, "dataset_images": images, "versions": package_versions(),
           **run_info}
    atomic_write_bytes(run_path, (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode())


def remove_stale_temp_files(out_dir: Path) -> int:
    """Delete the temp files of atomic writes that a killed run left behind (`.NAME.tmp-PID` of a process that is
    no longer running on this machine)."""
    removed = 0
    for dirpath, _, files in os.walk(out_dir):
        for name in files:
            m = TEMP_FILE.match(name)
            if m and not _pid_alive(int(m.group(1))):
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has written nothing yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


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
        raise MirrorError(f"cannot write to {job.out_dir}: {exc.strerror or exc}. Fix it (free space, "
                          "permissions, file size limit) and re-run the same command: finished images are kept "
                          "and skipped.") from exc


def _write_mirror(adapter, job, workers, shard, dry_run, copy_unannotated, run_info, progress) -> MirrorSummary:
    source_root, out_dir = Path(job.source_root), Path(job.out_dir)
    check_paths(source_root, out_dir)
    k, n = shard
    if not (n >= 1 and 0 <= k < n):
        raise MirrorError(f"invalid shard {k}/{n}: expected k/N with 0 <= k < N")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise MirrorError(f"workers must be an integer >= 1, got {workers!r}")
    # Everything that can refuse the dataset does so before the first write: the whole tree is walked (paths
    # and symlinks checked) and the split indexed.
    tree = list(adapter.tree_files())
    index = adapter.image_index()
    for file_name, _ in index:
        check_relative(file_name, f"{adapter.name}: image path")
    if not dry_run:
        check_tools(job)
    summary = MirrorSummary(out_dir=str(out_dir), dry_run=dry_run)
    summary.dataset_problems = list(adapter.dataset_problems())
    start = time.perf_counter()
    manifest_path = out_dir / manifest_name(shard)
    previous: dict[str, dict] = {}
    if not dry_run:
        out_dir.mkdir(parents=True, exist_ok=True)
        _prepare_run_file(out_dir, job, run_info or {}, dataset_fingerprint(adapter, index), len(index))
        summary.stale_temp_files_removed = remove_stale_temp_files(out_dir)
        previous = read_manifest(out_dir)
        _repair_tail(manifest_path)
    try:
        _write_images(adapter, job, workers, shard, dry_run, previous, manifest_path, summary, progress)
        record_files = {f for f, _ in index}
        _mirror_tree(adapter, tree, out_dir, record_files, split_image_rule(record_files), summary, job.link, shard,
                     dry_run, copy_unannotated)
    finally:
        if not dry_run and n == 1:
            try:
                compact_manifest(out_dir)
            except (OSError, MirrorError):
                pass  # the appended manifest stays readable; the next run compacts it
    if not dry_run:  # the mirror's state, whatever this invocation did
        lines = read_manifest(out_dir)
        summary.recount(lines[f] for i, (f, _) in enumerate(index) if _in_shard(i, shard) and f in lines)
    summary.seconds = time.perf_counter() - start
    return summary


def _write_images(adapter, job, workers, shard, dry_run, previous, manifest_path, summary, progress) -> None:
    k, n = shard

    def todo() -> Iterator[tuple[ImageRecord, Optional[dict]]]:
        for index, record in enumerate(adapter.images()):
            if _in_shard(index, shard):
                yield record, previous.get(record.file_name)

    results = _results(job, todo(), workers, dry_run)
    total = len(adapter) // n + (1 if k < len(adapter) % n else 0)
    bar = _progress(total, f"{job.region}_{job.method}", progress)
    try:
        with (open(manifest_path, "a") if not dry_run else _NullFile()) as manifest:
            for line in results:
                bar.update(1)
                if line.pop("_resumed", False):
                    summary.resumed += 1
                    summary.add(line)
                    continue
                summary.processed += 1
                summary.add(line)
                manifest.write(json.dumps(line, sort_keys=True) + "\n")
                manifest.flush()
    finally:
        bar.close()


def _results(job: MirrorJob, items: Iterable[tuple[ImageRecord, Optional[dict]]], workers: int,
             dry_run: bool) -> Iterator[dict]:
    if dry_run:
        return (process_image(job, r, write=False) for r, _ in items)
    if workers <= 1:
        return (process_image(job, r, previous=p) for r, p in items)
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=workers, return_as="generator_unordered", batch_size=1, pre_dispatch="2*n_jobs")
    return parallel(delayed(_run_in_worker)(job, r, p) for r, p in items)


def mirror_state(adapter: DatasetAdapter, out_dir: Path, copy_unannotated: bool) -> MirrorSummary:
    """The summary of a whole mirror from its manifest and its source's tree (after `avanon merge`)."""
    summary = MirrorSummary(out_dir=str(out_dir))
    index = adapter.image_index()
    lines = read_manifest(out_dir)
    summary.recount(lines[f] for f, _ in index if f in lines)
    summary.dataset_problems = list(adapter.dataset_problems())
    record_files = {f for f, _ in index}
    in_split = split_image_rule(record_files)
    for rel in adapter.tree_files():
        if rel in record_files:
            continue
        if in_split(rel) and not copy_unannotated:
            summary.unannotated += 1
        else:
            summary.tree_files += 1
    return summary


def _same_content(src: Path, dst: Path) -> bool:
    """A tree file is already mirrored when size and mtime match (the copy keeps the source's mtime), or else when
    the bytes do: an annotation file edited in place is recopied even if its size did not change."""
    try:
        a, b = src.stat(), dst.stat()
        if a.st_size != b.st_size:
            return False
        if a.st_mtime_ns == b.st_mtime_ns:
            return True
        if sha256_file(src) == sha256_file(dst):
            os.utime(dst, ns=(b.st_atime_ns, a.st_mtime_ns))
            return True
    except OSError:
        return False
    return False


def _mirror_tree(adapter, tree, out_dir, record_files, in_split, summary, link, shard, dry_run,
                 copy_unannotated):
    """Copy every other file of the dataset tree byte-identically. Images in the split's image directories
    that have no annotation record are left out unless asked for: nobody checked them for people. Only images
    are hard-linked (link: hardlink); annotation files are always copied, so that editing the mirror's
    annotations can never edit the source's."""
    for index, rel in enumerate(tree):
        if rel in record_files:
            continue
        p = PurePosixPath(rel)
        is_image = p.suffix.lower() in IMAGE_SUFFIXES
        if in_split(rel) and not copy_unannotated:
            summary.unannotated += 1
            continue
        if not _in_shard(index, shard):
            continue
        summary.tree_files += 1
        if dry_run:
            summary.tree_files_copied += 1
            continue
        dst = mirror_path(out_dir, rel)
        try:
            src = adapter.source_path(rel)
            with open(src, "rb"):
                pass
        except (OSError, DatasetError) as exc:
            summary.tree_failures.append((rel, f"{type(exc).__name__}: {exc}"))
            continue
        if dst.is_file() and _same_content(src, dst):
            continue
        _write(dst, src=src, link=link if is_image else "copy")
        if not (link == "hardlink" and is_image):
            st = src.stat()
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
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
    """A bar on a terminal; nothing under --no-progress or when stderr is a file or a CI log (avanon.progress)."""
    from avanon.progress import progress

    return progress(total, desc, enabled, unit="img")
