"""Fast separable resampling for the crop-space traditional methods (blur, pixelation).

The crop path resizes each region's crop to the generator's resolution and back (docs/reference.md §2, §3.1).
The general helpers in `crops` call torch per crop, which for the small arrays involved costs more in dispatch
and in its generic float kernel than the arithmetic itself. Here the same resamplings are written as
precomputed, cached operators applied with numpy:

- torch's legacy NEAREST is a gather with cached index vectors (bit-identical: it copies pixels);
- torch's antialiased bicubic (Keys a = -0.5, support scaled by the downsampling factor, weights normalised per
  output sample) is a pair of banded weight matrices, applied with BLAS matrix products in row blocks so that
  the zeros outside the band cost little, and only for the output rows and columns that are pasted (the clip
  box). The weights are torch's to within a unit in the last place and the float32 sums are taken in another
  order than torch's, so values agree to a few units in the last place and a rounded byte can differ by 1 where
  a value lies within that of a .5 boundary (tests/test_blur_fast.py bounds how often).
"""
from __future__ import annotations

import ctypes
import glob
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import cv2
import numpy as np

Size = tuple[int, int]
_BLOCK = 16  # output rows per matrix product: the input band it reads is ~16·scale + taps rows, so few zeros


# ----------------------------------------------------------------------------------------------------- scratch
_LOCAL = threading.local()


def scratch(slot: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """A reusable array of `shape` for intermediate results, one per slot and thread; valid until the next
    request of the same slot. Fresh crop-sized arrays cost page faults (large allocations are fresh mappings)
    that on a loaded machine take longer than the arithmetic on them."""
    n = math.prod(shape)
    bufs = _LOCAL.__dict__.setdefault("bufs", {})
    buf = bufs.get(slot)
    if buf is None or buf.size < n or buf.dtype != np.dtype(dtype):
        buf = bufs[slot] = np.empty(max(n, 1 << 16), dtype=dtype)
    return buf[:n].reshape(shape)


# ----------------------------------------------------------------------------------------------------- BLAS threads
@lru_cache(maxsize=1)
def _openblas_local_threads():
    """numpy's bundled OpenBLAS `openblas_set_num_threads_local` (per calling thread, returns the previous
    setting), or None when numpy uses another BLAS."""
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "lib*openblas*.so*"))):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block's matrix products on the calling thread only. They are small (a crop's worth): OpenBLAS
    would split the larger ones over every core, which costs more than it gains and, on a loaded machine or
    under parallel workers, oversubscribes the cores. Only this thread's setting changes; afterwards it follows
    the process-wide setting again."""
    fn = _openblas_local_threads()
    if fn is None:
        yield
        return
    fn(1)
    try:
        yield
    finally:
        fn(0)  # 0: no per-thread setting


# ----------------------------------------------------------------------------------------------------- operators
def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic with a = -0.5 (the antialiased kernel's), in float32."""
    a = np.float32(-0.5)
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, np.float32(0))).astype(np.float32)


@lru_cache(maxsize=4096)
def aa_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of torch's bicubic + antialias resize along one axis (align_corners=False,
    size given): output i averages inputs around its centre scale·(i + 0.5) with Keys' cubic (a = -0.5) widened
    by the scale when shrinking, renormalised to sum 1; computed in float32 with torch's float/double steps, so
    the weights equal torch's to within a unit in the last place. Identity when the size does not change
    (torch skips the axis). Read-only and cached."""
    if n_in == n_out:
        w = np.eye(n_in, dtype=np.float32)
        w.setflags(write=False)
        return w
    f32, f64 = np.float32, np.float64
    scale = f32(n_in) / f32(n_out)
    support = f32(2.0 * f64(scale)) if scale >= 1 else f32(2.0)
    invscale = f32(1.0 / f64(scale)) if scale >= 1 else f32(1.0)
    max_taps = int(np.ceil(support)) * 2 + 1
    center = (f64(scale) * (np.arange(n_out, dtype=f64) + 0.5)).astype(f32)
    xmin = np.maximum(np.trunc((center - support).astype(f64) + 0.5).astype(np.int64), 0)
    xend = np.minimum(np.trunc((center + support).astype(f64) + 0.5).astype(np.int64), n_in)
    xsize = np.clip(xend - xmin, 0, max_taps)
    j = np.arange(max_taps)
    d = (j[None, :] + xmin[:, None]).astype(f32) - center[:, None]
    taps = _keys_cubic(((d.astype(f64) + 0.5) * f64(invscale)).astype(f32))
    taps = np.where(j[None, :] < xsize[:, None], taps, f32(0))
    total = np.zeros(n_out, dtype=f32)
    for k in range(max_taps):  # torch sums the taps in order, in float32
        total += taps[:, k]
    taps = np.divide(taps, total[:, None], out=np.zeros_like(taps), where=total[:, None] != 0)
    w = np.zeros((n_out, n_in + max_taps), dtype=f32)
    np.put_along_axis(w, xmin[:, None] + j[None, :], taps, axis=1)
    w = np.ascontiguousarray(w[:, :n_in])
    w.setflags(write=False)
    return w


@lru_cache(maxsize=4096)
def _bands(n_in: int, n_out: int) -> tuple[list[int], list[int]]:
    """First and one-past-last input index with a nonzero weight, per output index (both non-decreasing)."""
    nz = aa_bicubic_matrix(n_in, n_out) != 0
    first = nz.argmax(axis=1)
    last = n_in - nz[:, ::-1].argmax(axis=1)
    return first.tolist(), np.maximum.accumulate(last).tolist()


@lru_cache(maxsize=4096)
def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output index under torch's legacy "nearest": floor(i · (in / out)) in float32,
    clamped to the last input. Read-only and cached."""
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    idx = np.minimum(idx, n_in - 1)
    idx.setflags(write=False)
    return idx


def apply_rows(n_in: int, n_out: int, lo: int, hi: int, x: np.ndarray, offset: int = 0,
               out: np.ndarray | None = None) -> np.ndarray:
    """Rows lo..hi of aa_bicubic_matrix(n_in, n_out) @ X, where x (float32, shape (m, K)) holds rows offset..
    offset + m of X and covers every input the kept rows read: (hi - lo, K), in products of _BLOCK rows,
    written into `out` when given."""
    if n_in == n_out:
        return x[lo - offset:hi - offset]
    w = aa_bicubic_matrix(n_in, n_out)
    first, last = _bands(n_in, n_out)
    if out is None:
        out = np.empty((hi - lo, x.shape[1]), dtype=np.float32)
    for o0 in range(lo, hi, _BLOCK):
        o1 = min(o0 + _BLOCK, hi)
        a, b = min(first[o0:o1]), last[o1 - 1]
        np.matmul(w[o0:o1, a:b], x[a - offset:b - offset], out=out[o0 - lo:o1 - lo])
    return out


# ----------------------------------------------------------------------------------------------------- images
def resize_aa_window(a: np.ndarray, size: Size, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Rows rows[0]..rows[1] and columns cols[0]..cols[1] of the bicubic + antialias resize of the HxWxC float32
    array `a` to `size` (as `crops.resize_from_crop`, to float32 rounding), computing only that window.
    Vertical pass first (one product on the HxWC layout), then horizontal on the few rows kept."""
    with one_blas_thread():
        return _resize_aa_window(a, size, rows, cols)


def _resize_aa_window(a: np.ndarray, size: Size, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    h, w, c = a.shape
    oh, ow = size
    (r0, r1), (c0, c1) = rows, cols
    a = np.ascontiguousarray(a, dtype=np.float32)
    if ow != w:  # only the input columns the kept output columns read
        first, last = _bands(w, ow)
        k0, k1 = min(first[c0:c1]), last[c1 - 1]
    else:
        k0, k1 = c0, c1
    nr, kw = r1 - r0, k1 - k0
    # vertical: rows of the HxWC matrix (a strided 2-D view of the kept columns, no copy)
    v = apply_rows(h, oh, r0, r1, a.reshape(h, w * c)[:, k0 * c:k1 * c], out=scratch("rows", (nr, kw * c)))
    v = v.reshape(nr, kw, c)
    if ow == w:
        return v.copy()
    t = _transpose(v, scratch("cols_t", (kw, nr, c))).reshape(kw, nr * c)  # horizontal: rows of the transpose
    out_t = apply_rows(w, ow, c0, c1, t, k0, out=scratch("out_t", (c1 - c0, nr * c)))
    return _transpose(out_t.reshape(c1 - c0, nr, c))


def _transpose(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Swap the first two axes of an HxWxC array into a contiguous array (`out` when given, else a new one);
    cv2 for 1-4 channels: numpy's strided copy is several times slower for 3-channel floats."""
    h, w, c = a.shape
    if out is None:
        out = np.empty((w, h, c), dtype=a.dtype)
    if c <= 4 and a.strides[2] == a.itemsize and a.strides[1] == c * a.itemsize:
        res = cv2.transpose(a, dst=out.reshape(w, h, c) if c > 1 else out.reshape(w, h))
        if res.ctypes.data == out.ctypes.data:
            return out
        out[...] = res.reshape(w, h, c)
        return out
    np.copyto(out, a.transpose(1, 0, 2))
    return out


def cut_nearest(image: np.ndarray, exp_box: tuple[int, int, int, int], size: Size) -> np.ndarray:
    """torch NEAREST resize of the zero-padded cut of `exp_box` to `size` (h, w), gathered straight from the
    image: equal to nearest(cut_pad(image, exp_box), size), without cutting the whole box."""
    x0, y0, x1, y1 = (int(v) for v in exp_box)
    h, w = image.shape[:2]
    iy = nearest_index(y1 - y0, size[0]) + y0
    ix = nearest_index(x1 - x0, size[1]) + x0
    vy = (iy >= 0) & (iy < h)
    vx = (ix >= 0) & (ix < w)
    ya, yb = min(max(int(iy[0]), 0), h - 1), min(max(int(iy[-1]), 0), h - 1) + 1
    xa, xb = min(max(int(ix[0]), 0), w - 1), min(max(int(ix[-1]), 0), w - 1) + 1
    window = image[ya:yb, xa:xb]  # a view: only the box's rows and columns are ever copied
    ry = iy - ya if ya <= iy[0] and iy[-1] < yb else np.clip(iy, ya, yb - 1) - ya
    rx = ix - xa if xa <= ix[0] and ix[-1] < xb else np.clip(ix, xa, xb - 1) - xa
    out = window.take(ry, axis=0).take(rx, axis=1)
    if not vy.all():
        out[~vy] = 0
    if not vx.all():
        out[:, ~vx] = 0
    return out
