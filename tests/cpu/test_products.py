"""The row products that decide LASSO codes: each element the chain of fmas over k in order, so a row's
products are the same bits whatever the rows beside it, the threads, or the BLAS of the machine."""
from fractions import Fraction

import numpy as np
import pytest

from fastae.cpu import products
from fastae.cpu.products import rows_times

DTYPES = [np.float32, np.float64]
IDS = ["f32", "f64"]


def fma_chain(a, b):
    """The reference: out[i, j] = fma(a[i, d-1], b[d-1, j], ... fma(a[i, 0], b[0, j], 0)), each fma exact then
    rounded once: float64's in exact rationals; float32's product exact in float64, the sum rounded to float64
    and then to float32 (a double rounding that differs from one only at rare ties)."""
    out = np.zeros((a.shape[0], b.shape[1]), a.dtype)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            acc = a.dtype.type(0)
            for k in range(a.shape[1]):
                if a.dtype == np.float32:
                    acc = np.float32(np.float64(a[i, k]) * np.float64(b[k, j]) + np.float64(acc))
                else:
                    acc = float(Fraction(float(a[i, k])) * Fraction(float(b[k, j])) + Fraction(float(acc)))
            out[i, j] = acc
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("n, d, k", [(9, 7, 37), (5, 1, 16), (4, 13, 3), (1, 5, 33)])
def test_each_element_is_the_fma_chain_over_k_in_order(rng, dtype, n, d, k):
    """Tiles of four rows and whole vectors, and the rows and columns at the edges, all give each element
    as the fma chain in k's order."""
    a = rng.standard_normal((n, d)).astype(dtype)
    b = rng.standard_normal((d, k)).astype(dtype)
    assert rows_times(a, b).tobytes() == fma_chain(a, b).tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_a_row_is_the_same_bits_in_any_block_and_for_any_threads(rng, monkeypatch, dtype):
    """301 x 30 @ 30 x 70 (where OpenBLAS's Haswell kernels give every block size other bits): blocks of
    1, 2, 7, 64, 100, 150 rows, slices and non-contiguous views, one and two threads, all the same bits,
    and within float64 reference accuracy."""
    a = rng.standard_normal((301, 30)).astype(dtype)
    b = rng.standard_normal((30, 70)).astype(dtype)
    monkeypatch.setattr(products, "THREADS_FROM", 0)  # (threads even for this small product)
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    whole = rows_times(a, b)
    for block in (1, 2, 7, 64, 100, 150):
        parts = np.concatenate([rows_times(a[i:i + block], b) for i in range(0, len(a), block)])
        assert parts.tobytes() == whole.tobytes(), block
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    assert rows_times(a, b).tobytes() == whole.tobytes()
    wide = np.zeros((301, 60), dtype)
    wide[:, ::2] = a
    assert rows_times(wide[:, ::2], np.asfortranarray(b)).tobytes() == whole.tobytes()
    reference = a.astype(np.float64) @ b.astype(np.float64)
    tolerance = 30 * np.finfo(dtype).eps * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))
    assert (np.abs(whole - reference) <= tolerance).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_out_is_written_and_nan_and_inf_propagate(rng, dtype):
    a = rng.standard_normal((6, 5)).astype(dtype)
    b = rng.standard_normal((5, 19)).astype(dtype)
    a[1, 2], a[3, 0], b[4, 7] = np.nan, np.inf, -np.inf
    out = np.full((6, 19), 7.0, dtype)
    assert rows_times(a, b, out=out) is out
    expected = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(expected))
    strided = np.zeros((6, 38), dtype)
    rows_times(a, b, out=strided[:, ::2])
    np.testing.assert_array_equal(strided[:, ::2], out)
    assert not strided[:, 1::2].any()


@pytest.mark.parametrize("shape", [(0, 3, 4), (3, 0, 4), (3, 4, 0)])
def test_empty_products(shape):
    n, d, k = shape
    out = rows_times(np.ones((n, d), np.float32), np.ones((d, k), np.float32))
    assert out.shape == (n, k) and out.dtype == np.float32 and not out.any()
