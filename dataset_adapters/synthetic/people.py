"""Pedestrians and riders: a posed 17-keypoint COCO skeleton with clothing, limbs and a head whose face is a small
region, and detail at the scale of a few pixels (outlines, garment prints, hair strands) that a body blur removes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from dataset_adapters.base import COCO_KEYPOINT_NAMES
from dataset_adapters.synthetic.draw import (
    _SHIFT, _Sprite, _capsule, _colourize, _ellipse, _fx, _hsv, _new_canvas, _poly, _pt, _rng_child,
)


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
