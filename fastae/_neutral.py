"""Helpers that belong to no backend, written against whichever array module holds the data (NumPy
or CuPy): the Gaussian window of the structural losses (computed once on the host, in float64), the
2x2 average pooling of MS-SSIM with its adjoint, and the products of the sparse codes."""
import itertools
import math

import numpy as np


def rows_times(a, b, out=None):
    """a @ b for a (n, d), each row of the result the same whatever the other rows: NumPy hands a
    single row to BLAS's gemv, whose sums run in another order than gemm's, so a signal's codes would
    depend on the signals solved beside it (the last row of a Dask block, the last signal of a batch)."""
    if a.shape[0] != 1:
        return np.matmul(a, b, out=out) if out is not None else a @ b
    row = (a[[0, 0]] @ b)[:1]  # two rows: gemm
    if out is None:
        return row
    out[...] = row
    return out


def gaussian_window(win_size, sigma):
    """The normalised 1-D Gaussian window, in float64."""
    coords = np.arange(win_size, dtype=np.float64) - win_size // 2
    g = np.exp(-0.5 * (coords / sigma) ** 2)  # (coords / sigma) first: no overflow for any finite sigma
    return g / g.sum()


def sums_to_one(window):
    """Whether the window's weights sum to 1 (within a few float64 roundings): the fused SSIM kernels
    then take the moments about a shift, which keeps the SSIM only for such a window."""
    return abs(float(np.sum(np.asarray(window, np.float64))) - 1.0) <= 4 * np.finfo(np.float64).eps


def pool_pads(*shape):
    """The zero padding of each side of each spatial axis before 2x pooling: one where the size is odd."""
    return tuple(n % 2 for n in shape)


def _corners(a, out):
    """The 2^dims strided views of a (P, *spatial) holding each pooling block's corners, in a fixed order."""
    for corner in itertools.product((0, 1), repeat=len(out)):
        yield a[(slice(None),) + tuple(slice(c, c + 2 * m, 2) for c, m in zip(corner, out))]


def avg_pool(a, pads):
    """2x average pooling over the spatial axes of planes a (P, *spatial), zero padding ``pads`` on both
    sides of each, the padding counted (torch's avg_pool2d / avg_pool3d): the blocks' corners added as
    strided views, one elementwise pass each (NumPy's sum over reshaped axes takes several times longer)."""
    p, spatial = a.shape[0], a.shape[1:]
    if any(pads):
        padded = np.zeros_like(a, shape=(p,) + tuple(n + 2 * q for n, q in zip(spatial, pads)))
        padded[(slice(None),) + tuple(slice(q, q + n) for q, n in zip(pads, spatial))] = a
        a = padded
    out = tuple(n // 2 for n in a.shape[1:])
    corners = _corners(a, out)
    total = next(corners).copy()
    for view in corners:
        total += view
    total *= a.dtype.type(0.5 ** len(out))
    return total


def avg_pool_adjoint(g, pads, out, scale):
    """out = scale * out + the gradient g (P, *pooled) through avg_pool (each output spreads 1 / 2^dims
    to its inputs), scale (P,) one per plane."""
    p, pooled, spatial = g.shape[0], g.shape[1:], out.shape[1:]
    share = g * g.dtype.type(0.5 ** len(pooled))
    full = tuple(n + 2 * q for n, q in zip(spatial, pads))
    padded = np.empty_like(g, shape=(p,) + full)  # (only the far padding of an odd side lies in no block)
    for view in _corners(padded, pooled):
        view[...] = share
    out *= scale.astype(out.dtype).reshape((p,) + (1,) * len(spatial))
    out += padded[(slice(None),) + tuple(slice(q, q + n) for q, n in zip(pads, spatial))]


def power_of_two_scale(largest, within=2.0 ** 16):
    """to_unit(largest) where ``largest`` is finite, positive and outside [1 / within, within]; else 1.
    Scaling by it changes no digit (short of float32's or float64's ends)."""
    if not 0 < largest < math.inf or 1 / within <= largest <= within:
        return 1.0
    return to_unit(largest)


def to_unit(largest):
    """The power of two t with t * largest in [1/2, 1) (``largest`` finite and positive)."""
    return math.ldexp(1.0, -math.frexp(largest)[1])
