"""SSIM on the CPU: value and exact gradient in one streaming pass.

The moments are those of the shifted plane x' = x - s, y' = y - s (s the
mean of a sample of the plane's rows: variances and covariances do not change,
and float32 keeps its digits on bright images): four maps mu'_x, mu'_y, P = E[x'y'] and
Q = E[(x - y)^2], Gaussian-filtered separably. With d = mu'_x - mu'_y,
mu = mu' + s,

    lum = 1 - d^2 / (2 mu_x mu_y + C1 + d^2)
    cs  = 1 - D / (2 cov + C2 + D),  cov = P - mu'_x mu'_y,  D = Q - d^2,

so identical images give exactly lum = cs = 1 and a gradient of exactly 0
(D, d and x - y vanish). The gradient of the map's sum is the adjoint filter
of three coefficient maps A = dS/dmu'_x, B = dS/dP, C = dS/dQ:
dS/dx = G^T A + y' G^T B + 2 (x - y) G^T C.

The work is cut into tasks of a fixed shape, whatever the thread count: small
planes interleaved in strips (column c of plane q at c m + q, each plane with
its own padding: every loop runs along a wide row with no column wasted, and
the window along a row steps m columns at a time), tall planes into bands of
BAND output rows (each band reads its halo of win - 1 rows again). A task
streams its input rows once: each is shifted into a ring of at least win + 3
rows and filtered horizontally into a second one, output rows sum that ring
vertically four at a time (the four share all rows but three, loaded once),
their coefficients go into a third ring, and an input row's gradient is
gathered from that ring, again four rows at a time, as soon as no later output
row of the task touches it. The window's taps come as a tuple, so that each
output's sum is unrolled and stays in registers; the loops along a row run to
whole vectors (a few columns of scratch at the end). Rows that two bands touch get a part
from each, added in band order afterwards; a plane's sum adds its column sums
in column order and its band sums in band order. So the result is
bit-identical for any number of threads, and nothing of plane size is
allocated but the gradient. mixed_loss's pixel loss is taken in the same
pass: each band sums its own rows' as it reads them, and a row's gradient is
added to the SSIM's as that is written, or, for a strip of small planes, is
written with the sum, the SSIM's added (see _pixel_first).
"""
import functools
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .._neutral import sums_to_one
from ._kernels import BLOCK, COLUMN_OPTIONS, ELEMENT_OPTIONS, KERNEL_OPTIONS, run, runtime, window
from ._math import like
from .pointwise import ACTIVATION_SPECS, LOSS_SPECS, _element, _times
from ._threads import next_task, pulled, run_chunks, run_pulled, take_task

BAND = 256          # output rows per task of a tall plane
NO_PIXEL, PIXEL_L1, PIXEL_MSE = 0, 1, 2  # mixed_loss's pixel losses, by number (see _pixel_element)
PIXELS = {"l1": PIXEL_L1, "mse": PIXEL_MSE}
_L1, _MSE, _IDENTITY = LOSS_SPECS["l1"], LOSS_SPECS["mse"], ACTIVATION_SPECS["identity"]
STRIP_WIDTH = 1024  # padded columns a strip of small planes aims at
STRIPS = 2          # strips a batch worth two threads is cut into at least (wider strip rows run faster)
LANES = 8           # float32 columns in a vector (AVX2)
SHIFT_ROWS = 16     # rows of a plane whose mean is its shift
PIXEL_AT_ONCE = 1 << 19  # bytes of a strip's planes whose pixel loss a task takes before it reads them (in cache after)
THREAD_WORK = 1 << 13  # padded positions per thread at least (~25 us): a helper thread joins in a few us (see
#   _threads.pulled); on 16 planes of 16^2 'same' (10816 positions) a second thread gains nothing, on 32 a sixth


# ---------------------------------------------------------------- filters: one output row at a time
@njit(inline="always")
def _hfilter(taps, src, r, dst, d, k, n, step):
    """dst[d, k, j] = sum_t taps[t] src[r, j + step t] for j < n: the window along a row whose neighbouring
    columns lie ``step`` apart (the strip's planes interleaved). (Rows by index, not as views: each view
    costs two atomic reference counts, and they took 5% of a 16^2 patch's SSIM.)"""
    s = np.uint64(step)  # (unsigned indices need no test for negative ones: the loop vectorises)
    for j in range(np.uint64(n)):
        acc = taps[0] * src[r, j]
        for t in range(1, len(taps)):
            acc += taps[t] * src[r, j + np.uint64(t) * s]
        dst[d, k, j] = acc


@njit(inline="always")
def _ring_rows(win):
    """Rows in a ring of the rows four output rows see (win + 3): a power of two, so that a row's slot is
    its index's low bits (a modulo in each tap's index kept LLVM from unrolling the taps: scalar loops).
    A ring has one row more, the row of every row outside its range (see _slot)."""
    size = 1
    while size < win + 3:
        size *= 2
    return size


@njit(inline="always")
def _slot(i, lo, hi, mask):
    """The ring slot of row i: its own (i's low bits) for lo <= i < hi, else the ring's last row, which stands
    for every other row (one copy of the padding rows' moments forward; zero coefficients backward: no
    copy and no zeroing per row, which took 8% of a 16^2 patch's SSIM)."""
    return i & mask if lo <= i < hi else mask + 1


@njit(inline="always")
def _quad_filter(taps, rows, k, first, lo, hi, dst, lead, n):
    """dst[r, k, lead + j] = sum_t taps[t] rows[_slot(first + r + t), k, j], r = 0 .. 3 (rows lo .. hi - 1 in the ring,
    the others its last row): the window down a ring of rows, map k, for four rows at once (their windows share
    all rows but three, each loaded once for all four: the passes are bound by loads). Forward: output rows'
    moments from the input rows they see; backward, with the taps reversed: input rows' shares of the output
    rows that saw them (the window's adjoint). (dst is indexed whole with unsigned columns, not sliced into
    four row views: 2-5% of a 256^2 plane's SSIM, measured.)"""
    mask = _ring_rows(len(taps)) - 1  # (known when compiled: the slots leave the loop)
    at = np.uint64(lead)  # (unsigned indices: no test for negative ones)
    for j in range(np.uint64(n)):
        acc0 = taps[0] * rows[_slot(first, lo, hi, mask), k, j]
        acc1 = taps[0] * rows[_slot(first + 1, lo, hi, mask), k, j]
        acc2 = taps[0] * rows[_slot(first + 2, lo, hi, mask), k, j]
        acc3 = taps[0] * rows[_slot(first + 3, lo, hi, mask), k, j]
        for t in range(1, len(taps)):
            acc0 += taps[t] * rows[_slot(first + t, lo, hi, mask), k, j]
            acc1 += taps[t] * rows[_slot(first + 1 + t, lo, hi, mask), k, j]
            acc2 += taps[t] * rows[_slot(first + 2 + t, lo, hi, mask), k, j]
            acc3 += taps[t] * rows[_slot(first + 3 + t, lo, hi, mask), k, j]
        dst[0, k, at + j] = acc0
        dst[1, k, at + j] = acc1
        dst[2, k, at + j] = acc2
        dst[3, k, at + j] = acc3


@njit(**COLUMN_OPTIONS)
def _quad_maps(taps, rows, maps, first, lo, hi, dst, lead, n):
    """_quad_filter for maps 0 .. maps - 1 into dst[r, k, lead:]."""
    for k in range(maps):
        _quad_filter(taps, rows, k, first, lo, hi, dst, lead, n)


# ---------------------------------------------------------------- the SSIM of one output row
@njit(**COLUMN_OPTIONS)
def _coefficients(mom, r, shift, c1, c2, use_cs, scale, coef, s, total, n):
    """The SSIM (or contrast-structure) map of one output row's n columns from its moments mom[r, 0..3],
    added into each column's ``total``, and scale times the coefficient maps A, B, C of the gradient and
    A' = dS/dmu'_y (the target's) into coef[s, 0..3]; ``shift`` and ``scale`` are rows too (each column takes
    its plane's)."""
    one, two = like(c1, 1.0), like(c1, 2.0)
    if use_cs:  # (two loops, not a branch in one: LLVM vectorises each)
        for j in range(n):
            mx, my = mom[r, 0, j], mom[r, 1, j]
            d = mx - my
            diff = mom[r, 3, j] - d * d
            r2 = one / (two * (mom[r, 2, j] - mx * my) + c2 + diff)  # (one division, its reciprocal used four times)
            cs = one - diff * r2
            total[j] += cs  # (2 cov + C2) / b2, exactly 1 where diff is 0
            coef[s, 0, j] = scale[j] * two * (mx * cs - my) * r2
            coef[s, 3, j] = scale[j] * two * (my * cs - mx) * r2  # (S is symmetric: A with x and y swapped)
            coef[s, 1, j] = scale[j] * two * diff * (r2 * r2)
            coef[s, 2, j] = -scale[j] * cs * r2
        return
    for j in range(n):
        mx, my = mom[r, 0, j], mom[r, 1, j]
        d = mx - my
        diff = mom[r, 3, j] - d * d
        r2 = one / (two * (mom[r, 2, j] - mx * my) + c2 + diff)
        cs = one - diff * r2
        ux, uy = mx + shift[j], my + shift[j]
        r1 = one / (two * ux * uy + c1 + d * d)
        lum = one - d * d * r1
        v = lum * cs
        total[j] += v
        coef[s, 0, j] = scale[j] * two * (cs * (uy - lum * ux) * r1 + lum * (mx * cs - my) * r2)
        coef[s, 3, j] = scale[j] * two * (cs * (ux - lum * uy) * r1 + lum * (my * cs - mx) * r2)
        coef[s, 1, j] = scale[j] * two * lum * diff * (r2 * r2)
        coef[s, 2, j] = -scale[j] * v * r2


# ---------------------------------------------------------------- one task
@njit(**COLUMN_OPTIONS)
def _row_moments(g, xs, ys, r, n_in, prod, dst, d, n, step):
    """The four maps of strip row xs[r], ys[r] (n_in columns) filtered along it into dst[d] (4, n): x', y',
    x'y', (x - y)^2."""
    for c in range(n_in):
        diff = xs[r, c] - ys[r, c]
        prod[0, c] = xs[r, c] * ys[r, c]
        prod[1, c] = diff * diff
    sources, rows = (xs, ys, prod, prod), (r, r, 0, 1)
    for k in range(4):  # (one loop, not four calls: the filter's code once, a quarter of the compile)
        _hfilter(g, sources[k], rows[k], dst, d, k, n, step)


@njit(**KERNEL_OPTIONS)
def _load_row(x, y, plane_shift, first_plane, m, pad, r, xs, ys, s):
    """Image row r of the strip's m planes, shifted (plane first_plane + q by plane_shift[q]) and interleaved
    (padded column c of plane q at c m + q), into xs[s], ys[s] (their padding columns are filled once per task).
    Done one float at a time, this copy took a tenth of the SSIM of 256^2 planes and of 16^2 patches: for 2, 4
    or 8 planes m is a constant to LLVM, which then loads a vector of each plane and interleaves them; more
    planes, a multiple of 8, go in blocks of 8 x 8 transposed (0.18 ns a value, against 0.66-0.84)."""
    h, w = x.shape[1], x.shape[2]
    if m == 4:
        _interleave(x, y, plane_shift, first_plane, 4, pad, r, xs, ys, s)
    elif m == 2:
        _interleave(x, y, plane_shift, first_plane, 2, pad, r, xs, ys, s)
    elif m == 8:
        _interleave(x, y, plane_shift, first_plane, 8, pad, r, xs, ys, s)
    elif m % 8 == 0:
        for q in range(0, m, 8):
            at, to = ((first_plane + q) * h + r) * w, s * xs.shape[1] + pad * m + q  # (flat indices)
            for c in range(0, w - 7, 8):
                _transpose8(x, at + c, h * w, plane_shift, q, xs, to + c * m, m)
                _transpose8(y, at + c, h * w, plane_shift, q, ys, to + c * m, m)
            for c in range(w - w % 8, w):
                for p in range(q, q + 8):
                    xs[s, (pad + c) * m + p] = x[first_plane + p, r, c] - plane_shift[p]
                    ys[s, (pad + c) * m + p] = y[first_plane + p, r, c] - plane_shift[p]
    else:  # (plane by plane: each row read in order)
        for q in range(m):
            for c in range(w):
                xs[s, (pad + c) * m + q] = x[first_plane + q, r, c] - plane_shift[q]
                ys[s, (pad + c) * m + q] = y[first_plane + q, r, c] - plane_shift[q]


@njit(inline="always")
def _interleave(x, y, plane_shift, first_plane, m, pad, r, xs, ys, s):
    """_load_row's loop for a constant m: column by column, the planes' values side by side."""
    start, step = np.uint64(pad * m), np.uint64(m)
    for c in range(np.uint64(x.shape[2])):
        for q in range(m):
            xs[s, start + c * step + np.uint64(q)] = x[first_plane + q, r, c] - plane_shift[q]
            ys[s, start + c * step + np.uint64(q)] = y[first_plane + q, r, c] - plane_shift[q]


def _transposed(rows, shuffle):
    """The eight columns of eight vectors ``rows`` of eight, made by ``shuffle(a, b, mask)`` (mask indices
    8 .. 15: b's elements) in three stages, as x86 does it: pairs of rows unpacked, pairs of pairs
    interleaved, halves swapped."""
    def two(a, b, masks):
        return [shuffle(a, b, mask) for mask in masks]
    lo_hi = (0, 8, 1, 9, 4, 12, 5, 13), (2, 10, 3, 11, 6, 14, 7, 15)
    u = [v for k in range(0, 8, 2) for v in two(rows[k], rows[k + 1], lo_hi)]
    pairs = (0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15)
    p = two(u[0], u[2], pairs) + two(u[1], u[3], pairs) + two(u[4], u[6], pairs) + two(u[5], u[7], pairs)
    halves = (0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15)
    low, high = zip(*(two(p[j], p[j + 4], halves) for j in range(4)))
    return list(low) + list(high)


@intrinsic
def _transpose8(typingctx, src, at, stride, shift, k, dst, to, step):
    """dst.flat[to + j step + q] = src.flat[at + q stride + j] - shift[k + q] for q, j < 8 (C-contiguous arrays
    of one float type): eight rows of eight values in as vectors, out as eight columns. LLVM finds no
    such shuffles in a loop whose stride is known only at run time."""
    if not (all(isinstance(a, types.Array) and a.layout == "C" for a in (src, shift, dst))
            and src.dtype == shift.dtype == dst.dtype and isinstance(src.dtype, types.Float)):
        return None

    def codegen(context, builder, signature, args):
        kinds = signature.args
        at_, stride_, k_, to_, step_ = (context.cast(builder, args[i], kinds[i], types.intp) for i in (1, 2, 4, 6, 7))
        vector = ir.VectorType(context.get_data_type(kinds[0].dtype), 8)
        align = kinds[0].dtype.bitwidth // 8

        def address(array, kind, i):
            data = context.make_array(kind)(context, builder, array).data
            return builder.bitcast(builder.gep(data, [i]), vector.as_pointer())

        def mul(a, b):
            return builder.mul(a, a.type(b))
        rows = [builder.load(address(args[0], kinds[0], builder.add(at_, mul(stride_, q))), align=align)
                for q in range(8)]

        def shuffle(a, b, mask):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 8),
                                                            [ir.IntType(32)(i) for i in mask]))
        columns = _transposed(rows, shuffle)
        shifts = builder.load(address(args[3], kinds[3], k_), align=align)
        for j in range(8):
            builder.store(builder.fsub(columns[j], shifts), address(args[5], kinds[5], builder.add(to_, mul(step_, j))),
                          align=align)
        return context.get_dummy_value()
    return types.none(src, at, stride, shift, k, dst, to, step), codegen


@njit(inline="always")
def _copy_columns(src, dst, c0, c1):
    """dst[c0:c1] = src[c0:c1], as a plain loop (Numba's slice assignment ran 2-5% of a small plane's SSIM)."""
    for c in range(c0, c1):
        dst[c] = src[c]


@njit(inline="always")
def _zero_rows(rows, n):
    """rows[:, :n] = 0, as plain loops (see _copy_columns)."""
    for k in range(rows.shape[0]):
        row = rows[k]
        for c in range(n):
            row[c] = 0


@njit(inline="always")
def _spread(values, first_plane, m, c0, c1, dst, negate):
    """dst[c m + q] = values[first_plane + q] (or its negative) for the columns c0 .. c1 of the strip's m
    planes: a per-plane number along an interleaved row."""
    for c in range(c0, c1):
        for q in range(m):
            v = values[first_plane + q]
            dst[c * m + q] = -v if negate else v


@njit(**COLUMN_OPTIONS)
def _emit(g_rev, vb, xr, yr, first, n, step, out, tout, pixel, pixel_rows):
    """A strip row's gradient at its columns first .. first + n (planes interleaved, neighbouring columns
    ``step`` apart) into out[0 .. n]: G^T A + y' G^T B + 2 (x - y) G^T C, the horizontal adjoint G^T of
    the vertical shares ``vb`` (win - 1 columns of zeros lead and trail) summed in the same loop; with
    ``tout`` (not None) the target's into tout: G^T A' + x' G^T B + 2 (y - x) G^T C. With a pixel loss
    (``pixel``, see _pixel_slopes), its gradients at the image rows ``pixel_rows`` added. (One signature for
    a plane alone and a strip's planes: the same code, so a plane's gradient is the same bits in both.)"""
    if pixel[0] == NO_PIXEL:  # (the choice outside the loop: each loop compiled for its case)
        _emit_row(g_rev, vb, xr, yr, first, n, step, out, tout, pixel, pixel_rows, False)
    else:
        _emit_row(g_rev, vb, xr, yr, first, n, step, out, tout, pixel, pixel_rows, True)


@njit(inline="always")
def _emit_row(g_rev, vb, xr, yr, first, n, step, out, tout, pixel, pixel_rows, add_pixel):
    """_emit's loop, the pixel loss's gradients added where ``add_pixel`` (a constant)."""
    two = like(g_rev[0], 2.0)
    s, f = np.uint64(step), np.uint64(first)  # (unsigned indices: no test for negative ones, so it vectorises)
    a, b, c = vb[0], vb[1], vb[2]
    for j in range(np.uint64(n)):
        i = f + j
        ga, gb, gc, gy = g_rev[0] * a[i], g_rev[0] * b[i], g_rev[0] * c[i], two
        if tout is not None:  # (compiled away when None)
            gy = g_rev[0] * vb[3, i]
        for t in range(1, len(g_rev)):
            k = i + np.uint64(t) * s
            ga += g_rev[t] * a[k]
            gb += g_rev[t] * b[k]
            gc += g_rev[t] * c[k]
            if tout is not None:
                gy += g_rev[t] * vb[3, k]
        gx = ga + yr[i] * gb + two * (xr[i] - yr[i]) * gc
        if tout is not None:
            gy = gy + xr[i] * gb + two * (yr[i] - xr[i]) * gc
        if add_pixel:
            px, py = _pixel_slopes(pixel, pixel_rows[0][j], pixel_rows[1][j])
            gx += px
            gy += py
        out[j] = gx
        if tout is not None:
            tout[j] = gy


@njit(inline="always")
def _pixel_element(kind, x, y):
    """(l, dl/dx, dl/dy) of the pixel loss ``kind`` (PIXELS; NO_PIXEL: zeros) at x, y: the pointwise pass's own
    elements of each loss (so the same values as its gradient), the one asked for selected. A choice made at
    run time: SSIM and mixed_loss with either loss are one compiled kernel (each a compile of its own had
    doubled a first call's wait); both elements cost a few operations, a select no branch."""
    identity = _IDENTITY(like(x, 0.0))
    l1, l1_x, _, l1_y = _element(_L1(), identity, x, y)
    mse, mse_x, _, mse_y = _element(_MSE(), identity, x, y)
    zero = like(x, 0.0)
    if kind == PIXEL_L1:
        return l1, l1_x, l1_y
    if kind == PIXEL_MSE:
        return mse, mse_x, mse_y
    return zero, zero, zero


@njit(inline="always")
def _pixel_slopes(pixel, x, y):
    """scale dl/dx and scale dl/dy of the pixel loss l(x, y), ``pixel`` = (kind, scale) (see _pixel_element)."""
    kind, scale = pixel
    _, slope, target_slope = _pixel_element(kind, x, y)
    return _times(slope, scale), _times(target_slope, scale)


@njit(**KERNEL_OPTIONS)
def _pixel_block(kind, scale, x, y, grad, tgrad, write):
    """The sum of the pixel loss over one block in the data's dtype (as the pointwise loop sums), and where
    ``write``, scale times its gradients written into ``grad`` (``tgrad``, unless None)."""
    if write:  # (the choice outside the loop: one loop each)
        return _pixel_sum(kind, scale, x, y, grad, tgrad)
    return _pixel_sum(kind, scale, x, y, None, None)


@njit(inline="always")
def _pixel_sum(kind, scale, x, y, grad, tgrad):
    """_pixel_block's loop, writing into ``grad`` and ``tgrad`` unless None."""
    total = like(scale, 0.0)
    for i in range(x.size):
        value, slope, target_slope = _pixel_element(kind, x[i], y[i])
        if grad is not None:
            grad[i] = _times(slope, scale)
        if tgrad is not None:
            tgrad[i] = _times(target_slope, scale)
        total += value
    return total


@njit(inline="always")
def _pixel_first(pixel, m, h, w, itemsize):
    """Whether a strip of m planes of h x w takes the pixel loss of all its rows at once before it reads them,
    its gradient written then and the SSIM's added, rather than summed as the rows are read and added to the
    SSIM's as that is written: for several planes that fit PIXEL_AT_ONCE (their rows are short: added along
    each plane's row after the scatter, 5% slower at 16^2; 2-3% faster at 256^2)."""
    return pixel[0] != NO_PIXEL and m > 1 and m * h * w * itemsize <= PIXEL_AT_ONCE


@njit(**KERNEL_OPTIONS)
def _tasks(x, y, shifting, g, g_rev, pad, c1, c2, use_cs, scales, gradient, grad, tgrad, accumulate, m, bands, queue,
           n_tasks, sums, edges, pixel, pixel_sums):
    """The tasks this thread takes from ``queue`` (see _threads.run_pulled) of the n_tasks: task k is band
    k % bands of strip k // bands (m planes interleaved), its planes' moments about their shifts where
    ``shifting`` (see _plane_shifts), raw otherwise.
    Writes sums[k, q] (the band's SSIM sum of plane q) and, where ``gradient``, the gradient rows the band
    alone touches into ``grad`` (the target's into ``tgrad`` unless None), and its shared rows (first and
    last win - 1 of a band inside a tall plane) into edges[k, part, 0] (the target's into edges[k, part, 1]).
    With a pixel loss (``pixel`` = (kind, scale), see _pixel_element; kind NO_PIXEL: none), each input row
    the band owns gets that loss's sum added
    into pixel_sums[k] as it is loaded (the band's own rows: those of its output rows, the last band's also
    those below, so that each row is taken once), and its gradient added to the SSIM's as that is written, or
    written first, the SSIM's added (see _pixel_first)."""
    k = take_task(queue)
    if k >= n_tasks:
        return  # (a thread that came too late: nothing allocated)
    n_planes, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    win = len(g)
    hv = hp - win + 1
    wvp = wp - win + 1            # output columns of one plane row
    width, wv = m * wp, m * wvp   # input and output columns of a strip row, planes interleaved
    dtype = x.dtype
    # image rows the pixel loss takes at a time as they are read: runs of a few blocks, but at most win, as a
    # row's gradient goes out once win - 1 rows below it are read, and the pixel loss's may be written before
    group = min(win, max(1, 4 * BLOCK // w))
    maps = runtime(3)
    if tgrad is not None:
        maps = 4                  # A' = dS/dmu'_y beside A, B, C: filtered back only when asked for
    size = _ring_rows(win)                      # ring rows: four output rows see win + 3 input rows
    wi, wo = width + LANES, wv + LANES          # (loops along a row run whole vectors: see _lanes)
    xs, ys = np.empty((size, wi), dtype), np.empty((size, wi), dtype)  # the last input rows, shifted
    prod = np.empty((2, wi), dtype)
    ring = np.empty((size + 1, 4, wo), dtype)  # horizontally filtered moments of the last input rows (the last:
    #                                            of a row of padding)
    coef = np.empty((size + 1, 4, wo), dtype)  # coefficients of the last output rows (the last: zero)
    _zero_rows(coef[size], wo)
    mom = np.empty((4, 4, wo), dtype)
    pad_rows = np.empty((1, wi), dtype)       # a row of padding
    total = np.empty(wo, dtype)               # each column's SSIM map summed down the band
    shift, scale = np.zeros(wo, dtype), np.zeros(wo, dtype)  # each output column's plane's
    plane_shift = np.zeros(m, dtype)
    vb = np.empty((4, maps, wv + 2 * (win - 1) * m + LANES), dtype)  # vertical shares of four input rows
    flat = np.empty((2, w * m + LANES), dtype)  # a row's gradients (and the target's), planes interleaved
    while k < n_tasks:
        strip, band = k // bands, k % bands
        p0 = strip * m
        mk = min(m, n_planes - p0)            # (the last strip may hold fewer: its columns lie closer)
        n_in, n_out, lead = wp * mk, wvp * mk, (win - 1) * mk
        n_vec = _lanes(n_out)
        first = _pixel_first(pixel, mk, h, w, x.itemsize)
        o0, o1 = band * bands_height(hv, bands), min(hv, (band + 1) * bands_height(hv, bands))
        i0, i1 = o0, o1 + win - 1
        lo, hi = max(o0, pad), min(i1 if band == bands - 1 else o1, pad + h)  # the band's own image rows
        vb[:, :, :lead] = like(c1, 0.0)  # (columns before and after the strip's row: no shares)
        vb[:, :, lead + n_out:2 * lead + n_out + LANES] = like(c1, 0.0)
        total[:n_vec] = 0.0
        sums[k, :] = 0.0
        pixel_total = 0.0
        if shifting:  # (each band of a strip takes its planes' shifts alike)
            _plane_shifts(x, y, p0, mk, plane_shift)
        _spread(plane_shift, runtime(0), mk, runtime(0), wvp, shift, runtime(False))
        _spread(scales, p0, mk, runtime(0), wvp, scale, runtime(False))
        pad_row = pad_rows[0]
        _spread(plane_shift, runtime(0), mk, runtime(0), wp, pad_row, runtime(True))  # a row of padding (x' = y' = -s)
        pad_row[n_in:n_in + LANES] = like(c1, 0.0)
        for r in range(size):  # padding columns: written once, the rows only between them
            for rows in (xs, ys):
                _copy_columns(pad_row, rows[r], runtime(0), pad * mk)
                _copy_columns(pad_row, rows[r], (pad + w) * mk, n_in + LANES)  # (and the scratch past the row)
        prod[:, n_in:n_in + LANES] = like(c1, 0.0)
        if pad > 0 and (i0 < pad or i1 > pad + h):  # rows of padding: all alike, filtered once
            _row_moments(g, pad_rows, pad_rows, runtime(0), n_in, prod, ring, size, n_vec, mk)
        if first:  # (small planes: all their rows in few runs)
            pixel_total = _pixel_rows(pixel, x, y, grad, tgrad, gradient, p0, mk, lo - pad, hi - pad)
        for i in range(i0, i1):
            if pad <= i < pad + h:  # (a row of padding is not loaded: filtered once above, it has no gradient)
                _load_row(x, y, plane_shift, p0, mk, pad, i - pad, xs, ys, i % size)
                grouped = i == hi - 1 or (i - lo) % group == group - 1
                if pixel[0] != NO_PIXEL and not first and lo <= i < hi and grouped:
                    r1 = i + 1 - pad  # (rows in groups of a few blocks, as they are read)
                    pixel_total += _pixel_rows(pixel, x, y, grad, tgrad, runtime(False), p0, mk,
                                               r1 - 1 - (i - lo) % group, r1)
                _row_moments(g, xs, ys, i % size, n_in, prod, ring, i % size, n_vec, mk)
            o = i - win + 1  # the output row now complete
            if o < o0 or ((o - o0) % 4 != 3 and o < o1 - 1):
                continue  # (output rows go in fours, the band's last up to three rows too)
            a = o - (o - o0) % 4
            # (past the band's last row: computed, dropped)
            _quad_maps(g, ring, runtime(4), a, pad, pad + h, mom, runtime(0), n_vec)
            for b in range(a, o + 1):
                _coefficients(mom, b - a, shift, c1, c2, use_cs, scale, coef, b % size, total, n_vec)
                coef[b % size, :, n_out:] = like(c1, 0.0)  # (past the row: its shares must stay 0)
            if o == o1 - 1:
                _plane_sums(total, mk, wvp, sums[k])
                pixel_sums[k] = pixel_total
            if not gradient:
                continue
            last = i1 - 1 if o == o1 - 1 else o  # input rows no later output row of the band touches
            for p in range(a, last + 1, 4):  # (in fours too)
                e = min(p + 3, last)
                if e < pad or p >= pad + h:
                    continue  # rows of padding: no gradient
                _quad_maps(g_rev, coef, maps, p - win + 1, o0, o + 1, vb, lead, n_vec)  # (rows outside: zero)
                for b in range(p, e + 1):
                    if pad <= b < pad + h:
                        _deliver(g_rev, vb[b - p], xs[b % size], ys[b % size], b, pad, mk, w, k, band, bands, o0, o1,
                                 p0, accumulate or first, grad, tgrad, edges, flat, x, y, pixel)
        k = next_task(queue)


@njit(**KERNEL_OPTIONS)
def _tasks_pulled(args, words, jobs, helper, count, job, finished):
    """_tasks(*args) in fastae's threads (see _threads.pulled)."""
    return pulled(_tasks, args, words, jobs, helper, count, job, finished)


@njit(**KERNEL_OPTIONS)
def _pixel_rows(pixel, x, y, grad, tgrad, write, p0, m, r0, r1):
    """Rows r0 .. r1 - 1 of planes p0 .. p0 + m - 1 (each plane's a contiguous run, whole planes one run): the
    sum of the pixel loss (blocks summed in the data's dtype, as the pointwise loop does), and where ``write``
    its gradients (see _pixel_slopes) written into ``grad`` (``tgrad``, unless None)."""
    h, w = x.shape[1], x.shape[2]
    if r0 == 0 and r1 == h:  # (whole planes: one run; short runs, two a 16^2 plane, cost 12% of its SSIM)
        return _pixel_run(pixel, x, y, grad, tgrad, write, p0 * h * w, (p0 + m) * h * w)
    total = 0.0
    for q in range(m):
        total += _pixel_run(pixel, x, y, grad, tgrad, write, ((p0 + q) * h + r0) * w, ((p0 + q) * h + r1) * w)
    return total


@njit(inline="always")
def _pixel_run(pixel, x, y, grad, tgrad, write, start, stop):
    """_pixel_rows over the elements start .. stop - 1 of the arrays' flat order."""
    kind, scale = pixel
    xr, yr, gr, tr = run(x, start, stop), run(y, start, stop), run(grad, start, stop), run(tgrad, start, stop)
    total = 0.0
    for b in range(0, xr.size, BLOCK):
        e = min(b + BLOCK, xr.size)
        total += _pixel_block(kind, scale, xr[b:e], yr[b:e], window(gr, b, e), window(tr, b, e), write)
    return total


@njit(inline="always")
def _deliver(g_rev, vb, xr, yr, p, pad, m, w, k, band, bands, o0, o1, p0, accumulate, grad, tgrad, edges, flat, x, y,
             pixel):
    """Input row p's gradients from its vertical shares ``vb``: straight into ``grad`` (and ``tgrad``) when
    the strip holds one plane, or by way of ``flat`` (planes interleaved): kept in ``edges`` where another
    band also touches the row, or added where ``accumulate``, or written; the pixel loss's (unless NO_PIXEL) added
    as a row is written (a kept row's when the bands' parts are joined), unless ``accumulate`` says it was
    written first (see _pixel_first)."""
    r = p - pad
    head, tail = band > 0 and p < o0 + len(g_rev) - 1, band < bands - 1 and p >= o1
    if m == 1 and not (head or tail or accumulate):
        # (step a constant 1: the taps' addresses then differ by constants; as a number, 3 arrays x 10 taps of
        # addresses outnumber the registers: 4% slower on planes too wide for strips)
        if tgrad is None:
            _emit(g_rev, vb, xr, yr, pad, w, 1, grad[p0, r], None, pixel, (x[p0, r], y[p0, r]))
        else:
            _emit(g_rev, vb, xr, yr, pad, w, 1, grad[p0, r], tgrad[p0, r], pixel, (x[p0, r], y[p0, r]))
        return
    n = w * m
    part, row = (0, p - o0) if head else (1, p - o1)
    later = (runtime(NO_PIXEL), pixel[1])  # (the pixel loss's gradient added as the row is written: see _route)
    if tgrad is None:
        _emit(g_rev, vb, xr, yr, pad * m, _lanes(n), m, flat[0], None, later, (xr, yr))
    else:
        _emit(g_rev, vb, xr, yr, pad * m, _lanes(n), m, flat[0], flat[1], later, (xr, yr))
        _route(flat[1], edges, k, part, 1, row, head or tail, tgrad, p0, r, m, w, accumulate, x, y, pixel)
    _route(flat[0], edges, k, part, 0, row, head or tail, grad, p0, r, m, w, accumulate, x, y, pixel)


@njit(**KERNEL_OPTIONS)
def _route(flat, edges, k, part, which, row, keep, grad, p0, r, m, w, accumulate, x, y, pixel):
    """A row's gradients (planes interleaved in ``flat``) kept in ``edges`` or written (added) into ``grad``,
    the pixel loss's (unless NO_PIXEL, or written first: ``accumulate``) added then."""
    if keep:
        _scatter(flat, edges[k, part, which, row], m, w, runtime(False))
        return
    _scatter(flat, grad[p0:p0 + m, r], m, w, accumulate)
    # (the pixel loss's in a loop of its own along each plane's row: in the scatter's, 8% slower)
    if pixel[0] != NO_PIXEL and not accumulate:
        for q in range(p0, p0 + m):
            for c in range(w):
                grad[q, r, c] += _pixel_slopes(pixel, x[q, r, c], y[q, r, c])[which]


@njit(**ELEMENT_OPTIONS)
def _plane_sums(total, m, n, out):
    """out[q] = the sum of plane q's n column totals (m planes interleaved), in column order whatever m is
    (no reassoc: a vectorised sum's order would depend on the stride, a plane's sum on its strip)."""
    for q in range(m):
        acc = 0.0
        for j in range(n):
            acc += total[j * m + q]
        out[q] = acc


@njit(inline="always")
def _scatter(flat, dst, m, w, add):
    """dst[q, c] = flat[c m + q] (or +=, ``add``) for the strip's m planes: a row back out of the strip."""
    for q in range(m):
        for c in range(w):
            if add:
                dst[q, c] += flat[c * m + q]
            else:
                dst[q, c] = flat[c * m + q]


@njit(inline="always")
def _lanes(n):
    """n rounded up to whole vectors of LANES columns: a loop along a row runs to there (LLVM would finish
    the last n % LANES columns one at a time, as long as a vector); the columns past n are scratch."""
    return -(-n // LANES) * LANES


@njit(inline="always")
def bands_height(hv, bands):
    return -(-hv // bands)


@njit(**KERNEL_OPTIONS)
def _join_bands(edges, bands, win, pad, h, grad, accumulate, first_strip, stop_strip, m, x, y, pixel, which):
    """The rows two bands share: the upper band's part, then the lower band's, added into the gradient
    (``edges`` of one of the gradients: (tasks, part, row, plane, column); x's, ``which`` 0, or y's, 1),
    and the pixel loss's (unless NO_PIXEL) where the strip did not write it first (see _pixel_first)."""
    n_planes = grad.shape[0]
    hv = h + 2 * pad - win + 1
    for strip in range(first_strip, stop_strip):
        mk = min(m, n_planes - strip * m)
        first = _pixel_first(pixel, mk, h, x.shape[2], x.itemsize)
        for band in range(1, bands):
            o0 = band * bands_height(hv, bands)
            upper, lower = strip * bands + band - 1, strip * bands + band
            for row in range(win - 1):
                r = o0 + row - pad
                if r < 0 or r >= h:
                    continue
                for q in range(mk):
                    for c in range(grad.shape[2]):
                        v = edges[upper, 1, row, q, c] + edges[lower, 0, row, q, c]
                        if pixel[0] != NO_PIXEL and not first:
                            v += _pixel_slopes(pixel, x[strip * m + q, r, c], y[strip * m + q, r, c])[which]
                        if accumulate or first:
                            grad[strip * m + q, r, c] += v
                        else:
                            grad[strip * m + q, r, c] = v


@njit(inline="always")
def _plane_shifts(x, y, first, m, out):
    """out[q] = the shift of plane first + q: the mean of x and y together over SHIFT_ROWS rows spread
    evenly down the plane (summed in float64). Any shift near the data keeps float32's digits; a sample
    costs a sixteenth of a pass over the planes, whose reading once more cost 8% of the SSIM's time. Each
    task takes its own planes' (in parallel, and a small plane's rows are then in cache for the task). A
    plane of SHIFT_ROWS rows or fewer is summed whole, in one run (row by row, a 16^2 plane's 16 short
    loops took 6% of its SSIM)."""
    h, w = x.shape[1], x.shape[2]
    n = min(h, SHIFT_ROWS)
    for q in range(m):
        total = 0.0
        if n == h:
            start = (first + q) * h * w
            xr, yr = run(x, start, start + h * w), run(y, start, start + h * w)
            for i in range(h * w):
                total += np.float64(xr[i]) + np.float64(yr[i])
        else:
            for k in range(n):
                r = k * h // n
                for c in range(w):
                    total += np.float64(x[first + q, r, c]) + np.float64(y[first + q, r, c])
        out[q] = x.dtype.type(total / max(1, 2 * n * w))


def layout(planes, h, w, pad, win):
    """(planes per strip, bands per plane): fixed by the sizes alone, never by the thread count."""
    wp, hv = w + 2 * pad, h + 2 * pad - win + 1
    m = max(1, min(planes, STRIP_WIDTH // wp))
    if planes * (hv + win - 1) * wp >= 2 * THREAD_WORK:  # work for two threads: at least STRIPS strips
        m = max(1, min(m, -(-planes // STRIPS)))
    if planes:
        m = -(-planes // -(-planes // m))  # strips alike (the last one at most one plane short)
    # a multiple of LANES planes runs in 5-12% less time than strips alike (measured), unless that leaves the
    # last strip less than half full (its short rows run slowly)
    whole = m - m % LANES
    if m > LANES and (planes % whole == 0 or 2 * (planes % whole) >= whole):
        m = whole
    bands = max(1, min(-(-hv // BAND), hv // max(2 * win, 1)))  # a band holds at least two windows
    return m, bands


@functools.lru_cache(maxsize=256)
def _plan(n_planes, h, w, pad, window, dtype):
    """(shifting, taps, reversed taps, planes per strip, bands, strips, tasks, threads) of a call on
    n_planes planes of h x w with a float64 window's bytes: whether the moments are taken about a shift (they
    keep the SSIM only for a window that sums to 1, before it is cast; else raw moments), the window's weights
    in ``dtype`` as tuples (their length is known when compiled, so each window sum stays in registers), the
    layout, and the threads the positions are worth. Once per shape and window: a small image's call is short
    (this took ~4 us of Python in a 16^2 patches' call of ~150)."""
    g = np.frombuffer(window, np.float64)
    taps = tuple(g.astype(dtype))
    win = len(taps)
    m, bands = layout(n_planes, h, w, pad, win)
    strips = -(-n_planes // m)
    tasks = strips * bands
    positions = (bands_height.py_func(h + 2 * pad - win + 1, bands) + win - 1) * m * (w + 2 * pad) * tasks
    return sums_to_one(g), taps, taps[::-1], m, bands, strips, tasks, max(1, positions // THREAD_WORK)


def ssim_planes(x, y, g, pad, c1, c2, use_cs, scales, grad, accumulate, target_grad=None, pixel=None):
    """The SSIM sums of the planes of x, y (P, H, W), in threads over strips and bands (see
    fastae/backends.md and the module docstring); ``scales`` (P,) scales each plane's gradient, written
    into ``grad`` and, unless None, the target's into ``target_grad`` in the same pass. With ``pixel`` =
    (loss, scale), also the pixel loss of each row as it is read, its gradient times scale added to the
    SSIM's as each is written (``accumulate`` must be False), and (per-plane sums, the loss's float64 total)
    returned."""
    if pixel is not None and accumulate:
        raise ValueError("ssim_planes: pixel writes the gradient, so accumulate must be False")
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)  # (as the kernel reads them: see _transpose8)
    n_planes, h, w = x.shape
    dtype = x.dtype
    shifting, taps, taps_rev, m, bands, strips, tasks, threads = _plan(n_planes, h, w, pad,
                                                                       np.asarray(g, np.float64).tobytes(), dtype)
    win = len(taps)
    scales = np.ascontiguousarray(scales, np.float64)
    sums = np.empty((tasks, m))
    both = 2 if target_grad is not None else 1
    edges = np.empty((tasks if bands > 1 and grad is not None else 0, 2, both, win - 1, m, w), dtype)
    c1, c2 = dtype.type(c1), dtype.type(c2)
    kind, scale = (NO_PIXEL, 0.0) if pixel is None else (PIXELS[pixel[0]], pixel[1])
    pixels = kind, dtype.type(scale)  # (see _pixel_element)
    pixel_sums = np.zeros(tasks)
    gradient = grad is not None  # (an array all the same: one compiled kernel with and without the gradient)
    written = grad if gradient else np.empty((0, 0, 0), dtype)
    run_pulled(_tasks, _tasks_pulled, (x, y, shifting, taps, taps_rev, pad, c1, c2, use_cs, scales, gradient, written,
                                       target_grad, accumulate, m, bands, np.zeros(2, np.int64), tasks, sums, edges,
                                       pixels, pixel_sums),
               tasks, threads=threads)
    if edges.size:
        for which, buffer in enumerate((grad, target_grad)[:both]):
            part = np.ascontiguousarray(edges[:, :, which])
            run_chunks(lambda first, stop: _join_bands(part, bands, win, pad, h, buffer, accumulate, first, stop, m,
                                                       x, y, pixels, which), strips, min_per_thread=1)
    per_plane = sums if bands == 1 else sums.reshape(strips, bands, m).sum(axis=1)  # bands in order, per plane
    per_plane = per_plane.reshape(-1)[:n_planes].copy()
    return per_plane if pixel is None else (per_plane, math.fsum(pixel_sums))
