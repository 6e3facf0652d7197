"""Reading and writing dataset images without surprises.

Images are decoded into the frame the annotations were made in (EXIF orientation applied or not, see
`resolve_frame`), anonymized there, and written back in the *source's* raw frame with the source's EXIF and ICC
data, so any loader (EXIF-aware like detectron2 or not like torchvision's CocoDetection) sees the mirror exactly
as it sees the source. Writes are atomic: a temp file in the same directory, then `os.replace`.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from PIL import Image

EXIF_ORIENTATION_TAG = 0x0112
SUPPORTED_MODES = ("RGB", "L", "RGBA")
JPEG_SUFFIXES = (".jpg", ".jpeg")
PNG_SUFFIXES = (".png",)
IMAGE_SUFFIXES = JPEG_SUFFIXES + PNG_SUFFIXES

# EXIF orientation -> numpy ops taking the raw pixel array to the displayed ("oriented") frame, and back.
_TO_ORIENTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, k=1),
}
_TO_RAW = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, k=1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, k=-1),
}


class ImageReadError(Exception):
    """The image cannot be decoded into a frame that matches its annotation."""


@dataclass
class LoadedImage:
    pixels: np.ndarray  # H x W x 3 uint8 RGB in the annotation frame
    mode: str  # source PIL mode
    format: str  # "JPEG" | "PNG"
    orientation: int  # EXIF orientation of the source (1 = none)
    frame: str  # "raw" | "oriented": which frame `pixels` is in
    alpha: Optional[np.ndarray] = None  # RGBA sources: alpha in the annotation frame, never modified
    exif: Optional[bytes] = None
    icc_profile: Optional[bytes] = None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block is not worth failing an image for; the size check guards the frame
        return 1
    return value if value in _TO_ORIENTED else 1


def resolve_frame(policy: str, orientation: int, raw_size: tuple[int, int], expected: tuple[int, int]) -> str:
    """Pick the frame whose (width, height) matches the annotation.

    "auto": oriented if it matches, else raw if that matches (annotations made on raw pixels); a flip or 180°
    rotation matches both and resolves to "oriented" (detectron2 and the reference apply EXIF orientation).
    """
    w, h = raw_size
    oriented_size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    if policy == "raw":
        candidates = [("raw", raw_size)]
    elif policy == "oriented":
        candidates = [("oriented", oriented_size)]
    else:
        candidates = [("oriented", oriented_size), ("raw", raw_size)]
    for frame, size in candidates:
        if tuple(size) == tuple(expected):
            return frame
    raise ImageReadError(
        f"image is {raw_size[0]}x{raw_size[1]} (EXIF orientation {orientation}) but its annotation says "
        f"{expected[0]}x{expected[1]} (exif_frame={policy})"
    )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_bit_depth(head: bytes, path: str | Path) -> None:
    """Refuse PNGs whose samples are not 8-bit: Pillow widens or narrows them to 8 bits on decode, so an
    anonymized copy would silently change the image's bit depth (a 16-bit PNG would come back 8-bit)."""
    if head[:8] == PNG_SIGNATURE and len(head) >= 26 and head[12:16] == b"IHDR" and head[24] != 8:
        raise ImageReadError(f"{path}: {head[24]}-bit PNG: avanon writes 8-bit samples only and would change "
                             "the bit depth; convert the dataset's images to 8-bit PNG or leave this image out")


def header_frame(data: bytes, path: str | Path, expected_size: tuple[int, int], exif_frame: str = "auto") -> str:
    """The frame ("raw" | "oriented") in which the image's header size equals the annotation's size, read from
    the header alone; ImageReadError otherwise. An image is copied unchanged only when this holds: annotations
    made for another size cannot prove that the image shows no person."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            raw_size, orientation, fmt = img.size, _orientation(img), img.format
    except Exception as exc:  # PIL raises many types for corrupt or hostile headers
        raise ImageReadError(f"cannot read the header of {path}: {type(exc).__name__}: {exc}") from exc
    if fmt not in ("JPEG", "PNG"):
        raise ImageReadError(f"{path}: unsupported image format {fmt}")
    return resolve_frame(exif_frame, orientation, raw_size, expected_size)


def read_image(path: str | Path, expected_size: tuple[int, int], exif_frame: str = "auto",
               data: Optional[bytes] = None) -> LoadedImage:
    """Decode an image into the annotation frame; `expected_size` is the annotation's (width, height).
    `data`: the file's bytes when the caller already read them (to hash them), so the file is read once."""
    path = Path(path)
    if data is None and not path.is_file():
        raise ImageReadError(f"missing image file {path}")
    if data is not None:
        check_bit_depth(data[:32], path)
    else:
        with open(path, "rb") as f:
            check_bit_depth(f.read(32), path)
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            fmt = img.format
            mode = img.mode
            orientation = _orientation(img)
            exif = img.info.get("exif")
            icc = img.info.get("icc_profile")
            img.load()
            if fmt not in ("JPEG", "PNG"):
                raise ImageReadError(f"{path}: unsupported image format {fmt}")
            if mode not in SUPPORTED_MODES:
                raise ImageReadError(f"{path}: unsupported image mode {mode} (supported: {', '.join(SUPPORTED_MODES)})")
            raw = np.asarray(img)
    except ImageReadError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt/truncated files
        raise ImageReadError(f"cannot decode {path}: {exc}") from exc
    frame = resolve_frame(exif_frame, orientation, (raw.shape[1], raw.shape[0]), expected_size)
    alpha = None
    if mode == "L":
        rgb = np.repeat(raw[:, :, None], 3, axis=2)
    elif mode == "RGBA":
        rgb, alpha = raw[:, :, :3], raw[:, :, 3]
    else:
        rgb = raw
    if frame == "oriented" and orientation != 1:
        rgb = _TO_ORIENTED[orientation](rgb)
        alpha = None if alpha is None else _TO_ORIENTED[orientation](alpha)
    return LoadedImage(
        pixels=np.ascontiguousarray(rgb), mode=mode, format=fmt, orientation=orientation, frame=frame,
        alpha=None if alpha is None else np.ascontiguousarray(alpha), exif=exif, icc_profile=icc,
    )


def to_source_layout(pixels: np.ndarray, src: LoadedImage) -> np.ndarray:
    """Pixels in the annotation frame -> array in the source's raw frame and mode, ready to encode."""
    out = pixels
    alpha = src.alpha
    if src.frame == "oriented" and src.orientation != 1:
        out = _TO_RAW[src.orientation](out)
        alpha = None if alpha is None else _TO_RAW[src.orientation](alpha)
    if src.mode == "L":
        out = np.asarray(Image.fromarray(np.ascontiguousarray(out), "RGB").convert("L"))
    elif src.mode == "RGBA":
        out = np.dstack([out, alpha])
    return np.ascontiguousarray(out)


def encode_image(pixels: np.ndarray, src: LoadedImage, jpeg_quality: int = 100, png_compression: int = 3) -> bytes:
    """Encode in the source's format: JPEG at `jpeg_quality` with 4:4:4 chroma, or lossless PNG."""
    arr = to_source_layout(pixels, src)
    if src.format == "PNG":
        # OpenCV's PNG encoder is several times faster than Pillow's at the same (lossless) output.
        bgr = arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA if arr.shape[2] == 4 else cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)])
        if not ok:
            raise OSError("PNG encoding failed")
        return buf.tobytes()
    bio = io.BytesIO()
    kwargs = dict(format="JPEG", quality=int(jpeg_quality), subsampling=0, optimize=False)
    if src.exif:
        kwargs["exif"] = src.exif
    if src.icc_profile:
        kwargs["icc_profile"] = src.icc_profile
    Image.fromarray(arr, src.mode).save(bio, **kwargs)
    return bio.getvalue()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file + rename: a crash or a full disk never leaves a half-written file at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_copy(src: str | Path, dst: str | Path, link: str = "copy") -> None:
    """Byte-identical copy (or hard link) of a source file, atomically."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        if link == "hardlink":
            try:
                os.link(src, tmp)
            except OSError:  # another filesystem: fall back to a copy
                shutil.copyfile(src, tmp)
        else:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
