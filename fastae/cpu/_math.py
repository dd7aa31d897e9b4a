"""Scalar maths for the CPU kernels, written so that LLVM vectorises it.

llvmlite here has no SVML, so ``math.exp`` and ``math.log`` stay scalar libm
calls inside a loop. For float32 the functions below use range reduction, a
short polynomial and integer bit tricks instead: branch-free, packed by LLVM,
accurate to a few float32 ulp. For float64 they call libm (exact to the ulp).

``like(x, c)`` turns the Python constant ``c`` into ``x``'s float type, so that
float32 code never silently widens to float64.
"""
import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload, register_jitable

F32 = np.float32
_LOG2E = F32(1.4426950408889634)
_LN2_HI = F32(0.693359375)
_LN2_LO = F32(-2.12194440e-4)
_LN2 = F32(0.6931471805599453)
_EXP_LO = F32(-87.33654)  # below: exp underflows to 0 (normal range only)
_EXP_HI = F32(88.72283)   # above: exp overflows to inf
_SQRT2 = F32(1.4142135623730951)
_TINY = F32(1.1754943508222875e-38)  # smallest normal float32
_TWO23 = F32(8388608.0)
_INF = F32(np.inf)
_NAN = F32(np.nan)


def like(x, c):
    """``c`` converted to the float type of ``x`` (usable inside jitted code)."""
    return type(x)(c)


@overload(like)
def _like(x, c):
    make = np.float32 if x == types.float32 else np.float64
    return lambda x, c: make(c)


@intrinsic
def _f32_as_i32(typingctx, x):
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def _i32_as_f32(typingctx, i):
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@register_jitable
def _exp32(x):
    k = np.floor(x * _LOG2E + F32(0.5))
    r = x - k * _LN2_HI - k * _LN2_LO
    p = F32(1.0 / 5040.0)
    p = p * r + F32(1.0 / 720.0)
    p = p * r + F32(1.0 / 120.0)
    p = p * r + F32(1.0 / 24.0)
    p = p * r + F32(1.0 / 6.0)
    p = p * r + F32(0.5)
    p = p * r + F32(1.0)
    p = p * r + F32(1.0)
    # 2**k by building the exponent bits; k = 128 (x just below overflow) is
    # split as 2**127 * 2 so that the bits stay finite.
    top = k > F32(127.0)
    k = k - F32(1.0) if top else k
    p = p * F32(2.0) if top else p
    y = p * _i32_as_f32((np.int32(k) + np.int32(127)) << np.int32(23))
    y = F32(0.0) if x < _EXP_LO else y
    return _INF if x > _EXP_HI else y


@register_jitable
def _log32(x):
    small = x < _TINY
    xs = x * _TWO23 if small else x
    bits = _f32_as_i32(xs)
    e = F32((bits >> np.int32(23)) - np.int32(127)) - (F32(23.0) if small else F32(0.0))
    m = _i32_as_f32((bits & np.int32(0x007FFFFF)) | np.int32(0x3F800000))
    big = m > _SQRT2
    m = m * F32(0.5) if big else m
    e = e + F32(1.0) if big else e
    # log(1 + f), f = m - 1 in [-0.293, 0.414]: f - f^2/2 + f^3 P(f), Cephes's
    # minimax polynomial for logf; no division.
    f = m - F32(1.0)
    f2 = f * f
    p = F32(7.0376836292e-2)
    p = p * f - F32(1.1514610310e-1)
    p = p * f + F32(1.1676998740e-1)
    p = p * f - F32(1.2420140846e-1)
    p = p * f + F32(1.4249322787e-1)
    p = p * f - F32(1.6668057665e-1)
    p = p * f + F32(2.0000714765e-1)
    p = p * f - F32(2.4999993993e-1)
    p = p * f + F32(3.3333331174e-1)
    y = e * _LN2 + (f - F32(0.5) * f2 + f * f2 * p)
    y = -_INF if x == F32(0.0) else y
    y = _NAN if x < F32(0.0) else y
    y = _INF if x == _INF else y
    return x if x != x else y


@register_jitable
def _log1p_unit32(x):
    # log1p(x) = 2 atanh(s), s = x / (2 + x) in [0, 1/3] for x in [0, 1]; the
    # series through s^15 is below float32 rounding there.
    return _atanh2_series32(x / (F32(2.0) + x))


@register_jitable
def _log1m32(x):
    # log(1 - x): for |x| <= 1/2 the atanh series at s = -x / (2 - x) in [-1/3, 1/5] (accurate for tiny x,
    # where 1 - x would round); beyond, 1 - x is exact (Sterbenz, x > 1/2) or far from 1 (x < -1/2).
    series = _atanh2_series32(-x / (F32(2.0) - x))
    return series if abs(x) <= F32(0.5) else _log32(F32(1.0) - x)


@register_jitable
def _atanh2_series32(s):
    """2 atanh(s) for |s| <= 1/3."""
    s2 = s * s
    p = F32(1.0 / 15.0)
    p = p * s2 + F32(1.0 / 13.0)
    p = p * s2 + F32(1.0 / 11.0)
    p = p * s2 + F32(1.0 / 9.0)
    p = p * s2 + F32(1.0 / 7.0)
    p = p * s2 + F32(1.0 / 5.0)
    p = p * s2 + F32(1.0 / 3.0)
    p = p * s2 + F32(1.0)
    return F32(2.0) * s * p


@register_jitable
def _tanh32(x):
    a = abs(x)
    x2 = x * x
    p = F32(62.0 / 2835.0)
    p = p * x2 - F32(17.0 / 315.0)
    p = p * x2 + F32(2.0 / 15.0)
    p = p * x2 - F32(1.0 / 3.0)
    small = x + x * x2 * p
    e = _exp32(F32(-2.0) * a)
    big = (F32(1.0) - e) / (F32(1.0) + e)
    big = -big if x < F32(0.0) else big
    return small if a < F32(0.25) else big


@register_jitable
def _tanh_and_slope32(z):
    e = _exp32(F32(-2.0) * abs(z))  # 1 - tanh(z)^2 = 4e / (1 + e)^2: no cancellation near saturation
    r = F32(1.0) / (F32(1.0) + e)
    return _tanh32(z), F32(4.0) * e * r * r


@register_jitable
def _tanh_and_slope64(z):
    # e = exp(-2|z|): tanh(|z|) = (1 - e) / (1 + e) and 1 - tanh^2 = 4e / (1 + e)^2. Near 0, 1 - e cancels:
    # take m = e - 1 from expm1 there. One libm call either way.
    a = abs(z)
    if a < 0.5:
        m = math.expm1(-2.0 * a)
        r = 1.0 / (2.0 + m)
        y, slope = -m * r, 4.0 * (1.0 + m) * r * r
    else:
        e = math.exp(-2.0 * a)
        r = 1.0 / (1.0 + e)
        y, slope = (1.0 - e) * r, 4.0 * e * r * r
    return (-y if z < 0.0 else y), slope


def _by_width(f32_impl, f64_impl):
    """Overload implementation picking the float32 or float64 version."""
    def pick(x):
        if x == types.float32:
            return f32_impl
        if x == types.float64:
            return f64_impl
    return pick


def exp(x):
    """e**x."""
    return math.exp(x)


def log(x):
    """Natural logarithm; -inf at 0, nan below."""
    return math.log(x)


def log1p_unit(x):
    """log(1 + x) for x in [0, 1] (nan stays nan), accurate for small x."""
    return math.log1p(x)


def log1m(x):
    """log(1 - x) for x <= 1, accurate for tiny x too (float64: log1p(-x))."""
    return math.log1p(-x)


def tanh(x):
    """Hyperbolic tangent."""
    return math.tanh(x)


def tanh_and_slope(x):
    """tanh(x) and its derivative 1 - tanh(x)^2, the latter without cancellation near saturation."""
    return math.tanh(x), 1.0 - math.tanh(x) ** 2


overload(exp)(_by_width(lambda x: _exp32(x), lambda x: math.exp(x)))
overload(log)(_by_width(lambda x: _log32(x), lambda x: math.log(x)))
overload(log1p_unit)(_by_width(lambda x: _log1p_unit32(x), lambda x: math.log1p(x)))
overload(log1m)(_by_width(lambda x: _log1m32(x), lambda x: math.log1p(-x)))
overload(tanh)(_by_width(lambda x: _tanh32(x), lambda x: math.tanh(x)))
overload(tanh_and_slope)(_by_width(lambda x: _tanh_and_slope32(x), lambda x: _tanh_and_slope64(x)))
