"""What region selection hands to an anonymizer: one `Region` per instance to anonymize, in paste order."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

BODY_CROP = (288, 160)  # (h, w) of the reference's body generator
FACE_CROP = (128, 128)  # (h, w) of the reference's FDF128 face generator


@dataclass
class Region:
    """An instance's anonymization region.

    exp_box: expanded box in image coordinates (x0, y0, x1, y1; exclusive ends); may extend outside the image,
        outside pixels are zero padding in crop space.
    crop_size: (h, w) the crop is resized to for crop-space methods (the generator's resolution).
    crop_mask: bool (h, w) in crop space; True = pixels to anonymize (dilated for bodies).
    clip_box: exp_box intersected with the image.
    image_mask: bool, shape of clip_box; True = pixels that may change in the image. It always covers the
        instance's own mask (or face box) inside the image, so nothing identifying is left in the clear.
    area: the sort key of the reference's paste order (mask pixels for bodies, box area for faces).
    """

    instance_id: str
    kind: str  # "body" | "face"
    exp_box: tuple[int, int, int, int]
    crop_size: tuple[int, int]
    crop_mask: np.ndarray
    clip_box: tuple[int, int, int, int]
    image_mask: np.ndarray
    area: int
    keypoints: Optional[np.ndarray] = None  # (17, 3) crop-relative in [0, 1], for realistic body generators
    face_box: Optional[tuple[float, float, float, float]] = None  # the face box in image coordinates
    extra: dict = field(default_factory=dict)


@dataclass
class Selection:
    """The regions of one image, in paste order, and every instance left alone with its reason.

    face_missed: face selections only: the target persons (they passed the filters) whose head is visible by their
        own keypoints (>= 2 of nose, eyes, ears with v >= the face provider's keypoint threshold, 0.3 by default,
        inside the image) but who got no face region, in record order. Each is also in `skipped` ("no_face").
        Body selections leave it empty.
    face_visible: face selections only: every target person whose head is visible that way (the audit's
        denominator: face recall = 1 - len(face_missed) / len(face_visible)).
    """

    regions: list[Region]
    skipped: list[tuple[str, str]]  # (instance_id, reason)
    face_missed: list[str] = field(default_factory=list)
    face_visible: list[str] = field(default_factory=list)
