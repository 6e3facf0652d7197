"""Drawing primitives shared by the people and the street: fixed-point cv2 shapes, colours, sprites."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np



_SHIFT = 4



_S = 1 << _SHIFT  # cv2 fixed-point factor: sub-pixel geometry keeps tiny people smooth



def _fx(v: float) -> int:
    return int(round(float(v) * _S))



def _pt(p) -> tuple[int, int]:
    return _fx(p[0]), _fx(p[1])



def _capsule(img: np.ndarray, a, b, wa: float, wb: float, val: int) -> None:
    """A tapered limb from a (width wa) to b (width wb), with round ends."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ra, rb = max(wa / 2, 0.5), max(wb / 2, 0.5)
    d = b - a
    length = float(np.hypot(d[0], d[1]))
    if length > 1e-3:
        n = np.array([-d[1], d[0]]) / length
        quad = np.array([a + n * ra, b + n * rb, b - n * rb, a - n * ra])
        cv2.fillConvexPoly(img, np.round(quad * _S).astype(np.int32), val, cv2.LINE_8, _SHIFT)
    cv2.circle(img, _pt(a), _fx(ra), val, -1, cv2.LINE_8, _SHIFT)
    cv2.circle(img, _pt(b), _fx(rb), val, -1, cv2.LINE_8, _SHIFT)



def _ellipse(img: np.ndarray, c, rx: float, ry: float, val: int, angle: float = 0.0) -> None:
    cv2.ellipse(img, _pt(c), (max(_fx(rx), 1), max(_fx(ry), 1)), angle, 0, 360, val, -1, cv2.LINE_8, _SHIFT)



def _poly(img: np.ndarray, pts, val: int) -> None:
    cv2.fillPoly(img, [np.round(np.asarray(pts, float) * _S).astype(np.int32)], val, cv2.LINE_8, _SHIFT)



def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] -> RGB float in [0, 255]."""
    px = np.uint8([[[int(h * 179) % 180, int(s * 255), int(v * 255)]]])
    return cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)



def _rng_child(rng: np.random.Generator) -> np.random.Generator:
    return np.random.default_rng(int(rng.integers(0, 2**63 - 1)))



@dataclass
class _Sprite:
    """Pixels of one object in image coordinates: top-left (x0, y0), RGB and coverage mask."""

    x0: int
    y0: int
    rgb: np.ndarray
    mask: np.ndarray



def _new_canvas(points: np.ndarray, margin: float) -> tuple[int, int, np.ndarray]:
    lo = np.floor(points.min(axis=0) - margin).astype(int)
    hi = np.ceil(points.max(axis=0) + margin).astype(int)
    return int(lo[0]), int(lo[1]), np.zeros((hi[1] - lo[1] + 1, hi[0] - lo[0] + 1), np.uint8)



def _colourize(parts: np.ndarray, lut: np.ndarray, rng: np.random.Generator, noise: float,
               shade_cx: Optional[float] = None, shade_w: float = 1.0) -> np.ndarray:
    """Part-id map -> RGB: palette lookup, cylinder-like horizontal shading, fabric/sensor noise."""
    rgb = lut[parts].astype(np.float32)
    if shade_cx is not None:
        xs = (np.arange(parts.shape[1], dtype=np.float32) - shade_cx) / max(shade_w, 1e-3)
        rgb *= (1.0 - 0.32 * np.clip(np.abs(xs), 0, 1.4) ** 2)[None, :, None].clip(0.45, 1)
    rgb += rng.normal(0, noise, rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.int32)
