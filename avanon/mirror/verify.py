"""`avanon verify`: prove a mirror clean by recomputing it from the source.

For every image of the split: it is in the manifest; a failed image is absent from the mirror; an image with
regions holds the anonymized pixels (recomputed in memory from the source and the recorded settings) inside the
regions and the source's pixels outside them (exactly for lossless formats, within JPEG re-encoding noise
otherwise); a copied image is byte-identical. Every other file of the tree is byte-identical to the source.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np

from dataset_adapters import build_adapter
from avanon.mirror.imageio import IMAGE_SUFFIXES, ImageReadError, header_frame, read_image, sha256_file
from avanon.mirror.manifest import RUN_FILE, read_manifest
from avanon.mirror.plan import MirrorJob, image_seed, region_identity
from avanon.mirror.writer import _tools

META_FILES = {RUN_FILE, "manifest.jsonl", "summary.json"}
# q100 4:4:4 JPEG re-encoding moves pixels by about 0.5 grey level on average; anything near the original
# inside a region (or far from it outside) is a real difference.
JPEG_MEAN_TOLERANCE = 2.0


class VerifyError(Exception):
    """The mirror cannot be verified at all (no run.json, source missing)."""


@dataclass
class VerifyReport:
    mirror: str
    images_checked: int = 0
    instances_checked: int = 0
    tree_files_checked: int = 0
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"mirror": self.mirror, "clean": self.clean, "images_checked": self.images_checked,
                "instances_checked": self.instances_checked, "tree_files_checked": self.tree_files_checked,
                "errors": self.errors, "warnings": self.warnings}


def load_run(mirror: Path) -> dict:
    path = mirror / RUN_FILE
    if not path.is_file():
        raise VerifyError(f"{mirror} is not an avanon mirror: {RUN_FILE} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VerifyError(f"{path} is damaged: {exc}") from None


def job_from_run(run: dict, mirror: Path, source_root: Optional[Path]) -> MirrorJob:
    s = dict(run["settings"], link=run.get("link", "copy"))
    s["target_categories"] = tuple(s["target_categories"])
    if s.get("region_description") is not None:  # re-derive: a changed face-box file must show up as a difference
        from avanon.regions import build_region_selector

        now = region_identity(build_region_selector(s["region"], s["region_params"], s["filters"],
                                                    source_root or run["source_root"], s["target_categories"]))
        if now != s["region_description"]:
            raise VerifyError("the region settings resolve differently now than when the mirror was made "
                              "(e.g. the face-box file changed); the mirror cannot be verified against this source")
    return MirrorJob(source_root=str(source_root or run["source_root"]), out_dir=str(mirror), **s)


def verify_mirror(mirror: str | Path, source_root: Optional[str | Path] = None, sample: Optional[int] = None,
                  seed: int = 0) -> VerifyReport:
    mirror = Path(mirror)
    run = load_run(mirror)
    ds = run.get("dataset")
    if not ds:
        raise VerifyError(f"{mirror / RUN_FILE} records no dataset; cannot rebuild the source")
    root = Path(source_root) if source_root else Path(run["source_root"])
    if not root.is_dir():
        raise VerifyError(f"source dataset {root} not found; pass --source")
    adapter = build_adapter(ds["adapter"], root, ds["split"], **ds.get("options", {}))
    job = job_from_run(run, mirror, root)
    manifest = read_manifest(mirror)
    report = VerifyReport(mirror=str(mirror))
    records = list(adapter.images())
    checked = records
    if sample is not None and sample < len(records):
        checked = random.Random(seed).sample(records, sample)
    for record in checked:
        _check_image(job, record, manifest.get(record.file_name), mirror, root, report)
    record_files = {r.file_name for r in records}
    record_dirs = {str(PurePosixPath(f).parent) for f in record_files}
    copy_unannotated = bool(run.get("copy_unannotated", False))
    tree = set()
    for rel in adapter.tree_files():
        tree.add(rel)
        if rel in record_files:
            continue
        p = PurePosixPath(rel)
        if p.suffix.lower() in IMAGE_SUFFIXES and str(p.parent) in record_dirs and not copy_unannotated:
            if (mirror / rel).exists():
                report.errors.append(f"{rel}: unannotated image of the split is in the mirror (never checked for people)")
            continue
        report.tree_files_checked += 1
        if not (mirror / rel).is_file():
            report.errors.append(f"{rel}: missing from the mirror")
        elif sha256_file(mirror / rel) != sha256_file(root / rel):
            report.errors.append(f"{rel}: differs from the source (annotation and untouched files must be identical)")
    for path in sorted(mirror.rglob("*")):
        rel = path.relative_to(mirror).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if rel not in tree and rel not in META_FILES and not rel.startswith(("manifest-", "summary-")):
            # Nothing checked it for people: an image dropped in under a new name, a temp file of a killed run.
            report.errors.append(f"{rel}: in the mirror but not in the source tree (never checked for people)")
        elif path.is_symlink():
            report.errors.append(f"{rel}: a symlink in the mirror (a mirror holds files only)")
    return report


def _check_image(job: MirrorJob, record, line: Optional[dict], mirror: Path, root: Path, report: VerifyReport) -> None:
    report.images_checked += 1
    rel = record.file_name
    out_path = mirror / rel
    if line is None:
        what = "present in the mirror but" if out_path.exists() else "missing and"
        report.errors.append(f"{rel}: {what} not in the manifest")
        return
    if line["status"] == "failed":
        if out_path.exists():
            report.errors.append(f"{rel}: recorded as failed but present in the mirror (possibly in the clear)")
        else:
            report.warnings.append(f"{rel}: failed and left out of the mirror: {line.get('error', '')}")
        return
    if not out_path.is_file():
        report.errors.append(f"{rel}: missing from the mirror")
        return
    if sha256_file(out_path) != line.get("output_sha256"):
        report.errors.append(f"{rel}: output differs from the hash in the manifest")
    src_sha = sha256_file(root / rel)
    if line["status"] == "copied":
        try:  # copied in the clear only when the annotation describes this very image (its size)
            header_frame((root / rel).read_bytes(), rel, (record.width, record.height), job.exif_frame)
        except ImageReadError as exc:
            report.errors.append(f"{rel}: copied unchanged although its annotation does not fit it: {exc}")
    if src_sha != line.get("source_sha256"):
        report.errors.append(f"{rel}: the source image changed since the mirror was made")
    selector, anonymizer, keypoints = _tools(job)
    try:
        src = read_image(root / rel, (record.width, record.height), job.exif_frame)
    except ImageReadError as exc:
        report.errors.append(f"{rel}: source cannot be read: {exc}")
        return
    if keypoints is not None:
        record = keypoints.apply(record, src.pixels)
    selection = selector.select(record, src.pixels)
    expected_ids = [r.instance_id for r in selection.regions]
    if sorted(expected_ids) != sorted(line.get("anonymized", [])):
        report.errors.append(f"{rel}: anonymized instances {line.get('anonymized')} but the settings select {expected_ids}")
    if not selection.regions:
        if line["status"] != "copied" or src_sha != line.get("output_sha256"):
            report.errors.append(f"{rel}: no region to anonymize, so the image must be a byte copy of the source")
        return
    try:
        out = read_image(out_path, (record.width, record.height), src.frame)
    except ImageReadError as exc:
        report.errors.append(f"{rel}: mirror image cannot be read: {exc}")
        return
    expected = anonymizer.anonymize(src.pixels, selection.regions, image_seed(job.seed, rel))
    lossless = src.format == "PNG"
    union = np.zeros(src.pixels.shape[:2], dtype=bool)
    for region in selection.regions:
        x0, y0, x1, y1 = region.clip_box
        union[y0:y1, x0:x1] |= region.image_mask
    _compare(rel, "outside the regions", out.pixels[~union], src.pixels[~union], lossless, report)
    _compare(rel, "inside the regions", out.pixels[union], expected[union], lossless, report)
    for region in selection.regions:
        report.instances_checked += 1
        x0, y0, x1, y1 = region.clip_box
        m = region.image_mask
        before = src.pixels[y0:y1, x0:x1][m].astype(np.int16)
        after = out.pixels[y0:y1, x0:x1][m].astype(np.int16)
        want = expected[y0:y1, x0:x1][m].astype(np.int16)
        if np.array_equal(want, before):
            report.warnings.append(f"{rel}: instance {region.instance_id}: the method leaves this region unchanged")
        elif np.abs(after - before).mean() <= (0 if lossless else JPEG_MEAN_TOLERANCE) / 4:
            report.errors.append(f"{rel}: instance {region.instance_id} is unchanged in the mirror (in the clear)")


def _compare(rel: str, where: str, got: np.ndarray, want: np.ndarray, lossless: bool, report: VerifyReport) -> None:
    if got.size == 0:
        return
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    if lossless:
        if diff.any():
            report.errors.append(f"{rel}: {int((diff.max(axis=-1) > 0).sum())} pixels {where} differ from what the "
                                 "settings produce")
    elif diff.mean() > JPEG_MEAN_TOLERANCE:
        report.errors.append(f"{rel}: pixels {where} differ from what the settings produce by {diff.mean():.2f} "
                             f"on average (JPEG tolerance {JPEG_MEAN_TOLERANCE})")
