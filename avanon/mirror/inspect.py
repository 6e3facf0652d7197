"""`avanon inspect`: what a dataset split holds before anything is anonymized.

Counts images and human instances per category, what the region filters would skip and why, how many instances
have keypoints, and the distribution of person box sizes (Paper F Fig. 7: cumulative fraction of person boxes by
their share of the image area, written as a PNG).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from avanon.progress import progress as progress_bar

SIZE_THRESHOLDS = (8, 16, 32)


@dataclass
class DatasetStats:
    dataset: str
    split: str
    images: int = 0
    images_missing: int = 0
    images_with_problems: int = 0
    problems: list = field(default_factory=list)
    categories: Counter = field(default_factory=Counter)
    crowd: int = 0
    ignore: int = 0
    targets: int = 0
    targets_with_keypoints: int = 0
    # After a keypoint provider (`avanon inspect --keypoints`): its name and the targets with >= 1 visible keypoint.
    keypoint_provider: Optional[str] = None
    targets_with_provider_keypoints: int = 0
    keypoint_provider_warnings: list = field(default_factory=list)
    selected: int = 0
    skip_reasons: Counter = field(default_factory=Counter)
    box_fraction: list = field(default_factory=list)  # tight box area / image area, per target instance
    box_side: list = field(default_factory=list)  # sqrt(tight box area) in pixels, per target instance
    expanded_side: list = field(default_factory=list)  # sqrt(expanded body box area), per selected instance
    # With a face selector (`avanon inspect --faces PROVIDER`): the face audit over the split.
    face_provider: Optional[str] = None
    face_visible: int = 0
    face_missed: int = 0
    face_missed_examples: list = field(default_factory=list)  # (file, instance id), the first few

    def to_dict(self) -> dict:
        frac = np.asarray(self.box_fraction)
        side = np.asarray(self.box_side)
        exp_side = np.asarray(self.expanded_side)
        out = {
            "dataset": self.dataset, "split": self.split, "images": self.images,
            "images_missing": self.images_missing, "images_with_problems": self.images_with_problems,
            "categories": dict(sorted(self.categories.items())), "crowd": self.crowd, "ignore": self.ignore,
            "target_instances": self.targets, "selected_for_body_anonymization": self.selected,
            "skip_reasons": dict(sorted(self.skip_reasons.items())),
            "keypoint_fraction": (self.targets_with_keypoints / self.targets) if self.targets else None,
            "keypoint_provider": self.keypoint_provider,
            "keypoint_fraction_provider": (self.targets_with_provider_keypoints / self.targets)
            if self.targets and self.keypoint_provider else None,
            "keypoint_provider_warnings": self.keypoint_provider_warnings[:50],
            "face_provider": self.face_provider, "face_visible": self.face_visible, "face_missed": self.face_missed,
            "face_recall": (1 - self.face_missed / self.face_visible) if self.face_visible else None,
            "face_missed_examples": self.face_missed_examples[:20],
            "box_fraction_median": float(np.median(frac)) if frac.size else None,
            "share_of_boxes_below_1pct_of_image": float((frac < 0.01).mean()) if frac.size else None,
        }
        for t in SIZE_THRESHOLDS:
            out[f"share_tight_box_below_{t}x{t}"] = float((side < t).mean()) if side.size else None
            out[f"share_expanded_box_below_{t}x{t}"] = float((exp_side < t).mean()) if exp_side.size else None
        out["problems"] = self.problems[:50]
        return out


def collect_stats(adapter, selector, name: str, keypoint_provider=None, face_selector=None,
                  progress: bool = False) -> DatasetStats:
    """One pass over the split. `selector` is a body region selector with the recipe's filters; with a
    `keypoint_provider` (avanon.regions.keypoints) its keypoints are applied before selection and counted too; with
    a `face_selector` the face audit is counted: persons whose head is visible by its own keypoints but who get no
    face region from that provider. progress: a bar over the images on a terminal."""
    stats = DatasetStats(dataset=name, split=adapter.split)
    if face_selector is not None:
        stats.face_provider = face_selector.params.provider
    if keypoint_provider is not None:
        stats.keypoint_provider = keypoint_provider.name
    stats.problems.extend(adapter.dataset_problems())
    targets = set(getattr(selector, "target_categories", ()) or adapter.target_categories)
    for record in progress_bar(adapter.images(), f"inspect {name}", progress, total=len(adapter), unit="img"):
        stats.images += 1
        if not (adapter.root / record.file_name).is_file():
            stats.images_missing += 1
            stats.problems.append(f"{record.file_name}: image file missing")
        if record.problems:
            stats.images_with_problems += 1
            stats.problems.extend(f"{record.file_name}: {p}" for p in record.problems)
            continue
        image_area = float(record.width * record.height)
        applied = _apply_keypoints(adapter, record, keypoint_provider, stats)
        if applied is None:
            continue
        for inst in record.instances:
            stats.categories[inst.category] += 1
            stats.crowd += inst.iscrowd
            stats.ignore += inst.ignore
            if inst.category in targets and not inst.iscrowd and not inst.ignore:
                stats.targets += 1
                stats.targets_with_keypoints += inst.num_keypoints > 0
                x0, y0, x1, y1 = inst.box
                area = max(0, x1 - x0) * max(0, y1 - y0)
                stats.box_fraction.append(area / image_area)
                stats.box_side.append(float(np.sqrt(area)))
        if keypoint_provider is not None:
            stats.targets_with_provider_keypoints += sum(
                inst.num_keypoints > 0 for inst in applied.instances
                if inst.category in targets and not inst.iscrowd and not inst.ignore)
        selection = selector.select(applied, None)
        stats.selected += len(selection.regions)
        stats.skip_reasons.update(reason for _, reason in selection.skipped)
        for region in selection.regions:
            x0, y0, x1, y1 = region.exp_box
            stats.expanded_side.append(float(np.sqrt(max(0, x1 - x0) * max(0, y1 - y0))))
        if face_selector is not None:
            _audit_faces(adapter, applied, face_selector, stats)
    if keypoint_provider is not None:
        stats.keypoint_provider_warnings = list(keypoint_provider.warnings)
    return stats


def _audit_faces(adapter, record, face_selector, stats: DatasetStats) -> None:
    image = None
    if face_selector.needs_image:
        from avanon.mirror.imageio import ImageReadError, read_image

        try:
            image = read_image(adapter.root / record.file_name, (record.width, record.height)).pixels
        except ImageReadError as exc:
            stats.problems.append(f"{record.file_name}: {exc}")
            return
    faces = face_selector.select(record, image)
    stats.face_visible += len(faces.face_visible)
    stats.face_missed += len(faces.face_missed)
    stats.face_missed_examples.extend((record.file_name, iid) for iid in faces.face_missed[:3])


def _apply_keypoints(adapter, record, provider, stats: DatasetStats):
    """The record after the keypoint provider (the record itself without one); None when the image cannot be
    read for an estimator (counted as a problem)."""
    if provider is None:
        return record
    image = None
    if provider.needs_image:
        from avanon.mirror.imageio import ImageReadError, read_image

        try:
            image = read_image(adapter.root / record.file_name, (record.width, record.height)).pixels
        except ImageReadError as exc:
            stats.images_with_problems += 1
            stats.problems.append(f"{record.file_name}: {exc}")
            return None
    return provider.apply(record, image)


def plot_box_sizes(stats_list: list[DatasetStats], path: str | Path) -> Path:
    """Cumulative fraction of person boxes vs. box area as a percentage of the image (Paper F Fig. 7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for stats in stats_list:
        frac = np.sort(np.asarray(stats.box_fraction)) * 100
        if frac.size == 0:
            continue
        ax.plot(frac, np.arange(1, frac.size + 1) / frac.size, label=f"{stats.dataset} {stats.split} (n={frac.size})")
    ax.set_xscale("log")
    ax.set_xlabel("person box area (% of image)")
    ax.set_ylabel("cumulative fraction of instances")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def format_stats(d: dict) -> str:
    lines = [f"{d['dataset']} / {d['split']}: {d['images']} images"]
    if d["images_missing"] or d["images_with_problems"]:
        lines.append(f"  images missing: {d['images_missing']}, with annotation problems: {d['images_with_problems']}")
    lines.append("  instances by category: " + ", ".join(f"{k} {v}" for k, v in d["categories"].items()))
    lines.append(f"  crowd {d['crowd']}, ignore {d['ignore']}, target instances {d['target_instances']}, "
                 f"selected for body anonymization {d['selected_for_body_anonymization']}")
    if d["skip_reasons"]:
        lines.append("  skipped: " + ", ".join(f"{k} {v}" for k, v in d["skip_reasons"].items()))
    if d.get("keypoint_fraction_provider") is not None:
        annotated = f"; annotated: {100 * d['keypoint_fraction']:.1f} %" if d["keypoint_fraction"] else ""
        lines.append(f"  instances with keypoints: {100 * d['keypoint_fraction_provider']:.1f} % "
                     f"(keypoint provider '{d['keypoint_provider']}'{annotated})")
    elif d["keypoint_fraction"] is not None:
        lines.append(f"  instances with keypoints: {100 * d['keypoint_fraction']:.1f} %")
    if d.get("face_provider"):
        recall = f" (recall {100 * d['face_recall']:.1f} %)" if d["face_recall"] is not None else ""
        lines.append(f"  face audit ({d['face_provider']}): {d['face_missed']} of {d['face_visible']} persons with "
                     f"a visible head get no face region{recall}")
        for f, iid in d["face_missed_examples"][:5]:
            lines.append(f"    missed: {f} instance {iid}")
    for w in d.get("keypoint_provider_warnings", [])[:5]:
        lines.append(f"  keypoint provider warning: {w}")
    for t in SIZE_THRESHOLDS:
        tight, exp = d[f"share_tight_box_below_{t}x{t}"], d[f"share_expanded_box_below_{t}x{t}"]
        if tight is not None:
            exp_txt = f", expanded box {100 * exp:.1f} %" if exp is not None else ""
            lines.append(f"  smaller than {t}x{t}: tight box {100 * tight:.1f} %{exp_txt}")
    if d["share_of_boxes_below_1pct_of_image"] is not None:
        lines.append(f"  person boxes under 1 % of the image: {100 * d['share_of_boxes_below_1pct_of_image']:.1f} %")
    for p in d["problems"][:10]:
        lines.append(f"  problem: {p}")
    return "\n".join(lines)
