"""SSIM on the CPU: value and exact gradient in one streaming pass per plane.

For one image plane, the five moment maps (mu_x, mu_y, E[x^2], E[y^2], E[xy])
are Gaussian-filtered separably: each input row is filtered horizontally into
a ring of ``win`` rows, and each output row sums its ring vertically. The SSIM
(or contrast-structure) row follows, and with it the three coefficient rows
a = dS/dmu_x, b = dS/dE[x^2], c = dS/dE[xy]. The gradient is the adjoint
filter of those: dS/dx = G^T a + 2 x G^T b + y G^T c, accumulated into a
second ring of input rows as the output rows stream by; an input row is
written out as soon as no later output row touches it. Nothing of plane size
is stored but the input and the gradient.
"""
import numpy as np
from numba import njit

from ._math import like
from ._threads import run_chunks
from .pointwise import KERNEL_OPTIONS


def gaussian_window(win_size, sigma):
    """The normalised 1-D Gaussian window, in float64."""
    coords = np.arange(win_size, dtype=np.float64) - win_size // 2
    g = np.exp(-(coords ** 2) / (2 * sigma ** 2))
    return g / g.sum()


@njit(**KERNEL_OPTIONS)
def _padded(x, pad):
    if pad == 0:
        return x
    out = np.zeros((x.shape[0] + 2 * pad, x.shape[1] + 2 * pad), x.dtype)
    out[pad:pad + x.shape[0], pad:pad + x.shape[1]] = x
    return out


@njit(**KERNEL_OPTIONS)
def ssim_plane(x, y, g, pad, c1, c2, use_cs, scale, grad, accumulate):
    """Sum over the valid positions of the SSIM map (or, with ``use_cs``, the
    contrast-structure map) of one plane, zero-padded by ``pad`` first.

    With ``grad`` an array of x's shape, writes (or adds, with
    ``accumulate``) scale * d sum / dx into it.
    """
    xp = _padded(x, pad)
    yp = _padded(y, pad)
    hp, wp = xp.shape
    win = g.size
    hv, wv = hp - win + 1, wp - win + 1
    dtype = x.dtype
    ring = np.zeros((5, win, wv), dtype)    # horizontally filtered moments of the last win input rows
    back = np.zeros((3, win, wv), dtype)    # vertical adjoint of a, b, c for the input rows in flight
    prod = np.empty((3, wp), dtype)
    mom = np.empty((5, wv), dtype)
    coef = np.empty((3, wv), dtype)
    full = np.empty((3, wp), dtype)
    zero = like(c1, 0.0)
    total = 0.0
    for i in range(hp):
        slot = i % win
        for q in range(wp):
            prod[0, q] = xp[i, q] * xp[i, q]
            prod[1, q] = yp[i, q] * yp[i, q]
            prod[2, q] = xp[i, q] * yp[i, q]
        ring[:, slot, :] = zero
        for t in range(win):
            gt = g[t]
            for j in range(wv):
                ring[0, slot, j] += gt * xp[i, j + t]
                ring[1, slot, j] += gt * yp[i, j + t]
                ring[2, slot, j] += gt * prod[0, j + t]
                ring[3, slot, j] += gt * prod[1, j + t]
                ring[4, slot, j] += gt * prod[2, j + t]
        o = i - win + 1  # the output row now complete
        if o < 0:
            continue
        mom[:, :] = zero
        for t in range(win):
            s = (o + t) % win
            gt = g[t]
            for m in range(5):
                for j in range(wv):
                    mom[m, j] += gt * ring[m, s, j]
        row_sum = zero
        for j in range(wv):
            mx, my = mom[0, j], mom[1, j]
            a1 = like(c1, 2.0) * mx * my + c1
            b1 = mx * mx + my * my + c1
            a2 = like(c1, 2.0) * (mom[4, j] - mx * my) + c2
            b2 = (mom[2, j] - mx * mx) + (mom[3, j] - my * my) + c2
            lum = a1 / b1
            cs = a2 / b2
            s = lum * cs
            row_sum += cs if use_cs else s
            if use_cs:
                coef[0, j] = scale * like(c1, 2.0) * (mx * cs - my) / b2
                coef[1, j] = -scale * cs / b2
                coef[2, j] = scale * like(c1, 2.0) / b2
            else:
                coef[0, j] = scale * like(c1, 2.0) * (my * (cs / b1 - lum / b2) + mx * s * (like(c1, 1.0) / b2 - like(c1, 1.0) / b1))
                coef[1, j] = -scale * s / b2
                coef[2, j] = scale * like(c1, 2.0) * lum / b2
        total += row_sum
        if grad is None:
            continue
        for t in range(win):  # output row o reaches input rows o .. o + win - 1
            s = (o + t) % win
            gt = g[t]
            for m in range(3):
                for j in range(wv):
                    back[m, s, j] += gt * coef[m, j]
        last = hp - 1 if o == hv - 1 else o  # input rows that no later output row touches
        for p in range(o, last + 1):
            s = p % win
            full[:, :] = zero
            for t in range(win):
                gt = g[t]
                for m in range(3):
                    for j in range(wv):
                        full[m, j + t] += gt * back[m, s, j]
            back[:, s, :] = zero
            r = p - pad
            if r < 0 or r >= x.shape[0]:
                continue
            for q in range(x.shape[1]):
                v = full[0, q + pad] + like(c1, 2.0) * x[r, q] * full[1, q + pad] + y[r, q] * full[2, q + pad]
                if accumulate:
                    grad[r, q] += v
                else:
                    grad[r, q] = v
    return total


def ssim_planes(x, y, g, pad, c1, c2, use_cs, scales, grad, accumulate):
    """ssim_plane over the planes of x, y (P, H, W), in threads; returns the
    per-plane sums. ``scales`` (P,) scales each plane's gradient."""
    dtype = x.dtype
    g = g.astype(dtype)
    sums = np.empty(x.shape[0])

    def run(first, stop):
        for i in range(first, stop):
            sums[i] = ssim_plane(x[i], y[i], g, pad, dtype.type(c1), dtype.type(c2), use_cs,
                                 dtype.type(scales[i]), None if grad is None else grad[i], accumulate)
    run_chunks(run, x.shape[0], min_per_thread=1)  # a plane is a big task
    return sums
