"""pytest-benchmark suite for the sparse-code kernels, each beside its ceiling
(np.abs or np.add on the same data) and, for ista, scikit-learn.

    pytest benchmarks/test_sparse.py --benchmark-group-by=group --benchmark-columns=median,ops
"""
import warnings

import numpy as np
import pytest

import fastae as fa
from fastae.bench import LASSO_REGIMES

N = 1 << 24


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    c = rng.standard_normal(N).astype(np.float32)
    g = rng.standard_normal(N).astype(np.float32)
    return c, g, np.empty_like(c), np.empty_like(c)


@pytest.mark.parametrize("who", ["np.abs", "fastae"])
def test_soft_threshold(benchmark, data, who):
    c, g, out, mask = data
    benchmark.group = "soft_threshold into out, 2^24 float32"
    benchmark(np.abs, c, out=out) if who == "np.abs" else benchmark(fa.soft_threshold, c, 0.5, out=out)


@pytest.mark.parametrize("who", ["np.add", "fastae mask", "fastae l2 accumulate"])
def test_three_streams(benchmark, data, who):
    c, g, out, mask = data
    benchmark.group = "3 streams: soft_threshold + mask, l2_penalty accumulate_into, 2^24 float32"
    if who == "np.add":
        benchmark(np.add, c, g, out=out)
    elif who == "fastae mask":
        benchmark(fa.soft_threshold, c, 0.5, grad=True, out=out, mask_out=mask)
    else:
        benchmark(fa.l2_penalty, c, 1e-6, accumulate_into=g)


REGIMES = list(range(LASSO_REGIMES))


@pytest.mark.parametrize("who", ["sklearn lasso_cd", "fastae ista"])
@pytest.mark.parametrize("regime", REGIMES)
def test_ista(benchmark, regime, who):
    """Each regime of fastae.bench.lasso_problems (planted, dense Gaussian, Gaussian, DCT patches,
    overcomplete, all-zero, overcomplete with a small alpha) against scikit-learn's
    sparse_encode(lasso_cd, n_jobs=1)."""
    sparse_encode = pytest.importorskip("sklearn.decomposition").sparse_encode
    from fastae.bench import lasso_problems
    name, x, d, alpha = lasso_problems()[regime]
    benchmark.group = f"LASSO codes, {name}: {x.shape[0]} x {x.shape[1]}, {d.shape[1]} atoms, float64"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if who == "fastae ista":
            benchmark(fa.ista, x, d, alpha)
        else:
            benchmark(sparse_encode, x, d.T, algorithm="lasso_cd", alpha=alpha / 2, n_jobs=1)
