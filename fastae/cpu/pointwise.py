"""Fused pointwise losses on the CPU: value, gradient and reduction in one pass.

Each loss of the table (fastae/_table.py) is one small function
``<name>_point(spec, y, t) -> (loss, dloss/dy, outside, dloss/dt)`` and each output
activation one function ``<name>_act(spec, z) -> (y, dy/dz)``. The
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
from numba import njit
from numba.extending import overload

from .._table import ACTIVATIONS as ACTIVATION_TABLE
from .._table import LOSSES as LOSS_TABLE
from ._kernels import BLOCK, CHUNK, ELEMENT_OPTIONS, KERNEL_OPTIONS, item, window
from ._math import exp, like, log, log1m, log1p_unit, tanh_and_slope
from ._threads import run_chunks

# ---------------------------------------------------------------- losses
_BCE_EPS = float(np.float32(1e-12))  # torch's constant is a float32, in float64 too


@njit(inline="always")
def mse_point(spec, y, t):
    d = y - t
    slope = d + d
    return d * d, slope, like(d, 0.0), -slope


@njit(inline="always")
def l1_point(spec, y, t):
    d = y - t
    sign = like(d, d > 0) - like(d, d < 0)  # branch-free: sign(0) = 0 ...
    sign = d if d != d else sign  # ... and sign(nan) = nan
    return abs(d), sign, like(d, 0.0), -sign


@njit(inline="always")
def huber_point(spec, y, t):
    d = y - t
    a = abs(d)
    h = spec.delta
    quad = a < h
    value = like(d, 0.5) * d * d if quad else h * (a - like(d, 0.5) * h)
    slope = -h if d < -h else (h if d > h else d)  # clamp(d, -h, h), nan stays nan
    return value, slope, like(d, 0.0), -slope


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
    return value, (y - t) / den, outside, log_1my - log_y


@njit(inline="always")
def gaussian_nll_point(spec, y, t):
    d = y - t
    slope = d * spec.inv_var
    return like(d, 0.5) * d * d * spec.inv_var + spec.const, slope, like(d, 0.0), -slope


@njit(inline="always")
def laplace_nll_point(spec, y, t):
    v, sign, outside, _ = l1_point(spec, y, t)
    slope = sign * spec.inv_scale
    return v * spec.inv_scale + spec.const, slope, outside, -slope


@njit(inline="always")
def charbonnier_point(spec, y, t):
    d = y - t
    eps = spec.eps
    r = np.sqrt(d * d + eps * eps)
    value = d * d / (r + eps) if abs(d) < eps else r - eps  # r - eps cancels where |d| << eps
    slope = d / r
    return value, slope, like(d, 0.0), -slope


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
def softplus_act(spec, z):
    e = exp(-abs(z))  # log(1 + exp(z)) = max(z, 0) + log1p(exp(-|z|)): no overflow for any z
    r = like(z, 1.0) / (like(z, 1.0) + e)
    zero = like(z, 0.0)
    return (z if z > zero else zero) + log1p_unit(e), r if z >= zero else e * r


@njit(inline="always")
def bce_with_logits_point(z, t):
    """BCE fused with the sigmoid, stable for any finite logit z."""
    e = exp(-abs(z))
    zero = like(z, 0.0)
    value = (z if z > zero else zero) - z * t + log1p_unit(e)
    r = like(z, 1.0) / (like(z, 1.0) + e)
    y = r if z >= zero else e * r
    return value, y - t, zero, -z


# ---------------------------------------------------------------- specs, from the table
# A spec is a named tuple: its class picks the loss's (activation's) function at compile time, its fields
# carry the parameters in the data's dtype, so one compiled loop serves every parameter value.
def _spec(kernel, fields):
    spec = namedtuple(kernel, fields)
    globals()[kernel] = spec  # a module attribute: Numba's cache pickles the class by name
    return spec


def _function(suffix, name):
    try:
        return globals()[f"{name}_{suffix}"]
    except KeyError:
        raise ImportError(f"the table names {name!r}, but fastae.cpu.pointwise has no {name}_{suffix}") from None


LOSS_SPECS = {name: _spec(row.kernel, row.field_names) for name, row in LOSS_TABLE.items()}
ACTIVATION_SPECS = {name: _spec(row.kernel, ("slope",)) for name, row in ACTIVATION_TABLE.items()}
LOSSES = {LOSS_SPECS[name]: _function("point", name) for name in LOSS_TABLE}
ACTIVATIONS = {ACTIVATION_SPECS[name]: _function("act", name) for name in ACTIVATION_TABLE}


def point(loss, act, z, t):
    """(loss, dloss/dz, outside, dloss/dt) of one element, outside being 1 where
    the activated value lies outside the loss's domain, else 0; compiled by the
    overload below. Each loss gives dloss/dt from its own intermediates (minus
    dloss/dy for a loss of y - t; BCE's log(1 - y) - log y, clamped as torch's),
    so that asking for it changes no other output's rounding."""


@overload(point, inline="always")
def _point(loss, act, z, t):
    loss_fn = LOSSES[loss.instance_class]
    act_fn = ACTIVATIONS[act.instance_class]
    if loss.instance_class is LOSS_SPECS["bce"] and act.instance_class is ACTIVATION_SPECS["sigmoid"]:
        return lambda loss, act, z, t: bce_with_logits_point(z, t)

    def composed(loss, act, z, t):
        y, dy = act_fn(act, z)
        value, dvalue, outside, dtarget = loss_fn(loss, y, t)
        return value, dvalue * dy, outside, dtarget

    return composed


# ---------------------------------------------------------------- the loop
@njit(**ELEMENT_OPTIONS)
def _element(loss, act, z, t):
    return point(loss, act, z, t)


@njit(**ELEMENT_OPTIONS)
def _times(a, b):
    """a * b without reassoc: the loop's reassoc would regroup (slope w) scale and (target w) scale around
    a shared w scale, so that asking for the target's gradient would move the gradient's last bit."""
    return a * b


@njit(**KERNEL_OPTIONS)
def _block(loss, act, z, t, w, grad, grad_add, values, tgrad, scale):
    """Sum and out-of-domain count over one block, both in the data's dtype
    (an integer count would stop the vectorisation; a block's count is exact)."""
    total = like(scale, 0.0)
    bad = like(scale, 0.0)
    for i in range(z.size):
        ti = like(scale, 0.0) if t is None else t[i]
        value, slope, outside, target_slope = _element(loss, act, z[i], ti)
        if w is not None:
            value = _times(value, item(w, i))
            slope = _times(slope, item(w, i))
            target_slope = _times(target_slope, item(w, i))
        if grad is not None:
            grad[i] = _times(slope, scale)
        if grad_add is not None:
            grad_add[i] += _times(slope, scale)
        if values is not None:
            values[i] = value
        if tgrad is not None:
            tgrad[i] = _times(target_slope, scale)
        total += value
        bad += outside
    return total, bad


@njit(**KERNEL_OPTIONS)
def _chunks(loss, act, z, t, w, grad, grad_add, values, tgrad, scale, first, stop, sums, bad):
    """Chunks ``first`` to ``stop`` of w * loss(act(z), t) over the flat arrays:
    each chunk's sum into ``sums`` and its count of elements outside the
    loss's domain into ``bad``.

    ``t`` (None: a zero target, for penalties), ``w`` (weights: an array or
    one scalar for all), ``grad``
    (receives scale * w * dloss/dz), ``grad_add`` (has it added) and
    ``values`` (receives w * loss per element) and ``tgrad`` (receives scale * w *
    dloss/dt) may each be None: the branches
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
                                          window(grad_add, b, e), window(values, b, e), window(tgrad, b, e), scale)
            chunk_sum += block_sum
            chunk_bad += int(block_bad)
        sums[c] = chunk_sum
        bad[c] = chunk_bad


def activated(act, z):
    """(y, dy/dz) of one element; compiled by the overload below."""


@overload(activated, inline="always")
def _activated(act, z):
    act_fn = ACTIVATIONS[act.instance_class]
    return lambda act, z: act_fn(act, z)


@njit(**ELEMENT_OPTIONS)
def _activate_chunks(act, z, y, dy, first, stop):
    for i in range(first * CHUNK, min(stop * CHUNK, z.size)):
        v, d = activated(act, z[i])
        y[i] = v
        if dy is not None:
            dy[i] = d


# ---------------------------------------------------------------- launchers (the backend contract)
def _loss_spec(name, fields, dtype):
    """The spec of loss ``name`` with its kernel fields, taken by name."""
    spec = LOSS_SPECS[name]
    return spec(*(dtype.type(fields[field]) for field in spec._fields))


def _activation_spec(name, negative_slope, dtype):
    return ACTIVATION_SPECS[name](dtype.type(negative_slope))


def pointwise(loss, fields, activation, negative_slope, pred, target, weight, grad, values, scale, value_scale,
              grad_add=None, target_grad=None):
    """The fused loop over C-contiguous arrays of one dtype (see fastae/backends.md).

    Returns ``(value, total, outside)``: the 0-d ``total * value_scale`` in pred's dtype (NaN when an
    element lay outside the loss's domain), the float64 sum of the weighted losses, and the count of
    elements outside the domain. Writes ``grad`` and ``values`` and adds into ``grad_add`` when they are
    arrays (and ``scale * w * dloss/dtarget`` into ``target_grad``, in the same pass). ``target`` None
    is a zero target; ``weight`` is None, a scalar, or an array of pred's size.
    """
    dtype = pred.dtype
    flat = [a.reshape(-1) if isinstance(a, np.ndarray) else a
            for a in (pred, target, weight, grad, grad_add, values, target_grad)]
    if flat[2] is not None and not isinstance(flat[2], np.ndarray):
        flat[2] = dtype.type(flat[2])
    specs = _loss_spec(loss, fields, dtype), _activation_spec(activation, negative_slope, dtype)
    n_chunks = -(-pred.size // CHUNK)
    sums = np.empty(n_chunks)
    bad = np.empty(n_chunks, np.int64)
    run_chunks(lambda first, stop: _chunks(*specs, *flat, dtype.type(scale), first, stop, sums, bad), n_chunks)
    total, outside = math.fsum(sums), int(bad.sum())
    return np.array(np.nan if outside else total * value_scale, dtype), total, outside


def activate(activation, negative_slope, z, y, dy):
    """y = activation(z) and, unless ``dy`` is None, dy = its derivative, over C-contiguous arrays."""
    spec = _activation_spec(activation, negative_slope, z.dtype)
    flat = [a if a is None else a.reshape(-1) for a in (z, y, dy)]
    run_chunks(lambda first, stop: _activate_chunks(spec, *flat, first, stop), -(-z.size // CHUNK))
