"""The mirror's record: `manifest.jsonl` (one line per image of the split: source, record and output sha256,
instances anonymized and skipped, method, parameters, per-image seed), shard manifests and their merge, and the
`run.json` name. A torn last line (a run killed mid-write) is ignored; appends start on a fresh line."""
from __future__ import annotations

import json
import re
from pathlib import Path

from avanon.mirror.imageio import atomic_write_bytes


MANIFEST = "manifest.jsonl"



RUN_FILE = "run.json"



class MirrorError(Exception):
    """The mirror cannot be written (unsafe output path, settings that differ from an existing mirror, full disk)."""



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



def merge_shards(out_dir: str | Path) -> tuple[Path, int, list[str]]:
    """Merge the shard manifests of a mirror into manifest.jsonl. Returns (manifest, images, missing shards);
    with missing shards nothing is merged, so the missing ones can still be run and merged afterwards."""
    out_dir = Path(out_dir)
    if not (out_dir / RUN_FILE).is_file():
        raise MirrorError(f"{out_dir} is not an avanon mirror ({RUN_FILE} is missing); nothing to merge")
    shards: dict[int, set[int]] = {}
    for p in out_dir.glob("manifest-*of*.jsonl"):
        m = re.fullmatch(r"manifest-(\d+)of(\d+)\.jsonl", p.name)
        if m:
            shards.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    missing = [f"{k}/{n}" for n, ks in sorted(shards.items()) for k in range(n) if k not in ks]
    if missing:
        return out_dir / MANIFEST, 0, missing
    path = compact_manifest(out_dir)
    return path, len(read_manifest(out_dir)), []
