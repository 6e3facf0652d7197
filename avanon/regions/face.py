"""Face regions: where face boxes come from (providers) and the FDF128 crop geometry around each box.

Providers, registered in FACE_PROVIDERS under the names recipes use:

* ``file``: the reference's precomputed DSFD boxes (docs/reference.md §1.4), so the paper can be reproduced exactly.
  Cityscapes ``{image basename: [[x0,y0,x1,y1,score], ...]}``, BDD100K ``{image id: [[x0,y0,x1,y1], ...]}`` (both
  already matched once; we match them again to our filtered persons), COCO
  ``{image id: {"boxes": [...], "keypoint_indices": [...]}}`` (already matched: keypoint_indices index the image's
  non-crowd persons with >= 1 labelled keypoint, in annotation order; used as they are).
* ``detector``: MTCNN from facenet-pytorch (WIDER-Face boxes; its weights ship in the wheel, so it works offline).
* ``keypoints``: a detector-free head box from the COCO nose / eye / ear keypoints, calibrated below.
* ``union``: ``detector`` and ``keypoints`` merged per person: the detector's boxes are matched to persons by IoU as
  for ``detector``, every person with enough visible head keypoints gets its keypoint box, and a person's face box
  is the smallest box containing both, else whichever exists. A detector miss (small, blurred, goggled, profile or
  border-cut faces) is covered by the keypoint box; a person without head keypoints by the detector. Keys: both
  providers' keys; needs facenet-pytorch like ``detector`` (no silent fallback to ``keypoints``).

Face-coverage audit: whatever the provider, `FaceSelector.select` lists in ``Selection.face_missed`` the target
persons whose head is visible by their own keypoints (>= 2 of the 5 head keypoints with v >= the provider's
``keypoint_threshold``, 0.3 for providers without one, inside the image) and who got no face region, so that a
detector's silent misses are counted.

Keypoint face box calibration (all constants are recipe parameters, defaults derived here)
----------------------------------------------------------------------------------------
Target convention: WIDER Face ("forehead to chin, cheek to cheek"), i.e. what DSFD / MTCNN boxes look like.

1. Width. Bizygomatic (cheek-to-cheek) breadth of adults is ~130-137 mm (Farkas 1994, F/M means; ANSUR II similar)
   and the inter-pupillary distance (IPD) ~63 mm (Dodgson 2004), so width ≈ 2.1-2.2 IPD. Measured: facenet-pytorch
   MTCNN (trained on WIDER Face) on the 100 LFW faces scikit-image ships (``skimage.data.lfw_subset``, upsampled
   8x, 96 detected): box width / eye-landmark distance median 2.17 (sd 0.09). Default ``kp_width_per_ipd = 2.17``.
2. Height. Physiognomic face height (hairline-chin) ~175-187 mm, i.e. ≈ 1.32 x the 137 mm breadth; MTCNN on the
   same faces: box height / width median 1.30 (sd 0.06). Default ``kp_aspect = 1.30``.
3. Vertical placement, as a fraction of the box height from its top: eye line 0.387 (MTCNN median, sd 0.02), nose
   tip 0.59 (MTCNN median 0.594, sd 0.04; anthropometric pupil-to-nose-tip drop ≈ 36 mm ≈ 0.20 of the 178 mm box
   below the eyes gives the same). Ears (tragion) sit ~12 mm below the pupils (the Frankfurt plane runs through
   porion and the infra-orbital rim): 0.387 + 12/178 = 0.454. Defaults ``kp_eye_line``, ``kp_nose_line``,
   ``kp_ear_line``. Every visible head keypoint votes for the box top; the votes are averaged.
4. Scale from any two visible keypoints. An average adult head in IPD units (x lateral, y down, z forward, origin
   between the pupils; from the same sources): pupils (±0.5, 0, 0), nose tip (0, 0.57, 0.40), tragia (±1.14, 0.19,
   -1.27). A projected distance between two keypoints can only be shorter than their 3-D distance (yaw / pitch
   foreshorten it), so each visible pair gives a lower bound of the IPD in pixels (projected px / model distance),
   and the largest bound is used: frontal faces get their scale from eyes or ears, profiles from nose-ear or
   eye-ear. Needs >= ``min_visible`` (2) of the 5 head keypoints with v >= keypoint_threshold, else "no_face".
5. Horizontal placement. With both eyes visible: their midpoint, moved by ``kp_yaw_shift`` (1.07) times the nose's
   horizontal offset from it, *away* from the side the nose points to (capped at 0.5 IPD). In a three-quarter view
   the WIDER box reaches the near cheek and ends just past the far eye; on the 98 LFW faces MTCNN detects (as in
   item 1), (eyes' midpoint - MTCNN box centre) = 1.07 x (nose x - eyes' midpoint x) + 0.04 IPD (least squares,
   r = 0.90). Otherwise (one eye, profiles): the middle of the visible keypoints' x extent (between nose tip and
   ear for profiles).
6. Margin rule (privacy, applied last). The box grows minimally so that every visible eye and the nose lie inside
   with at least ``kp_margin`` (0.25) IPD to each edge (IPD = the scale of item 4, a lower bound of the true one),
   and a lone visible ear (three-quarter view, profile) lies inside. Two visible ears (frontal) are not forced
   inside: at +-1.14 IPD they lie just outside the 2.17 IPD cheek-to-cheek box, and growing for them would undo the
   WIDER calibration. For frontal eyes + nose nothing changes (the eyes have 0.585 IPD to the sides). The former
   rule (item 5 alone: middle of the x extent) left the far eye on the box edge in three-quarter views with the near
   ear labelled: 0.04-0.12 IPD on the head model at yaw 20-75 degrees (now >= 0.27 IPD).

Check: on the astronaut image in scikit-image, MTCNN's box is (181, 62, 268, 172); the keypoint box built from its
eye and nose landmarks has IoU 0.88 with it (0.89 before the yaw shift; tests/test_regions_face.py). On the 98 LFW
faces the IoU with MTCNN's box is median 0.884, 10th percentile 0.80 (0.850 / 0.76 without the yaw shift); on the
cameraman (``skimage.data.camera``, a three-quarter view) 0.62 (0.48). Coverage (tests/test_face_privacy.py: 96
real faces from the astronaut, the cameraman and LFW, 20-120 px wide, frontal, flipped, cut past the far eye and
profile-like with the far eye hidden, ears placed from the head model at the nose's yaw, pasted into synthetic
streets; 257 visible eyes / noses): a square of +-0.15 IPD around each eye / nose lies in the anonymized pixels
for 100 % with ``keypoints`` (87.9 % with the former rule) and ``union``, 99.6 % with ``detector``; mean coverage
of a 0.25 IPD disc around each 99.97 % (97.1 % before).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from avanon.registry import Registry
from avanon.regions.base import FACE_CROP, Region
from avanon.regions.filters import Candidate, RegionConfigError, check_keys
from avanon.regions.geometry import (
    box_area, clip_box, crop_to_clip, face_box_in_crop, face_expanded_box, is_empty, outward_box, place,
    round_box,
)
from dataset_adapters.base import ImageRecord

MTCNN_PIP = "pip install --no-deps facenet-pytorch==2.6.0"
FILE_FORMATS = ("auto", "cityscapes", "bdd100k", "coco")
DETECTORS = ("mtcnn",)

COMMON_KEYS = ("provider", "score_threshold", "min_iou")
PROVIDER_KEYS = {
    "file": ("file", "file_format"),
    "detector": ("detector", "device", "min_face_size"),
    "keypoints": ("keypoint_threshold", "min_visible", "kp_width_per_ipd", "kp_aspect", "kp_eye_line",
                  "kp_nose_line", "kp_ear_line", "kp_yaw_shift", "kp_margin"),
}
# `union`: the detector's boxes and the keypoint boxes, merged per person (its keys are both providers' keys).
PROVIDER_KEYS["union"] = PROVIDER_KEYS["detector"] + PROVIDER_KEYS["keypoints"]
# Score threshold when the recipe gives none: the detector's (the reference's DSFD used 0.3); boxes from a file or
# from keypoints are taken as they are (the reference anonymized every box of its files, Cityscapes' were >= 0.2).
# `union` applies the detector's threshold to the detector's boxes; keypoint boxes score 1.0 and always pass.
DEFAULT_SCORE_THRESHOLD = {"detector": 0.3, "file": 0.0, "keypoints": 0.0, "union": 0.3}
KEYPOINT_DEFAULTS = {"keypoint_threshold": 0.3, "min_visible": 2, "kp_width_per_ipd": 2.17, "kp_aspect": 1.30,
                     "kp_eye_line": 0.387, "kp_nose_line": 0.59, "kp_ear_line": 0.454, "kp_yaw_shift": 1.07,
                     "kp_margin": 0.25}
# Face-coverage audit (FaceSelector, Selection.face_missed): a person's head counts as visible by its own evidence
# when >= HEAD_VISIBLE_MIN of its 5 head keypoints are labelled with v >= the threshold (COCO v = 1 and 2 both count)
# and lie inside the image. The threshold is the provider's keypoint_threshold where it has one.
HEAD_VISIBLE_MIN = 2
HEAD_VISIBLE_THRESHOLD = 0.3


@dataclass
class FaceBox:
    """A face box (x0, y0, x1, y1, float, image coordinates) with its score; instance_id when the provider
    already knows whose face it is (no IoU matching then)."""

    box: tuple[float, float, float, float]
    score: float = 1.0
    instance_id: Optional[str] = None


@dataclass(frozen=True)
class FaceParams:
    provider: str
    score_threshold: float
    min_iou: float
    options: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"provider": self.provider, "score_threshold": self.score_threshold, "min_iou": self.min_iou,
                "crop_size": list(FACE_CROP), "expansion": "fdf128 (0.35, fallback simple 0.7)", **self.options}


def _number(key: str, value: Any, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high):
        raise RegionConfigError(f"region.face.{key}: expected a number in [{low}, {high}], got {value!r}")
    return float(value)


def parse_face_params(params: Optional[dict]) -> FaceParams:
    """Validate the recipe's face parameters; provider-specific keys are rejected for other providers."""
    params = dict(params or {})
    provider = params.get("provider", "union")
    if provider not in FACE_PROVIDERS:
        raise RegionConfigError(f"region.face.provider: unknown provider {provider!r}; "
                                f"known: {', '.join(FACE_PROVIDERS.names())}")
    check_keys("region.face", params, COMMON_KEYS + PROVIDER_KEYS[provider])
    thr = params.get("score_threshold")
    thr = DEFAULT_SCORE_THRESHOLD[provider] if thr is None else _number("score_threshold", thr, 0.0, 1.0)
    min_iou = _number("min_iou", params.get("min_iou", 0.01), 0.0, 1.0)
    options = {k: params[k] for k in PROVIDER_KEYS[provider] if k in params}
    return FaceParams(provider, thr, min_iou, options)


# ----------------------------------------------------------------------------------------------------- providers
class FaceProvider(ABC):
    """Gives the face boxes of one image. Built once per run from the validated parameters.

    needs_image: boxes() looks at the pixels. merge_per_person: boxes() gives both boxes already matched to a person
    (instance_id set) and loose boxes; the selector matches the loose ones by IoU against every person and takes,
    per person, the smallest box containing both (`union`), instead of the first box it finds. keypoint_threshold:
    the visibility threshold the face-coverage audit uses (HEAD_VISIBLE_THRESHOLD for providers without keypoints).
    """

    needs_image: bool = False
    merge_per_person: bool = False
    keypoint_threshold: float = HEAD_VISIBLE_THRESHOLD

    def __init__(self, params: FaceParams, dataset_root: Optional[Path]):
        self.params = params
        self.dataset_root = Path(dataset_root) if dataset_root is not None else None

    @abstractmethod
    def boxes(self, record: ImageRecord, image: Optional[np.ndarray], cands: Sequence[Candidate]) -> list[FaceBox]:
        """The face boxes of the candidates that have a face (one per candidate at most)."""

    def describe(self) -> dict:
        return {}


FACE_PROVIDERS: Registry[type[FaceProvider]] = Registry("face provider")


def head_visible(keypoints: Optional[np.ndarray], threshold: float, height: int, width: int) -> bool:
    """Whether >= HEAD_VISIBLE_MIN head keypoints (nose, eyes, ears) are visible (v >= threshold) inside the image."""
    if keypoints is None:
        return False
    head = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)[:5]
    x, y, v = head[:, 0], head[:, 1], head[:, 2]
    with np.errstate(invalid="ignore"):
        ok = (v >= threshold) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
    return int(ok.sum()) >= HEAD_VISIBLE_MIN


# --- file ---------------------------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_box(v: Any, lengths: tuple[int, ...]) -> FaceBox:
    if not isinstance(v, list) or len(v) not in lengths or not all(_is_number(x) for x in v):
        raise ValueError(f"a box must be a list of {' or '.join(map(str, lengths))} numbers, got {v!r}")
    return FaceBox(tuple(float(x) for x in v[:4]), float(v[4]) if len(v) == 5 else 1.0)


def _detect_format(data: dict) -> str:
    kinds = {"coco" if isinstance(v, dict) else "list" if isinstance(v, list) else "other" for v in data.values()}
    if "other" in kinds or len(kinds) > 1:
        raise ValueError("values must be all lists of boxes or all {'boxes', 'keypoint_indices'} objects")
    if kinds == {"coco"}:
        return "coco"
    lengths = {len(b) for v in data.values() for b in v if isinstance(b, list)}
    return "cityscapes" if lengths == {5} else "bdd100k" if lengths == {4} else "list"


def parse_face_file(data: Any, fmt: str) -> tuple[str, dict[str, list[tuple[FaceBox, Optional[int]]]]]:
    """The reference's face-box JSON -> (format, {key: [(box, keypoint index or None), ...]}); ValueError if
    malformed."""
    if not isinstance(data, dict):
        raise ValueError(f"top level must be an object keyed by image, got {type(data).__name__}")
    resolved = _detect_format(data) if fmt == "auto" else fmt
    lengths = {"cityscapes": (5,), "bdd100k": (4,), "list": (4, 5), "coco": (4, 5)}[resolved]
    out = {}
    for key, value in data.items():
        where = f"image {key!r}"
        try:
            if resolved == "coco":
                if not isinstance(value, dict) or not isinstance(value.get("boxes"), list) \
                        or not isinstance(value.get("keypoint_indices"), list):
                    raise ValueError("expected {'boxes': [...], 'keypoint_indices': [...]}")
                idx = value["keypoint_indices"]
                if len(idx) != len(value["boxes"]) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                              and i >= 0 for i in idx):
                    raise ValueError("keypoint_indices must be one index >= 0 per box")
                out[key] = [(_parse_box(b, lengths), i) for b, i in zip(value["boxes"], idx)]
            else:
                if not isinstance(value, list):
                    raise ValueError(f"expected a list of boxes, got {type(value).__name__}")
                out[key] = [(_parse_box(b, lengths), None) for b in value]
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return ("bdd100k" if resolved == "list" else resolved), out


@FACE_PROVIDERS.register("file")
class FileFaceProvider(FaceProvider):
    """Boxes from a precomputed JSON file, loaded once; an image absent from the file has no faces."""

    def __init__(self, params: FaceParams, dataset_root: Optional[Path]):
        super().__init__(params, dataset_root)
        given = params.options.get("file")
        fmt = params.options.get("file_format", "auto")
        if not isinstance(given, str) or not given:
            raise RegionConfigError("region.face.file: the 'file' provider needs a file (relative to the dataset "
                                    "root or absolute)")
        if fmt not in FILE_FORMATS:
            raise RegionConfigError(f"region.face.file_format: unknown format {fmt!r}; known: "
                                    f"{', '.join(FILE_FORMATS)}")
        path = Path(given)
        if not path.is_absolute() and self.dataset_root is not None:
            path = self.dataset_root / path
        if not path.is_file():
            raise RegionConfigError(f"region.face.file: face-box file {path} does not exist")
        raw = path.read_bytes()
        try:
            self.format, self.entries = parse_face_file(json.loads(raw), fmt)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RegionConfigError(f"region.face.file: {path}: malformed face-box file ({fmt}): {exc}") from None
        self.path = path
        self.sha256 = hashlib.sha256(raw).hexdigest()

    def _entries(self, record: ImageRecord):
        for key in record.lookup_keys or (record.image_id,):
            if key in self.entries:
                return self.entries[key]
        return []

    def boxes(self, record, image, cands):
        entries = self._entries(record)
        if self.format != "coco":
            return [box for box, _ in entries]
        # COCO: the index is into the image's non-crowd persons with >= 1 labelled keypoint, in annotation order.
        persons = [inst for inst in record.instances if not inst.iscrowd and inst.num_keypoints > 0]
        out = []
        for box, idx in entries:
            if idx >= len(persons):
                record.problems.append(f"face-box file {self.path.name}: keypoint index {idx} but the image has "
                                       f"only {len(persons)} persons with keypoints")
                continue
            out.append(FaceBox(box.box, box.score, persons[idx].instance_id))
        return out

    def describe(self):
        return {"path": str(self.path), "format": self.format, "sha256": self.sha256, "images": len(self.entries)}


# --- keypoints ------------------------------------------------------------------------------------------------
# Average adult head in IPD units (module docstring, item 4): COCO order nose, left eye, right eye, left ear,
# right ear. The subject's left is +x.
HEAD_MODEL = np.array([
    [0.0, 0.571, 0.397],
    [0.5, 0.0, 0.0], [-0.5, 0.0, 0.0],
    [1.143, 0.190, -1.270], [-1.143, 0.190, -1.270],
])
HEAD_PAIR_DISTANCE = np.linalg.norm(HEAD_MODEL[:, None] - HEAD_MODEL[None], axis=-1)
YAW_SHIFT_LIMIT = 0.5  # IPD: the yaw shift of the box centre never exceeds this (noisy annotations)


def _head_scale(pts: np.ndarray, vis: np.ndarray) -> float:
    """Pixels per IPD: the largest lower bound over the visible pairs (module docstring, item 4)."""
    scale = 0.0
    for a in range(len(vis)):
        for b in range(a + 1, len(vis)):
            scale = max(scale, float(np.linalg.norm(pts[a] - pts[b])) / HEAD_PAIR_DISTANCE[vis[a], vis[b]])
    return scale


def keypoint_face_box(keypoints: Optional[np.ndarray], opts: dict) -> Optional[tuple[float, float, float, float]]:
    """WIDER-style face box from the 5 COCO head keypoints (see the module docstring, items 4-6); None if too few
    visible. Every visible eye and the nose lie inside with a margin of at least kp_margin IPD, a lone ear inside."""
    if keypoints is None:
        return None
    head = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)[:5]
    vis = np.flatnonzero((head[:, 2] >= opts["keypoint_threshold"]) & np.isfinite(head[:, :2]).all(axis=1))
    if len(vis) < max(int(opts["min_visible"]), 2):
        return None
    pts = head[vis, :2]
    scale = _head_scale(pts, vis)
    width = float(opts["kp_width_per_ipd"] * scale)
    height = opts["kp_aspect"] * width
    if width < 1 or height < 1:
        return None
    line = np.array([opts["kp_nose_line"], opts["kp_eye_line"], opts["kp_eye_line"], opts["kp_ear_line"],
                     opts["kp_ear_line"]])
    top = float(np.mean(pts[:, 1] - line[vis] * height))
    seen = set(vis.tolist())
    if {1, 2} <= seen:
        # Both eyes: centre between them, moved away from the side the nose points to (yaw, item 5).
        cx = float(head[1, 0] + head[2, 0]) / 2
        if 0 in seen:
            limit = YAW_SHIFT_LIMIT * scale
            cx -= min(max(opts["kp_yaw_shift"] * (float(head[0, 0]) - cx), -limit), limit)
    else:
        cx = float(pts[:, 0].min() + pts[:, 0].max()) / 2
    x0, y0, x1, y1 = cx - width / 2, top, cx + width / 2, top + height
    # Margin rule (item 6): grow the box minimally so that each visible eye / nose has kp_margin IPD around it and
    # a lone ear (three-quarter view or profile) lies inside; two ears (frontal) stay outside the cheek-to-cheek box.
    inner = [(head[i, 0], head[i, 1], opts["kp_margin"] * scale) for i in (0, 1, 2) if i in seen]
    ears = [i for i in (3, 4) if i in seen]
    if len(ears) == 1:
        inner.append((head[ears[0], 0], head[ears[0], 1], 0.0))
    for x, y, m in inner:
        x0, y0, x1, y1 = min(x0, x - m), min(y0, y - m), max(x1, x + m), max(y1, y + m)
    return (float(x0), float(y0), float(x1), float(y1))


@FACE_PROVIDERS.register("keypoints")
class KeypointFaceProvider(FaceProvider):
    """A head box from each person's own head keypoints: already matched, no IoU step."""

    def __init__(self, params: FaceParams, dataset_root: Optional[Path]):
        super().__init__(params, dataset_root)
        opts = dict(KEYPOINT_DEFAULTS)
        for key, value in params.options.items():
            low = 2 if key == "min_visible" else 0.0
            high = 5 if key == "min_visible" else 1.0 if key.endswith("_line") or key == "keypoint_threshold" \
                else math.inf
            opts[key] = _number(key, value, low, high)
        self.opts = opts
        self.keypoint_threshold = float(opts["keypoint_threshold"])

    def boxes(self, record, image, cands):
        out = []
        for cand in cands:
            box = keypoint_face_box(cand.instance.keypoints, self.opts)
            if box is not None:
                out.append(FaceBox(box, 1.0, cand.instance_id))
        return out

    def describe(self):
        return dict(self.opts)


# --- detector -------------------------------------------------------------------------------------------------
_MTCNN_CACHE: dict = {}


def load_mtcnn(device: str = "cpu", min_face_size: int = 20):
    """facenet-pytorch's MTCNN, imported lazily (optional dependency) and cached per process."""
    key = (device, int(min_face_size))
    if key not in _MTCNN_CACHE:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise RegionConfigError(
                f"region.face.detector: 'mtcnn' needs the optional package facenet-pytorch ({exc}); install it "
                f"with: {MTCNN_PIP} (it pins old torch/numpy, hence --no-deps; what it imports besides comes with the "
                f"'detector' extra: pip install -e '.[detector]')") from None
        _MTCNN_CACHE[key] = MTCNN(keep_all=True, device=device, min_face_size=int(min_face_size))
    return _MTCNN_CACHE[key]


@FACE_PROVIDERS.register("detector")
class DetectorFaceProvider(FaceProvider):
    """Faces detected on the image itself (MTCNN: WIDER-Face boxes, weights inside the wheel, offline)."""

    needs_image = True

    def __init__(self, params: FaceParams, dataset_root: Optional[Path]):
        super().__init__(params, dataset_root)
        self.detector = params.options.get("detector", "mtcnn")
        if self.detector not in DETECTORS:
            raise RegionConfigError(f"region.face.detector: unknown detector {self.detector!r}; known: "
                                    f"{', '.join(DETECTORS)}")
        self.device = params.options.get("device", "cpu")
        if not isinstance(self.device, str):
            raise RegionConfigError(f"region.face.device: expected a torch device name, got {self.device!r}")
        self.min_face_size = int(_number("min_face_size", params.options.get("min_face_size", 20), 1))
        load_mtcnn(self.device, self.min_face_size)  # fail at build time, not in the middle of a run

    def boxes(self, record, image, cands):
        if image is None:
            raise ValueError("the face detector provider needs the image")
        if tuple(image.shape[:2]) != (record.height, record.width):
            raise ValueError(f"image {record.file_name}: image is {image.shape[1]}x{image.shape[0]} but the "
                             f"annotations are {record.width}x{record.height}")
        import torch

        with torch.no_grad():
            boxes, probs = load_mtcnn(self.device, self.min_face_size).detect(np.ascontiguousarray(image))
        if boxes is None:
            return []
        return [FaceBox(tuple(float(v) for v in b[:4]), float(p)) for b, p in zip(boxes, probs)]

    def describe(self):
        return {"detector": self.detector, "device": self.device, "min_face_size": self.min_face_size}


# --- union ----------------------------------------------------------------------------------------------------
@FACE_PROVIDERS.register("union")
class UnionFaceProvider(FaceProvider):
    """`detector` and `keypoints` together: the detector's boxes (matched to persons by IoU as for `detector`) and
    each person's keypoint box; the selector takes per person the smallest box containing both, or the one that
    exists. A detector miss is covered by the keypoint box, a person without head keypoints by the detector. Needs
    facenet-pytorch like `detector` (no silent fallback to keypoints)."""

    needs_image = True
    merge_per_person = True

    def __init__(self, params: FaceParams, dataset_root: Optional[Path]):
        super().__init__(params, dataset_root)

        def sub(name: str) -> FaceParams:
            opts = {k: v for k, v in params.options.items() if k in PROVIDER_KEYS[name]}
            return FaceParams(name, params.score_threshold, params.min_iou, opts)

        self.keypoints = KeypointFaceProvider(sub("keypoints"), dataset_root)
        self.detector = DetectorFaceProvider(sub("detector"), dataset_root)
        self.keypoint_threshold = self.keypoints.keypoint_threshold

    def boxes(self, record, image, cands):
        return self.detector.boxes(record, image, cands) + self.keypoints.boxes(record, image, cands)

    def describe(self):
        return {"detector": self.detector.describe(), "keypoints": self.keypoints.describe()}


# ----------------------------------------------------------------------------------------------------- region
def clip_face_box(box, height: int, width: int) -> Optional[tuple[float, float, float, float]]:
    """Clip a float box to the image (the reference's DSFD ran with clip_boxes=True); None if nothing is left."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


def _contains(outer, inner) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def _square_union(a, b):
    """Smallest square (grown at its end) containing both boxes. Only for faces the reference's expansion does not
    cover pixel-complete (boxes under 3 px, or as large as the image), so the region still covers the whole face."""
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[2], b[2]), max(a[3], b[3])
    side = max(x1 - x0, y1 - y0)
    return (x0, y0, x0 + side, y0 + side)


def face_region(face: FaceBox, instance_id: str, imshape, extra: Optional[dict] = None) -> Region:
    """FDF128 crop around a face box: expanded box, 128x128 crop mask = the (rounded) box, image mask = the box
    rounded outward OR'ed with the paste-back view of the crop mask (the box is clipped to the image already)."""
    box_i = round_box(face.box)  # the reference anonymizes boxes rounded to integers
    if is_empty(box_i):
        box_i = outward_box(face.box)
    exp_box, rule = face_expanded_box(box_i, imshape)
    cover = clip_box(outward_box(face.box), imshape[0], imshape[1])
    if not _contains(exp_box, cover):
        exp_box, rule = _square_union(exp_box, cover), rule + "+cover"
    clip = clip_box(exp_box, imshape[0], imshape[1])
    crop_mask = np.zeros(FACE_CROP, dtype=bool)
    cx0, cy0, cx1, cy1 = face_box_in_crop(box_i, exp_box, FACE_CROP)
    crop_mask[cy0:cy1, cx0:cx1] = True
    image_mask = crop_to_clip(crop_mask, exp_box, clip)
    if not is_empty(cover):
        image_mask |= place(np.ones((cover[3] - cover[1], cover[2] - cover[0]), dtype=bool), cover, clip)
    info = {"score": face.score, "face_box_int": box_i, "expansion": rule}
    info.update(extra or {})
    return Region(instance_id=instance_id, kind="face", exp_box=exp_box, crop_size=FACE_CROP, crop_mask=crop_mask,
                  clip_box=clip, image_mask=image_mask, area=box_area(box_i),
                  face_box=tuple(float(v) for v in face.box), extra=info)
