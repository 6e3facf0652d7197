"""The summary of a mirror (summary.json and the console's closing lines), computed from its manifest."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional


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
    # how this invocation ran the method (device, batch, pipeline): not part of the mirror's identity
    runtime: dict = field(default_factory=dict)

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
                                               "stale_temp_files_removed", "seconds", "runtime")}
        return d
