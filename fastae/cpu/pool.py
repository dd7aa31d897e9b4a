"""MS-SSIM's 2x2 average pooling of planes (P, H, W) and its adjoint, in threads over planes (NumPy's
strided passes, fastae/_neutral.py, for volumes and on CUDA). An odd side is zero-padded by one on
both sides first, the padding counted (torch's avg_pool2d), so output (i, j) averages input rows
2i - ph, 2i - ph + 1 and columns 2j - pw, 2j - pw + 1 where they exist."""
import numpy as np
from numba import njit

from .. import _neutral
from ._kernels import ELEMENT_OPTIONS
from ._math import like
from ._threads import next_task, pulled, run_pulled, take_task


@njit(inline="always")
def _at(row, c):
    """row[c], or the padding's zero outside the row."""
    return row[c] if 0 <= c < row.size else like(row[0], 0.0)


@njit(inline="always")
def _block(top, bottom, c, quarter):
    """The mean of top[c], top[c + 1], bottom[c], bottom[c + 1], zero outside the rows, added in the
    order (0, 0), (0, 1), (1, 0), (1, 1)."""
    return (((_at(top, c) + _at(top, c + 1)) + _at(bottom, c)) + _at(bottom, c + 1)) * quarter


@njit(**ELEMENT_OPTIONS)  # (no reassoc: the corners add in the order fastae/_neutral.py adds them)
def _pool(a, ph, pw, out, queue):
    """out[p] = the 2x2 block means of a[p] for the planes p this thread takes from ``queue`` (see
    _threads.run_pulled; blocks at rows 2i - ph, columns 2j - pw); the columns inside the row without a
    test, as pairs from 0 (LLVM vectorises that)."""
    h, w = a.shape[1], a.shape[2]
    ho, wo = out.shape[1], out.shape[2]
    zeros = np.zeros(w, a.dtype)
    quarter = like(zeros[0], 0.25)
    inner = (w + pw) // 2 - pw  # blocks pw .. pw + inner - 1 lie inside the row
    p = take_task(queue)
    while p < a.shape[0]:
        for i in range(ho):
            r = 2 * i - ph
            top = a[p, r] if 0 <= r < h else zeros
            bottom = a[p, r + 1] if r + 1 < h else zeros
            dst = out[p, i]
            t, b, d = top[pw:], bottom[pw:], dst[pw:]  # (block pw + j reads columns 2j + pw, 2j + pw + 1)
            for j in range(inner):
                d[j] = (((t[2 * j] + t[2 * j + 1]) + b[2 * j]) + b[2 * j + 1]) * quarter
            for j in range(0, pw):
                dst[j] = _block(top, bottom, 2 * j - pw, quarter)
            for j in range(pw + inner, wo):
                dst[j] = _block(top, bottom, 2 * j - pw, quarter)
        p = next_task(queue)


@njit(**ELEMENT_OPTIONS)
def _spread(g, ph, pw, scale, out, queue):
    """out[p, r, c] = scale[p] out[p, r, c] + g[p, (r + ph) // 2, (c + pw) // 2] / 4 for the planes p this
    thread takes from ``queue``: every input lies in a block (only the far padding row or column of an odd
    side lies in none); pairs of columns from 0."""
    h, w = out.shape[1], out.shape[2]
    quarter = like(g[0, 0, 0], 0.25)
    pairs = (w - pw) // 2
    p = take_task(queue)
    while p < g.shape[0]:
        s = scale[p]
        for r in range(h):
            src, dst = g[p, (r + ph) // 2], out[p, r]
            if pw:
                dst[0] = s * dst[0] + src[0] * quarter
            d, e = dst[pw:], src[pw:]  # (columns pw + 2j, pw + 2j + 1 take block pw + j)
            for j in range(pairs):
                v = e[j] * quarter
                d[2 * j] = s * d[2 * j] + v
                d[2 * j + 1] = s * d[2 * j + 1] + v
            if pw + 2 * pairs < w:  # the last column alone
                dst[w - 1] = s * dst[w - 1] + src[(w - 1 + pw) // 2] * quarter
        p = next_task(queue)


@njit(**ELEMENT_OPTIONS)
def _pool_pulled(args, words, jobs, helper, count, job, finished):
    """_pool(*args) in fastae's threads (see _threads.pulled)."""
    return pulled(_pool, args, words, jobs, helper, count, job, finished)


@njit(**ELEMENT_OPTIONS)
def _spread_pulled(args, words, jobs, helper, count, job, finished):
    """_spread(*args) in fastae's threads (see _threads.pulled)."""
    return pulled(_spread, args, words, jobs, helper, count, job, finished)


def _thread_count(planes, size, work=1 << 18):
    """Threads for ``planes`` of ``size`` pixels: one per ``work`` pixels (~0.2 ms; smaller shares gained
    nothing on MS-SSIM's coarser levels, measured: the pooling runs near memory speed)."""
    return max(1, planes * size // work)


def avg_pool(a, pads):
    """2x average pooling over the spatial axes of planes a (P, *spatial), zero padding ``pads``."""
    if a.ndim != 3 or not a.flags.c_contiguous:
        return _neutral.avg_pool(a, pads)
    p, h, w = a.shape
    out = np.empty((p, (h + 2 * pads[0]) // 2, (w + 2 * pads[1]) // 2), a.dtype)
    run_pulled(_pool, _pool_pulled, (a, pads[0], pads[1], out, np.zeros(2, np.int64)), p, _thread_count(p, h * w))
    return out


def avg_pool_adjoint(g, pads, out, scale):
    """out = scale * out + the gradient g (P, *pooled) through avg_pool, scale (P,) one per plane."""
    if g.ndim != 3 or not (g.flags.c_contiguous and out.flags.c_contiguous):
        return _neutral.avg_pool_adjoint(g, pads, out, scale)
    scale = np.ascontiguousarray(scale, out.dtype)
    run_pulled(_spread, _spread_pulled, (g, pads[0], pads[1], scale, out, np.zeros(2, np.int64)), g.shape[0],
               _thread_count(g.shape[0], out.shape[1] * out.shape[2]))
