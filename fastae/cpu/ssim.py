"""SSIM on the CPU: value and exact gradient in one streaming pass per plane.

The moments are those of the shifted plane x' = x - s, y' = y - s (s the
plane's mean: variances and covariances do not change, and float32 keeps its
digits on bright images): four maps mu'_x, mu'_y, P = E[x'y'] and
Q = E[(x - y)^2], Gaussian-filtered separably. Each input row is filtered
horizontally into a ring of ``win`` rows and each output row sums its ring
vertically. With d = mu'_x - mu'_y, mu = mu' + s,

    lum = 1 - d^2 / (2 mu_x mu_y + C1 + d^2)
    cs  = 1 - D / (2 cov + C2 + D),  cov = P - mu'_x mu'_y,  D = Q - d^2,

so identical images give exactly lum = cs = 1 and a gradient of exactly 0
(D, d and x - y vanish). The gradient of the map's sum is the adjoint filter
of three coefficient maps A = dS/dmu'_x, B = dS/dP, C = dS/dQ:
dS/dx = G^T A + y' G^T B + 2 (x - y) G^T C, accumulated into a second ring of
input rows as the output rows stream by; an input row is written out as soon
as no later output row touches it. Nothing of plane size is stored but the
input and the gradient.
"""
import numpy as np
from numba import njit

from ._math import like
from ._threads import run_chunks
from ._kernels import KERNEL_OPTIONS, item


@njit(**KERNEL_OPTIONS)
def _mean_of_both(x, y):
    """The mean of x and y together (summed in float64), in their dtype: the shift."""
    total = 0.0
    for r in range(x.shape[0]):
        for q in range(x.shape[1]):
            total += np.float64(x[r, q]) + np.float64(y[r, q])
    return x.dtype.type(total / max(1, 2 * x.size))


@njit(inline="always")
def _shift_into(x, pad, s, out):
    """out = x - s, padded by ``pad`` with -s (the shifted zero) on every side."""
    out[:, :] = -s
    for r in range(x.shape[0]):
        for q in range(x.shape[1]):
            out[r + pad, q + pad] = x[r, q] - s


@njit(inline="always")
def _filter_row(g, xs, ys, i, prod, ring, slot, wv):
    """The horizontal pass of input row i: the four products filtered into ring[:, slot]."""
    for q in range(xs.shape[1]):
        d = xs[i, q] - ys[i, q]
        prod[0, q] = xs[i, q] * ys[i, q]
        prod[1, q] = d * d
    ring[:, slot, :] = like(g[0], 0.0)
    for t in range(g.size):
        gt = g[t]
        for j in range(wv):
            ring[0, slot, j] += gt * xs[i, j + t]
            ring[1, slot, j] += gt * ys[i, j + t]
            ring[2, slot, j] += gt * prod[0, j + t]
            ring[3, slot, j] += gt * prod[1, j + t]


@njit(inline="always")
def _coefficients(mom, s, c1, c2, use_cs, scale, coef, wv):
    """The SSIM (or contrast-structure) sum of one output row from its moments, and scale times
    the coefficient maps A, B, C of the gradient."""
    one, two = like(c1, 1.0), like(c1, 2.0)
    row_sum = like(c1, 0.0)
    for j in range(wv):
        mx, my = mom[0, j], mom[1, j]
        d = mx - my
        cov = mom[2, j] - mx * my
        diff = mom[3, j] - d * d
        b2 = two * cov + c2 + diff
        cs = one - diff / b2  # (2 cov + C2) / b2, exactly 1 where diff is 0 (even as a * (1 / b))
        if use_cs:
            row_sum += cs
            coef[0, j] = scale * two * (mx * cs - my) / b2
            coef[1, j] = scale * two * diff / (b2 * b2)
            coef[2, j] = -scale * cs / b2
        else:
            ux, uy = mx + s, my + s
            b1 = two * ux * uy + c1 + d * d
            lum = one - d * d / b1
            v = lum * cs
            row_sum += v
            coef[0, j] = scale * two * (cs * (uy - lum * ux) / b1 + lum * (mx * cs - my) / b2)
            coef[1, j] = scale * two * lum * diff / (b2 * b2)
            coef[2, j] = -scale * v / b2
    return row_sum


@njit(inline="always")
def _vertical(g, ring, o, mom):
    """Output row o's moments: the window down the ring of horizontally filtered rows."""
    mom[:, :] = like(g[0], 0.0)
    win = g.size
    for t in range(win):
        slot = (o + t) % win
        gt = g[t]
        for m in range(mom.shape[0]):
            for j in range(mom.shape[1]):
                mom[m, j] += gt * ring[m, slot, j]


@njit(inline="always")
def _spread(g, coef, o, back):
    """The vertical adjoint: output row o's coefficients into the input rows o .. o + win - 1 it saw."""
    win = g.size
    for t in range(win):
        slot = (o + t) % win
        gt = g[t]
        for m in range(3):
            for j in range(coef.shape[1]):
                back[m, slot, j] += gt * coef[m, j]


@njit(inline="always")
def _gradient_row(g, back, slot, xs, ys, p, pad, full, grad, r, accumulate):
    """The horizontal adjoint of input row p (ring slot ``slot``), then its gradient into grad[r]:
    G^T A + y' G^T B + 2 (x - y) G^T C."""
    full[:, :] = like(g[0], 0.0)
    for t in range(g.size):
        gt = g[t]
        for m in range(3):
            for j in range(back.shape[2]):
                full[m, j + t] += gt * back[m, slot, j]
    back[:, slot, :] = like(g[0], 0.0)
    for q in range(grad.shape[1]):
        c = q + pad
        v = full[0, c] + ys[p, c] * full[1, c] + like(g[0], 2.0) * (xs[p, c] - ys[p, c]) * full[2, c]
        if accumulate:
            grad[r, q] += v
        else:
            grad[r, q] = v


@njit(**KERNEL_OPTIONS)
def _plane(x, y, g, pad, c1, c2, use_cs, scale, grad, accumulate, xs, ys, ring, back, prod, mom, coef, full):
    """Sum over the valid positions of the SSIM map (or, with ``use_cs``, the
    contrast-structure map) of one plane, zero-padded by ``pad`` first; with
    ``grad`` an array of x's shape, writes (or adds, with ``accumulate``)
    scale * d sum / dx into it. The other arrays are the caller's buffers."""
    s = _mean_of_both(x, y)
    _shift_into(x, pad, s, xs)
    _shift_into(y, pad, s, ys)
    hp = xs.shape[0]
    win = g.size
    hv = hp - win + 1
    ring[:, :, :] = like(c1, 0.0)
    back[:, :, :] = like(c1, 0.0)
    total = 0.0
    for i in range(hp):
        _filter_row(g, xs, ys, i, prod, ring, i % win, ring.shape[2])
        o = i - win + 1  # the output row now complete
        if o < 0:
            continue
        _vertical(g, ring, o, mom)
        total += _coefficients(mom, s, c1, c2, use_cs, scale, coef, mom.shape[1])
        if grad is None:
            continue
        _spread(g, coef, o, back)
        last = hp - 1 if o == hv - 1 else o  # input rows that no later output row touches
        for p in range(o, last + 1):
            r = p - pad
            if 0 <= r < x.shape[0]:
                _gradient_row(g, back, p % win, xs, ys, p, pad, full, grad, r, accumulate)
            else:
                back[:, p % win, :] = like(c1, 0.0)
    return total


@njit(**KERNEL_OPTIONS)
def _planes(x, y, g, pad, c1, c2, use_cs, scales, grad, accumulate, first, stop, sums):
    """_plane over planes ``first`` to ``stop`` of x, y (P, H, W), with one set of buffers."""
    h, w = x.shape[1], x.shape[2]
    hp, wp = h + 2 * pad, w + 2 * pad
    win = g.size
    wv = wp - win + 1
    dtype = x.dtype
    xs, ys = np.empty((hp, wp), dtype), np.empty((hp, wp), dtype)
    ring = np.empty((4, win, wv), dtype)    # horizontally filtered moments of the last win input rows
    back = np.empty((3, win, wv), dtype)    # vertical adjoint of A, B, C for the input rows in flight
    prod, full = np.empty((2, wp), dtype), np.empty((3, wp), dtype)
    mom, coef = np.empty((4, wv), dtype), np.empty((3, wv), dtype)
    for p in range(first, stop):
        sums[p] = _plane(x[p], y[p], g, pad, c1, c2, use_cs, dtype.type(scales[p]), item(grad, p), accumulate,
                         xs, ys, ring, back, prod, mom, coef, full)


def ssim_planes(x, y, g, pad, c1, c2, use_cs, scales, grad, accumulate):
    """The SSIM sums of the planes of x, y (P, H, W), in threads over ranges of planes (see
    fastae/backends.md); ``scales`` (P,) scales each plane's gradient."""
    dtype = x.dtype
    g = g.astype(dtype)
    scales = np.ascontiguousarray(scales, np.float64)
    sums = np.empty(x.shape[0])
    run_chunks(lambda first, stop: _planes(x, y, g, pad, dtype.type(c1), dtype.type(c2), use_cs, scales, grad,
                                           accumulate, first, stop, sums), x.shape[0], min_per_thread=1)
    return sums
