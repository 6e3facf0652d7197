"""What happens to one image of a mirror: read, check, select, then copy it unchanged, or anonymize, encode and
write it atomically, or record it as failed (never in the clear). The per-image path runs all of it in one call
(process_image); the streaming pipeline (avanon.mirror.stream) splits it into prepare_image, the anonymizer's
steps and finish_image."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dataset_adapters.base import (
    DatasetError, ImageRecord, check_relative, resolve_inside,
)
from avanon.anonymizers.strength import detail_kept
from avanon.mirror.manifest import (
    MirrorError,
)
from avanon.mirror.plan import MirrorJob, image_seed
from avanon.mirror.imageio import (
    ImageReadError, atomic_copy, atomic_write_bytes, encode_image, header_frame, read_image,
    sha256_bytes, sha256_file,
)

_WORKER_CACHE: dict = {}


def _tools(job: MirrorJob):
    """Region selector and anonymizer, built once per process and settings (generators are expensive)."""
    key = job.tools_key()
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


def runtime_description(job: MirrorJob) -> dict:
    """How this process runs the method, for summary.json: its runtime parameters as resolved (device, batch,
    pipeline). On CUDA the pixels agree with another device or batch size to float rounding only."""
    out = dict(job.runtime_params())
    _, anonymizer, _ = _tools(job)
    device = getattr(anonymizer, "_device", None)
    if device is not None:
        out["device_used"] = str(device())
        out["pipeline_used"] = "stream" if anonymizer.use_stream() else "per_image"
        out["batch_used"] = anonymizer._max_batch()
        if out["device_used"].startswith("cuda"):
            out["note"] = ("on CUDA the generated pixels may differ in the last bits with the device, batch size and "
                           "batch composition (cuDNN picks kernels per shape); on CPU they do not")
    return out


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


@dataclass
class PreparedImage:
    """An image read, checked and selected, waiting for its pixels to be anonymized (prepare_image's result when
    there is work to do). `precut`: the anonymizer's crops cut in the worker (streaming pipeline), or None."""

    line: dict
    dst: Path
    loaded: object  # imageio.LoadedImage
    regions: list
    seed: int
    precut: Optional[dict] = None


def prepare_image(job: MirrorJob, record: ImageRecord, write: bool = True, previous: Optional[dict] = None,
                  precut: bool = False) -> dict | PreparedImage:
    """Everything before the pixels change: read and hash the source, resume check, keypoints, regions, the copy
    rule. Returns the finished manifest line (copied, failed, resumed, or a dry run's plan) or a PreparedImage.
    Never raises for a bad image (recorded as failed); MirrorError when the mirror cannot be written.
    precut: also cut the anonymizer's first crops here (it has `precut`): the streaming pipeline's CPU stage."""
    dst = mirror_path(job.out_dir, record.file_name)
    seed = image_seed(job.seed, record.file_name)
    line = {"file": record.file_name, "image_id": record.image_id, "status": "failed", "region": job.region,
            "method": job.method, "params": job.identity_params(), "seed": seed}
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
        regions = list(selection.regions)
        device = getattr(anonymizer, "_device", None)
        if device is not None:  # where the pixels are made: verify allows for CUDA's rounding
            line["device"] = str(device())
        cut = anonymizer.precut(loaded.pixels, regions, seed) if precut else None
        return PreparedImage(line, dst, loaded, regions, seed, cut)
    except MirrorError:  # the mirror cannot be written: stop the run
        raise
    except Exception as exc:  # privacy first: whatever else went wrong, the image does not enter the mirror
        return _failed(line, dst, exc, write)


def finish_image(job: MirrorJob, prepared: PreparedImage, pixels) -> dict:
    """Encode and write the anonymized pixels of a prepared image; its manifest line. A failure here (encoding)
    fails the image: nothing of it stays in the mirror."""
    line, loaded = prepared.line, prepared.loaded
    try:
        kept = {r.instance_id: detail_kept(loaded.pixels, pixels, r) for r in prepared.regions}
        line["detail_kept"] = {k: (round(v, 4) if math.isfinite(v) else None) for k, v in kept.items()}
        data = encode_image(pixels, loaded, job.jpeg_quality, job.png_compression)
        _write(prepared.dst, data=data)
        line["output_sha256"] = sha256_bytes(data)
        line["frame"] = loaded.frame
        line["status"] = "anonymized"
        return line
    except MirrorError:
        raise
    except Exception as exc:
        return _failed(line, prepared.dst, exc, True)


def fail_prepared(prepared: PreparedImage, exc: Exception) -> dict:
    """The manifest line of a prepared image whose anonymization failed (any stale output removed)."""
    return _failed(prepared.line, prepared.dst, exc, True)


def process_image(job: MirrorJob, record: ImageRecord, write: bool = True, previous: Optional[dict] = None) -> dict:
    """Anonymize (or copy) one image into the mirror and return its manifest line: prepare_image, the
    anonymizer, finish_image. Never raises for a bad image: the failure is recorded and no file is written.
    Raises MirrorError only when the mirror itself cannot be written (full or read-only disk, permissions, a
    path leading outside it). write=False (dry run): select regions and return the planned line without touching
    pixels. previous: the manifest line of an earlier run; when it still holds (same source, record and output),
    the line is returned with "_resumed" set and nothing is written."""
    prepared = prepare_image(job, record, write, previous)
    if isinstance(prepared, dict):
        return prepared
    try:
        _, anonymizer, _ = _tools(job)
        pixels = anonymizer.anonymize(prepared.loaded.pixels, prepared.regions, prepared.seed)
    except MirrorError:
        raise
    except Exception as exc:  # privacy first: the image does not enter the mirror
        return fail_prepared(prepared, exc)
    return finish_image(job, prepared, pixels)


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


