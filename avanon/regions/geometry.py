"""Box expansion and resampling with the DeepPrivacy2 reference's exact integer and float semantics.

Why exact: the paper's numbers were made with these crops. Crop size and position decide the blur strength in crop
space, what the generator sees and which instances pass the min-size filter, so an off-by-one here changes results.
Facts followed (docs/reference.md §3.2 and dp2/detection/box_utils*.py, utils.py, structures.py), paraphrased:

* boxes are (x0, y0, x1, y1) with exclusive ends; image shapes are (H, W);
* `expand_axis` grows a segment symmetrically with floor((target - cur) / 2) per side, puts a missing pixel at the
  end, then shifts it inside [0, limit] only when exactly one side sticks out (strict comparisons);
* the body pipeline's 30 %-background test and scale factor run in float32 (torch tensors in the reference), the
  other steps in Python floats / ints;
* the FDF face expansion makes the box square inside the image and grows it by int(side * 0.35) per side; any
  failed consistency check falls back to a square of side 1.7 * max(w, h) around the box centre, which may leave
  the image;
* NEAREST resizing is torch's legacy "nearest": src = min(floor(dst * float32(in / out)), in - 1) in float32.
"""
from __future__ import annotations

import math
import numpy as np

Box = tuple[int, int, int, int]

BODY_PERCENTAGE_BACKGROUND = 0.3
BODY_AXIS_MINIMUM_EXPANSION = 0.1
FDF_EXPANSION = 0.35


# ----------------------------------------------------------------------------------------------------- basics
def box_area(box) -> int:
    x0, y0, x1, y1 = box
    return int((x1 - x0) * (y1 - y0))


def clip_box(box, height: int, width: int) -> Box:
    """box ∩ image; may be empty (x1 <= x0 or y1 <= y0)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return (max(x0, 0), max(y0, 0), min(x1, width), min(y1, height))


def is_empty(box) -> bool:
    return box[2] <= box[0] or box[3] <= box[1]


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of every output index for torch's legacy NEAREST resize (float32 arithmetic, as its kernels)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def nearest_resize(mask: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """NEAREST resize of a 2-D array to (h, w), index-exact with torchvision's InterpolationMode.NEAREST."""
    h, w = mask.shape
    return mask[nearest_indices(h, out_hw[0])[:, None], nearest_indices(w, out_hw[1])[None, :]]


def sample_into_box(mask: np.ndarray, mask_box, exp_box, out_hw) -> np.ndarray:
    """NEAREST resize of the expanded box's view of `mask` (placed at mask_box, zeros elsewhere, i.e. the zero
    padding outside the image too) to out_hw, without materialising the expanded box."""
    ex0, ey0, ex1, ey1 = exp_box
    mx0, my0, mx1, my1 = mask_box
    rows = ey0 + nearest_indices(ey1 - ey0, out_hw[0]) - my0
    cols = ex0 + nearest_indices(ex1 - ex0, out_hw[1]) - mx0
    rv = (rows >= 0) & (rows < my1 - my0)
    cv = (cols >= 0) & (cols < mx1 - mx0)
    out = np.zeros(out_hw, dtype=bool)
    out[np.ix_(rv, cv)] = mask[np.ix_(rows[rv], cols[cv])]
    return out


def crop_to_clip(crop_mask: np.ndarray, exp_box, clip) -> np.ndarray:
    """The paste-back view: NEAREST resize of crop_mask to the expanded box, keeping only clip_box."""
    ex0, ey0, ex1, ey1 = exp_box
    rows = nearest_indices(crop_mask.shape[0], ey1 - ey0)[clip[1] - ey0:clip[3] - ey0]
    cols = nearest_indices(crop_mask.shape[1], ex1 - ex0)[clip[0] - ex0:clip[2] - ex0]
    return crop_mask[np.ix_(rows, cols)]


def place(mask: np.ndarray, mask_box, frame_box) -> np.ndarray:
    """`mask` (at mask_box) drawn into a zero array covering frame_box (mask_box must lie inside frame_box)."""
    fx0, fy0, fx1, fy1 = frame_box
    out = np.zeros((fy1 - fy0, fx1 - fx0), dtype=bool)
    x0, y0, x1, y1 = mask_box
    out[y0 - fy0:y1 - fy0, x0 - fx0:x1 - fx0] = mask
    return out


# ----------------------------------------------------------------------------------------------------- body boxes
def expand_axis(start: int, end: int, target: int, limit: int) -> tuple[int, int]:
    """Grow [start, end) to length `target` around its centre; shift it inside [0, limit] where only one side
    sticks out (the result may still leave the image, e.g. when target > limit)."""
    grow = (target - (end - start)) // 2
    start, end = start - grow, end + grow
    if end - start != target:
        end += 1
    if start < 0 and end > limit:
        return start, end
    if start < 0 and end < limit:
        shift = min(-start, limit - end)
        start, end = start + shift, end + shift
    if end > limit and start > 0:
        shift = min(end - limit, start)
        start, end = start - shift, end - shift
    return start, end


def expand_axes_by_percentage(box: Box, imshape, percentage: float) -> Box:
    """Both sides grow by int(sqrt(H*W) * percentage), each capped at the image size."""
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    grow = int(((h * w) ** 0.5) * percentage)
    x0, x1 = expand_axis(x0, x1, min(w + grow, imshape[1]), imshape[1])
    y0, y1 = expand_axis(y0, y1, min(h + grow, imshape[0]), imshape[0])
    return (x0, y0, x1, y1)


def expand_to_ratio(box: Box, imshape, ratio: float) -> Box:
    """Grow the short axis until h / w == ratio (int-truncated); the box may leave the image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = y1 - y0, x1 - x0
    current = h / w
    if current == ratio:
        return (x0, y0, x1, y1)
    if current < ratio:
        y0, y1 = expand_axis(y0, y1, int(w * ratio), imshape[0])
    else:
        x0, x1 = expand_axis(x0, x1, int(h / ratio), imshape[1])
    return (x0, y0, x1, y1)


def expand_for_background(box: Box, imshape, mask_pixels: int,
                          percentage_background: float = BODY_PERCENTAGE_BACKGROUND) -> Box:
    """Scale both sides by sqrt(target / (H*W)), target = mask_pixels / (1 - bg), when the box has less than
    `percentage_background` background (float32 test and factor, ceil of the new sides)."""
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    f32 = np.float32
    fraction_mask = f32(mask_pixels) / f32(h * w)
    if (f32(1) - fraction_mask) > f32(percentage_background):
        return box
    target = f32(mask_pixels) / f32(1 - percentage_background)
    p = np.sqrt(target / f32(h * w), dtype=np.float32)
    tw = int(np.ceil(f32(p * f32(w))))
    th = int(np.ceil(f32(p * f32(h))))
    x0, x1 = expand_axis(x0, x1, tw, imshape[1])
    y0, y1 = expand_axis(y0, y1, th, imshape[0])
    return (x0, y0, x1, y1)


def body_expanded_box(tight_box: Box, imshape, mask_pixels: int, crop_size=(288, 160)) -> Box:
    """The reference's expanded body box: +10 % per axis, aspect crop_h/crop_w, >= 30 % background."""
    box = expand_axes_by_percentage(tuple(int(v) for v in tight_box), imshape, BODY_AXIS_MINIMUM_EXPANSION)
    box = expand_to_ratio(box, imshape, crop_size[0] / crop_size[1])
    box = expand_for_background(box, imshape, mask_pixels, BODY_PERCENTAGE_BACKGROUND)
    return tuple(int(v) for v in box)


def include_box(box: Box, minimum_area: float) -> bool:
    """The reference's include_box with the dataset scripts' settings (aspect range (0, 99999), no inside-ratio
    requirement): keep when the expanded box's area >= minimum_area."""
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    if w <= 0 or h <= 0:
        return False
    ratio = h / w
    return 0 < ratio < 99999 and h * w >= minimum_area


def pad_removal(exp_box: Box, imshape, crop_h: int) -> tuple[int, int, int, int]:
    """Crop-space rows/cols (left, top, right, bottom) treated as padding when removing dilation there.

    The reference scales the image-space padding with the *height* ratio crop_h / box_h for both axes (float32)
    and floors it; we follow it (the paste clips to the image anyway, so this only shapes crop_mask).
    """
    x0, y0, x1, y1 = exp_box
    H, W = imshape
    ratio = np.float32(crop_h) / np.float32(y1 - y0)
    pads = (max(0, -x0), max(0, -y0), max(x1 - W, 0), max(y1 - H, 0))
    return tuple(int(np.floor(np.float32(p) * ratio)) for p in pads)


# ----------------------------------------------------------------------------------------------------- face boxes
class _Fail(Exception):
    """A consistency check of the FDF expansion failed: fall back to the simple expansion."""


def _check(cond: bool) -> None:
    if not cond:
        raise _Fail


def _square_inside(x0, y0, width, height, imshape):
    """Make (x0, y0, width, height) square by growing its short side inside the image (FDF quadratic box)."""
    H, W = imshape[0], imshape[1]
    _check(width <= min(H, W) and height <= min(H, W))
    if height != width:
        diff = abs(height - width)
        if min(height, width) == height:
            height += diff
            if height > H:
                y0, height = 0, H
                diff = abs(height - width)
                width -= diff
                x0 += diff // 2
            else:
                y0 = max(0, y0 - diff // 2)
        else:
            width += diff
            if width > W:
                x0, width = 0, W
                diff = abs(height - width)
                height -= diff
                y0 += diff // 2
            else:
                x0 = max(0, x0 - diff // 2)
        if x0 + width > W:
            x0 -= x0 + width - W
        if y0 + height > H:
            y0 -= y0 + height - H
    _check(x0 >= 0 and y0 >= 0 and x0 + width <= W and y0 + height <= H)
    return x0, y0, width, height


def fdf128_expand(box, imshape, percentage: float = FDF_EXPANSION) -> Box:
    """FDF expansion: square inside the image, then each side grows by int(side * percentage) limited by the
    image. Raises _Fail where the reference's assertions fail."""
    ox0, oy0, ox1, oy1 = (float(v) for v in box)
    H, W = imshape[0], imshape[1]
    x0, y0, width, height = _square_inside(ox0, oy0, ox1 - ox0, oy1 - oy0, imshape)
    grow = min((H - width) // 2, (W - height) // 2, int(max(height, width) * percentage))
    if grow > 0:
        y0 = max(0, y0 - grow)
        height += grow * 2
        if height > H:
            y0 -= H - height
            height = H
        if height + y0 > H:
            y0 -= height + y0 - H
        x0 = max(0, x0 - grow)
        width += grow * 2
        if width > W:
            x0 -= W - width
            width = W
        if width + x0 > W:
            x0 -= width + x0 - W
    _check(y0 >= 0 and height <= H and x0 + width <= W and y0 + height <= H and width == height)
    _check(x0 >= 0 and width <= W)
    _check(x0 <= ox0 and x0 + width >= ox1 and y0 <= oy0 and y0 + height >= oy1)
    x0, y0, width, height = int(x0), int(y0), int(width), int(height)
    return (x0, y0, x0 + width, y0 + height)


def expand_box_simple(box, percentage: float) -> Box:
    """Square of side (1 + percentage) * max(w, h) centred on the box (halves floored); may leave the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = x1 - x0, y1 - y0
    xc = int(x0) + width // 2
    yc = int(y0) + height // 2
    half = (max(width, height) * (1 + percentage)) // 2
    return tuple(int(v) for v in (xc - half, yc - half, xc + half, yc + half))


def face_expanded_box(box, imshape) -> tuple[Box, str]:
    """The FDF128 expanded box of an (integer) face box, and which rule made it ("fdf128" or "simple")."""
    try:
        return fdf128_expand(box, imshape, FDF_EXPANSION), "fdf128"
    except _Fail:
        return expand_box_simple(box, FDF_EXPANSION * 2), "simple"


def round_box(box) -> Box:
    """Round half to even, as the reference's `torch.tensor(boxes).round().long()`."""
    return tuple(int(v) for v in np.round(np.asarray(box[:4], dtype=np.float64)))


def outward_box(box) -> Box:
    """The smallest integer box covering a float box (floor the start, ceil the end)."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    return (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))


def face_box_in_crop(face_box: Box, exp_box: Box, crop_size) -> Box:
    """The face box in crop coordinates: shift by the expanded box, scale by crop_w / expanded width, int-cast
    (truncation toward zero), clamped to the crop as the reference's crop_box does."""
    ex0, ey0, ex1, _ = exp_box
    factor = crop_size[0] / float(ex1 - ex0)
    x0, y0, x1, y1 = (float(v) for v in face_box)
    vals = [int((x0 - ex0) * factor), int((y0 - ey0) * factor), int((x1 - ex0) * factor), int((y1 - ey0) * factor)]
    ch, cw = crop_size
    return (max(vals[0], 0), max(vals[1], 0), min(vals[2], cw), min(vals[3], ch))
