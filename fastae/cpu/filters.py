"""A 1-D window along one axis of an array, and its adjoint: the building block of the general
structural losses (any number of spatial axes, zero or reflect padding, per-pixel maps).

An array is viewed as (outer, n, inner) around the filtered axis; output position i sees input
positions i + t - pad, t < win. Padding: ``pad`` positions on each side, zero (``reflect`` False) or
reflected about the edge sample (numpy's "reflect": ... x2 x1 | x0 x1 x2 ... ), so the output has
n + 2 pad - win + 1 positions. The adjoint gathers, for each input position, every output position
and tap that read it (its mirror images included): no scatter, so the result is deterministic.
"""
import numpy as np
from numba import njit

from ._kernels import KERNEL_OPTIONS
from ._math import like
from ._threads import run_chunks


@njit(inline="always")
def source(p, n, reflect):
    """The input position that padded position p reads (-1: a zero)."""
    if 0 <= p < n:
        return p
    if not reflect:
        return -1
    p = -p if p < 0 else 2 * (n - 1) - p  # one reflection (the public layer keeps pad < n)
    return p if 0 <= p < n else -1


@njit(**KERNEL_OPTIONS)
def _filter(a, w, pad, reflect, out, first, stop):
    """out[o, i, :] = sum_t w[t] a[o, source(i + t - pad), :] for o in first .. stop (3-D indexing: no view
    per row, and the loop over the inner axis vectorises)."""
    n, m, inner = a.shape[1], out.shape[1], a.shape[2]
    win = w.size
    zero = like(w[0], 0.0)
    if inner == 1:  # along the contiguous axis: the padded row once, then taps over the row (vectorises)
        row = np.empty(n + 2 * pad, a.dtype)
        for o in range(first, stop):
            for p in range(n + 2 * pad):
                s = source(p - pad, n, reflect)
                row[p] = zero if s < 0 else a[o, s, 0]
            dst = out[o, :, 0]
            dst[:] = zero
            for t in range(win):
                wt = w[t]
                for i in range(m):
                    dst[i] += wt * row[i + t]
        return
    for o in range(first, stop):
        for i in range(m):
            for k in range(inner):
                out[o, i, k] = zero
            for t in range(win):
                s = source(i + t - pad, n, reflect)
                if s < 0:
                    continue
                wt = w[t]
                for k in range(inner):
                    out[o, i, k] += wt * a[o, s, k]


@njit(**KERNEL_OPTIONS)
def _adjoint(g, w, pad, reflect, out, first, stop):
    """out[o, j, :] = sum of w[t] g[o, i, :] over the (i, t) with source(i + t - pad) = j."""
    n, m, inner = out.shape[1], g.shape[1], g.shape[2]
    win = w.size
    zero = like(w[0], 0.0)
    if inner == 1:  # along the contiguous axis: spread onto the padded row (vectorises), then fold it back
        row = np.empty(m + win - 1, g.dtype)
        for o in range(first, stop):
            row[:] = zero
            src = g[o, :, 0]
            for t in range(win):
                wt = w[t]
                for i in range(m):
                    row[i + t] += wt * src[i]
            dst = out[o, :, 0]
            for j in range(n):
                dst[j] = row[j + pad]
            if reflect:
                for p in range(m + win - 1):
                    q = p - pad
                    if q < 0 or q >= n:
                        s = source(q, n, reflect)
                        if s >= 0:
                            dst[s] += row[p]
        return
    for o in range(first, stop):
        for j in range(n):
            for k in range(inner):
                out[o, j, k] = zero
            for mirror in range(3 if reflect else 1):  # j itself, then its mirror images among the padded positions
                p = j if mirror == 0 else (-j if mirror == 1 else 2 * (n - 1) - j)
                if mirror > 0 and (p == j or 0 <= p < n):
                    continue
                for i in range(max(0, p + pad - win + 1), min(m, p + pad + 1)):
                    wt = w[p + pad - i]
                    for k in range(inner):
                        out[o, j, k] += wt * g[o, i, k]


def _view(a, axis):
    """a as (outer, n, inner) around ``axis`` (a C-contiguous view)."""
    shape = a.shape
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return a.reshape(outer, shape[axis], inner)


def filter_axis(a, window, axis, pad, reflect):
    """``window`` (1-D, a's dtype) along ``axis`` of the C-contiguous ``a``, padded by ``pad`` (zero or
    reflected): a new array, that axis n + 2 pad - win + 1 long."""
    n_out = a.shape[axis] + 2 * pad - window.size + 1
    out = np.empty(a.shape[:axis] + (n_out,) + a.shape[axis + 1:], a.dtype)
    src, dst = _view(a, axis), _view(out, axis)
    run_chunks(lambda first, stop: _filter(src, window, pad, reflect, dst, first, stop), src.shape[0],
               min_per_thread=1 if src.shape[1] * src.shape[2] >= 1 << 14 else 64)
    return out


def filter_axis_adjoint(g, window, axis, pad, reflect, n):
    """The adjoint of ``filter_axis`` for an input ``n`` long on ``axis``: a new array."""
    out = np.empty(g.shape[:axis] + (n,) + g.shape[axis + 1:], g.dtype)
    src, dst = _view(g, axis), _view(out, axis)
    run_chunks(lambda first, stop: _adjoint(src, window, pad, reflect, dst, first, stop), src.shape[0],
               min_per_thread=1 if dst.shape[1] * dst.shape[2] >= 1 << 14 else 64)
    return out
