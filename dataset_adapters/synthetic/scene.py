"""A street scene: textured background, cars, trees, poles, people, riders and crowds, painted back to front with
one outline polygon per object; visible masks, keypoints and face boxes derived from what was drawn."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np
from PIL import Image, ImageDraw

from dataset_adapters.synthetic.draw import _Sprite, _rng_child
from dataset_adapters.synthetic.people import Figure, _bicycle_sprite, make_figure
from dataset_adapters.synthetic.street import _Layout, _car_sprite, _paint_background, _pole_sprites, _tree_sprite

GENERATOR_VERSION = 2  # 2: fine detail on people (outlines, prints, folds, hair) and a textured background

CITYSCAPES_LABELS = {"person": "person", "rider": "rider", "bicycle": "bicycle", "car": "car",
                     "crowd": "persongroup", "tree": "vegetation", "pole": "pole", "sign": "traffic sign"}


INSTANCE_KINDS = ("person", "rider", "bicycle", "car", "crowd")


HUMAN_KINDS = ("person", "rider", "crowd")


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
