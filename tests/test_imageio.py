"""Image decoding into the annotation frame, writing back in the source's frame, atomic writes."""
import io

import numpy as np
import pytest
from PIL import Image

from avanon.mirror.imageio import (
    ImageReadError, atomic_copy, atomic_write_bytes, encode_image, read_image, resolve_frame, sha256_file,
)


def _textured(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save_jpeg_with_orientation(path, raw, orientation):
    img = Image.fromarray(raw)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, format="JPEG", quality=100, subsampling=0, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_rotated_jpeg_is_read_in_annotation_frame_and_written_back_raw(tmp_path, orientation):
    raw = _textured(40, 60)
    path = tmp_path / "rot.jpg"
    _save_jpeg_with_orientation(path, raw, orientation)
    transposed = orientation in (5, 6, 7, 8)
    annotation_size = (40, 60) if transposed else (60, 40)
    img = read_image(path, annotation_size, "auto")
    assert img.frame == "oriented" and img.orientation == orientation
    assert img.pixels.shape[:2] == (annotation_size[1], annotation_size[0])
    from PIL import ImageOps
    assert np.array_equal(img.pixels, np.asarray(ImageOps.exif_transpose(Image.open(path))))
    # mark the top-left corner in the annotation frame, write, read back through an EXIF-aware loader
    marked = img.pixels.copy()
    marked[:5, :5] = 0
    data = encode_image(marked, img, 100)
    out = tmp_path / "out.jpg"
    out.write_bytes(data)
    with Image.open(out) as o:
        assert o.size == (60, 40)  # raw frame kept
        assert o.getexif().get(0x0112) == orientation  # EXIF kept, so loaders see what they saw in the source
        seen = np.asarray(ImageOps.exif_transpose(o))
    assert seen[:5, :5].mean() < 20 and seen[10:, 10:].mean() > 60


def test_raw_frame_annotations_are_detected():
    # a 90-degree EXIF rotation whose annotation kept the raw size: annotations were made on raw pixels
    assert resolve_frame("auto", 6, (60, 40), (60, 40)) == "raw"
    assert resolve_frame("auto", 6, (60, 40), (40, 60)) == "oriented"
    assert resolve_frame("auto", 3, (60, 40), (60, 40)) == "oriented"  # ambiguous: follow detectron2
    with pytest.raises(ImageReadError, match="annotation says 10x10"):
        resolve_frame("auto", 1, (60, 40), (10, 10))


def test_png_roundtrip_is_lossless_and_grey_stays_grey(tmp_path):
    rgb = _textured(30, 20)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png", (20, 30))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(io.BytesIO(encode_image(img.pixels, img)))))
    grey = rgb[:, :, 0]
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    g = read_image(tmp_path / "g.png", (20, 30))
    assert g.mode == "L" and g.pixels.shape == (30, 20, 3)
    back = Image.open(io.BytesIO(encode_image(g.pixels, g)))
    assert back.mode == "L" and np.array_equal(np.asarray(back), grey)


def test_jpeg_is_written_at_q100_444(tmp_path):
    Image.fromarray(_textured(32, 32)).save(tmp_path / "a.jpg", quality=90)
    img = read_image(tmp_path / "a.jpg", (32, 32))
    out = Image.open(io.BytesIO(encode_image(img.pixels, img, 100)))
    from PIL import JpegImagePlugin
    assert JpegImagePlugin.get_sampling(out) == 0  # 4:4:4
    assert np.abs(np.asarray(out).astype(int) - img.pixels).mean() < 1.0


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ImageReadError, match="missing image file"):
        read_image(tmp_path / "nope.jpg", (1, 1))
    (tmp_path / "trunc.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(ImageReadError, match="cannot decode"):
        read_image(tmp_path / "trunc.jpg", (1, 1))
    Image.fromarray(_textured(8, 8)[:, :, 0], "L").convert("P").save(tmp_path / "p.png")
    with pytest.raises(ImageReadError, match="unsupported image mode P"):
        read_image(tmp_path / "p.png", (8, 8))
    Image.fromarray(_textured(8, 8)).save(tmp_path / "s.png")
    with pytest.raises(ImageReadError, match="annotation says 9x8"):
        read_image(tmp_path / "s.png", (9, 8))


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "d" / "x.bin"
    atomic_write_bytes(target, b"old")
    import os

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]


def test_atomic_copy_and_hardlink(tmp_path):
    src = tmp_path / "s.txt"
    src.write_bytes(b"abc")
    atomic_copy(src, tmp_path / "c" / "s.txt")
    atomic_copy(src, tmp_path / "h" / "s.txt", link="hardlink")
    assert sha256_file(tmp_path / "c" / "s.txt") == sha256_file(src)
    assert (tmp_path / "h" / "s.txt").stat().st_ino == src.stat().st_ino
