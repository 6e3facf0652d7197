"""`avanon show`: a PNG grid of original / anonymized pairs from one or more mirrors."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from avanon.cli import main
from avanon.mirror.show import (
    CAPTION_H, DEFAULT_CELL, HEADER_H, MARGIN, ShowError, crop_box, grid_size, load_mirror, make_grid, pick_files,
)


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("show")
    out = []
    for method in ("mask_out", "blur"):
        rc = main(["anonymize", "--dataset", "synthetic", "--root", str(base / "cs"), "--option", "format=cityscapes",
                   "--option", "num_train=4", "--option", "num_val=1", "--region", "body", "--method", method,
                   "--out", str(base / "out"), "--no-progress"])
        assert rc == 0
        out.append(base / "out" / "synthetic" / f"body_{method}")
    return out[0], out[1]


def test_show_writes_the_grid(mirrors, tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert main(["show", str(mirrors[0]), "--n", "3", "--seed", "1", "--out", str(png)]) == 0
    grid = cv2.imread(str(png))
    assert grid.shape[:2] == grid_size(3, 1) == (MARGIN + HEADER_H + 3 * (CAPTION_H + DEFAULT_CELL[0] + MARGIN),
                                                 MARGIN + 2 * (DEFAULT_CELL[1] + MARGIN))
    assert "3 images x 2 columns" in capsys.readouterr().out


def test_show_several_mirrors_one_column_each(mirrors, tmp_path):
    png = tmp_path / "grid2.png"
    # more rows asked than images: every anonymized image once
    assert main(["show", str(mirrors[0]), str(mirrors[1]), "--n", "8", "--out", str(png), "--cell", "120", "160"]) == 0
    n = len(load_mirror(mirrors[0]).anonymized() & load_mirror(mirrors[1]).anonymized())
    assert n == 4
    grid = cv2.imread(str(png))
    assert grid.shape[:2] == grid_size(n, 2, (120, 160))


def test_show_panels_show_the_anonymized_people(mirrors):
    canvas, files = make_grid([mirrors[0]], n=4, seed=0)
    ch, cw = DEFAULT_CELL
    for r in range(len(files)):
        y = MARGIN + HEADER_H + r * (CAPTION_H + ch + MARGIN) + CAPTION_H
        original = canvas[y:y + ch, MARGIN:MARGIN + cw].astype(int)
        masked = canvas[y:y + ch, 2 * MARGIN + cw:2 * MARGIN + 2 * cw].astype(int)
        changed = np.abs(original - masked).max(axis=2) > 20
        assert changed.mean() > 0.01  # the crop is around the people, so mask-out is clearly visible


def test_pick_is_deterministic_by_seed(mirrors):
    m = [load_mirror(mirrors[0])]
    assert pick_files(m, 2, 0) == pick_files(m, 2, 0)
    assert len(set(pick_files(m, 2, 0))) == 2
    assert {tuple(pick_files(m, 2, s)) for s in range(6)} != {tuple(pick_files(m, 2, 0))}
    assert sorted(pick_files(m, 10, 3)) == sorted(m[0].anonymized())


def test_crop_box_pads_and_keeps_aspect():
    x0, y0, x1, y1 = crop_box([(100, 50, 120, 90), (130, 60, 140, 100)], 512, 256, 4 / 3, pad=0.5)
    assert x0 <= 100 - 20 and x1 >= 140 + 20 and y0 <= 50 - 25 and y1 >= 100 + 25
    assert abs((x1 - x0) / (y1 - y0) - 4 / 3) < 0.05
    assert crop_box([], 512, 256, 4 / 3) == (0, 0, 512, 256)
    assert crop_box([(0, 0, 512, 256)], 512, 256, 4 / 3) == (0, 0, 512, 256)


def test_show_errors(tmp_path, mirrors, capsys):
    assert main(["show", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "not a mirror" in capsys.readouterr().err
    with pytest.raises(ShowError, match="mirrors below it"):
        load_mirror(mirrors[0].parent.parent)


def test_show_points_one_level_down_and_titles_carry_parameters(mirrors):
    with pytest.raises(ShowError, match="mirrors below it: .*" + mirrors[0].name):
        load_mirror(mirrors[0].parent)
    titles = [load_mirror(m).title for m in mirrors]
    assert len(set(titles)) == len(titles) and all("=" in t for t in titles), titles
