"""Sparse-coding kernels on the CPU: soft-thresholding and the FISTA step.

``soft(x, l) = sign(x) max(|x| - l, 0)`` is the proximal operator of
``l |x|``: the closed-form LASSO code for an orthonormal dictionary and the
shrinkage step of ISTA/FISTA.
"""
import numpy as np
from numba import njit

from ._math import like
from ._threads import matmul, one_blas_thread, run_chunks
from ._kernels import BLOCK, CHUNK, KERNEL_OPTIONS, item, window


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


ITERATING, CONVERGED, SOLVED = 0, 1, 2  # a signal's state in the batch


@njit(**KERNEL_OPTIONS)
def fista_rows(y, gy, b, z, step, thr, tol2, t, change, state):
    """One FISTA step with adaptive restart, in place, on every iterating row
    of the codes (n, k).

    Per signal (row): z' = soft(y - step * 2 (gy - b), thr), where gy = y G
    (G = D^T D) and b = x D make 2 (gy - b) the gradient of ||x - D z||^2;
    the momentum restarts when the step points back (O'Donoghue and Candes'
    gradient test); then y <- z' + (t - 1) / t_next (z' - z) and z <- z'.
    ``change`` receives ||z' - z||^2 / ||z'||^2 per row (0 when z' = z = 0);
    a row whose change is at most ``tol2`` (or NaN) becomes CONVERGED and is
    left as it is from then on. Returns the count of rows no longer iterating.
    """
    n, k = y.shape
    two_step = like(step, 2.0) * step
    finished = 0
    for r in range(n):  # 2-D indexing: a row view per row costs reference counting
        if state[r] != ITERATING:
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
        if not change[r] > tol2:  # NaN codes (a non-finite signal) too: no step mends them
            state[r] = CONVERGED
            finished += 1
    return finished


@njit(**KERNEL_OPTIONS)
def factor_support(gram, b, half_alpha, support, sign, m, u, y):
    """Right-looking Cholesky U^T U = G_SS in ``u`` (upper, its diagonal
    inverted) and, alongside, y = U^-T (b_S - alpha/2 sign_S); the loops
    update independent entries, no dot-product chains. False when G_SS is not
    positive definite."""
    for p in range(m):
        sp = support[p]
        for q in range(p, m):
            u[p, q] = gram[sp, support[q]]
        y[p] = b[sp] - half_alpha * sign[p]
    for p in range(m):
        if not u[p, p] > 0:
            return False
        inverse = 1.0 / np.sqrt(u[p, p])
        u[p, p] = inverse
        for i in range(p + 1, m):
            u[p, i] *= inverse
        y[p] *= inverse
        for i in range(p + 1, m):
            f = u[p, i]
            y[i] -= f * y[p]
            for j in range(i, m):
                u[i, j] -= f * u[p, j]
    return True


@njit(**KERNEL_OPTIONS)
def append_atom(gram, b, half_alpha, support, sign, m, u, y):
    """Extend the factor and y of ``factor_support`` by atom support[m] (sign
    sign[m]) in O(m^2): its column of U solves U^T w = G_S,j. False when
    G_SS stops being positive definite."""
    j = support[m]
    for p in range(m):
        u[p, m] = gram[support[p], j]
    for p in range(m):  # forward substitution, column by column
        u[p, m] *= u[p, p]
        for i in range(p + 1, m):
            u[i, m] -= u[p, i] * u[p, m]
    d = gram[j, j]
    v = b[j] - half_alpha * sign[m]
    for p in range(m):
        d -= u[p, m] * u[p, m]
        v -= u[p, m] * y[p]
    if not d > 0:
        return False
    u[m, m] = 1.0 / np.sqrt(d)
    y[m] = v * u[m, m]
    return True


@njit(**KERNEL_OPTIONS)
def back_substitute(u, y, m, x):
    """x = U^-1 y: the solution on the support."""
    for p in range(m):
        x[p] = y[p]
    for p in range(m - 1, -1, -1):
        x[p] *= u[p, p]
        for i in range(p):
            x[i] -= u[i, p] * x[p]


@njit(**KERNEL_OPTIONS)
def polish_rows(z, b, gram, half_alpha, slack, change, below, tried, retry, step, state, rows, codes, first, stop):
    """Jump to the exact optimum where FISTA is close to the support: on the
    iterating rows ``first`` to ``stop`` whose ``change`` is under ``below``.
    Row r of the batch is signal ``rows[r]`` of ``b`` (all n signals) and of
    ``codes``; ``b`` and ``gram`` are float64 whatever the iterates' dtype.

    Starting from the support S and signs s of the row's codes, the optimum
    on the support solves G_SS x = b_S - alpha/2 s_S. When x keeps the signs
    and every other coordinate satisfies |b_j - (G x)_j| <= alpha/2 (within
    ``slack``, relative), x is the minimiser (the optimality conditions):
    it is written into ``codes[rows[r]]`` and the row becomes SOLVED; the
    count of such rows is returned. Otherwise the guess is corrected, at most
    ``POLISH_FIXES`` times: atoms whose sign flipped leave the support (a new
    factorisation), or else the zero coordinate that violates its condition
    most joins it with the sign of its residual (the factor grows by a
    column). ``tried`` keeps a signature of each row's last failed sign
    pattern, so that a pattern is tried once, and ``retry`` the FISTA step
    from which the row may be tried again: an attempt on m atoms waits
    m^3 / (2 k^2) steps, about what its factorisation costs (m^3 / 6 scalar
    operations, against 2 k^2 per row and step in a matrix product that runs
    some six times faster per operation), so that failures on large supports
    cannot cost much more than the steps they might save.
    """
    n, k = z.shape
    u = np.empty((k, k))  # the Cholesky factor of G_SS
    y = np.empty(k)  # U^-T (b_S - alpha/2 s_S)
    x = np.empty(k)  # the solution on the support
    residual = np.empty(k)  # b - G x
    support = np.empty(k, np.int64)
    sign = np.empty(k)
    member = np.zeros(k, np.bool_)
    limit = half_alpha * slack
    solved = 0
    for r in range(first, stop):
        if state[r] != ITERATING or not change[r] <= below or step < retry[r]:
            continue  # (NaN codes never qualify: they propagate)
        m = 0
        signature = np.uint64(m)
        for j in range(k):
            if z[r, j] != 0:
                support[m] = j
                sign[m] = 1.0 if z[r, j] > 0 else -1.0
                m += 1
                signature = signature * np.uint64(1000003) + np.uint64(2 * j + (z[r, j] > 0) + 1)
        if signature == tried[r]:
            continue
        tried[r] = signature
        retry[r] = step + m * m * m // (2 * k * k)
        br = b[rows[r]]
        factored = factor_support(gram, br, half_alpha, support, sign, m, u, y)
        for _ in range(POLISH_FIXES + 1):
            if not factored:
                break
            back_substitute(u, y, m, x)
            kept = 0
            for p in range(m):  # drop the atoms whose sign flipped
                if x[p] * sign[p] > 0:
                    support[kept], sign[kept] = support[p], sign[p]
                    kept += 1
            if kept < m:
                m = kept
                factored = factor_support(gram, br, half_alpha, support, sign, m, u, y)
                continue
            for j in range(k):
                residual[j] = br[j]
            for q in range(m):
                sq, xq = support[q], x[q]
                member[sq] = True
                for j in range(k):
                    residual[j] -= gram[sq, j] * xq
            worst, excess = -1, limit
            for j in range(k):  # optimality of the zero coordinates
                if not member[j] and abs(residual[j]) > excess:
                    worst, excess = j, abs(residual[j])
            for q in range(m):
                member[support[q]] = False
            if worst < 0:
                row = codes[rows[r]]
                row[:] = 0
                for p in range(m):
                    row[support[p]] = x[p]
                state[r] = SOLVED
                solved += 1
                break
            support[m], sign[m] = worst, 1.0 if residual[worst] > 0 else -1.0  # the worst violator joins
            factored = append_atom(gram, br, half_alpha, support, sign, m, u, y)
            m += 1
    return solved


POLISH_EVERY = 4  # FISTA steps between attempts at the exact optimum
POLISH_FIXES = 5  # corrections of a support guess per attempt
POLISH_BELOW = 1e-4  # ... on rows whose codes changed less than this (squared, relative)
SCOUT_TOL = 1e-5  # float64 signals iterate in float32 until their codes change less than this


class _Batch:
    """Signals being iterated: their rows in the result, codes z, FISTA
    points y (both in the iterates' dtype), momentum t, and the polish's
    bookkeeping: the signature of the last sign pattern tried, the step from
    which to try again."""

    FIELDS = ("rows", "z", "y", "t", "tried", "retry")

    def __init__(self, rows, z, y, t, tried, retry):
        self.rows, self.z, self.y, self.t, self.tried, self.retry = rows, z, y, t, tried, retry

    def take(self, keep):
        return _Batch(*(getattr(self, name)[keep] for name in self.FIELDS))

    @staticmethod
    def join(parts, dtype):
        """One batch of ``parts``, its iterates cast to ``dtype``, to be tried afresh (steps count from 0)."""
        rows, z, y, t, tried, _ = (np.concatenate([getattr(p, name) for p in parts]) for name in _Batch.FIELDS)
        return _Batch(rows, z.astype(dtype), y.astype(dtype), t, tried, np.zeros(rows.size, np.int64))


def _iterate(batch, b64, gram64, step, thr, n_iter, tol, accelerated, codes, split):
    """At most ``n_iter`` FISTA steps on ``batch`` in its dtype, polishing
    every few steps in float64; solved signals go straight into ``codes``.
    Returns the steps taken, the signals converged (in pieces) and those
    still iterating when the steps ran out."""
    dtype = batch.z.dtype
    b = b64[batch.rows].astype(dtype, copy=False)
    gram = gram64.astype(dtype, copy=False)
    gy = np.empty_like(batch.z)
    n = batch.rows.size
    change, state = np.empty(n), np.zeros(n, np.int8)
    half_alpha = thr / (2 * step)  # in float64, for the polish
    step, thr, tol2 = dtype.type(step), dtype.type(thr), tol * tol
    slack = 1 + np.sqrt(np.finfo(codes.dtype).eps)
    left = []
    i = 0
    while i < n_iter and batch.rows.size:
        m = batch.rows.size
        if split:
            matmul(batch.y, gram, gy[:m])
        else:
            np.matmul(batch.y, gram, out=gy[:m])
        if not accelerated:
            batch.t[:] = 1.0  # momentum factor 0: plain ISTA
        finished = fista_rows(batch.y, gy[:m], b, batch.z, step, thr, tol2, batch.t, change, state)
        i += 1
        if i % POLISH_EVERY == 0:
            finished += _polish(batch.z, b64, gram64, half_alpha, slack, change, POLISH_BELOW, batch.tried,
                                batch.retry, i, state, batch.rows, codes, split)
        if finished * 4 >= m:  # set the finished signals aside: the products shrink
            left.append(batch.take(state == CONVERGED))
            keep = state == ITERATING
            batch, b, state = batch.take(keep), b[keep], state[keep]
    left.append(batch.take(state == CONVERGED))
    return i, left, batch.take(state == ITERATING)


POLISH_ROWS = 32  # rows per polishing task
SPLIT_ABOVE = 1 << 24  # n k^2 from which fastae's threads take the products and the polish: below, the
# threads' wake-up (milliseconds on this VM after a pause) costs more than the second core brings


def _polish(z, b64, gram64, half_alpha, slack, change, below, tried, retry, step, state, rows, codes, split):
    """polish_rows over the batch in tasks of POLISH_ROWS rows (in threads with ``split``); the count of
    rows solved."""
    if not split:
        return polish_rows(z, b64, gram64, half_alpha, slack, change, below, tried, retry, step, state, rows, codes,
                           0, z.shape[0])
    tasks = -(-z.shape[0] // POLISH_ROWS)
    solved = np.zeros(tasks, np.int64)

    def run(first, stop):
        for task in range(first, stop):
            solved[task] = polish_rows(z, b64, gram64, half_alpha, slack, change, below, tried, retry, step, state,
                                       rows, codes, task * POLISH_ROWS, min((task + 1) * POLISH_ROWS, z.shape[0]))
    run_chunks(run, tasks, min_per_thread=1)
    return int(solved.sum())


def fista(b, gram, step, thr, n_iter, tol, accelerated):
    """Codes (n, k) minimising ||x - D z||^2 + alpha ||z||_1 for every signal,
    from b = x D (n, k) and gram = D^T D; step = 1 / L, thr = alpha * step.

    A signal is done when its codes changed by at most ``tol`` relatively, or
    when the polish (every few steps) found its exact optimum; done signals
    are set aside, so that the matrix products shrink as the batch converges.
    Returns the codes and the count of signals not done after ``n_iter`` steps.
    Float64 signals first iterate in float32 (half the memory traffic, twice
    the SIMD width): the polish works in float64 from the float32 iterates'
    signs and is exact, and the signals it has not solved once their float32
    codes settle (to ``SCOUT_TOL``) go on in float64 from where they are.
    """
    n, k = b.shape
    if n * k * k < SPLIT_ABOVE:  # small products and solves: BLAS's threads, one polishing thread
        return _fista(b, gram, step, thr, n_iter, tol, accelerated, False)
    with one_blas_thread():  # large ones: fastae's threads split the products and the polish
        return _fista(b, gram, step, thr, n_iter, tol, accelerated, True)


def _fista(b, gram, step, thr, n_iter, tol, accelerated, split):
    n, k = b.shape
    codes = np.empty((n, k), b.dtype)  # every row is written: solved, converged or out of steps
    b64, gram64 = b.astype(np.float64, copy=False), gram.astype(np.float64, copy=False)
    zeros = lambda: np.zeros((n, k), np.float32)  # noqa: E731
    batch = _Batch(np.arange(n), zeros(), zeros(), np.ones(n), np.zeros(n, np.uint64), np.zeros(n, np.int64))
    scout = b.dtype == np.float64
    steps, left, unfinished = _iterate(batch, b64, gram64, step, thr, n_iter,
                                       max(tol, SCOUT_TOL) if scout else tol, accelerated, codes, split)
    if scout:
        _, left, unfinished = _iterate(_Batch.join(left + [unfinished], np.float64), b64, gram64, step, thr,
                                       n_iter - steps, tol, accelerated, codes, split)
    for part in left + [unfinished]:
        codes[part.rows] = part.z
    return codes, unfinished.rows.size


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
