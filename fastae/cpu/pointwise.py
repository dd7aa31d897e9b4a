"""Fused pointwise losses on the CPU: value, gradient and reduction in one pass.

Each loss is one small function ``(spec, y, t) -> (loss, dloss/dy, outside)``
and each output activation one function ``(spec, z) -> (y, dy/dz)``. The
single loop in ``_chunks`` composes them, weights, reduces and writes the
gradient. The spec arguments are named tuples: their class picks the function
at compile time, their fields carry the parameters in the data's dtype, so one
compiled loop serves every parameter value.

The loop splits the data into fixed chunks (independent of the thread count),
sums each chunk in blocks of the data's dtype added into float64, and the
chunk sums are added exactly (``math.fsum``): the result is bit-identical for
any ``NUMBA_NUM_THREADS``.
"""
import math
from collections import namedtuple

import numpy as np
from numba import njit, types
from numba.extending import overload

from ._math import exp, like, log, log1m, log1p_unit, tanh_and_slope
from ._threads import run_chunks

KERNEL_OPTIONS = dict(
    cache=True,
    nogil=True,
    error_model="numpy",
    boundscheck=False,
    # No nnan/ninf: NaN and Inf must propagate. reassoc lets the sums vectorise.
    fastmath={"contract", "reassoc", "arcp", "nsz"},
)
# An element's maths without reassoc and arcp. With reassoc, LLVM may regroup max(z, 0) - z t + log1p(e)
# into max(z, 0) + (log1p(e) - z t) and lose log1p(e), or t log y + (1 - t) log(1 - y) into
# log(1 - y) + t (log y - log(1 - y)); with arcp, the loop that also computes the gradient may divide by
# way of a reciprocal the other loop never forms, and the two give different values. Compiled apart and
# inlined by LLVM, the element's instructions keep their flags: only the loop's sum reassociates.
ELEMENT_OPTIONS = dict(KERNEL_OPTIONS, fastmath={"contract", "nsz"})
CHUNK = 1 << 16  # elements per parallel task: fixed, so results do not depend on threads
BLOCK = 1024     # elements summed in the data's dtype before adding into float64

# ---------------------------------------------------------------- specs
# Losses; fields are parameters already in the data's dtype.
MSE = namedtuple("MSE", "")
L1 = namedtuple("L1", "")
Huber = namedtuple("Huber", "delta")
BCE = namedtuple("BCE", "")
GaussianNLL = namedtuple("GaussianNLL", "inv_var const")  # const = log sigma + log(2 pi) / 2
LaplaceNLL = namedtuple("LaplaceNLL", "inv_scale const")  # const = log(2 scale)
# Output activations.
Identity = namedtuple("Identity", "")
Sigmoid = namedtuple("Sigmoid", "")
Tanh = namedtuple("Tanh", "")
ReLU = namedtuple("ReLU", "")
LeakyReLU = namedtuple("LeakyReLU", "slope")


# ---------------------------------------------------------------- losses
_BCE_EPS = float(np.float32(1e-12))  # torch's constant is a float32, in float64 too
@njit(inline="always")
def mse_point(spec, y, t):
    d = y - t
    return d * d, d + d, like(d, 0.0)


@njit(inline="always")
def l1_point(spec, y, t):
    d = y - t
    sign = like(d, d > 0) - like(d, d < 0)  # branch-free: sign(0) = 0 ...
    sign = d if d != d else sign  # ... and sign(nan) = nan
    return abs(d), sign, like(d, 0.0)


@njit(inline="always")
def huber_point(spec, y, t):
    d = y - t
    a = abs(d)
    h = spec.delta
    quad = a < h
    value = like(d, 0.5) * d * d if quad else h * (a - like(d, 0.5) * h)
    slope = -h if d < -h else (h if d > h else d)  # clamp(d, -h, h), nan stays nan
    return value, slope, like(d, 0.0)


@njit(inline="always")
def bce_point(spec, y, t):
    # binary_cross_entropy on probabilities, as torch: logs clamped at -100,
    # gradient denominator clamped at 1e-12.
    lo = like(y, -100.0)
    log_y = log(y)
    log_1my = log1m(y)
    log_y = lo if log_y < lo else log_y
    log_1my = lo if log_1my < lo else log_1my
    value = -(t * log_y + (like(y, 1.0) - t) * log_1my)
    den = (like(y, 1.0) - y) * y
    eps = like(y, _BCE_EPS)
    den = eps if den < eps else den
    outside = like(y, (y < like(y, 0.0)) | (y > like(y, 1.0)))  # 1 outside [0, 1]; nan is inside
    return value, (y - t) / den, outside


@njit(inline="always")
def gaussian_nll_point(spec, y, t):
    d = y - t
    return like(d, 0.5) * d * d * spec.inv_var + spec.const, d * spec.inv_var, like(d, 0.0)


@njit(inline="always")
def laplace_nll_point(spec, y, t):
    v, sign, outside = l1_point(spec, y, t)
    return v * spec.inv_scale + spec.const, sign * spec.inv_scale, outside


# ---------------------------------------------------------------- activations
@njit(inline="always")
def identity_act(spec, z):
    return z, like(z, 1.0)


@njit(inline="always")
def sigmoid_act(spec, z):
    e = exp(-abs(z))  # in (0, 1]: no overflow for any z
    r = like(z, 1.0) / (like(z, 1.0) + e)
    y = r if z >= like(z, 0.0) else e * r
    return y, y * (like(z, 1.0) - y)


@njit(inline="always")
def tanh_act(spec, z):
    return tanh_and_slope(z)


@njit(inline="always")
def relu_act(spec, z):
    zero = like(z, 0.0)
    y = zero if z <= zero else z  # nan stays nan
    return y, zero if z <= zero else like(z, 1.0)


@njit(inline="always")
def leaky_relu_act(spec, z):
    zero = like(z, 0.0)
    neg = z <= zero
    return z * spec.slope if neg else z, spec.slope if neg else like(z, 1.0)


@njit(inline="always")
def bce_with_logits_point(z, t):
    """BCE fused with the sigmoid, stable for any finite logit z."""
    e = exp(-abs(z))
    zero = like(z, 0.0)
    value = (z if z > zero else zero) - z * t + log1p_unit(e)
    r = like(z, 1.0) / (like(z, 1.0) + e)
    y = r if z >= zero else e * r
    return value, y - t, zero


LOSSES = {MSE: mse_point, L1: l1_point, Huber: huber_point, BCE: bce_point,
          GaussianNLL: gaussian_nll_point, LaplaceNLL: laplace_nll_point}
ACTIVATIONS = {Identity: identity_act, Sigmoid: sigmoid_act, Tanh: tanh_act,
               ReLU: relu_act, LeakyReLU: leaky_relu_act}


def point(loss, act, z, t):
    """(loss, dloss/dz, outside) of one element, outside being 1 where the
    activated value lies outside the loss's domain, else 0; compiled by the
    overload below."""


@overload(point, inline="always")
def _point(loss, act, z, t):
    loss_fn = LOSSES[loss.instance_class]
    act_fn = ACTIVATIONS[act.instance_class]
    if loss.instance_class is BCE and act.instance_class is Sigmoid:
        return lambda loss, act, z, t: bce_with_logits_point(z, t)

    def composed(loss, act, z, t):
        y, dy = act_fn(act, z)
        value, dvalue, outside = loss_fn(loss, y, t)
        return value, dvalue * dy, outside

    return composed


# ---------------------------------------------------------------- the loop
def window(a, start, stop):
    """``a[start:stop]`` for an array; None or a scalar as it is (resolved at compile time)."""


@overload(window, inline="always")
def _window(a, start, stop):
    if isinstance(a, types.Array):
        return lambda a, start, stop: a[start:stop]
    return lambda a, start, stop: a


def item(a, i):
    """``a[i]`` for an array, a scalar as it is (resolved at compile time)."""


@overload(item, inline="always")
def _item(a, i):
    if isinstance(a, types.Array):
        return lambda a, i: a[i]
    return lambda a, i: a


@njit(**ELEMENT_OPTIONS)
def _element(loss, act, z, t):
    return point(loss, act, z, t)


@njit(**KERNEL_OPTIONS)
def _block(loss, act, z, t, w, grad, grad_add, values, scale):
    """Sum and out-of-domain count over one block, both in the data's dtype
    (an integer count would stop the vectorisation; a block's count is exact)."""
    total = like(scale, 0.0)
    bad = like(scale, 0.0)
    for i in range(z.size):
        value, slope, outside = _element(loss, act, z[i], like(scale, 0.0) if t is None else t[i])
        if w is not None:
            value = value * item(w, i)
            slope = slope * item(w, i)
        if grad is not None:
            grad[i] = slope * scale
        if grad_add is not None:
            grad_add[i] += slope * scale
        if values is not None:
            values[i] = value
        total += value
        bad += outside
    return total, bad


@njit(**KERNEL_OPTIONS)
def _chunks(loss, act, z, t, w, grad, grad_add, values, scale, first, stop, sums, bad):
    """Chunks ``first`` to ``stop`` of w * loss(act(z), t) over the flat arrays:
    each chunk's sum into ``sums`` and its count of elements outside the
    loss's domain into ``bad``.

    ``t`` (None: a zero target, for penalties), ``w`` (weights: an array or
    one scalar for all), ``grad``
    (receives scale * w * dloss/dz), ``grad_add`` (has it added) and
    ``values`` (receives w * loss per element) may each be None: the branches
    on them are removed at compile time. Each block is handed over as slices: LLVM
    vectorises a loop over fresh views, not one over offset indices.
    """
    n = z.size
    for c in range(first, stop):
        chunk_sum = 0.0
        chunk_bad = 0
        for b in range(c * CHUNK, min((c + 1) * CHUNK, n), BLOCK):
            e = min(b + BLOCK, n)
            block_sum, block_bad = _block(loss, act, z[b:e], window(t, b, e), window(w, b, e), window(grad, b, e),
                                          window(grad_add, b, e), window(values, b, e), scale)
            chunk_sum += block_sum
            chunk_bad += int(block_bad)
        sums[c] = chunk_sum
        bad[c] = chunk_bad


# ---------------------------------------------------------------- launcher
SPECS = {"mse": MSE, "l1": L1, "huber": Huber, "bce": BCE, "gaussian_nll": GaussianNLL, "laplace_nll": LaplaceNLL}


def _loss_spec(name, params, dtype):
    """The spec of loss ``name``; ``params`` holds its fields by name (see fastae.pointwise)."""
    spec = SPECS[name]
    return spec(*(dtype.type(params[field]) for field in spec._fields))


def _activation_spec(name, negative_slope, dtype):
    if name == "leaky_relu":
        return LeakyReLU(dtype.type(negative_slope))
    return {"identity": Identity, "sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU}[name]()


def pointwise(loss, params, activation, negative_slope, pred, target, weight, grad, values, scale, grad_add=None):
    """Run the fused loop over C-contiguous arrays of one dtype.

    Returns ``(total, n_outside_domain)``; writes ``grad`` and ``values`` and
    adds into ``grad_add`` when they are arrays. ``target`` None is a zero
    target; ``weight`` is None, a scalar, or an array of pred's size.
    """
    dtype = pred.dtype
    flat = [a.reshape(-1) if isinstance(a, np.ndarray) else a for a in (pred, target, weight, grad, grad_add, values)]
    if flat[2] is not None and not isinstance(flat[2], np.ndarray):
        flat[2] = dtype.type(flat[2])
    specs = _loss_spec(loss, params, dtype), _activation_spec(activation, negative_slope, dtype)
    n_chunks = -(-pred.size // CHUNK)
    sums = np.empty(n_chunks)
    bad = np.empty(n_chunks, np.int64)
    run_chunks(lambda first, stop: _chunks(*specs, *flat, dtype.type(scale), first, stop, sums, bad), n_chunks)
    return math.fsum(sums), int(bad.sum())
