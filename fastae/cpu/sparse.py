"""Sparse-coding kernels on the CPU: soft-thresholding and the FISTA step.

``soft(x, l) = sign(x) max(|x| - l, 0)`` is the proximal operator of
``l |x|``: the closed-form LASSO code for an orthonormal dictionary and the
shrinkage step of ISTA/FISTA.
"""
import numpy as np
from numba import njit

from ._math import like
from ._threads import run_chunks
from .pointwise import BLOCK, CHUNK, KERNEL_OPTIONS, item, window


@njit(**KERNEL_OPTIONS)
def _soft_block(c, lam, out, mask):
    for i in range(c.size):
        x = c[i]
        t = item(lam, i)
        zero = like(x, 0.0)
        small = abs(x) <= t  # false for nan: nan stays nan, its mask is 1 (as torch's softshrink)
        out[i] = zero if small else (x - t if x > zero else x + t)
        if mask is not None:
            mask[i] = zero if small else like(x, 1.0)


@njit(**KERNEL_OPTIONS)
def _soft_segments(c, lam, period, out, mask, seg, first, stop):
    """Segments ``first`` to ``stop`` (of ``seg`` elements) of the flat arrays;
    an array ``lam`` repeats with ``period`` (a multiple or divisor of ``seg``)."""
    n = c.size
    for s in range(first, stop):
        b = s * seg
        e = min(b + seg, n)
        o = b % period
        _soft_block(c[b:e], window(lam, o, o + e - b), out[b:e], window(mask, b, e))


def soft_threshold(c, lam, out, mask):
    """Soft-threshold the C-contiguous ``c`` into ``out`` (and its derivative
    into ``mask`` unless None). ``lam`` is a scalar or a C-contiguous array
    whose flat values repeat along ``c``'s flat values (trailing-axes
    thresholds, e.g. one per atom) or match them one to one."""
    c, out = c.reshape(-1), out.reshape(-1)
    mask = None if mask is None else mask.reshape(-1)
    if isinstance(lam, np.ndarray):
        lam = lam.reshape(-1)
        if lam.size < BLOCK and lam.size != c.size:  # short period (one per atom): tile it up to a block
            lam = np.tile(lam, BLOCK // lam.size)
        period = lam.size
        seg = BLOCK if period == c.size else period  # per element: blocks; repeating: one period a segment
    else:
        lam = c.dtype.type(lam)
        period, seg = 1, BLOCK
    n_segments = -(-c.size // seg)
    per_chunk = max(1, CHUNK // seg)
    n_chunks = -(-n_segments // per_chunk)

    def run(first, stop):
        _soft_segments(c, lam, period, out, mask, seg, first * per_chunk, min(stop * per_chunk, n_segments))
    run_chunks(run, n_chunks)


@njit(**KERNEL_OPTIONS)
def fista_rows(y, gy, b, z, step, thr, tol2, t, change, done):
    """One FISTA step with adaptive restart, in place, on every row of the
    codes (n, k).

    Per signal (row): z' = soft(y - step * 2 (gy - b), thr), where gy = y G
    (G = D^T D) and b = x D make 2 (gy - b) the gradient of ||x - D z||^2;
    the momentum restarts when the step points back (O'Donoghue and Candes'
    gradient test); then y <- z' + (t - 1) / t_next (z' - z) and z <- z'.
    ``change`` receives ||z' - z||^2 / ||z'||^2 per row (0 when z' = z = 0);
    a row whose change is at most ``tol2`` is marked ``done`` and left as it
    is from then on. Returns the count of rows done.
    """
    n, k = y.shape
    two_step = like(step, 2.0) * step
    finished = 0
    for r in range(n):  # 2-D indexing: a row view per row costs reference counting
        if done[r]:
            finished += 1
            continue
        back = like(step, 0.0)
        for j in range(k):  # z' goes into gy, no longer needed
            v = y[r, j] - two_step * (gy[r, j] - b[r, j])
            zn = like(v, 0.0) if abs(v) <= thr else (v - thr if v > 0 else v + thr)  # soft(v, thr)
            gy[r, j] = zn
            back += (y[r, j] - zn) * (zn - z[r, j])
        tr = 1.0 if back > 0 else t[r]  # restart: forget the momentum
        t[r] = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * tr * tr))
        momentum = like(step, (tr - 1.0) / t[r])
        moved = like(step, 0.0)
        size = like(step, 0.0)
        for j in range(k):
            d = gy[r, j] - z[r, j]
            y[r, j] = gy[r, j] + momentum * d
            z[r, j] = gy[r, j]
            moved += d * d
            size += gy[r, j] * gy[r, j]
        change[r] = 0.0 if moved == 0 else (np.inf if size == 0 else moved / size)
        if change[r] <= tol2:
            done[r] = True
            finished += 1
    return finished


@njit(**KERNEL_OPTIONS)
def polish_rows(z, b, gram, half_alpha, slack, change, below, tried, done, first, stop):
    """Jump to the exact optimum where FISTA has (likely) found the support:
    on rows ``first`` to ``stop`` whose ``change`` is under ``below``.

    For a row with support S and signs s, the optimum on that support solves
    G_SS z_S = b_S - alpha/2 s_S (a small Cholesky solve). When the solution
    keeps the signs and the other coordinates satisfy the optimality test
    |b_j - (G z)_j| <= alpha/2 (within ``slack``, relative), it is the
    minimiser: the row is written and marked ``done``; the count of such rows
    is returned.
    ``tried`` keeps a signature of each row's last failed sign pattern, so
    that a pattern is solved for once.
    """
    n, k = z.shape
    a = np.empty((k, k), z.dtype)
    x = np.empty(k, z.dtype)
    support = np.empty(k, np.int64)
    solved = 0
    for r in range(first, stop):
        if done[r] or change[r] > below:
            continue
        m = 0
        signature = np.uint64(m)
        for j in range(k):
            if z[r, j] != 0:
                support[m] = j
                m += 1
                signature = signature * np.uint64(1000003) + np.uint64(2 * j + (z[r, j] > 0) + 1)
        if signature == tried[r]:
            continue
        tried[r] = signature
        ok = True
        for p in range(m):  # Cholesky of G_SS, in place in a
            for q in range(p + 1):
                v = gram[support[p], support[q]]
                for l in range(q):
                    v -= a[p, l] * a[q, l]
                if p == q:
                    if v <= 0:
                        ok = False
                        break
                    a[p, p] = np.sqrt(v)
                else:
                    a[p, q] = v / a[q, q]
            if not ok:
                break
        if not ok:
            continue
        for p in range(m):  # forward then backward substitution
            j = support[p]
            v = b[r, j] - (half_alpha if z[r, j] > 0 else -half_alpha)
            for l in range(p):
                v -= a[p, l] * x[l]
            x[p] = v / a[p, p]
        for p in range(m - 1, -1, -1):
            v = x[p]
            for l in range(p + 1, m):
                v -= a[l, p] * x[l]
            x[p] = v / a[p, p]
        for p in range(m):
            if x[p] * z[r, support[p]] <= 0:  # a sign flipped: not this support
                ok = False
        if not ok:
            continue
        p = 0
        for j in range(k):  # optimality of the zero coordinates; stop at the first violation
            if p < m and support[p] == j:
                p += 1
                continue
            v = b[r, j]
            for q in range(m):
                v -= gram[j, support[q]] * x[q]
            if abs(v) > half_alpha * slack:
                ok = False
                break
        if ok:
            z[r, :] = 0
            for p in range(m):
                z[r, support[p]] = x[p]
            done[r] = True
            solved += 1
    return solved


POLISH_EVERY = 4  # FISTA steps between attempts at the exact optimum
POLISH_ROWS = 128  # rows per parallel task
POLISH_BELOW = 1e-4  # ... on rows whose codes changed less than this (squared, relative)


def fista(b, gram, step, thr, n_iter, tol, accelerated):
    """Codes (n, k) minimising ||x - D z||^2 + alpha ||z||_1 for every signal,
    from b = x D (n, k) and gram = D^T D; step = 1 / L, thr = alpha * step.

    A signal is done when its codes changed by at most ``tol`` relatively, or
    when the polish (every few steps) found its exact optimum; done signals
    stop moving, and once a quarter of those left are done they are set
    aside, so that the matrix products shrink as the batch converges.
    """
    n, k = b.shape
    dtype = b.dtype
    codes = np.zeros((n, k), dtype)
    todo = np.arange(n)
    z = np.zeros((n, k), dtype)
    y = np.zeros((n, k), dtype)
    gy = np.empty((n, k), dtype)
    t = np.ones(n)
    change = np.empty(n)
    tried = np.zeros(n, np.uint64)  # signatures of sign patterns that failed the polish
    step, thr, tol2 = dtype.type(step), dtype.type(thr), tol * tol
    slack = dtype.type(1 + np.sqrt(np.finfo(dtype).eps))
    done = np.zeros(n, np.bool_)
    for i in range(n_iter):
        np.matmul(y, gram, out=gy)
        if not accelerated:
            t[:] = 1.0  # momentum factor 0: plain ISTA
        m = todo.size
        finished = fista_rows(y, gy, b, z, step, thr, tol2, t, change, done)
        if (i + 1) % POLISH_EVERY == 0:
            solved = []
            run_chunks(lambda first, stop: solved.append(polish_rows(
                z, b, gram, thr / (2 * step), slack, change, POLISH_BELOW, tried, done,
                first * POLISH_ROWS, min(stop * POLISH_ROWS, m))), -(-m // POLISH_ROWS))
            finished += sum(solved)
        if finished == m:
            break
        if finished * 4 >= m:  # set the finished rows aside: the products shrink
            codes[todo[done]] = z[done]
            keep = ~done
            todo, z, y, b, t, tried = todo[keep], z[keep], y[keep], b[keep], t[keep], tried[keep]
            gy, change, done = gy[:todo.size], change[:todo.size], done[:todo.size]
            done[:] = False
    codes[todo] = z
    return codes


def kl_sparsity(h, rho, beta, grad):
    """beta * sum_j KL(rho || mean_i h_ij) and its gradient w.r.t. h."""
    n = h.shape[0]
    rho_hat = h.mean(axis=0, dtype=np.float64)
    value = beta * np.sum(rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat)))
    if grad is None:
        return value
    per_column = beta * (-rho / rho_hat + (1 - rho) / (1 - rho_hat)) / n
    grad[...] = per_column.astype(grad.dtype)
    return value
