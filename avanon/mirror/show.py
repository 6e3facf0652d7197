"""`avanon show MIRROR [MIRROR ...]`: a PNG grid of random original / anonymized pairs (like Paper F Fig. 2).

Each row is one image anonymized in every given mirror, picked at random (deterministic for a seed); the first
column is the original, then one column per mirror. All panels of a row show the same crop: the union of the
boxes of the instances the mirrors anonymized (from the manifests' instance ids, boxes through the dataset
adapter recorded in `run.json`), padded and widened to the panel's aspect, so that the people are visible even
in a 2048x1024 street scene. Column headers name the mirror, its region and method; row captions the file.

Layout (pixels): margin M = 8, header H = 40, caption C = 20, panel h x w (default 240 x 320):
width = M + (1 + mirrors) * (w + M), height = M + H + rows * (C + h + M).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

MARGIN, HEADER_H, CAPTION_H = 8, 40, 20
DEFAULT_CELL = (240, 320)  # panel (height, width)
BACKGROUND = (255, 255, 255)
PANEL_FILL = (64, 64, 64)
TEXT = (20, 20, 20)


class ShowError(Exception):
    """Mirrors that cannot be shown (no run.json, nothing anonymized in all of them, source missing)."""


@dataclass
class Mirror:
    path: Path
    run: dict
    lines: dict  # file -> latest manifest line

    @property
    def name(self) -> str:
        return self.run.get("mirror") or self.path.name

    @property
    def title(self) -> str:
        """Region, method and its parameters (blur sigma=7, pixelate size=16): two mirrors of one method differ."""
        settings = self.run.get("settings", {})
        params = settings.get("method_params") or {}
        shown = " ".join(f"{k}={v}" for k, v in sorted(params.items())
                         if isinstance(v, (int, float, str)) and not isinstance(v, bool) and k not in ("device", "batch"))
        return f"{settings.get('region', '?')} {settings.get('method', '?')} {shown}".strip()

    def anonymized(self) -> set[str]:
        return {f for f, line in self.lines.items() if line.get("status") == "anonymized"}


def load_mirror(path: str | Path) -> Mirror:
    from avanon.mirror import RUN_FILE, MirrorError, read_manifest

    path = Path(path)
    run_path = path / RUN_FILE
    if not run_path.is_file():
        hint = ""
        found = sorted({p.parent for pattern in (f"*/{RUN_FILE}", f"*/*/{RUN_FILE}") for p in path.glob(pattern)}
                       if path.is_dir() else [])
        if found:
            hint = f" (mirrors below it: {', '.join(str(p) for p in found[:5])})"
        raise ShowError(f"{path} is not a mirror: no {RUN_FILE}{hint}")
    try:
        run = json.loads(run_path.read_text())
        lines = read_manifest(path)
    except (ValueError, MirrorError) as exc:
        raise ShowError(f"{path}: {exc}") from None
    return Mirror(path, run, lines)


def pick_files(mirrors: Sequence[Mirror], n: int, seed: int) -> list[str]:
    """n files anonymized in every mirror, drawn without replacement with numpy's default_rng(seed)."""
    common = set.intersection(*(m.anonymized() for m in mirrors))
    if not common:
        raise ShowError("no image is anonymized in " + ("the mirror" if len(mirrors) == 1 else "all the mirrors"))
    files = sorted(common)
    rng = np.random.default_rng(seed)
    take = rng.choice(len(files), size=min(n, len(files)), replace=False)
    return [files[i] for i in take]


def source_root(mirror: Mirror, override: Optional[str] = None) -> Path:
    root = Path(override or mirror.run.get("source_root") or mirror.run.get("dataset", {}).get("root", ""))
    if not root.is_dir():
        raise ShowError(f"{mirror.path}: source dataset {root} not found (pass --source)")
    return root


def records_for(mirror: Mirror, root: Path, files: set[str]) -> dict:
    """{file: ImageRecord} of the given files, through the adapter the mirror was made with (stops early)."""
    from dataset_adapters import build_adapter

    ds = mirror.run.get("dataset") or {}
    if "adapter" not in ds:
        raise ShowError(f"{mirror.path}: run.json names no dataset adapter")
    adapter = build_adapter(ds["adapter"], root, ds.get("split", "train"), **(ds.get("options") or {}))
    out = {}
    for record in adapter.images():
        if record.file_name in files:
            out[record.file_name] = record
            if len(out) == len(files):
                break
    return out


def crop_box(boxes: Sequence[Sequence[float]], width: int, height: int, aspect: float, pad: float = 0.5
             ) -> tuple[int, int, int, int]:
    """Union of boxes, padded by `pad` of its size (>= 16 px) on each side, widened to `aspect` (w / h) around
    its centre and clipped to the image."""
    if not boxes:
        return 0, 0, width, height
    b = np.asarray(boxes, dtype=np.float64)
    x0, y0, x1, y1 = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
    px, py = max(pad * (x1 - x0), 16.0), max(pad * (y1 - y0), 16.0)
    x0, y0, x1, y1 = x0 - px, y0 - py, x1 + px, y1 + py
    w, h = x1 - x0, y1 - y0
    if w / h < aspect:
        w = min(h * aspect, width)
    else:
        h = min(w / aspect, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    x0 = int(round(min(max(cx - w / 2, 0), width - w)))
    y0 = int(round(min(max(cy - h / 2, 0), height - h)))
    x0, y0 = max(x0, 0), max(y0, 0)
    return x0, y0, min(int(round(x0 + w)), width), min(int(round(y0 + h)), height)


def fit(image: np.ndarray, cell: tuple[int, int]) -> np.ndarray:
    """The image scaled to fit a (h, w) panel, aspect kept, centred on PANEL_FILL."""
    import cv2

    ch, cw = cell
    panel = np.empty((ch, cw, 3), np.uint8)
    panel[:] = PANEL_FILL
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        return panel
    s = min(ch / h, cw / w)
    nh, nw = max(1, min(ch, int(round(h * s)))), max(1, min(cw, int(round(w * s))))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    small = cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=interp)
    y, x = (ch - nh) // 2, (cw - nw) // 2
    panel[y:y + nh, x:x + nw] = small
    return panel


def _text(canvas: np.ndarray, text: str, x: int, y: int, max_width: int, keep_end: bool = False,
          scale: float = 0.45) -> None:
    """Text with its baseline at y, shortened with '...' to fit max_width (keeping the end for file names)."""
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    shown = text
    while shown and cv2.getTextSize(shown, font, scale, 1)[0][0] > max_width:
        text = text[1:] if keep_end else text[:-1]
        shown = ("..." + text) if keep_end else (text + "...")
    cv2.putText(canvas, shown, (x, y), font, scale, TEXT, 1, cv2.LINE_AA)


def grid_size(rows: int, mirrors: int, cell: tuple[int, int] = DEFAULT_CELL) -> tuple[int, int]:
    """(height, width) of the grid image."""
    ch, cw = cell
    return MARGIN + HEADER_H + rows * (CAPTION_H + ch + MARGIN), MARGIN + (1 + mirrors) * (cw + MARGIN)


def _changed_box(a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    diff = np.any(a != b, axis=2) if a.shape == b.shape else np.zeros(a.shape[:2], bool)
    rows, cols = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))
    if rows.size == 0:
        return []
    return [[int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]]


def make_grid(mirror_paths: Sequence[str | Path], n: int = 8, seed: int = 0, cell: tuple[int, int] = DEFAULT_CELL,
              pad: float = 0.5, source: Optional[str] = None) -> tuple[np.ndarray, list[str]]:
    """The RGB grid and the files shown (in row order)."""
    from avanon.mirror.imageio import ImageReadError, read_image

    if not mirror_paths:
        raise ShowError("no mirror given")
    mirrors = [load_mirror(p) for p in mirror_paths]
    files = pick_files(mirrors, n, seed)
    root = source_root(mirrors[0], source)
    records = records_for(mirrors[0], root, set(files))
    ch, cw = cell
    height, width = grid_size(len(files), len(mirrors), cell)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = BACKGROUND
    titles = ["original"] + [f"{m.name}: {m.title}" for m in mirrors]
    for c, title in enumerate(titles):
        x = MARGIN + c * (cw + MARGIN)
        _text(canvas, title, x, MARGIN + 22, cw)
    for r, file in enumerate(files):
        y = MARGIN + HEADER_H + r * (CAPTION_H + ch + MARGIN)
        lines = [m.lines[file] for m in mirrors]
        record = records.get(file)
        if record is None:
            raise ShowError(f"{file} is in the manifest but not in the dataset split the mirror was made from")
        size = (record.width, record.height)
        try:
            original = read_image(root / file, size, lines[0].get("frame", "auto"))
            anonymized = [read_image(m.path / file, size, line.get("frame", "auto"))
                          for m, line in zip(mirrors, lines)]
        except ImageReadError as exc:
            raise ShowError(f"{file}: {exc}") from None
        ids = {iid for line in lines for iid in line.get("anonymized", [])}
        boxes = [inst.box for inst in record.instances if inst.instance_id in ids]
        if not boxes:
            boxes = _changed_box(original.pixels, anonymized[0].pixels)
        h, w = original.pixels.shape[:2]
        x0, y0, x1, y1 = crop_box(boxes, w, h, cw / ch, pad)
        _text(canvas, f"{file}  ({len(ids)} anonymized)", MARGIN, y + CAPTION_H - 6, width - 2 * MARGIN,
              keep_end=True)
        for c, img in enumerate([original] + anonymized):
            x = MARGIN + c * (cw + MARGIN)
            canvas[y + CAPTION_H:y + CAPTION_H + ch, x:x + cw] = fit(img.pixels[y0:y1, x0:x1], cell)
    return canvas, files


def write_grid(canvas: np.ndarray, out: str | Path) -> Path:
    import cv2

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), np.ascontiguousarray(canvas[..., ::-1])):
        raise ShowError(f"cannot write {out}")
    return out
