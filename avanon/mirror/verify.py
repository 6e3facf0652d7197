"""`avanon verify`: prove a mirror clean by recomputing it from the source.

For every image of the split: it is in the manifest; a failed image is absent from the mirror; an image with
regions holds the anonymized pixels (recomputed in memory from the source and the recorded settings) inside the
regions and the source's pixels outside them; a copied image is byte-identical. Every other file of the tree is
byte-identical to the source.

The pixel comparison is local: lossless images must match exactly; JPEG images are compared per 8x8 tile (the
codec's own block size), and a tile whose mean difference exceeds the re-encoding noise is an error, so that a
face-sized leak (an original patch pasted back, a square painted in the background) cannot hide in a region's
average. JPEG_TILE_TOLERANCE is calibrated on q100 4:4:4 re-encoding of real photos (scikit-image's astronaut,
chelsea, coffee) and of noise: the worst 8x8 tile mean difference there is 0.30-0.71 grey levels. Pixels a
generator made on CUDA (the manifest line's `device`) get DEVICE_TILE_TOLERANCE more per tile.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from avanon.progress import progress as progress_bar
from dataset_adapters import build_adapter
from avanon.anonymizers.strength import detail_kept, summarize_detail
from avanon.mirror.imageio import ImageReadError, header_frame, read_image, sha256_file
from avanon.mirror.manifest import RUN_FILE, read_manifest
from avanon.mirror.plan import MirrorJob, image_seed, region_identity, split_image_rule
from avanon.mirror.writer import _tools

META_FILES = {RUN_FILE, "manifest.jsonl", "summary.json"}
# q100 4:4:4 JPEG re-encoding moves an 8x8 tile by at most ~0.7 grey levels on average (module docstring); a
# tile beyond twice that differs from what the settings produce.
TILE = 8
JPEG_TILE_TOLERANCE = 1.5
# A generator run on CUDA: cuDNN picks kernels per batch shape, so the streamed result and the recomputation agree to
# float rounding, amplified by the network's layers; a pasted-back original differs by far more (tens of levels).
DEVICE_TILE_TOLERANCE = 1.5


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
    worst_tiles: list = field(default_factory=list)  # per image that differs: its worst tile and whose it is
    detail_kept: list = field(default_factory=list)  # per recomputed instance: share of the source's detail kept

    @property
    def clean(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"mirror": self.mirror, "clean": self.clean, "images_checked": self.images_checked,
                "instances_checked": self.instances_checked, "tree_files_checked": self.tree_files_checked,
                "errors": self.errors, "warnings": self.warnings, "worst_tiles": self.worst_tiles,
                "detail_kept": summarize_detail(self.detail_kept)}


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
                  seed: int = 0, progress: bool = False) -> VerifyReport:
    """Audit `mirror` against its source (module docstring). progress: a bar over the images on a terminal."""
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
    for record in progress_bar(checked, f"verify {mirror.name}", progress, unit="img"):
        _check_image(job, record, manifest.get(record.file_name), mirror, root, report)
    record_files = {r.file_name for r in records}
    in_split = split_image_rule(record_files)
    copy_unannotated = bool(run.get("copy_unannotated", False))
    tree = set()
    for rel in adapter.tree_files():
        tree.add(rel)
        if rel in record_files:
            continue
        if in_split(rel) and not copy_unannotated:
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
    owner = np.zeros(src.pixels.shape[:2], dtype=np.int32)  # 1 + index of the region a pixel belongs to
    for i, region in enumerate(selection.regions):
        x0, y0, x1, y1 = region.clip_box
        owner[y0:y1, x0:x1][region.image_mask] = i + 1
    device = getattr(anonymizer, "_device", None)
    rounded = str(line.get("device", "")).startswith("cuda") or (device is not None and device().type == "cuda")
    _compare_tiles(rel, out.pixels, expected, owner, selection.regions, lossless, report, rounded)
    for region in selection.regions:
        report.instances_checked += 1
        report.detail_kept.append(detail_kept(src.pixels, expected, region))
        x0, y0, x1, y1 = region.clip_box
        m = region.image_mask
        before = src.pixels[y0:y1, x0:x1][m].astype(np.int16)
        after = out.pixels[y0:y1, x0:x1][m].astype(np.int16)
        want = expected[y0:y1, x0:x1][m].astype(np.int16)
        if np.array_equal(want, before):
            report.warnings.append(f"{rel}: instance {region.instance_id}: the method leaves this region unchanged")
        elif np.abs(after - before).mean() <= (0 if lossless else JPEG_TILE_TOLERANCE) / 4:
            report.errors.append(f"{rel}: instance {region.instance_id} is unchanged in the mirror (in the clear)")


def tile_means(diff: np.ndarray, tile: int = TILE) -> np.ndarray:
    """Mean of a 2-D array over tile x tile blocks from the top-left corner (edge tiles are smaller)."""
    ys, xs = np.arange(0, diff.shape[0], tile), np.arange(0, diff.shape[1], tile)
    sums = np.add.reduceat(np.add.reduceat(diff, ys, axis=0), xs, axis=1)
    counts = np.add.reduceat(np.add.reduceat(np.ones_like(diff), ys, axis=0), xs, axis=1)
    return sums / counts


def _compare_tiles(rel: str, got: np.ndarray, want: np.ndarray, owner: np.ndarray, regions, lossless: bool,
                   report: VerifyReport, rounded: bool = False) -> None:
    """Every pixel must be what the settings produce (the anonymized pixels inside the regions, the source's
    outside): exactly for lossless images, per 8x8 tile within JPEG noise otherwise. rounded: the pixels were made
    (or are recomputed) on CUDA, where a generator's result depends on the batch in the last bits, so tiles may
    also differ by DEVICE_TILE_TOLERANCE. The error names the worst tile, its coordinates and the instance it
    belongs to (or the background)."""
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16)).mean(axis=-1, dtype=np.float32)
    means = tile_means(diff)
    tolerance = (0.0 if lossless else JPEG_TILE_TOLERANCE) + (DEVICE_TILE_TOLERANCE if rounded else 0.0)
    bad = means > tolerance
    if not bad.any():
        return
    ty, tx = np.unravel_index(int(np.argmax(means)), means.shape)
    x0, y0 = int(tx) * TILE, int(ty) * TILE
    labels = owner[y0:y0 + TILE, x0:x0 + TILE]
    labels = labels[labels > 0]
    where = (f"instance {regions[int(np.bincount(labels).argmax()) - 1].instance_id}" if labels.size
             else "outside the regions")
    what = (f"{int((diff > 0).sum())} pixels differ" if tolerance == 0 else
            f"{int(bad.sum())} {TILE}x{TILE} tiles differ by more than {'JPEG noise' if not lossless else ''}"
            f"{' and ' if rounded and not lossless else ''}{'CUDA rounding' if rounded else ''} "
            f"({tolerance} grey levels)")
    report.errors.append(f"{rel}: {what} from what the settings produce; worst tile at x={x0}, y={y0} "
                         f"({where}): mean difference {float(means[ty, tx]):.1f}")
    report.worst_tiles.append({"file": rel, "x": x0, "y": y0, "where": where, "mean_difference":
                               round(float(means[ty, tx]), 2)})
