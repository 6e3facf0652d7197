"""The street around the people: sky, brick facades, sidewalk, grainy road, cars, trees and poles."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from dataset_adapters.synthetic.draw import (
    _SHIFT, _Sprite, _capsule, _colourize, _ellipse, _hsv, _new_canvas, _poly, _pt, _rect, _rng_child,
)


def _car_sprite(rng: np.random.Generator, hc: float, cx: float, ground: float) -> _Sprite:
    """A car of height hc px, seen from the side (either direction) or from behind."""
    BODY, WINDOW, TIRE, RIM, RED, WHITE, PLATE, TRIM = range(1, 9)
    view = rng.choice(["side", "rear"], p=[0.6, 0.4])
    if view == "side":
        L_ = hc * rng.uniform(2.3, 2.8)
        x0f = cx - L_ / 2
        pts = np.array([[x0f, ground - hc], [x0f + L_, ground]])
    else:
        L_ = hc * rng.uniform(1.1, 1.3)
        x0f = cx - L_ / 2
        pts = np.array([[x0f, ground - hc], [x0f + L_, ground]])
    x0, y0, parts = _new_canvas(pts, margin=2)
    bx, by = x0f - x0, ground - y0  # local left and ground line

    def P(u, v):  # fraction of length from the left, fraction of height above ground
        return (bx + u * L_, by - v * hc)

    if view == "side":
        sgn = rng.choice([-1.0, 1.0])

        def S(u, v):
            return P(u if sgn > 0 else 1 - u, v)

        _poly(parts, [S(0.0, 0.2), S(0.02, 0.55), S(0.25, 0.62), S(0.97, 0.6), S(1.0, 0.45), S(1.0, 0.18),
                      S(0.97, 0.12), S(0.03, 0.12)], BODY)
        _poly(parts, [S(0.22, 0.6), S(0.36, 0.97), S(0.72, 1.0), S(0.84, 0.6)], BODY)
        _poly(parts, [S(0.27, 0.63), S(0.38, 0.91), S(0.53, 0.92), S(0.53, 0.63)], WINDOW)
        _poly(parts, [S(0.56, 0.63), S(0.56, 0.93), S(0.7, 0.93), S(0.79, 0.63)], WINDOW)
        cv2.line(parts, _pt(S(0.55, 0.58)), _pt(S(0.55, 0.18)), TRIM, max(1, int(hc * 0.02)), cv2.LINE_8, _SHIFT)
        for u in (0.19, 0.8):
            c = S(u, 0.2)
            _ellipse(parts, c, 0.21 * hc, 0.21 * hc, TIRE)
            _ellipse(parts, c, 0.11 * hc, 0.11 * hc, RIM)
        _poly(parts, [S(0.975, 0.45), S(1.0, 0.45), S(1.0, 0.36), S(0.975, 0.36)], WHITE)
        _poly(parts, [S(0.0, 0.45), S(0.025, 0.45), S(0.025, 0.36), S(0.0, 0.36)], RED)
    else:
        _poly(parts, [P(0.04, 0.1), P(0.0, 0.2), P(0.01, 0.6), P(0.99, 0.6), P(1.0, 0.2), P(0.96, 0.1)], BODY)
        _poly(parts, [P(0.1, 0.58), P(0.2, 1.0), P(0.8, 1.0), P(0.9, 0.58)], BODY)
        _poly(parts, [P(0.16, 0.62), P(0.24, 0.93), P(0.76, 0.93), P(0.84, 0.62)], WINDOW)
        for u0, u1 in ((0.06, 0.22), (0.78, 0.94)):
            _poly(parts, [P(u0, 0.0), P(u1, 0.0), P(u1, 0.14), P(u0, 0.14)], TIRE)
            _poly(parts, [P(u0 - 0.04, 0.52), P(u0 + 0.1, 0.52), P(u0 + 0.1, 0.42), P(u0 - 0.04, 0.42)], RED)
        _poly(parts, [P(0.4, 0.3), P(0.6, 0.3), P(0.6, 0.2), P(0.4, 0.2)], PLATE)
    lut = np.zeros((9, 3), np.float32)
    r = rng.random()
    lut[BODY] = (np.float32([1, 1, 1]) * rng.uniform(30, 230)) if r < 0.5 else \
        _hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.85))
    lut[WINDOW] = np.float32([60, 75, 90]) * rng.uniform(0.7, 1.3)
    lut[TIRE], lut[RIM] = np.float32([22, 22, 24]), np.float32([150, 150, 155])
    lut[RED], lut[WHITE], lut[PLATE] = np.float32([200, 30, 30]), np.float32([240, 235, 200]), \
        np.float32([235, 235, 235])
    lut[TRIM] = lut[BODY] * 0.6
    rgb = _colourize(parts, lut, rng, 3.0)
    grad = np.linspace(1.12, 0.85, parts.shape[0], dtype=np.float32)[:, None, None]
    rgb = np.clip(rgb * grad, 0, 255).astype(np.uint8)
    return _Sprite(x0, y0, rgb, parts > 0)


def _tree_sprite(rng: np.random.Generator, ht: float, cx: float, ground: float) -> _Sprite:
    TRUNK, LEAVES, LEAVES2 = 1, 2, 3
    pts = np.array([[cx - 0.4 * ht, ground - ht], [cx + 0.4 * ht, ground]])
    x0, y0, parts = _new_canvas(pts, margin=2)
    c = np.array([cx - x0, ground - y0])
    _capsule(parts, c, c - [0, 0.55 * ht], 0.06 * ht, 0.04 * ht, TRUNK)
    for _ in range(int(rng.integers(4, 8))):
        cc = c + [rng.uniform(-0.18, 0.18) * ht, -rng.uniform(0.55, 0.8) * ht]
        r = rng.uniform(0.12, 0.2) * ht
        _ellipse(parts, cc, r, r * rng.uniform(0.8, 1.1), int(rng.choice([LEAVES, LEAVES2])))
    lut = np.float32([[0, 0, 0], [90, 65, 45], [60, 110, 45], [45, 85, 38]]) * rng.uniform(0.8, 1.15)
    return _Sprite(x0, y0, _colourize(parts, np.clip(lut, 0, 255), rng, 14.0), parts > 0)


def _pole_sprites(rng: np.random.Generator, hp: float, cx: float, ground: float) -> tuple[_Sprite, _Sprite]:
    w = max(0.015 * hp, 1.0)
    pts = np.array([[cx - w, ground - hp], [cx + w, ground]])
    x0, y0, parts = _new_canvas(pts, margin=2)
    _capsule(parts, (cx - x0, ground - y0), (cx - x0, ground - hp - y0), w, w, 1)
    lut = np.float32([[0, 0, 0], [95, 98, 100]]) * rng.uniform(0.8, 1.2)
    pole = _Sprite(x0, y0, _colourize(parts, np.clip(lut, 0, 255), rng, 3.0), parts > 0)
    r = 0.07 * hp
    c = np.array([cx, ground - hp + r])
    sx0, sy0, sp = _new_canvas(np.stack([c - r, c + r]), margin=2)
    lc = c - [sx0, sy0]
    if rng.random() < 0.5:
        _ellipse(sp, lc, r, r, 1)
        _ellipse(sp, lc, 0.72 * r, 0.72 * r, 2)
        lut = np.float32([[0, 0, 0], [200, 30, 35], [240, 240, 240]])
    else:
        _poly(sp, [lc + [-r, -r], lc + [r, -r], lc + [r, r], lc + [-r, r]], 1)
        _poly(sp, [lc + [-0.3 * r, -0.5 * r], lc + [0.3 * r, -0.5 * r], lc + [0.0, 0.6 * r]], 2)
        lut = np.float32([[0, 0, 0], [30, 80, 190], [240, 240, 240]])
    return pole, _Sprite(sx0, sy0, _colourize(sp, lut, rng, 3.0), sp > 0)


@dataclass
class _Layout:
    height: int
    width: int
    horizon: float  # y of the horizon
    base: float  # y where buildings meet the sidewalk
    curb: float  # y where the sidewalk meets the road
    vx: float  # x of the vanishing point
    person_heights: Optional[tuple[float, float]] = None  # pedestrians' height range (fractions of the image)


def _paint_background(rng: np.random.Generator, lay: _Layout) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Sky, facades with windows, sidewalk tiles, asphalt with lane marks. Returns the image and the stuff polygons
    (label, (N, 2) int points) in Cityscapes drawing order."""
    H, W = lay.height, lay.width
    img = np.zeros((H, W, 3), np.float32)
    ys = np.arange(H, dtype=np.float32)[:, None]
    top = np.float32([70, 120, 195]) * rng.uniform(0.8, 1.15)
    low = np.float32([190, 210, 228]) * rng.uniform(0.9, 1.05)
    t = np.clip(ys / max(lay.base, 1), 0, 1)[..., None]
    img[:] = top * (1 - t) + low * t
    base, curb = int(round(lay.base)), int(round(lay.curb))
    stuff: list[tuple[str, np.ndarray]] = [("sky", _rect(0, 0, W - 1, base - 1))]
    # buildings
    x = -rng.uniform(0, 0.1) * W
    while x < W:
        bw = rng.uniform(0.12, 0.4) * W
        bx0, bx1 = int(max(round(x), 0)), int(min(round(x + bw), W))
        x += bw
        if bx1 - bx0 < 2:
            continue
        ytop = int(round(rng.uniform(0.0, max(lay.horizon - 0.08 * H, 1.0))))
        if base - ytop < 4:
            continue
        colour = _hsv(rng.uniform(0.02, 0.14), rng.uniform(0.05, 0.45), rng.uniform(0.45, 0.9))
        if rng.random() < 0.3:
            colour = np.float32([1, 1, 1]) * rng.uniform(110, 200)
        img[ytop:base, bx0:bx1] = colour
        win = max(2, int(round(0.035 * H * rng.uniform(0.7, 1.3))))
        gap = max(2, int(round(win * rng.uniform(0.7, 1.5))))
        wc = np.float32([50, 60, 75]) * rng.uniform(0.7, 1.3)
        for wy in range(ytop + gap, base - win - gap, win + gap):
            for wx in range(bx0 + gap, bx1 - win, win + gap):
                lit = rng.random() < 0.1
                img[wy:wy + win + win // 2, wx:wx + win] = np.float32([230, 210, 150]) if lit else wc
        img[ytop:ytop + max(1, win // 3), bx0:bx1] *= 0.75  # cornice
        stuff.append(("building", _rect(bx0, ytop, bx1 - 1, base - 1)))
    # sidewalk
    sw_col = np.float32([1, 1, 1]) * rng.uniform(140, 185)
    img[base:curb] = sw_col
    step = max(3, int(round(0.04 * H)))
    for yy in range(base, curb, step):
        img[yy] *= 0.85
    for k in range(-12, 13):
        xb = lay.vx + k * 0.12 * W * 3
        for yy in range(base, curb):
            f = (yy - lay.horizon) / max(H - lay.horizon, 1)
            xx = int(round(lay.vx + (xb - lay.vx) * f))
            if 0 <= xx < W:
                img[yy, xx] *= 0.85
    stuff.append(("sidewalk", _rect(0, base, W - 1, curb - 1)))
    img[curb:curb + max(1, H // 120)] = np.float32([205, 205, 200])
    # road
    img[curb + max(1, H // 120):] = np.float32([1, 1, 1]) * rng.uniform(65, 100)
    for k in (-1, 1):
        if rng.random() < 0.7:
            xb = lay.vx + k * rng.uniform(0.3, 0.8) * W
            ts = np.linspace(0, 1, 40)
            for i in range(0, 39, 2):
                ya = lay.curb + (H - lay.curb) * ts[i]
                yb = lay.curb + (H - lay.curb) * ts[i + 1]
                fa, fb = (ya - lay.horizon) / (H - lay.horizon), (yb - lay.horizon) / (H - lay.horizon)
                xa, xb2 = lay.vx + (xb - lay.vx) * fa, lay.vx + (xb - lay.vx) * fb
                cv2.line(img, _pt((xa, ya)), _pt((xb2, yb)), (225, 225, 215),
                         max(1, int(round(0.01 * H * (fa + fb)))), cv2.LINE_AA, _SHIFT)
    stuff.append(("road", _rect(0, curb, W - 1, H - 1)))
    sky = np.broadcast_to(top * (1 - t) + low * t, img.shape)
    _texture_background(img, lay, np.abs(img - sky).sum(-1) > 1.0, _rng_child(rng))
    img += rng.normal(0, 5, img.shape).astype(np.float32)
    return np.clip(img, 0, 255), stuff


def _texture_background(img: np.ndarray, lay: _Layout, not_sky: np.ndarray, rng: np.random.Generator) -> None:
    """Brick courses on the facades, grain and blotches on the ground: a sharp, busy background, as in real street
    scenes, so that a smooth (blurred) region is as unusual here as it is there."""
    H, W = lay.height, lay.width
    base = int(round(lay.base))
    yy, xx = np.indices((H, W))
    course = max(2, int(round(0.012 * H * rng.uniform(0.8, 1.3))))
    brick = course * 3
    row = yy // course
    mortar = (yy % course == 0) | (((xx + (row % 2) * brick // 2) % brick) == 0)
    above = yy < base
    tone = 1.0 + 0.18 * (rng.random((H // course + 1, W // brick + 2)) - 0.5)
    tone_px = tone[row, np.clip((xx + (row % 2) * brick // 2) // brick, 0, tone.shape[1] - 1)]
    facade = above & not_sky
    g = np.where(mortar, 0.72, tone_px)
    img[facade] *= g[facade, None]
    ground = ~above
    blot = cv2.resize(rng.random((H // 8 + 2, W // 8 + 2)).astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    grain = rng.normal(0, 1, (H, W)).astype(np.float32)
    img[ground] *= (1.0 + 0.25 * (blot[ground] - 0.5) + 0.08 * grain[ground])[:, None]
