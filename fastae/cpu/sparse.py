"""Sparse-coding kernels on the CPU: soft-thresholding and LASSO codes by coordinate descent.

``soft(x, l) = sign(x) max(|x| - l, 0)`` is the proximal operator of
``l |x|``: the closed-form LASSO code for an orthonormal dictionary and the
step of coordinate descent on any other.
"""

import numpy as np
from numba import njit

from ._math import like
from ._threads import next_task, pulled, run_chunks, run_pulled, take_task
from ._kernels import BLOCK, CHUNK, KERNEL_OPTIONS, item, window
from .products import rows_times


@njit(**KERNEL_OPTIONS)
def soft(v, t):
    """sign(v) max(|v| - t, 0); NaN stays NaN."""
    return like(v, 0.0) if abs(v) <= t else (v - t if v > 0 else v + t)


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
def add_atom(gram, b, half_alpha, support, sign, m, l, y, floor=0.0):
    """Row m of the Cholesky factor L L^T = G_SS (lower, row by row, its
    diagonal inverted) for atom support[m] of sign sign[m], and y[m] of
    L y = b_S - alpha/2 sign_S: O(m^2) contiguous dot products. False when
    G_SS stops being positive definite."""
    j = support[m]
    row = l[m]
    for q in range(m):
        s = gram[j, support[q]]
        lq = l[q]
        for i in range(q):
            s -= row[i] * lq[i]
        row[q] = s * lq[q]
    d = gram[j, j]
    v = b[j] - half_alpha * sign[m]
    for q in range(m):
        d -= row[q] * row[q]
        v -= row[q] * y[q]
    if not d > floor * gram[j, j]:
        return False
    row[m] = 1.0 / np.sqrt(d)
    y[m] = v * row[m]
    return True


@njit(**KERNEL_OPTIONS)
def remove_atom(p, m, l, y):
    """``add_atom``'s factor L (L L^T = G_SS, rows as it leaves them) and y
    (L y = b_S - alpha/2 s_S) without atom p of the m, in O((m - p) m):
    the rows after p move up one, each leaving an entry just above the
    diagonal, which Givens rotations of neighbouring columns (c, c + 1)
    take back into it; y turns with them (L Q Q^T y = L y), and its last
    entry drops out. False if a diagonal comes out zero."""
    for i in range(p, m - 1):
        dst, src = l[i], l[i + 1]
        for c in range(i + 1):
            dst[c] = src[c]
        dst[i + 1] = 1.0 / src[i + 1]  # (the old diagonal, as a value: the rotations work on values)
    for c in range(p, m - 1):
        a, b = l[c, c], l[c, c + 1]
        r = np.sqrt(a * a + b * b)
        if not r > 0:
            return False
        cs, sn = a / r, b / r
        for i in range(c, m - 1):
            u, v = l[i, c], l[i, c + 1]
            l[i, c], l[i, c + 1] = cs * u + sn * v, cs * v - sn * u
        yc, yn = y[c], y[c + 1]
        y[c], y[c + 1] = cs * yc + sn * yn, cs * yn - sn * yc
        l[c, c] = 1.0 / r  # (stored inverted, as add_atom does)
    return True


@njit(**KERNEL_OPTIONS)
def back_substitute(l, y, m, x):
    """x = L^-T y: the solution on the support."""
    for p in range(m):
        x[p] = y[p]
    for p in range(m - 1, -1, -1):
        x[p] *= l[p, p]
        row = l[p]
        for i in range(p):
            x[i] -= row[i] * x[p]


@njit(**KERNEL_OPTIONS)
def solve_on_support(gram, b, half_alpha, limit, support, sign, m, at, u, y, x, residual, member):
    """The exact optimum, by an active-set walk from a guess: the support S
    and signs s of a point ``at`` (at[p] the code of atom support[p]).
    x solves G_SS x = b_S - alpha/2 s_S, the minimiser of the objective on
    the orthant of s. If x leaves the orthant, the point moves towards x as
    far as the first code that reaches zero, and that atom leaves S (the
    objective falls all the way: it is convex, its minimum on the segment's
    line lies at x). If x keeps the signs and every other atom satisfies
    |b_j - (G x)_j| <= ``limit`` (alpha/2 and a rounding slack), x is the
    minimiser (the optimality conditions); else the atom violating its
    condition most joins S with the sign of its residual, and the walk goes
    on from x. An atom that joins extends the Cholesky factor of G_SS by a
    row, one that leaves is rotated out of it (``remove_atom``). Returns the
    (True, support size of the optimum: support[:m], x[:m]), or after
    SUPPORT_STEPS steps, or where G_SS is singular, (False, the size of the
    support where the walk stopped): its point is at[:m], whose objective is
    at most the guess's unless atoms were left out of the start: those on
    which G_SS turns singular (or nearly: START_FLOOR)."""
    k = gram.shape[0]
    kept = 0
    for p in range(m):  # (an atom on which the guess's G_SS turns singular is left out of the start)
        support[kept], sign[kept], at[kept] = support[p], sign[p], at[p]
        if add_atom(gram, b, half_alpha, support, sign, kept, u, y, START_FLOOR):
            kept += 1
    m = kept
    for _ in range(SUPPORT_STEPS):
        back_substitute(u, y, m, x)
        t, leaving = 1.0, -1
        for p in range(m):  # the first code on the way to x that reaches zero
            if not x[p] * sign[p] > 0:
                d = at[p] - x[p]
                tp = at[p] / d if d != 0 else 0.0
                tp = max(tp, 0.0)  # (a code rounded past zero leaves at once)
                if tp < t or leaving < 0:
                    t, leaving = min(tp, 1.0), p
        if leaving >= 0:
            for p in range(leaving):
                at[p] += t * (x[p] - at[p])
            for p in range(leaving, m - 1):
                support[p], sign[p], at[p] = support[p + 1], sign[p + 1], at[p + 1] + t * (x[p + 1] - at[p + 1])
            if not remove_atom(leaving, m, u, y):
                return False, m - 1
            m -= 1
            continue
        for j in range(k):
            residual[j] = b[j]
        for q in range(m):
            sq, xq = support[q], x[q]
            member[sq] = True
            at[q] = xq
            for j in range(k):
                residual[j] -= gram[sq, j] * xq
        worst, excess, finite = -1, limit, True
        for j in range(k):  # optimality of the zero coordinates
            if not member[j]:
                e = abs(residual[j])
                if e > excess:
                    worst, excess = j, e
                finite = finite and e <= np.inf  # (NaN: a non-finite signal has no optimum to find)
        for q in range(m):
            member[support[q]] = False
        if not finite:
            return False, m
        if worst < 0:
            return True, m
        support[m], sign[m], at[m] = worst, 1.0 if residual[worst] > 0 else -1.0, 0.0  # the worst violator joins
        if not add_atom(gram, b, half_alpha, support, sign, m, u, y):
            return False, m
        m += 1
    return False, m


START_FLOOR = 1e-6  # an atom of the guess within this (sine squared) of the span of those before it is left out
SUPPORT_STEPS = 64  # steps of the active-set walk per attempt at the exact optimum
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
            zn = soft(v, thr)
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
def polish_rows(z, b, gram, half_alpha, slack, change, below, tried, retry, step, state, rows, codes, solved, queue):
    """Jump to the exact optimum where FISTA is close to the support: on the
    iterating rows whose ``change`` is under ``below``, in tasks of
    POLISH_ROWS rows that this thread takes from ``queue`` (see
    _threads.run_pulled); solved[t] counts the rows task t solved.
    Row r of the batch is signal ``rows[r]`` of ``b`` (all n signals) and of
    ``codes``; ``b`` and ``gram`` are float64 whatever the iterates' dtype.

    Starting from the support S and signs s of the row's codes, the optimum
    on the support solves G_SS x = b_S - alpha/2 s_S. When x keeps the signs
    and every other coordinate satisfies |b_j - (G x)_j| <= alpha/2 (within
    ``slack``, relative), x is the minimiser (the optimality conditions):
    it is written into ``codes[rows[r]]`` and the row becomes SOLVED
    (``solve_on_support``, which walks on from a wrong guess). ``tried``
    keeps a signature of each row's last failed sign pattern, so that a
    pattern is tried once, and ``retry`` the FISTA step from which the row
    may be tried again: an attempt on m atoms waits
    m^3 / (2 k^2) steps, about what its factorisation costs (m^3 / 6 scalar
    operations, against 2 k^2 per row and step in a matrix product that runs
    some six times faster per operation), so that failures on large supports
    cannot cost much more than the steps they might save.
    """
    n, k = z.shape
    u = np.empty((k, k))  # the Cholesky factor of G_SS
    y = np.empty(k)  # U^-T (b_S - alpha/2 s_S)
    x = np.empty(k)  # the solution on the support
    at = np.empty(k)  # the codes on the support, where the walk starts
    residual = np.empty(k)  # b - G x
    support = np.empty(k, np.int64)
    sign = np.empty(k)
    member = np.zeros(k, np.bool_)
    limit = half_alpha * slack
    task = take_task(queue)
    while task < solved.size:
        count = 0
        for r in range(task * POLISH_ROWS, min(n, (task + 1) * POLISH_ROWS)):
            if state[r] != ITERATING or not change[r] <= below or step < retry[r]:
                continue  # (NaN codes never qualify: they propagate)
            m = 0
            signature = np.uint64(m)
            for j in range(k):
                if z[r, j] != 0:
                    support[m], at[m] = j, z[r, j]
                    sign[m] = 1.0 if z[r, j] > 0 else -1.0
                    m += 1
                    signature = _signed(signature, j, z[r, j] > 0)
            if signature == tried[r]:
                continue
            tried[r] = signature
            retry[r] = step + m * m * m // (2 * k * k)
            exact, m = solve_on_support(gram, b[rows[r]], half_alpha, limit, support, sign, m, at, u, y, x, residual,
                                        member)
            if exact:
                _write_codes(codes[rows[r]], support, x, m)
                state[r] = SOLVED
                count += 1
        solved[task] = count
        task = next_task(queue)


@njit(inline="always")
def _signed(signature, j, positive):
    """A signature of a support and its signs, extended by atom j of that sign (atoms in increasing order)."""
    return signature * np.uint64(1000003) + np.uint64(2 * j + positive + 1)


@njit(inline="always")
def _write_codes(row, atoms, values, m):
    """row = the codes with values[:m] at atoms[:m], zero elsewhere."""
    row[:] = 0
    for p in range(m):
        row[atoms[p]] = values[p]


POLISH_EVERY = 4  # FISTA steps between attempts at the exact optimum
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


def _iterate(batch, b64, gram64, step, thr, n_iter, tol, accelerated, codes):
    """At most ``n_iter`` FISTA steps on ``batch`` in its dtype, polishing
    every few steps in float64; solved signals go straight into ``codes``.
    At the first polish, if the supports then promise more than
    POLISH_THREADS_FROM operations of factorisation (m^3 / 6 per signal), the
    polish goes over fastae's threads from then on. Returns the steps taken,
    the signals converged (in pieces) and those still iterating when the
    steps ran out."""
    dtype = batch.z.dtype
    b = b64[batch.rows].astype(dtype, copy=False)
    gram = gram64.astype(dtype, copy=False)
    gy = np.empty_like(batch.z)
    n = batch.rows.size
    change, state = np.empty(n), np.zeros(n, np.int8)
    half_alpha = thr / (2 * step)  # in float64, for the polish
    step, thr, tol2 = dtype.type(step), dtype.type(thr), tol * tol
    slack = 1 + np.sqrt(np.finfo(np.float64).eps)  # (the check runs in float64 on the problem as given)
    left = []
    i, parallel = 0, None
    while i < n_iter and batch.rows.size:
        m = batch.rows.size
        rows_times(batch.y, gram, out=gy[:m])
        if not accelerated:
            batch.t[:] = 1.0  # momentum factor 0: plain ISTA
        finished = fista_rows(batch.y, gy[:m], b, batch.z, step, thr, tol2, batch.t, change, state)
        i += 1
        if i % POLISH_EVERY == 0:
            if parallel is None:
                parallel = float((np.count_nonzero(batch.z, axis=1) ** 3.0).sum()) / 6 >= POLISH_THREADS_FROM
            finished += _polish(batch.z, b64, gram64, half_alpha, slack, change, POLISH_BELOW, batch.tried,
                                batch.retry, i, state, batch.rows, codes, parallel)
        if finished * 4 >= m:  # set the finished signals aside: the products shrink
            left.append(batch.take(state == CONVERGED))
            keep = state == ITERATING
            batch, b, state = batch.take(keep), b[keep], state[keep]
    left.append(batch.take(state == CONVERGED))
    return i, left, batch.take(state == ITERATING)


POLISH_ROWS = 32  # rows per polishing task
POLISH_THREADS_FROM = 2e5  # operations of factorisation from which the polish is worth a second thread (~0.2 ms)


@njit(**KERNEL_OPTIONS)
def polish_rows_pulled(args, words, jobs, helper, count, job, finished):
    """polish_rows(*args) in fastae's threads (see _threads.pulled)."""
    return pulled(polish_rows, args, words, jobs, helper, count, job, finished)


def _polish(z, b64, gram64, half_alpha, slack, change, below, tried, retry, step, state, rows, codes, parallel):
    """polish_rows over the batch (over fastae's threads if ``parallel``, each in one call that takes tasks as
    it comes free); the count solved."""
    tasks = -(-z.shape[0] // POLISH_ROWS)
    solved = np.zeros(tasks, np.int64)
    run_pulled(polish_rows, polish_rows_pulled, (z, b64, gram64, half_alpha, slack, change, below, tried, retry, step,
                                                 state, rows, codes, solved, np.zeros(2, np.int64)),
               tasks, tasks if parallel else 1)
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
    (``ista`` holds BLAS to one thread throughout: its idle workers would
    spin on the cores the polish and the next step need.)
    """
    n, k = b.shape
    codes = np.empty((n, k), b.dtype)  # every row is written: solved, converged or out of steps
    b64, gram64 = b.astype(np.float64, copy=False), gram.astype(np.float64, copy=False)
    zeros = lambda: np.zeros((n, k), np.float32)  # noqa: E731
    batch = _Batch(np.arange(n), zeros(), zeros(), np.ones(n), np.zeros(n, np.uint64), np.zeros(n, np.int64))
    scout = b.dtype == np.float64
    steps, left, unfinished = _iterate(batch, b64, gram64, step, thr, n_iter, max(tol, SCOUT_TOL) if scout else tol,
                                       accelerated, codes)
    if scout:
        _, left, unfinished = _iterate(_Batch.join(left + [unfinished], np.float64), b64, gram64, step, thr,
                                       n_iter - steps, tol, accelerated, codes)
    for part in left + [unfinished]:
        codes[part.rows] = part.z
    return codes, unfinished.rows.size


@njit(**KERNEL_OPTIONS)
def full_sweep(z, c, gram, inverse, threshold, support, sign):
    """One coordinate-descent pass over every atom, in place: z_j <- soft(z_j +
    c_j / G_jj, alpha / (2 G_jj)), each change d updating the correlations
    c = b - G z by -d G_j. Lists the support and signs afterwards; returns
    (sum of squared changes, ||z||^2, support size, a signature of the
    support and its signs)."""
    k = z.size
    moved, size, m, signature = 0.0, 0.0, 0, np.uint64(0)
    for j in range(k):
        old = z[j]
        new = soft(old + c[j] * inverse[j], threshold[j])
        if new != old:
            d = new - old
            z[j] = new
            for i in range(k):
                c[i] -= d * gram[j, i]
            moved += d * d
        if new != 0:
            size += new * new
            support[m], sign[m] = j, 1.0 if new > 0 else -1.0
            m += 1
            signature = _signed(signature, j, new > 0)
    return moved, size, m, signature


@njit(**KERNEL_OPTIONS)
def active_sweeps(z, c, b, gram, inverse, threshold, support, m, gs, zs, cs, inverse_s, threshold_s):
    """Coordinate descent on the support alone (glmnet's active set): at
    most ACTIVE_SWEEPS passes over a compact copy G_SS, until a pass changes
    the codes by at most ACTIVE_TOL relatively. Writes the codes back and
    recomputes c = b - G_S z_S afresh."""
    k = z.size
    for p in range(m):
        sp = support[p]
        zs[p], cs[p], inverse_s[p], threshold_s[p] = z[sp], c[sp], inverse[sp], threshold[sp]
        for q in range(m):
            gs[p, q] = gram[sp, support[q]]
    for _ in range(ACTIVE_SWEEPS):
        moved, size = 0.0, 0.0
        for p in range(m):
            old = zs[p]
            new = soft(old + cs[p] * inverse_s[p], threshold_s[p])
            d = new - old
            zs[p] = new
            for q in range(m):
                cs[q] -= d * gs[p, q]
            moved += d * d
            size += new * new
        if not moved > ACTIVE_TOL * ACTIVE_TOL * size:
            break
    for i in range(k):
        c[i] = b[i]
    for p in range(m):
        sp = support[p]
        z[sp] = zs[p]
        for i in range(k):
            c[i] -= zs[p] * gram[sp, i]


ACTIVE_SWEEPS = 10  # passes over the support between full sweeps, at most ...
ACTIVE_TOL = 1e-4  # ... until they change the codes by at most this, relatively


@njit(**KERNEL_OPTIONS)
def lasso_rows(b, gram, half_alpha, n_iter, tol, slack, codes, unfinished, queue):
    """LASSO codes argmin_z ||x - D z||^2 + alpha ||z||_1 from b = x D (n, k)
    and G = D^T D (float64), into ``codes``, for the signals of the tasks
    (ROWS_PER_TASK signals each) this thread takes from ``queue`` (see
    _threads.run_pulled).

    Per signal, from z = 0: a full coordinate-descent sweep, then sweeps over
    its support alone, repeated. When a full sweep leaves the support and
    signs as the previous one did, or changes the codes by at most ``tol``
    relatively, the exact optimum on that support is tried
    (``solve_on_support``; once per sign pattern). A signal is done when
    solved so, or when a full sweep changes its codes by at most ``tol``
    (NaN codes, from a non-finite signal, at once). At most
    ``n_iter`` full sweeps; unfinished[t] counts task t's signals not done
    by then.
    """
    k = gram.shape[0]
    inverse, threshold = np.empty(k), np.empty(k)
    for j in range(k):
        inverse[j] = 1.0 / gram[j, j] if gram[j, j] > 0 else 0.0  # (a zero atom keeps a zero code)
        threshold[j] = half_alpha * inverse[j]
    # One workspace, laid out alike in every call: where small vectors and the matrices land apart, a
    # loop's loads may wait on its stores to an address 4 KiB away (measured: 1.5x the time, by process).
    pitch = k + 8
    work = np.empty(2 * k * pitch + 11 * pitch)
    gs = work[:k * pitch].reshape(k, pitch)
    u = work[k * pitch:2 * k * pitch].reshape(k, pitch)
    vectors = work[2 * k * pitch:].reshape(11, pitch)
    z, c, x, y, residual, sign = vectors[0, :k], vectors[1, :k], vectors[2, :k], vectors[3, :k], vectors[4, :k], \
        vectors[5, :k]
    zs, cs, inverse_s, threshold_s, at = vectors[6, :k], vectors[7, :k], vectors[8, :k], vectors[9, :k], \
        vectors[10, :k]
    support, guess = np.empty(k, np.int64), np.empty(k, np.int64)
    member = np.zeros(k, np.bool_)
    limit, tol2 = half_alpha * slack, tol * tol
    task = take_task(queue)
    while task < unfinished.size:
        first, stop, count = task * ROWS_PER_TASK, min(b.shape[0], (task + 1) * ROWS_PER_TASK), 0
        for r in range(first, stop):
            br, row = b[r], codes[r]
            z[:] = 0.0
            c[:] = br
            last, tried = np.uint64(0), np.uint64(0)
            done = False
            for _ in range(n_iter):
                moved, size, m, signature = full_sweep(z, c, gram, inverse, threshold, support, sign)
                settled = not moved > tol2 * size  # (NaN codes too: no sweep mends them)
                if (settled or signature == last) and signature != tried:
                    tried = signature
                    for p in range(m):
                        guess[p], at[p] = support[p], z[support[p]]
                    solved, walked = solve_on_support(gram, br, half_alpha, limit, guess, sign, m, at, u, y, x,
                                                      residual, member)
                    if solved:
                        _write_codes(row, guess, x, walked)
                        done = True
                        break
                    if not settled:  # on from where the walk stopped, if it ended lower
                        m = _move_if_lower(z, c, br, gram, half_alpha, support, m, guess, at, walked, zs, cs)
                if settled:
                    row[:] = z
                    done = True
                    break
                last = signature
                active_sweeps(z, c, br, gram, inverse, threshold, support, m, gs, zs, cs, inverse_s, threshold_s)
            if not done:
                row[:] = z
                count += 1
        unfinished[task] = count
        task = next_task(queue)


@njit(**KERNEL_OPTIONS)
def _move_if_lower(z, c, b, gram, half_alpha, support, m, atoms, values, walked, z_new, c_new):
    """z = the point with codes values[:walked] at atoms[:walked], c = b - G z, its support listed in
    support[:walked], if its objective is lower than z's (a walk that left out atoms on which the guess's G_SS
    was singular may end higher); else z, c and support[:m] as they are. The support size after. (z_new, c_new:
    scratch.)"""
    for i in range(z.size):
        z_new[i], c_new[i] = 0.0, b[i]
    for p in range(walked):
        j, v = atoms[p], values[p]
        z_new[j] = v
        for i in range(z.size):
            c_new[i] -= v * gram[j, i]
    if _objective(z_new, c_new, b, half_alpha) > _objective(z, c, b, half_alpha):
        return m
    for i in range(z.size):
        z[i], c[i] = z_new[i], c_new[i]
    for p in range(walked):
        support[p] = atoms[p]
    return walked


@njit(inline="always")
def _objective(z, c, b, half_alpha):
    """||x - D z||^2 + alpha ||z||_1 less ||x||^2, from c = b - G z: z^T G z - 2 b^T z = -z^T (b + c)."""
    total = 0.0
    for i in range(z.size):
        total += 2.0 * half_alpha * abs(z[i]) - z[i] * (b[i] + c[i])
    return total


ROWS_PER_TASK = 16  # signals per parallel task
THREADS_FROM = 1 << 18  # n k^2 from which the signals spread over fastae's threads


@njit(**KERNEL_OPTIONS)
def lasso_rows_pulled(args, words, jobs, helper, count, job, finished):
    """lasso_rows(*args) in fastae's threads (see _threads.pulled)."""
    return pulled(lasso_rows, args, words, jobs, helper, count, job, finished)


def coordinate_descent(b, gram, alpha, n_iter, tol):
    """``lasso_rows`` over all signals, in tasks over fastae's threads (taken
    as threads come free, so that a thread on a busy core takes fewer; one
    call per thread, no GIL between tasks). Each
    signal is solved alone: the codes depend neither on the batch nor on the
    threads."""
    n, k = b.shape
    codes = np.empty((n, k), b.dtype)
    b64, gram64 = b.astype(np.float64, copy=False), np.ascontiguousarray(gram, np.float64)
    slack = 1 + np.sqrt(np.finfo(np.float64).eps)  # (the check runs in float64 on the problem as given)
    tasks = -(-n // ROWS_PER_TASK)
    unfinished = np.zeros(tasks, np.int64)
    run_pulled(lasso_rows, lasso_rows_pulled,
               (b64, gram64, alpha / 2, n_iter, tol, slack, codes, unfinished, np.zeros(2, np.int64)),
               tasks, tasks if n * k * k >= THREADS_FROM else 1)
    return codes, int(unfinished.sum())


def lasso(b, gram, alpha, n_iter, tol, accelerated):
    """Codes (n, k) minimising ||x - D z||^2 + alpha ||z||_1 for every signal,
    from b = x D (n, k) and gram = D^T D, and the count of signals not done
    after ``n_iter`` iterations. The method goes by G's spectrum: where G is
    well conditioned (at most d independent atoms), batched FISTA (``fista``,
    its products in BLAS) finds the support in a few dozen steps; where G is
    singular or nearly (more atoms than dimensions), FISTA's step 1 / L
    crawls along the flat directions, and coordinate descent (``lasso_rows``),
    which does not feel them, takes over. Both end in exact solves on the
    support. ``accelerated=False``: plain ISTA steps in the former."""
    n, k = b.shape
    eigenvalues = np.linalg.eigvalsh(gram.astype(np.float64)) if k else np.zeros(1)
    if eigenvalues[-1] <= 0:  # a zero dictionary: zero codes
        return np.zeros((n, k), b.dtype), 0
    lipschitz = 2.0 * eigenvalues[-1]
    if eigenvalues[0] > CONDITION_FOR_FISTA * eigenvalues[-1]:
        return fista(b, gram, 1.0 / lipschitz, alpha / lipschitz, n_iter, tol, accelerated)
    return coordinate_descent(b, gram, alpha, n_iter, tol)


CONDITION_FOR_FISTA = 1e-3  # smallest over largest eigenvalue of G from which FISTA solves


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
