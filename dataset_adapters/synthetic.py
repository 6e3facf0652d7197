"""Deterministic synthetic street scenes, written in the real COCO / Cityscapes / BDD100K on-disk formats.

Why it exists: the tests, the demo recipe and CI need datasets that go through the *same* readers as the real
data, and on which a small Mask R-CNN can learn people from their bodies (so that body anonymization measurably
hurts person AP and face anonymization barely does). People are therefore drawn from a posed 17-keypoint COCO
skeleton with clothing, limbs and a head whose face (eyes, brows, nose, mouth, skin tone) is a small region,
and with detail at the scale of a few pixels (outlines, garment prints, hair strands) that a body blur removes;
the rest of a scene is a textured street (sky, brick facades, sidewalk, grainy road, trees, poles), cars, riders
on bicycles and crowds of tiny people.

Determinism: scene (seed, split, index) is drawn from `np.random.default_rng([seed, crc32(split), index])`, so
it does not depend on the format, the number of images or what was generated before; with the same image size
the three formats hold the same scenes. Files are written in a fixed order with fixed encoder settings, so the
same arguments give byte-identical trees.

Ground truth: every object is one outline polygon (the outer contour of what was drawn), and objects are
painted back to front. Visible masks are those polygons rasterised exactly like cityscapesscripts'
`createInstanceImage` (PIL, later polygons on top), so all three formats carry the same masks; keypoints and face
boxes are checked against those visible masks.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

import cv2
import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from dataset_adapters.base import (
    ADAPTERS, COCO_KEYPOINT_NAMES, DatasetAdapter, DatasetError, ImageRecord, check_option,
)

FORMATS = ("coco", "cityscapes", "bdd100k")
DEFAULT_IMAGE_SIZES = {"cityscapes": (256, 512), "coco": (240, 320), "bdd100k": (288, 512)}  # (height, width)
DEFAULT_SPLITS = {"train": 24, "val": 8}
MARKER = "avanon_synthetic.json"
GENERATOR_VERSION = 2  # 2: fine detail on people (outlines, prints, folds, hair) and a textured background

INSTANCE_KINDS = ("person", "rider", "bicycle", "car", "crowd")
HUMAN_KINDS = ("person", "rider", "crowd")
CITYSCAPES_LABELS = {"person": "person", "rider": "rider", "bicycle": "bicycle", "car": "car",
                     "crowd": "persongroup", "tree": "vegetation", "pole": "pole", "sign": "traffic sign"}
BDD_CATEGORIES = ("pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
BDD_CATEGORY_OF = {"person": "pedestrian", "crowd": "pedestrian", "rider": "rider", "car": "car",
                   "bicycle": "bicycle"}
COCO_CATEGORY_IDS = {"person": 1, "rider": 1, "crowd": 1, "bicycle": 2, "car": 3}
COCO_CATEGORIES = [{"supercategory": "person", "id": 1, "name": "person"},
                   {"supercategory": "vehicle", "id": 2, "name": "bicycle"},
                   {"supercategory": "vehicle", "id": 3, "name": "car"}]
# COCO's person skeleton (1-based keypoint indices), as in person_keypoints_*.json.
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                 [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
_CITIES = {"train": ("avalon", "bellmont"), "val": ("corvale",), "test": ("dunmore",)}
_COCO_SPLIT_BASE = {"train": 1_000_000, "val": 2_000_000, "test": 3_000_000}

# --------------------------------------------------------------------------------------------- drawing helpers

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


# --------------------------------------------------------------------------------------------------- people

# Part ids of a figure's part map (0 = empty).
SKIN, SHIRT, PANTS, SHOES, HAIR, SCLERA, DARK, LIPS, SHADE, ACCENT, SHIRT2 = range(1, 12)
_SKIN_TONES = np.float32([[255, 224, 196], [241, 194, 150], [224, 172, 125], [198, 140, 95], [160, 105, 70],
                          [120, 80, 55], [90, 60, 42]])
_HAIR_COLOURS = np.float32([[25, 20, 18], [60, 40, 28], [105, 72, 45], [190, 160, 100], [150, 150, 150],
                            [140, 60, 30]])
# Offsets from the head centre in the body frame (units of body height), from adult anthropometry: eye distance
# (IPD) 0.036 = 63 mm of 1.75 m, cheek-to-cheek ~2.2 IPD, face box (forehead to chin) ~1.3 x its width, eye line
# ~0.39, nose tip ~0.59 and ears ~0.45 of the box height from its top, so that boxes derived from head keypoints
# (the `keypoints` face provider) land where the drawn face is.
_HEAD_RX, _HEAD_RY, _FOREHEAD = 0.046, 0.066, 0.6  # head half-width / half-height; forehead at -0.6 ry
_HEAD_FEATURES = {
    "nose": (0.0, 0.023, 0.054), "left_eye": (0.018, 0.001, 0.042), "right_eye": (-0.018, 0.001, 0.042),
    "left_ear": (0.043, 0.008, -0.004), "right_ear": (-0.043, 0.008, -0.004), "mouth": (0.0, 0.043, 0.042),
}


@dataclass
class Figure:
    """A posed person projected into the image.

    theta: facing angle (0 = towards the camera, +-pi/2 = profile, pi = back). kp_xy: (17, 2) projected COCO joints;
    kp_hidden: (17,) face points on the far side of the head (eyes/nose seen from behind, the far ear in
    profile), which COCO annotators leave unlabelled. face_box: WIDER-Face-style box
    (forehead to chin, cheek to cheek) when the face is turned towards the camera, else None."""

    h: float
    theta: float
    mode: str
    kp_xy: np.ndarray
    kp_hidden: np.ndarray
    face_box: Optional[tuple[float, float, float, float]]
    sprite: _Sprite
    foot_y: float


def _rot_lean(p: np.ndarray, lean: float) -> np.ndarray:
    """Lean the upper body forward about the hips (rotation in the y-z plane)."""
    c, s = np.cos(lean), np.sin(lean)
    return np.array([p[0], p[1] * c + p[2] * s, p[2] * c - p[1] * s])


def _pose(rng: np.random.Generator, mode: str) -> tuple[dict[str, np.ndarray], dict]:
    """3D joints in the body frame: x = the person's left, y = down, z = forward; origin mid-hip; unit = height."""
    build = rng.uniform(0.88, 1.12)
    hw, sw = 0.078 * build, 0.118 * build
    lt, ls, la, lf = 0.245, 0.225, 0.165, 0.15
    sides = (1, -1)
    lean, special = 0.0, None
    if mode == "walk":
        amp, ph = rng.uniform(0.2, 0.45), rng.uniform(0, 2 * np.pi)
        phi = {1: amp * np.sin(ph), -1: -amp * np.sin(ph)}
        kappa = {s: 0.05 + (rng.uniform(0.2, 0.6) if phi[s] < 0 else rng.uniform(0, 0.15)) for s in sides}
        psi = {s: -0.8 * phi[s] + rng.uniform(-0.08, 0.08) for s in sides}
        eps = {s: rng.uniform(0.1, 0.5) for s in sides}
        alpha = {s: rng.uniform(0.04, 0.14) for s in sides}
        lean = rng.uniform(0.0, 0.08)
    elif mode == "ride":
        base, q = rng.uniform(1.0, 1.3), rng.uniform(0, 2 * np.pi)
        phi = {s: base + s * 0.3 * np.sin(q) for s in sides}
        kappa = {s: rng.uniform(1.35, 1.65) + s * 0.25 * np.sin(q) for s in sides}
        psi = {s: rng.uniform(0.6, 0.95) for s in sides}
        eps = {s: rng.uniform(0.0, 0.3) for s in sides}
        alpha = {s: 0.05 for s in sides}
        lean = rng.uniform(0.3, 0.6)
    else:  # stand
        phi = {s: rng.uniform(-0.08, 0.08) for s in sides}
        kappa = {s: rng.uniform(0.0, 0.06) for s in sides}
        psi = {s: rng.uniform(-0.15, 0.15) for s in sides}
        eps = {s: rng.uniform(0.0, 0.35) for s in sides}
        alpha = {s: rng.uniform(0.05, 0.22) for s in sides}
        r = rng.random()
        if r < 0.18:
            special = ("phone", int(rng.choice(sides)))
        elif r < 0.26:
            special = ("wave", int(rng.choice(sides)))
    P: dict[str, np.ndarray] = {}
    upper = []
    for s, side in ((1, "left"), (-1, "right")):
        hip = np.array([s * hw, 0.0, 0.0])
        knee = hip + lt * np.array([s * 0.03, np.cos(phi[s]), np.sin(phi[s])])
        ankle = knee + ls * np.array([0.0, np.cos(phi[s] - kappa[s]), np.sin(phi[s] - kappa[s])])
        P[f"{side}_hip"], P[f"{side}_knee"], P[f"{side}_ankle"] = hip, knee, ankle
        P[f"{side}_toe"] = ankle + np.array([0.0, 0.025, 0.07])
        sh = np.array([s * sw, -0.33, 0.0])
        if special == ("phone", s):
            d = np.array([s * 0.3, 0.2, 0.93])
            elbow = sh + la * d / np.linalg.norm(d)
            wrist = np.array([s * 0.058, -0.43, 0.035])
            hand = wrist + np.array([0.0, -0.012, 0.008])
        else:
            a, p_, e = alpha[s], psi[s], eps[s]
            if special == ("wave", s):
                a, p_, e = 0.35, rng.uniform(2.3, 2.8), rng.uniform(0.1, 0.5)
            elbow = sh + la * np.array([s * np.sin(a), np.cos(a) * np.cos(p_), np.cos(a) * np.sin(p_)])
            wd = np.array([s * np.sin(a) * 0.5, np.cos(p_ + e), np.sin(p_ + e)])
            wd /= np.linalg.norm(wd)
            wrist = elbow + lf * wd
            hand = wrist + 0.03 * wd
        P[f"{side}_shoulder"], P[f"{side}_elbow"], P[f"{side}_wrist"], P[f"{side}_hand"] = sh, elbow, wrist, hand
        upper += [f"{side}_shoulder", f"{side}_elbow", f"{side}_wrist", f"{side}_hand"]
    P["neck"] = np.array([0.0, -0.35, 0.0])
    P["head"] = np.array([0.0, -0.435, 0.012])
    P["backpack"] = np.array([0.0, -0.2, -0.1])
    upper += ["neck", "head", "backpack"]
    for name, off in _HEAD_FEATURES.items():
        P["f_" + name] = P["head"] + np.array(off)
        upper.append("f_" + name)
    for name in upper:
        P[name] = _rot_lean(P[name], lean)
    return P, {"build": build, "lean": lean, "sw": sw, "hw": hw}


def _appearance(rng: np.random.Generator) -> dict:
    skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] * rng.uniform(0.92, 1.05)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
    shirt = _hsv(rng.random(), rng.uniform(0.15, 0.9), rng.uniform(0.25, 0.95))
    r = rng.random()
    if r < 0.45:
        pants = _hsv(rng.uniform(0.58, 0.64), rng.uniform(0.35, 0.65), rng.uniform(0.3, 0.6))  # jeans
    elif r < 0.75:
        pants = np.float32([1, 1, 1]) * rng.uniform(25, 80)
    else:
        pants = _hsv(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.85))
    lut = np.zeros((16, 3), np.float32)
    lut[SKIN], lut[SHIRT], lut[PANTS], lut[HAIR] = skin, shirt, pants, hair
    lut[SHOES] = np.float32([1, 1, 1]) * (rng.uniform(15, 60) if rng.random() < 0.75 else rng.uniform(180, 235))
    lut[SCLERA] = np.float32([238, 236, 230])
    lut[DARK] = np.float32([22, 18, 16])
    lut[LIPS] = skin * 0.62 + np.float32([70, 8, 12])
    lut[SHADE] = skin * 0.78
    lut[ACCENT] = _hsv(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.8))
    lut[SHIRT2] = np.clip(shirt * rng.uniform(0.45, 0.7) if rng.random() < 0.5 else shirt * 0.4 + 150, 0, 255)
    return {
        "lut": lut,
        "pattern": rng.choice(["plain", "plain", "stripes", "checks", "jacket"], p=[0.3, 0.2, 0.25, 0.1, 0.15]),
        "sleeves": "long" if rng.random() < 0.6 else "short",
        "bottom": rng.choice(["pants", "shorts", "skirt"], p=[0.7, 0.15, 0.15]),
        "long_hair": rng.random() < 0.3, "bald": rng.random() < 0.06,
        "hat": rng.random() < 0.12, "backpack": rng.random() < 0.2,
    }


def make_figure(rng: np.random.Generator, h: float, cx: float, foot_y: float, mode: str = "walk",
                theta: Optional[float] = None) -> Figure:
    """Pose, project and draw one person of height h px whose lowest point touches foot_y, centred at cx.

    The drawing goes into a part map (skin, shirt, pants, hair, eyes...) painted back to front by the depth of
    each body part, so limbs behind the torso are hidden and limbs in front cover it; the part map is then
    coloured with per-person palettes, patterns and shading."""
    if theta is None:
        theta = float(rng.choice([0.0, np.pi, np.pi / 2, -np.pi / 2, np.pi / 4, -np.pi / 4, 3 * np.pi / 4,
                                  -3 * np.pi / 4]) + rng.uniform(-0.3, 0.3))
    P, info = _pose(rng, mode)
    look = _appearance(rng)
    ct, st = np.cos(theta), np.sin(theta)
    names = list(P)
    arr = np.stack([P[n] for n in names])
    X = arr[:, 0] * ct + arr[:, 2] * st
    D = dict(zip(names, arr[:, 2] * ct - arr[:, 0] * st))
    lowest = max(P["left_toe"][1], P["right_toe"][1], P["left_ankle"][1], P["right_ankle"][1]) + 0.02
    if mode == "ride":
        lowest = max(P["left_ankle"][1], P["right_ankle"][1]) + 0.02
    oy = foot_y - lowest * h
    xy = np.stack([cx + X * h, oy + arr[:, 1] * h], axis=1)
    Q = dict(zip(names, xy))

    rx, ry = _HEAD_RX * h, _HEAD_RY * h
    x0, y0, parts = _new_canvas(xy, margin=0.12 * h + 3)
    off = np.array([x0, y0], float)
    L = {n: Q[n] - off for n in names}  # local coordinates

    def limb(a, b, wa, wb, val):
        _capsule(parts, L[a], L[b], wa * h, wb * h, val)

    items: list[tuple[float, int, str, object]] = []  # (depth, sequence, kind, payload)
    seq = iter(range(1000))
    for side in ("left", "right"):
        depth = (D[f"{side}_knee"] + D[f"{side}_ankle"]) / 2 - 0.002
        items.append((depth, next(seq), "leg", side))
        depth = (D[f"{side}_elbow"] + D[f"{side}_wrist"]) / 2 + 0.001
        items.append((depth, next(seq), "arm", side))
    items.append((0.0, next(seq), "torso", None))
    if look["bottom"] == "skirt":
        items.append((0.0005, next(seq), "skirt", None))
    if look["backpack"]:
        items.append((D["backpack"], next(seq), "backpack", None))
    if look["long_hair"]:
        items.append((-0.02 * ct + 0.003, next(seq), "long_hair", None))
    items.append((0.004, next(seq), "head", None))
    items.sort(key=lambda t: (t[0], t[1]))

    lean = info["lean"]
    lut = look["lut"]
    face_box = None
    for _, _, kind, side in items:
        if kind == "leg":
            thigh = PANTS if look["bottom"] == "pants" or look["bottom"] == "shorts" else SKIN
            shin = PANTS if look["bottom"] == "pants" else SKIN
            limb(f"{side}_ankle", f"{side}_toe", 0.05, 0.04, SHOES)
            limb(f"{side}_knee", f"{side}_ankle", 0.068, 0.052, shin)
            limb(f"{side}_hip", f"{side}_knee", 0.095, 0.07, thigh)
            if look["bottom"] == "shorts":
                mid = (L[f"{side}_hip"] + L[f"{side}_knee"]) / 2
                _capsule(parts, mid, L[f"{side}_knee"], 0.066 * h, 0.062 * h, SKIN)
        elif kind == "arm":
            sleeve_lower = SHIRT if look["sleeves"] == "long" else SKIN
            limb(f"{side}_elbow", f"{side}_wrist", 0.05, 0.042, sleeve_lower)
            limb(f"{side}_shoulder", f"{side}_elbow", 0.062, 0.052, SHIRT)
            _capsule(parts, L[f"{side}_wrist"], L[f"{side}_hand"], 0.045 * h, 0.04 * h, SKIN)
        elif kind == "torso":
            b = info["build"]
            levels = [(-0.335, 0.125 * b, 0.05), (-0.25, 0.118 * b, 0.058), (-0.1, 0.088 * b, 0.05),
                      (0.045, 0.1 * b, 0.055)]
            left_pts, right_pts = [], []
            for y, half_w, half_d in levels:
                c = _rot_lean(np.array([0.0, y, 0.0]), lean * min(1.0, max(0.0, -y / 0.33)))
                ccx = cx + (c[0] * ct + c[2] * st) * h - x0
                ccy = oy + c[1] * h - y0
                hwp = (abs(half_w * ct) + abs(half_d * st)) * h
                left_pts.append((ccx - hwp, ccy))
                right_pts.append((ccx + hwp, ccy))
            torso = np.array(left_pts + right_pts[::-1])
            _poly(parts, torso, SHIRT)
            for side2 in ("left", "right"):
                cv2.circle(parts, _pt(L[f"{side2}_shoulder"]), _fx(0.034 * h), SHIRT, -1, cv2.LINE_8, _SHIFT)
            if look["pattern"] == "jacket" and abs(ct) > 0.5:
                top = (torso[0] + torso[-1]) / 2
                bottom = (torso[3] + torso[4]) / 2
                _capsule(parts, top, bottom, 0.03 * h, 0.03 * h, SHIRT2)
        elif kind == "skirt":
            hl, hr = L["left_hip"], L["right_hip"]
            kl, kr = L["left_knee"], L["right_knee"]
            cxh = (hl + hr) / 2
            wide = 0.11 * h * (0.5 + 0.5 * abs(ct))
            y_top = cxh[1] - 0.03 * h
            y_bot = (kl[1] + kr[1]) / 2 - 0.03 * h
            xk = (kl[0] + kr[0]) / 2
            _poly(parts, [(cxh[0] - wide * 0.9, y_top), (cxh[0] + wide * 0.9, y_top),
                          (xk + wide * 1.25, y_bot), (xk - wide * 1.25, y_bot)], PANTS)
        elif kind == "backpack":
            c = L["backpack"]
            wpx = (abs(0.085 * ct) + abs(0.06 * st)) * h
            _poly(parts, [(c[0] - wpx, c[1] - 0.1 * h), (c[0] + wpx, c[1] - 0.1 * h),
                          (c[0] + wpx, c[1] + 0.1 * h), (c[0] - wpx, c[1] + 0.1 * h)], ACCENT)
        elif kind == "long_hair":
            c = L["head"] + np.array([0.0, 0.55 * ry])
            _ellipse(parts, c, rx * 1.08, ry * 1.1, HAIR)
        elif kind == "head":
            face_box = _draw_head(parts, L, theta, rx, ry, h, look, off)
    lut = lut.copy()
    if look["bald"]:
        lut[HAIR] = lut[SKIN] * 0.95
    axis_x = float((L["neck"][0] + (L["left_hip"][0] + L["right_hip"][0]) / 2) / 2)
    rgb = _colourize(parts, lut, rng, noise=5.0, shade_cx=axis_x, shade_w=0.2 * h)
    _apply_pattern(rgb, parts, look, h, rng)
    _fine_detail(rgb, parts, h, _rng_child(rng))
    sprite = _Sprite(x0, y0, rgb, parts > 0)

    kp_xy = np.stack([Q["f_" + n] if "_eye" in n or "_ear" in n or n == "nose" else Q[n]
                      for n in COCO_KEYPOINT_NAMES])
    hidden = np.zeros(17, bool)
    hidden[:5] = [_facing(_HEAD_FEATURES[n], theta) < -0.15 for n in COCO_KEYPOINT_NAMES[:5]]
    return Figure(h=h, theta=theta, mode=mode, kp_xy=kp_xy, kp_hidden=hidden, face_box=face_box, sprite=sprite,
                  foot_y=foot_y)


def _facing(off3, theta: float) -> float:
    """How much a head-surface point faces the camera (cosine between its horizontal normal and the view)."""
    n = np.array([off3[0], off3[2]], float)
    n /= max(np.linalg.norm(n), 1e-9)
    return float(n[1] * np.cos(theta) - n[0] * np.sin(theta))


def _draw_head(parts, L, theta, rx, ry, h, look, off) -> Optional[tuple[float, float, float, float]]:
    """Neck, hair, face skin and features. Returns the face box in image coordinates when the face is visible."""
    ct, st = np.cos(theta), np.sin(theta)
    _capsule(parts, L["neck"], L["head"], 0.048 * h, 0.048 * h, SKIN)
    c = L["head"]
    _ellipse(parts, c, rx, ry, HAIR)
    box = None
    if ct > -0.25:
        fc = c + np.array([0.28 * rx * st, 0.16 * ry])
        frx, fry = rx * (0.62 + 0.26 * abs(ct)), ry * 0.84
        _ellipse(parts, fc, frx, fry, SKIN)
        for side in ("left", "right"):  # ears on the visible side(s)
            if _facing(_HEAD_FEATURES[f"{side}_ear"], theta) > -0.3:
                _ellipse(parts, L[f"f_{side}_ear"], 0.17 * rx, 0.27 * ry, SHADE)
        tiny = rx < 2.5
        for side in ("left", "right"):
            f = _facing(_HEAD_FEATURES[f"{side}_eye"], theta)
            if f <= 0.2:
                continue
            e = L[f"f_{side}_eye"]
            if tiny:
                cv2.circle(parts, _pt(e), _fx(max(0.12 * rx, 0.5)), DARK, -1, cv2.LINE_8, _SHIFT)
                continue
            _ellipse(parts, e, 0.22 * rx * max(f, 0.45), 0.12 * ry, SCLERA)
            cv2.circle(parts, _pt(e + np.array([0.05 * rx * st, 0.0])), _fx(max(0.095 * rx, 0.5)), DARK, -1,
                       cv2.LINE_8, _SHIFT)
            brow = e + np.array([0.0, -0.24 * ry])
            dx = 0.2 * rx * max(f, 0.45)
            cv2.line(parts, _pt(brow - [dx, -0.02 * ry]), _pt(brow + [dx, 0.0]), DARK,
                     max(1, int(round(0.07 * ry))), cv2.LINE_8, _SHIFT)
        if _facing(_HEAD_FEATURES["nose"], theta) > -0.1:
            n = L["f_nose"]
            _ellipse(parts, n, max(0.1 * rx, 0.5), max(0.16 * ry, 0.5), SHADE)
        fm = _facing(_HEAD_FEATURES["mouth"], theta)
        if fm > 0.15:
            m = L["f_mouth"]
            _ellipse(parts, m, max(0.27 * rx * max(fm, 0.4), 0.6), max(0.075 * ry, 0.5), LIPS)
        if ct > -0.1:
            box = (fc[0] - frx + off[0], c[1] - _FOREHEAD * ry + off[1], fc[0] + frx + off[0], c[1] + ry + off[1])
    if look["hat"]:
        cap = c + np.array([0.0, -0.55 * ry])
        _ellipse(parts, cap, rx * 1.05, ry * 0.5, ACCENT)
        brim = c + np.array([0.55 * rx * st, -0.38 * ry])
        _ellipse(parts, brim, rx * (0.6 + 0.5 * abs(st)), max(ry * 0.1, 0.5), ACCENT)
    return box


def _apply_pattern(rgb: np.ndarray, parts: np.ndarray, look: dict, h: float, rng: np.random.Generator) -> None:
    """Stripes or checks on the shirt: appearance cues a detector can use besides the silhouette."""
    pattern = look["pattern"]
    if pattern not in ("stripes", "checks"):
        return
    period = max(2, int(round(0.035 * h * rng.uniform(0.7, 1.4))))
    yy, xx = np.indices(parts.shape)
    on = (yy // period) % 2 == 0
    if pattern == "checks":
        on ^= (xx // period) % 2 == 0
    sel = (parts == SHIRT) & on
    rgb[sel] = np.clip(rgb[sel].astype(np.float32) * 0.55 + look["lut"][SHIRT2] * 0.45, 0, 255).astype(np.uint8)


def _fine_detail(rgb: np.ndarray, parts: np.ndarray, h: float, rng: np.random.Generator) -> None:
    """Detail at the scale of a few pixels, as real people have (seams, prints, folds, hair): dark outlines
    between parts, a print on every garment and strands in the hair. This is what a body blur removes; without it a
    blurred synthetic person keeps everything a detector learned from the sharp one (silhouette and colours), and
    training on blurred people would not hurt, unlike on real data (Paper F, Table 1)."""
    f = rgb.astype(np.float32)
    # outlines: darken pixels whose 4-neighbourhood holds another part (incl. the silhouette edge)
    p = parts.astype(np.int16)
    edge = np.zeros(parts.shape, bool)
    edge[1:] |= p[1:] != p[:-1]
    edge[:-1] |= p[:-1] != p[1:]
    edge[:, 1:] |= p[:, 1:] != p[:, :-1]
    edge[:, :-1] |= p[:, :-1] != p[:, 1:]
    edge &= parts > 0
    f[edge] *= 0.55
    yy, xx = np.indices(parts.shape)
    for part in (SHIRT, PANTS, SHIRT2, ACCENT):
        sel = parts == part
        if not sel.any():
            continue
        period = max(2.0, 0.03 * h * rng.uniform(0.7, 1.3))
        kind = rng.integers(4)  # stripes, checks, dots, patches
        ang = rng.uniform(0, np.pi)
        u = (xx * np.cos(ang) + yy * np.sin(ang)) / period
        if kind == 0:
            on = (np.floor(u) % 2) == 0
        elif kind == 1:
            v = (-xx * np.sin(ang) + yy * np.cos(ang)) / period
            on = ((np.floor(u) + np.floor(v)) % 2) == 0
        elif kind == 2:
            v = (-xx * np.sin(ang) + yy * np.cos(ang)) / period
            on = ((u % 1 - 0.5) ** 2 + (v % 1 - 0.5) ** 2) < 0.09
        else:
            noise = rng.random((max(2, int(parts.shape[0] / period) + 2), max(2, int(parts.shape[1] / period) + 2)))
            on = cv2.resize(noise.astype(np.float32), (parts.shape[1], parts.shape[0]),
                            interpolation=cv2.INTER_NEAREST) > 0.5
        gain = np.where(on, 1.27, 0.55)
        f[sel] *= gain[sel, None]
    hair = parts == HAIR
    if hair.any():
        f[hair] *= (1.0 + 0.5 * (rng.random(int(hair.sum())) - 0.5))[:, None]
    rgb[:] = np.clip(f, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------- vehicles and props


def _bicycle_sprite(rng: np.random.Generator, fig: Figure) -> _Sprite:
    """A bicycle under a riding figure: saddle at the hips, handlebar at the hands, wheels touching the ground."""
    h, st = fig.h, np.sin(fig.theta)
    sgn = 1.0 if st >= 0 else -1.0
    kp = fig.kp_xy
    hip = (kp[11] + kp[12]) / 2
    hands = (kp[9] + kp[10]) / 2
    ground = max(kp[15][1], kp[16][1]) + 0.1 * h
    r = 0.17 * h
    fore = abs(st) * 0.85 + 0.15
    rear_hub = np.array([hip[0] - sgn * 0.2 * h * fore, ground - r])
    front_hub = np.array([hands[0] + sgn * 0.12 * h * fore, ground - r])
    bb = np.array([hip[0] + sgn * 0.05 * h * fore, ground - 0.75 * r])
    saddle = hip + np.array([0.0, 0.03 * h])
    head_tube = hands + np.array([-sgn * 0.02 * h, 0.05 * h])
    pts = np.stack([rear_hub, front_hub, bb, saddle, head_tube, hands])
    x0, y0, parts = _new_canvas(pts, margin=r + 0.05 * h + 2)
    o = np.array([x0, y0], float)
    t = max(0.022 * h, 1.0)
    ring = max(1, int(round(0.03 * h)))
    for hub in (rear_hub, front_hub):
        cv2.ellipse(parts, _pt(hub - o), (max(_fx(r * fore), 1), _fx(r)), 0, 0, 360, 2, ring, cv2.LINE_8, _SHIFT)
        for ang in np.linspace(0, np.pi, 3, endpoint=False):  # spokes
            d = np.array([np.cos(ang) * r * fore, np.sin(ang) * r])
            cv2.line(parts, _pt(hub - o - d), _pt(hub - o + d), 3, 1, cv2.LINE_8, _SHIFT)
    for a, b in ((rear_hub, bb), (bb, saddle), (rear_hub, saddle), (bb, head_tube), (saddle, head_tube),
                 (head_tube, front_hub), (head_tube, hands)):
        _capsule(parts, a - o, b - o, t, t, 1)
    _capsule(parts, saddle - o - [sgn * 0.04 * h, 0], saddle - o + [sgn * 0.03 * h, 0], 0.025 * h, 0.02 * h, 3)
    lut = np.zeros((4, 3), np.float32)
    lut[1] = _hsv(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.3, 0.9))
    lut[2] = np.float32([28, 28, 30])
    lut[3] = np.float32([70, 70, 72])
    return _Sprite(x0, y0, _colourize(parts, lut, rng, 4.0), parts > 0)


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


# ------------------------------------------------------------------------------------------------- background


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


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.int32)


# ------------------------------------------------------------------------------------------------- scene model


@dataclass
class SceneObject:
    """One drawn object.

    polygon: (N, 2) int32 outline in image coordinates (the Cityscapes polygon); box/visible: tight box
    (x0, y0, x1, y1; exclusive ends) and bool mask of the pixels it owns in the final label map (after the objects
    in front of it); keypoints: (17, 3) COCO convention (integer x, y; v 2 visible, 1 labelled but hidden, 0 not
    labelled with x = y = 0) for people and riders; kp_xy: the projected joints, including unlabelled ones;
    face_box: WIDER-Face-style box when the face is visible."""

    kind: str
    depth: float
    polygon: np.ndarray = field(repr=False)
    full_area: int = 0
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    visible: np.ndarray = field(default=None, repr=False)
    keypoints: Optional[np.ndarray] = field(default=None, repr=False)
    kp_xy: Optional[np.ndarray] = field(default=None, repr=False)
    face_box: Optional[tuple[float, float, float, float]] = None
    truncated: bool = False
    occluded: bool = False
    members: int = 0  # people in a crowd
    height_px: float = 0.0
    theta: Optional[float] = None
    _sprite: Optional[_Sprite] = field(default=None, repr=False)
    _region: Optional[tuple[int, int, np.ndarray]] = field(default=None, repr=False)  # (x0, y0, raster)
    _figure: Optional[Figure] = field(default=None, repr=False)
    _group: int = -1

    @property
    def is_instance(self) -> bool:
        return self.kind in INSTANCE_KINDS

    @property
    def iscrowd(self) -> bool:
        return self.kind == "crowd"

    @property
    def area(self) -> int:
        return int(self.visible.sum()) if self.visible is not None else 0

    def full_mask(self, height: int, width: int) -> np.ndarray:
        """The visible mask as a full-image bool array."""
        out = np.zeros((height, width), bool)
        x0, y0, x1, y1 = self.box
        if self.visible is not None:
            out[y0:y1, x0:x1] = self.visible
        return out


@dataclass
class Scene:
    """A rendered scene: RGB image, background polygons and objects in drawing order (back to front)."""

    image: np.ndarray
    stuff: list[tuple[str, np.ndarray]]
    objects: list[SceneObject]

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def instances(self) -> list[SceneObject]:
        return [o for o in self.objects if o.is_instance]

    def cityscapes_json(self) -> dict:
        """The gtFine polygons JSON: stuff first, then every object in drawing order."""
        objects = [{"label": label, "polygon": poly.tolist()} for label, poly in self.stuff]
        objects += [{"label": CITYSCAPES_LABELS[o.kind], "polygon": o.polygon.tolist()} for o in self.objects]
        return {"imgHeight": self.height, "imgWidth": self.width, "objects": objects}


def _polygon_of(sprite: _Sprite, H: int, W: int) -> Optional[tuple[np.ndarray, bool]]:
    """Outer contour of the largest 8-connected part of the sprite inside the image, and whether the sprite was
    cut by the image border. None when nothing usable is inside."""
    x0, y0 = sprite.x0, sprite.y0
    h, w = sprite.mask.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if cx1 - cx0 < 2 or cy1 - cy0 < 2:
        return None
    m = sprite.mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    truncated = int(m.sum()) < int(sprite.mask.sum())
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    if n < 2:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = np.pad((lab == k).astype(np.uint8), 1)
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    c = max(contours, key=len)[:, 0, :] - 1 + np.array([cx0, cy0])
    if len(c) < 3:
        return None
    return c.astype(np.int32), truncated


def _raster(poly: np.ndarray) -> tuple[int, int, np.ndarray]:
    """The polygon rasterised by PIL, as cityscapesscripts does (translation-invariant, so drawn locally)."""
    x0, y0 = poly.min(axis=0)
    x1, y1 = poly.max(axis=0)
    im = Image.new("L", (int(x1 - x0 + 1), int(y1 - y0 + 1)), 0)
    ImageDraw.Draw(im).polygon([(int(x - x0), int(y - y0)) for x, y in poly], fill=1)
    return int(x0), int(y0), np.asarray(im, bool)


def _label_map(objs: list[SceneObject], H: int, W: int) -> np.ndarray:
    lab = np.full((H, W), -1, np.int32)
    for i, o in enumerate(objs):
        x0, y0, r = o._region
        sub = lab[y0:y0 + r.shape[0], x0:x0 + r.shape[1]]
        sub[r] = i
    return lab


def _min_visible(kind: str) -> float:
    return {"person": 0.3, "rider": 0.3, "bicycle": 0.15, "car": 0.2, "crowd": 0.3}.get(kind, 0.0)


def _resolve(objs: list[SceneObject], H: int, W: int) -> tuple[list[SceneObject], np.ndarray]:
    """Outline every object, order back to front, drop instances hidden too much (with their rider/bicycle
    partner) and return the survivors with their final label map."""
    kept = []
    for o in objs:
        res = _polygon_of(o._sprite, H, W)
        if res is None:
            continue
        o.polygon, o.truncated = res
        o._region = _raster(o.polygon)
        o.full_area = int(o._region[2].sum())
        kept.append(o)
    kept.sort(key=lambda o: o.depth)  # stable: creation order breaks ties (bicycle before its rider)
    for _ in range(3):  # removing objects only uncovers others, so this settles after one removal
        lab = _label_map(kept, H, W)
        counts = np.bincount(lab.ravel() + 1, minlength=len(kept) + 1)[1:]
        bad_groups, bad = set(), set()
        for i, o in enumerate(kept):
            if not o.is_instance:
                if counts[i] == 0:  # fully hidden prop: nothing to draw or annotate
                    bad.add(i)
                continue
            if counts[i] < 12 or counts[i] < _min_visible(o.kind) * o.full_area:
                bad.add(i)
                if o._group >= 0:
                    bad_groups.add(o._group)
        if not bad and not bad_groups:
            break
        kept = [o for i, o in enumerate(kept) if i not in bad and (o._group < 0 or o._group not in bad_groups)]
    lab = _label_map(kept, H, W)
    for i, o in enumerate(kept):
        x0, y0, r = o._region
        own = lab[y0:y0 + r.shape[0], x0:x0 + r.shape[1]] == i
        ys, xs = np.nonzero(own)
        o.box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
        o.visible = own[ys.min():ys.max() + 1, xs.min():xs.max() + 1].copy()
        o.occluded = o.area < 0.9 * o.full_area
    return kept, lab


def _annotate_person(o: SceneObject, index: int, lab: np.ndarray, rng: np.random.Generator) -> None:
    """Keypoints (COCO visibility rules) and the face box, checked against the final label map."""
    H, W = lab.shape
    fig = o._figure
    o.kp_xy = fig.kp_xy.astype(np.float32)
    kps = np.zeros((17, 3), np.float32)
    small = fig.h < 0.07 * H
    if not (rng.random() < (0.6 if small else 0.05)):
        for j, (x, y) in enumerate(fig.kp_xy):
            xi, yi = int(round(x)), int(round(y))
            if not (0 <= xi < W and 0 <= yi < H):
                continue
            if fig.kp_hidden[j]:
                continue
            kps[j] = (xi, yi, 2 if lab[yi, xi] == index else 1)
    o.keypoints = kps
    if fig.face_box is not None:
        x0, y0, x1, y1 = fig.face_box
        bw, bh = x1 - x0, y1 - y0
        cx0, cy0, cx1, cy1 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0), \
            min(int(np.ceil(x1)), W), min(int(np.ceil(y1)), H)
        inside = max(cx1 - cx0, 0) * max(cy1 - cy0, 0)
        full = max(np.ceil(x1) - np.floor(x0), 1) * max(np.ceil(y1) - np.floor(y0), 1)
        if bh >= 3 and bw >= 2 and inside >= 0.8 * full:
            own = (lab[cy0:cy1, cx0:cx1] == index).mean()
            if own >= 0.6:
                o.face_box = (round(float(max(x0, 0)), 2), round(float(max(y0, 0)), 2),
                              round(float(min(x1, W)), 2), round(float(min(y1, H)), 2))


def _sample_height(rng: np.random.Generator, H: int, heights: Optional[tuple[float, float]] = None) -> float:
    """Person heights: ~20% tiny (5-14% of the image height), the rest log-uniform up to 75%, so that about a
    third of the boxes are under 32x32 px at the default sizes, as in the paper's street datasets. With
    `heights` (lo, hi): log-uniform over that fraction of the image height, no tiny ones."""
    if heights is not None:
        return float(np.exp(rng.uniform(np.log(heights[0]), np.log(heights[1])))) * H
    if rng.random() < 0.2:
        return rng.uniform(0.05, 0.14) * H
    return float(np.exp(rng.uniform(np.log(0.16), np.log(0.75)))) * H


def render_scene(rng: np.random.Generator, height: int, width: int,
                 person_heights: Optional[tuple[float, float]] = None) -> Scene:
    """Draw one street scene and its ground truth.

    Contents: 1-8 pedestrians (standing or walking, any facing, some side by side so they overlap), 0-3 cars,
    a rider on a bicycle in ~35% of scenes, a crowd of 5-12 tiny people in ~30%, 0-2 trees and poles with signs.
    Perspective: a person whose feet are at y has height ~1.25 (y - horizon), so small people are far away.
    person_heights: (lo, hi) fractions of the image height for the pedestrians (default: `_sample_height`'s mix)."""
    H, W = int(height), int(width)
    if H < 32 or W < 32:
        raise ValueError(f"image size {H}x{W} is too small; use at least 32x32")
    horizon = rng.uniform(0.36, 0.46) * H
    base = horizon + rng.uniform(0.02, 0.06) * H
    curb = base + rng.uniform(0.06, 0.12) * H
    lay = _Layout(H, W, horizon, base, curb, rng.uniform(0.3, 0.7) * W, person_heights)
    background, stuff = _paint_background(rng, lay)
    for _attempt in range(20):
        objs = _sample_objects(rng, lay)
        kept, lab = _resolve(objs, H, W)
        if any(o.kind == "person" for o in kept):
            break
    ann_rng = _rng_child(rng)
    for i, o in enumerate(kept):
        if o.kind in ("person", "rider"):
            _annotate_person(o, i, lab, ann_rng)
    image = background
    for o in kept:  # paint back to front, each sprite clipped to its own polygon
        s = o._sprite
        x0, y0, r = o._region
        h, w = r.shape
        sx, sy = x0 - s.x0, y0 - s.y0
        sm = np.zeros((h, w), bool)
        sr = np.zeros((h, w, 3), np.uint8)
        ys0, xs0 = max(sy, 0), max(sx, 0)
        ys1, xs1 = min(sy + h, s.mask.shape[0]), min(sx + w, s.mask.shape[1])
        paint = s.paint if isinstance(s, _GroupSprite) else s.mask
        sm[ys0 - sy:ys1 - sy, xs0 - sx:xs1 - sx] = paint[ys0:ys1, xs0:xs1]
        sr[ys0 - sy:ys1 - sy, xs0 - sx:xs1 - sx] = s.rgb[ys0:ys1, xs0:xs1]
        m = sm & r
        image[y0:y0 + h, x0:x0 + w][m] = sr[m]
    image = _camera(rng, image)
    for o in kept:
        o._sprite = None  # drop the pixels; the scene keeps only what it exposes
        o._region = None
    return Scene(image=image, stuff=stuff, objects=kept)


def _camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Exposure, white balance, slight lens blur and sensor noise, so scenes differ in global appearance."""
    img = img * rng.uniform(0.8, 1.15) * rng.uniform(0.93, 1.07, size=3).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    img += rng.normal(0, 2.5, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _sample_objects(rng: np.random.Generator, lay: _Layout) -> list[SceneObject]:
    H, W = lay.height, lay.width
    objs: list[SceneObject] = []
    group = iter(range(10**6))

    def ground_for(h):
        k = rng.uniform(1.15, 1.35)
        y = lay.horizon + h / k
        if y < lay.base + 0.005 * H:  # keep feet on the ground plane
            y = lay.base + rng.uniform(0.005, 0.03) * H
            h = k * (y - lay.horizon)
        return min(y, H + 0.15 * h), h

    people: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(1, 9))):
        if people and rng.random() < 0.3:  # walk next to someone: overlapping people
            px, py, ph = people[int(rng.integers(len(people)))]
            h = ph * rng.uniform(0.9, 1.1)
            x = px + rng.choice([-1, 1]) * rng.uniform(0.12, 0.35) * ph
            y = py + rng.uniform(-0.02, 0.04) * ph
        else:
            h = _sample_height(rng, H, lay.person_heights)
            y, h = ground_for(h)
            x = rng.uniform(-0.05, 1.05) * W
        people.append((x, y, h))
        mode = "walk" if rng.random() < 0.6 else "stand"
        fig = make_figure(_rng_child(rng), h, x, y, mode)
        objs.append(SceneObject(kind="person", depth=y, polygon=None, _sprite=fig.sprite, _figure=fig,
                                height_px=h, theta=fig.theta))
    for _ in range(int(rng.integers(0, 4))):
        y = rng.uniform(lay.curb + 0.03 * H, 1.1 * H)
        hc = 1.05 * (y - lay.horizon) * rng.uniform(0.9, 1.1)
        objs.append(SceneObject(kind="car", depth=y, polygon=None,
                                _sprite=_car_sprite(_rng_child(rng), hc, rng.uniform(-0.1, 1.1) * W, y)))
    n_riders = int(rng.random() < 0.35) + int(rng.random() < 0.1)
    for _ in range(n_riders):
        y = rng.uniform(lay.curb + 0.02 * H, 1.02 * H)
        h = 1.2 * (y - lay.horizon) * rng.uniform(0.9, 1.05)
        theta = float(rng.choice([-1.0, 1.0]) * (np.pi / 2 + rng.uniform(-0.45, 0.45)))
        fig_rng = _rng_child(rng)
        fig = make_figure(fig_rng, h, rng.uniform(0.05, 0.95) * W, y - 0.1 * h, "ride", theta=theta)
        g = next(group)
        bike = _bicycle_sprite(fig_rng, fig)
        objs.append(SceneObject(kind="bicycle", depth=y, polygon=None, _sprite=bike, _group=g))
        objs.append(SceneObject(kind="rider", depth=y, polygon=None, _sprite=fig.sprite, _figure=fig, _group=g,
                                height_px=h, theta=fig.theta))
    if rng.random() < 0.3:
        objs.append(_crowd(rng, lay))
    for _ in range(int(rng.integers(0, 3))):
        y = rng.uniform(lay.base, lay.curb)
        ht = 2.6 * (y - lay.horizon) * rng.uniform(0.8, 1.2)
        objs.append(SceneObject(kind="tree", depth=y, polygon=None,
                                _sprite=_tree_sprite(_rng_child(rng), ht, rng.uniform(0, 1) * W, y)))
    for _ in range(int(rng.integers(0, 3))):
        y = rng.uniform(lay.base, lay.curb)
        hp = 2.2 * (y - lay.horizon) * rng.uniform(0.85, 1.15)
        pole, sign = _pole_sprites(_rng_child(rng), hp, rng.uniform(0, 1) * W, y)
        objs.append(SceneObject(kind="pole", depth=y, polygon=None, _sprite=pole))
        objs.append(SceneObject(kind="sign", depth=y + 1e-6, polygon=None, _sprite=sign))
    return objs


def _crowd(rng: np.random.Generator, lay: _Layout) -> SceneObject:
    """5-12 tiny people packed together, annotated as one group region (closed union of their silhouettes)."""
    H, W = lay.height, lay.width
    y = rng.uniform(lay.base + 0.005 * H, lay.base + 0.04 * H)
    h0 = 1.25 * (y - lay.horizon)
    n = int(rng.integers(5, 13))
    cx = rng.uniform(0.1, 0.9) * W
    spread = 0.22 * h0 * n
    figs = []
    for _ in range(n):
        hy = y + rng.uniform(-0.04, 0.04) * h0
        figs.append(make_figure(_rng_child(rng), h0 * rng.uniform(0.88, 1.1), cx + rng.uniform(-0.5, 0.5) * spread,
                                hy, rng.choice(["walk", "stand"])))
    figs.sort(key=lambda f: f.foot_y)
    x0 = min(f.sprite.x0 for f in figs)
    y0 = min(f.sprite.y0 for f in figs)
    x1 = max(f.sprite.x0 + f.sprite.mask.shape[1] for f in figs)
    y1 = max(f.sprite.y0 + f.sprite.mask.shape[0] for f in figs)
    rgb = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for f in figs:
        s = f.sprite
        sl = (slice(s.y0 - y0, s.y0 - y0 + s.mask.shape[0]), slice(s.x0 - x0, s.x0 - x0 + s.mask.shape[1]))
        rgb[sl][s.mask] = s.rgb[s.mask]
        mask[sl] |= s.mask
    k = max(3, int(round(0.25 * h0)) | 1)
    closed = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((k, k), np.uint8)) > 0
    # The group's sprite covers the gaps between members too (background shows through where no one stands).
    return SceneObject(kind="crowd", depth=y - 0.05 * h0, polygon=None, members=n, height_px=h0,
                       _sprite=_GroupSprite(x0, y0, rgb, closed, mask))


@dataclass
class _GroupSprite(_Sprite):
    """A crowd: the outline comes from the closed mask, only the members' own pixels are painted."""

    paint: np.ndarray = None


def scene_for(seed: int, split: str, index: int, image_size: tuple[int, int],
              person_heights: Optional[tuple[float, float]] = None) -> Scene:
    """Scene `index` of `split`, exactly as `generate` writes it (for tests and for inspecting ground truth)."""
    rng = np.random.default_rng([int(seed), zlib.crc32(split.encode("utf-8")), int(index)])
    return render_scene(rng, int(image_size[0]), int(image_size[1]), person_heights)


# ---------------------------------------------------------------------------------------------------- writers


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_json(path: Path, obj, indent: Optional[int] = None) -> None:
    text = json.dumps(obj, indent=indent, separators=None if indent else (",", ":"))
    _write_bytes(path, text.encode("utf-8"))


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return buf.tobytes()


def _png(arr: np.ndarray) -> bytes:
    """PNG of an RGB / RGBA / grey (uint8 or uint16) array; cv2 wants BGR(A) channel order."""
    if arr.ndim == 3:
        arr = arr[..., [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[..., ::-1]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    assert ok
    return buf.tobytes()


def _r(v: float, nd: int = 2) -> float:
    return round(float(v), nd)


def coco_image_id(split: str, index: int) -> int:
    """Numeric COCO image id, unique across splits: 1_000_001.. for train, 2_000_001.. for val."""
    base = _COCO_SPLIT_BASE.get(split, (10 + zlib.crc32(split.encode("utf-8")) % 990) * 1_000_000)
    return base + index + 1


def bdd_name(seed: int, split: str, index: int) -> str:
    """BDD100K-style image name (two hex groups, like '0a0a0b1a-7c39d841')."""
    d = hashlib.sha1(f"avanon/{seed}/{split}/{index}".encode("utf-8")).hexdigest()
    return f"{d[:8]}-{d[8:16]}"


def cityscapes_stem(split: str, index: int) -> tuple[str, str]:
    """(city, '{city}_{seq:06d}_000019') of image `index` of a split; cities alternate within a split."""
    cities = _CITIES.get(split, (f"{''.join(ch for ch in split.lower() if ch.isalnum()) or 'x'}town",))
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_000019"


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths starting with background), as real COCO crowds use."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode("ascii"), "size": [int(v) for v in rle["size"]]}


def coco_polygons(obj: SceneObject) -> list[list[float]]:
    """Polygons of the visible mask that pycocotools rasterises back to exactly that mask: outer contours traced on
    the mask upsampled 4x, i.e. along the pixel edges (1/8 px inside), in COCO's continuous coordinates where
    pixel (x, y) covers [x, x+1) x [y, y+1). Contours through pixel centres would lose half a pixel all round."""
    x0, y0, _, _ = obj.box
    up = cv2.resize(obj.visible.astype(np.uint8), None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) < 3:
            continue
        pts = (c[:, 0, :].astype(np.float64) + 0.5) / 4 + np.array([x0, y0])
        polys.append([_r(v, 3) for v in pts.ravel()])
    return polys


def _detected_face(box, rng: np.random.Generator, min_height: float = 6.0):
    """A 'detector' output for a ground-truth face box: jittered by a few percent, score in [0.5, 1]; faces
    smaller than min_height px are missed, as DSFD misses tiny faces."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if h < min_height:
        return None
    j = rng.normal(0, 0.04, 4).clip(-0.08, 0.08) * np.array([w, h, w, h])
    return [_r(x0 + j[0]), _r(y0 + j[1]), _r(x1 + j[2]), _r(y1 + j[3])], _r(rng.uniform(0.5, 1.0), 4)


def _keypoint_rows(o: SceneObject) -> list[list[float]]:
    """Reference-style keypoints (a pose estimator's output): ground truth with confidence 0.9 where visible,
    0.1 where labelled but hidden, 0.0 where unlabelled (placed at the projected joint, clipped to the box)."""
    x0, y0, x1, y1 = o.box
    if o.keypoints is None:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        return [[_r(cx), _r(cy), 0.0] for _ in range(17)]
    rows = []
    for (x, y, v), (px, py) in zip(o.keypoints, o.kp_xy):
        if v > 0:
            rows.append([_r(x), _r(y), 0.9 if v == 2 else 0.1])
        else:
            rows.append([_r(np.clip(px, x0, x1 - 1)), _r(np.clip(py, y0, y1 - 1)), 0.0])
    return rows


class _Writer:
    """Writes the scenes of a split; `finish()` writes what spans the split (JSON label files)."""

    def __init__(self, root: Path, seed: int):
        self.root, self.seed = root, seed

    def aux_rng(self, split: str, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(split.encode("utf-8")), index, 0xFACE])


class _CocoWriter(_Writer):
    """`{split}2017/{id:012d}.jpg`, `annotations/{person_keypoints,instances}_{split}2017.json`, and the reference's
    `boxes_{split}2017.json` face boxes."""

    def split(self, split: str, scenes: Iterable[Scene]) -> None:
        images, kp_anns, inst_anns, boxes = [], [], [], {}
        for index, scene in enumerate(scenes):
            image_id = coco_image_id(split, index)
            file_name = f"{image_id:012d}.jpg"
            _write_bytes(self.root / f"{split}2017" / file_name, _jpeg(scene.image))
            images.append({"license": 1, "file_name": file_name, "coco_url": "", "height": scene.height,
                           "width": scene.width, "date_captured": "2017-01-01 00:00:00", "flickr_url": "",
                           "id": image_id})
            rng = self.aux_rng(split, index)
            face_boxes, face_indices, n_with_kp = [], [], 0
            k = 0
            for o in scene.objects:
                if not o.is_instance:
                    continue
                if o.iscrowd:
                    seg = _uncompressed_rle(o.full_mask(scene.height, scene.width))
                    rle = mask_utils.frPyObjects(seg, scene.height, scene.width)
                else:
                    seg = coco_polygons(o)
                    if not seg:
                        continue
                    rle = mask_utils.merge(mask_utils.frPyObjects(seg, scene.height, scene.width))
                area = float(mask_utils.area(rle))
                if area <= 0:
                    continue
                k += 1
                ann = {"segmentation": seg, "area": _r(area, 1), "iscrowd": int(o.iscrowd), "image_id": image_id,
                       "bbox": [_r(v) for v in mask_utils.toBbox(rle)], "category_id": COCO_CATEGORY_IDS[o.kind],
                       "id": image_id * 100 + k}
                inst_anns.append(ann)
                if COCO_CATEGORY_IDS[o.kind] != 1:
                    continue
                kps = o.keypoints if o.keypoints is not None else np.zeros((17, 3), np.float32)
                nk = int((kps[:, 2] > 0).sum())
                kp_anns.append({**ann, "num_keypoints": nk, "keypoints": [int(v) for v in kps.ravel()]})
                if nk > 0 and not o.iscrowd:
                    if o.face_box is not None:
                        det = _detected_face(o.face_box, rng)
                        if det is not None:
                            face_boxes.append(det[0])
                            face_indices.append(n_with_kp)
                    n_with_kp += 1
            boxes[str(image_id)] = {"boxes": face_boxes, "keypoint_indices": face_indices}
        info = {"description": "avanon synthetic street scenes (COCO format)", "version": str(GENERATOR_VERSION),
                "year": 2017, "contributor": "avanon", "date_created": "2017/01/01"}
        licenses = [{"url": "", "id": 1, "name": "synthetic"}]
        person = dict(COCO_CATEGORIES[0], keypoints=list(COCO_KEYPOINT_NAMES), skeleton=COCO_SKELETON)
        _write_json(self.root / "annotations" / f"person_keypoints_{split}2017.json",
                    {"info": info, "licenses": licenses, "images": images, "annotations": kp_anns,
                     "categories": [person]})
        _write_json(self.root / "annotations" / f"instances_{split}2017.json",
                    {"info": info, "licenses": licenses, "images": images, "annotations": inst_anns,
                     "categories": COCO_CATEGORIES})
        _write_json(self.root / f"boxes_{split}2017.json", boxes)


class _CityscapesWriter(_Writer):
    """`leftImg8bit/{split}/{city}/*_leftImg8bit.png`, gtFine polygons JSON and, from it with cityscapesscripts,
    `_gtFine_instanceIds.png` / `_gtFine_labelIds.png`; `face_boxes_{split}.json` and
    `annotated_keypoints_{split}.json` at the root, keyed by image basename.

    Keypoint rows follow the reference's loader (detectron2 `load_cityscapes_instances`, polygons from JSON): its
    annotations run over the polygons in *reverse* file order (front to back) and include groups, so there is one
    row per 'person' or 'persongroup' polygon, front-most first (rows for groups are all-zero confidence)."""

    def split(self, split: str, scenes: Iterable[Scene]) -> None:
        from cityscapesscripts.helpers.annotation import Annotation
        from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
        from cityscapesscripts.preparation.json2labelImg import createLabelImage

        faces, keypoints = {}, {}
        for index, scene in enumerate(scenes):
            city, stem = cityscapes_stem(split, index)
            basename = f"{stem}_leftImg8bit.png"
            _write_bytes(self.root / "leftImg8bit" / split / city / basename, _png(scene.image))
            gt = self.root / "gtFine" / split / city
            text = json.dumps(scene.cityscapes_json(), indent=4)
            _write_bytes(gt / f"{stem}_gtFine_polygons.json", text.encode("utf-8"))
            annotation = Annotation()
            annotation.fromJsonText(text)
            ids = np.asarray(createInstanceImage(annotation, "ids"), dtype=np.int64)
            if ids.max() > 0xFFFF:
                raise ValueError("instance id does not fit a 16-bit PNG")
            _write_bytes(gt / f"{stem}_gtFine_instanceIds.png", _png(ids.astype(np.uint16)))
            labels = np.asarray(createLabelImage(annotation, "ids"), dtype=np.uint8)
            _write_bytes(gt / f"{stem}_gtFine_labelIds.png", _png(labels))
            rng = self.aux_rng(split, index)
            rows = []
            for o in scene.objects:
                if o.kind == "person" and o.face_box is not None:
                    det = _detected_face(o.face_box, rng)
                    if det is not None:
                        rows.append(det[0] + [det[1]])
            faces[basename] = rows
            keypoints[basename] = [_keypoint_rows(o) for o in reversed(scene.objects) if o.kind in ("person", "crowd")]
        _write_json(self.root / f"face_boxes_{split}.json", faces)
        _write_json(self.root / f"annotated_keypoints_{split}.json", keypoints)


class _BddWriter(_Writer):
    """`images/10k/{split}/{name}.jpg` with the same labels three ways: RGBA bitmasks, the Scalabel RLE JSON and the
    COCO-format JSON; `face_boxes_{split}.json` / `annotated_keypoints_{split}.json` keyed by the COCO-format image
    id. Keypoint rows: one per pedestrian annotation that is neither crowd nor ignored, in annotation order."""

    def split(self, split: str, scenes: Iterable[Scene]) -> None:
        frames, images, anns, faces, keypoints = [], [], [], {}, {}
        ann_id = 0
        for index, scene in enumerate(scenes):
            H, W = scene.height, scene.width
            name = bdd_name(self.seed, split, index)
            image_id = index + 1
            _write_bytes(self.root / "images" / "10k" / split / f"{name}.jpg", _jpeg(scene.image))
            images.append({"file_name": f"{name}.jpg", "height": H, "width": W, "id": image_id})
            bitmask = np.zeros((H, W, 4), np.uint8)
            labels, face_rows, kp_rows = [], [], []
            rng = self.aux_rng(split, index)
            lid = 0
            for o in scene.objects:
                if not o.is_instance:
                    continue
                lid += 1
                category = BDD_CATEGORY_OF[o.kind]
                attributes = {"occluded": bool(o.occluded), "truncated": bool(o.truncated),
                              "crowd": bool(o.iscrowd), "ignored": False}
                full = o.full_mask(H, W)
                flags = (int(o.truncated) << 3) + (int(o.occluded) << 2) + (int(o.iscrowd) << 1)
                bitmask[full] = (BDD_CATEGORIES.index(category) + 1, flags, lid >> 8, lid & 0xFF)
                rle = _compressed_rle(full)
                labels.append({"id": str(lid), "category": category, "attributes": attributes, "rle": rle})
                ann_id += 1
                crle = {"counts": rle["counts"].encode("ascii"), "size": rle["size"]}
                anns.append({"id": ann_id, "image_id": image_id, "category_id": BDD_CATEGORIES.index(category) + 1,
                             "scalabel_id": str(lid), "iscrowd": int(o.iscrowd), "ignore": 0,
                             "bbox": [_r(v) for v in mask_utils.toBbox(crle)], "area": _r(mask_utils.area(crle), 1),
                             "segmentation": rle})
                if o.kind == "person":
                    kp_rows.append(_keypoint_rows(o))
                    if o.face_box is not None:
                        det = _detected_face(o.face_box, rng)
                        if det is not None:
                            face_rows.append(det[0])
            _write_bytes(self.root / "labels" / "ins_seg" / "bitmasks" / split / f"{name}.png", _png(bitmask))
            frames.append({"name": f"{name}.jpg", "labels": labels})
            faces[str(image_id)] = face_rows
            keypoints[str(image_id)] = {"keypoints": kp_rows}
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(BDD_CATEGORIES)]
        _write_json(self.root / "labels" / "ins_seg" / "rles" / f"ins_seg_{split}.json", frames)
        _write_json(self.root / "jsons" / f"ins_seg_{split}_cocofmt.json",
                    {"categories": categories, "images": images, "annotations": anns, "type": "instances"})
        _write_json(self.root / f"face_boxes_{split}.json", faces)
        _write_json(self.root / f"annotated_keypoints_{split}.json", keypoints)


_WRITERS = {"coco": _CocoWriter, "cityscapes": _CityscapesWriter, "bdd100k": _BddWriter}


# -------------------------------------------------------------------------------------------------- generate


def generation_params(fmt: str, splits: Optional[dict] = None, seed: int = 0,
                      image_size: Optional[tuple[int, int]] = None,
                      person_heights: Optional[tuple[float, float]] = None) -> dict:
    """The resolved parameters recorded in `avanon_synthetic.json` (what makes two datasets the same)."""
    if fmt not in FORMATS:
        raise DatasetError(f"synthetic: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    for name, n in splits.items():
        if not isinstance(name, str) or not name.isalnum():
            raise DatasetError(f"synthetic: split name {name!r} must be a non-empty alphanumeric word")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise DatasetError(f"synthetic: split {name!r} needs a non-negative image count, got {n!r}")
    if person_heights is not None:
        ok = (isinstance(person_heights, (list, tuple)) and len(person_heights) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in person_heights)
              and 0 < person_heights[0] <= person_heights[1] <= 1.5)
        if not ok:
            raise DatasetError(f"synthetic: person_heights must be [lo, hi] fractions of the image height with "
                               f"0 < lo <= hi <= 1.5, got {person_heights!r}")
    h, w = DEFAULT_IMAGE_SIZES[fmt] if image_size is None else image_size
    return {"generator": "avanon.synthetic", "version": GENERATOR_VERSION, "format": fmt, "splits": splits,
            "seed": int(seed), "image_size": [int(h), int(w)],
            **({} if person_heights is None else {"person_heights": [float(v) for v in person_heights]})}


def read_params(root: str | Path) -> Optional[dict]:
    """The parameters of an existing synthetic dataset, None when `root` has no marker."""
    path = Path(root) / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"synthetic: {path} is unreadable: {e}") from None


def generate(root: str | Path, fmt: str, splits: Optional[dict] = None, seed: int = 0,
             image_size: Optional[tuple[int, int]] = None,
             person_heights: Optional[tuple[float, float]] = None) -> Path:
    """Write a synthetic dataset in format `fmt` at `root` and return `root`.

    splits: {split name: number of images} (default {"train": 24, "val": 8}); image_size: (height, width), default
    per format (DEFAULT_IMAGE_SIZES); person_heights: (lo, hi) pedestrian heights as fractions of the image height
    (default: a street-scene mix with many tiny people; the demo uses taller people so that its small training
    resolution still shows their detail). The tree is written into a temporary sibling directory and renamed into place
    with the marker `avanon_synthetic.json` written last, so an interrupted run never looks complete. If `root`
    already holds a dataset with the same parameters it is left as it is; with other parameters, or any other
    content, DatasetError is raised."""
    params = generation_params(fmt, splits, seed, image_size, person_heights)
    root = Path(root)
    if _existing_matches(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        writer = _WRITERS[fmt](tmp, params["seed"])
        h, w = params["image_size"]
        heights = params.get("person_heights")
        for split, n in params["splits"].items():
            writer.split(split, (scene_for(params["seed"], split, i, (h, w), heights) for i in range(n)))
        _write_json(tmp / MARKER, params, indent=2)
        try:
            if root.is_dir() and not any(root.iterdir()):
                root.rmdir()
            os.rename(tmp, root)
        except OSError:
            if _existing_matches(root, params):  # another process finished the same dataset first
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _existing_matches(root: Path, params: dict) -> bool:
    """True if root already holds exactly this dataset; False if root is absent or empty; DatasetError otherwise."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise DatasetError(f"synthetic: {root} exists and is not a directory")
    found = read_params(root)
    if found is None:
        if any(root.iterdir()):
            raise DatasetError(f"synthetic: {root} is not empty and holds no {MARKER}; refusing to write there")
        return False
    if found != params:
        diff = {k: (found.get(k), v) for k, v in params.items() if found.get(k) != v}
        raise DatasetError(f"synthetic: {root} holds a synthetic dataset generated with other parameters "
                           f"(existing vs requested: {diff}); delete it or use another root")
    return True


# --------------------------------------------------------------------------------------------------- adapter


@ADAPTERS.register("synthetic")
class SyntheticAdapter(DatasetAdapter):
    """A synthetic dataset in one of the real formats, generated at `root` on first use, then read by that
    format's own adapter (so the demo and CI exercise the real readers)."""

    name = "synthetic"
    target_categories = ("person",)
    human_categories = ("person",)

    def __init__(self, root: str | Path, split: str, format: str = "cityscapes", num_train: int = 24,
                 num_val: int = 8, seed: int = 0, image_size: Optional[tuple[int, int]] = None,
                 person_heights: Optional[tuple[float, float]] = None, **format_options):
        for key, value in (("format", format), ("num_train", num_train), ("num_val", num_val), ("seed", seed)):
            check_option("synthetic", key, value, str if key == "format" else int,
                         "a string" if key == "format" else "an integer")
        if image_size is not None and not (isinstance(image_size, (list, tuple)) and len(image_size) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 16 for v in image_size)):
            raise DatasetError(f"synthetic: dataset.options.image_size: expected [height, width] integers >= 16, "
                               f"got {image_size!r}")
        if format not in FORMATS:
            raise DatasetError(f"synthetic: dataset.options.format: unknown format {format!r}; choose one of "
                               f"{', '.join(FORMATS)}")
        self.format = format
        size = tuple(image_size) if image_size is not None else None
        heights = tuple(person_heights) if isinstance(person_heights, (list, tuple)) else person_heights
        generate(root, format, {"train": num_train, "val": num_val}, seed, size, heights)
        super().__init__(root, split)
        self.inner = ADAPTERS.get(format)(self.root, split, **format_options)
        self.target_categories = self.inner.target_categories
        self.human_categories = self.inner.human_categories

    def images(self) -> Iterator[ImageRecord]:
        return self.inner.images()

    def __len__(self) -> int:
        return len(self.inner)

    def tree_files(self) -> Iterator[str]:
        return self.inner.tree_files()

    def dataset_problems(self) -> list[str]:
        return self.inner.dataset_problems()

    def image_index(self) -> list[tuple[str, tuple[str, ...]]]:
        return self.inner.image_index()

    def source_path(self, rel: str) -> Path:
        return self.inner.source_path(rel)


def main(argv: Optional[list[str]] = None) -> None:
    """`python -m dataset_adapters.synthetic ROOT --format coco --train 24 --val 8 --seed 0 [--size H W]
    [--person-heights LO HI]`."""
    p = argparse.ArgumentParser(description="Write a synthetic street-scene dataset in a real on-disk format.")
    p.add_argument("root")
    p.add_argument("--format", choices=FORMATS, default="cityscapes")
    p.add_argument("--train", type=int, default=DEFAULT_SPLITS["train"])
    p.add_argument("--val", type=int, default=DEFAULT_SPLITS["val"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"))
    p.add_argument("--person-heights", type=float, nargs=2, metavar=("LO", "HI"),
                   help="pedestrian heights as fractions of the image height (default: street-scene mix)")
    a = p.parse_args(argv)
    out = generate(a.root, a.format, {"train": a.train, "val": a.val}, a.seed, tuple(a.size) if a.size else None,
                   tuple(a.person_heights) if a.person_heights else None)
    print(out)


if __name__ == "__main__":
    main()
