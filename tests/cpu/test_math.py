"""The vectorisable float32 exp/log/log1p/tanh against NumPy in float64."""
import numpy as np
import pytest
from numba import njit

from fastae.cpu._math import exp, log, log1m, log1p_unit, tanh
from fastae.cpu.pointwise import KERNEL_OPTIONS

OPTIONS = {k: v for k, v in KERNEL_OPTIONS.items() if k != "cache"}  # same flags as the kernels


@njit(**OPTIONS)
def _apply(x, out):
    for i in range(x.size):
        out[0, i] = exp(x[i])
        out[1, i] = log(x[i])
        out[2, i] = log1p_unit(x[i])
        out[4, i] = log1m(x[i])
        out[3, i] = tanh(x[i])


SPECIALS = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, 1e-45, 88.7, 88.72, 88.73, -87.3, -87.4, -103.0,
            -1.0, -0.5, 1.0, 2.0, 0.25, -0.25, 1e-30, -1e-30, 0.1716, -0.1716, 3.4e38]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_against_numpy(rng, dtype):
    x = np.concatenate([rng.normal(0, 30, 20000), rng.random(20000), -rng.random(2000),
                        10.0 ** rng.uniform(-45, 38, 20000), SPECIALS]).astype(dtype)
    out = np.empty((5, x.size), dtype)
    _apply(x, out)
    x64 = x.astype(np.float64)
    unit = (x64 >= 0) & (x64 <= 1) | np.isnan(x64)  # log1p_unit's domain
    with np.errstate(all="ignore"):
        expected = [np.exp(x64), np.log(x64), np.where(unit, np.log1p(x64), np.nan), np.tanh(x64),
                    np.log1p(-x64)]
        expected = [e.astype(dtype).astype(np.float64) for e in expected]  # overflow to inf as the dtype does
    out[2, ~unit] = np.nan
    ulp = np.finfo(dtype).eps
    for name, got, want in zip(["exp", "log", "log1p_unit", "tanh", "log1m"], out.astype(np.float64), expected):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name}: NaN")
        inf = np.isinf(want)
        np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"{name}: inf")
        normal = ~inf & ~np.isnan(want) & (np.abs(want) >= np.finfo(dtype).tiny)
        np.testing.assert_allclose(got[normal], want[normal], rtol=6 * ulp, atol=0, err_msg=name)
        tiny = ~inf & ~np.isnan(want) & ~normal  # results below the normal range
        np.testing.assert_allclose(got[tiny], want[tiny], rtol=0, atol=2 * np.finfo(dtype).tiny, err_msg=name)
