"""Helpers that belong to no backend, written against whichever array module holds the data (NumPy
or CuPy): the Gaussian window of the structural losses (computed once on the host, in float64), the
2x2 average pooling of MS-SSIM with its adjoint, and the products of the sparse codes."""
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


def pool_pads(h, w):
    """The zero padding of each side before 2x2 pooling: one row (column) where the size is odd."""
    return h % 2, w % 2


def avg_pool(a, pads):
    """2x2 average pooling with zero padding (ph, pw) on both sides, padding counted (torch's avg_pool2d)."""
    ph, pw = pads
    p, h, w = a.shape
    padded = np.zeros_like(a, shape=(p, h + 2 * ph, w + 2 * pw))
    padded[:, ph:ph + h, pw:pw + w] = a
    ho, wo = (h + 2 * ph) // 2, (w + 2 * pw) // 2
    a = padded[:, :2 * ho, :2 * wo]
    return (a[:, 0::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 0::2] + a[:, 1::2, 1::2]) * a.dtype.type(0.25)


def avg_pool_adjoint(g, pads, h, w):
    """The gradient through avg_pool: each output spreads a quarter to its four inputs."""
    ph, pw = pads
    p, ho, wo = g.shape
    padded = np.zeros_like(g, shape=(p, h + 2 * ph, w + 2 * pw))
    quarter = g * g.dtype.type(0.25)
    for i in (0, 1):
        for j in (0, 1):
            padded[:, i:2 * ho:2, j:2 * wo:2] = quarter
    return padded[:, ph:ph + h, pw:pw + w]
