"""MS-SSIM's 2x2 average pooling of planes (P, H, W) and its adjoint, in threads over planes (NumPy's
strided passes, fastae/_neutral.py, for volumes and on CUDA). An odd side is zero-padded by one on
both sides first, the padding counted (torch's avg_pool2d), so output (i, j) averages input rows
2i - ph, 2i - ph + 1 and columns 2j - pw, 2j - pw + 1 where they exist."""
import numpy as np
from numba import njit

from .. import _neutral
from ._kernels import KERNEL_OPTIONS
from ._math import like
from ._threads import run_chunks


@njit(inline="always")
def _at(row, c):
    """row[c], or the padding's zero outside the row."""
    return row[c] if 0 <= c < row.size else like(row[0], 0.0)


@njit(**KERNEL_OPTIONS)
def _pool(a, ph, pw, out, first, stop):
    """out[p] = the 2x2 block means of a[p] for planes first .. stop; corners added in the order
    (0, 0), (0, 1), (1, 0), (1, 1), as fastae/_neutral.py adds its strided views."""
    h, w = a.shape[1], a.shape[2]
    ho, wo = out.shape[1], out.shape[2]
    zeros = np.zeros(w, a.dtype)
    quarter = like(zeros[0], 0.25)
    lo, hi = pw, min(wo, (w + pw) // 2)  # columns whose both inputs lie inside the row
    for p in range(first, stop):
        for i in range(ho):
            r = 2 * i - ph
            top = a[p, r] if 0 <= r < h else zeros
            bottom = a[p, r + 1] if r + 1 < h else zeros
            dst = out[p, i]
            for j in range(lo, hi):
                c = 2 * j - pw
                dst[j] = (((top[c] + top[c + 1]) + bottom[c]) + bottom[c + 1]) * quarter
            for j in range(0, lo):
                c = 2 * j - pw
                dst[j] = (((_at(top, c) + _at(top, c + 1)) + _at(bottom, c)) + _at(bottom, c + 1)) * quarter
            for j in range(hi, wo):
                c = 2 * j - pw
                dst[j] = (((_at(top, c) + _at(top, c + 1)) + _at(bottom, c)) + _at(bottom, c + 1)) * quarter


@njit(**KERNEL_OPTIONS)
def _spread(g, ph, pw, scale, out, first, stop):
    """out[p, r, c] = scale[p] out[p, r, c] + g[p, (r + ph) // 2, (c + pw) // 2] / 4: every input lies in
    a block (only the far padding row or column of an odd side lies in none)."""
    h, w = out.shape[1], out.shape[2]
    quarter = like(g[0, 0, 0], 0.25)
    for p in range(first, stop):
        s = scale[p]
        for r in range(h):
            src, dst = g[p, (r + ph) // 2], out[p, r]
            for c in range(w):
                dst[c] = s * dst[c] + src[(c + pw) // 2] * quarter


def avg_pool(a, pads):
    """2x average pooling over the spatial axes of planes a (P, *spatial), zero padding ``pads``."""
    if a.ndim != 3 or not a.flags.c_contiguous:
        return _neutral.avg_pool(a, pads)
    p, h, w = a.shape
    out = np.empty((p, (h + 2 * pads[0]) // 2, (w + 2 * pads[1]) // 2), a.dtype)
    run_chunks(lambda first, stop: _pool(a, pads[0], pads[1], out, first, stop), p, min_per_thread=1)
    return out


def avg_pool_adjoint(g, pads, out, scale):
    """out = scale * out + the gradient g (P, *pooled) through avg_pool, scale (P,) one per plane."""
    if g.ndim != 3 or not (g.flags.c_contiguous and out.flags.c_contiguous):
        return _neutral.avg_pool_adjoint(g, pads, out, scale)
    scale = np.ascontiguousarray(scale, out.dtype)
    run_chunks(lambda first, stop: _spread(g, pads[0], pads[1], scale, out, first, stop), g.shape[0],
               min_per_thread=1)
