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
import re
import time
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional

from dataset_adapters.base import (
    DatasetAdapter, DatasetError, ImageRecord, check_relative, innermost_adapter,
)
from avanon.mirror.manifest import (
    RUN_FILE, MirrorError, _repair_tail, compact_manifest, manifest_name, read_manifest,
)
from avanon.mirror.summary import MirrorSummary
from avanon.mirror.process import (  # noqa: F401  (re-exported)
    PreparedImage, _limit_threads, _run_in_worker, _tools, _write, check_tools, fail_prepared, finish_image,
    mirror_path, prepare_image, process_image, runtime_description,
)
from avanon.mirror.plan import MirrorJob, package_versions, split_image_rule
from avanon.mirror.imageio import (
    IMAGE_SUFFIXES, atomic_write_bytes, sha256_file,
)
from avanon.schema import config_hash

FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
# Temp files of atomic writes: `.NAME.tmp-PID` (see imageio); a killed run leaves them behind.
TEMP_FILE = re.compile(r"^\..+\.tmp-(\d+)$")


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
    summary = MirrorSummary(out_dir=str(out_dir), dry_run=dry_run, runtime=runtime_description(job))
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
    _, anonymizer, _ = _tools(job)
    if getattr(anonymizer, "use_stream", lambda: False)():
        from avanon.mirror.stream import stream_results

        return stream_results(job, items, workers)
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
