"""fastae.dask against the in-memory calls, on a LocalCluster of two worker processes: equal bit for bit
whatever the blocks (a last block of one row, blocks that cut kernel chunks), lazy, checked at once."""
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastae as fa

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
fd = pytest.importorskip("fastae.dask")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster, distributed.Client(cluster) as c:
        yield c


def blocks(a, rows, other=None):
    """``a`` as a Dask array in blocks of ``rows`` along the first axis (and ``other``: {axis: size})."""
    other = other or {}
    return da.from_array(a, chunks=(rows,) + tuple(other.get(i, -1) for i in range(1, a.ndim)))


def dictionary(rng, d, k, dtype):
    D = rng.standard_normal((d, k))
    return (D / np.linalg.norm(D, axis=0)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d, k, alpha", [(30, 70, 0.5),   # more atoms than dimensions: coordinate descent
                                         (64, 48, 0.5),   # well conditioned: FISTA and exact solves
                                         (20, 20, 0.1)])
def test_ista_equals_in_memory_bit_for_bit(client, rng, dtype, d, k, alpha):
    x = rng.standard_normal((301, d)).astype(dtype)
    D = dictionary(rng, d, k, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fa.ConvergenceWarning)
        expected = fa.ista(x, D, alpha, n_iter=200)
        for rows in (100, 37, 301):  # 301 = 3 * 100 + 1: a last block of one signal
            got = fd.ista(blocks(x, rows, {1: 7}), D, alpha, n_iter=200)
            assert isinstance(got, da.Array) and got.shape == (301, k)
            np.testing.assert_array_equal(client.compute(got).result(), expected)
        one = fd.ista(x[5], D, alpha, n_iter=200).compute()
        np.testing.assert_array_equal(one, fa.ista(x[5], D, alpha, n_iter=200))
        np.testing.assert_array_equal(one, expected[5])  # a signal alone: as in the batch


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lasso_codes_and_dictionary_as_dask(client, rng, dtype):
    U = np.linalg.qr(rng.standard_normal((40, 24)))[0].astype(dtype)
    x = rng.standard_normal((203, 40)).astype(dtype)
    expected = fa.lasso_codes(x, U, 0.3)
    got = fd.lasso_codes(blocks(x, 50), da.from_array(U, chunks=(13, 11)), 0.3)
    np.testing.assert_array_equal(client.compute(got).result(), expected)
    D = dictionary(rng, 40, 60, dtype)
    got = fd.ista(blocks(x, 64), da.from_array(D, chunks=(20, 30)), 0.7)  # a Dask dictionary: one block
    np.testing.assert_array_equal(client.compute(got).result(), fa.ista(x, D, 0.7))


def test_the_dictionary_is_one_block_of_the_graph(rng):
    D = dictionary(rng, 16, 32, np.float64)
    codes = fd.ista(blocks(rng.standard_normal((1000, 16)), 100), D, 0.5)
    graph = dict(codes.__dask_graph__())
    holding = [key for key, task in graph.items() if np.array_equal(getattr(task, "value", task), D)]
    assert len(holding) == 1  # D stored once, not once per block of signals ...
    solves = [task for key, task in graph.items() if key[0].startswith("solve")]
    assert len(solves) == 10 and all(holding[0] in task.dependencies for task in solves)  # ... read by each


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_soft_threshold_number_per_atom_and_per_element(client, rng, dtype):
    c = rng.standard_normal((257, 33)).astype(dtype)
    lam_atom = rng.uniform(0, 1, 33).astype(dtype)
    lam_all = rng.uniform(0, 1, (257, 33)).astype(dtype)
    for lam in (0.4, lam_atom, lam_atom[None], lam_all):
        expected = fa.soft_threshold(c, lam)
        got = fd.soft_threshold(blocks(c, 60, {1: 10}), lam)
        np.testing.assert_array_equal(client.compute(got).result(), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_ssim_equals_in_memory_for_any_blocks(client, rng, dtype, padding):
    x = rng.uniform(0, 1, (23, 3, 37, 29)).astype(dtype)
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(dtype)
    for reduction in ("mean", "none"):
        for function in ("ssim", "ssim_loss"):
            expected = getattr(fa, function)(x, y, padding=padding, reduction=reduction, win_size=7)
            for rows in (1, 5):
                got = getattr(fd, function)(blocks(x, rows, {1: 1, 2: 20}), blocks(y, 4), padding=padding,
                                            reduction=reduction, win_size=7)
                assert got.shape == expected.shape and got.dtype == dtype
                np.testing.assert_array_equal(client.compute(got).result(), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss, reduction, weighted", [("mse", "mean", None), ("l1", "sum", "array"),
                                                       ("huber", "batchmean", "number"), ("bce", "mean", "array"),
                                                       ("gaussian_nll", "none", "array")])
def test_pixel_losses_equal_in_memory_for_any_blocks(client, rng, dtype, loss, reduction, weighted):
    shape = (43, 3, 31, 29)  # 115,971 values: blocks cut the kernel's 65,536-element chunks anywhere
    x = rng.uniform(0.05, 0.95, shape).astype(dtype)
    y = rng.uniform(0, 1, shape).astype(dtype)
    weight = {None: None, "number": 0.5, "array": rng.uniform(0, 2, (3, 1, 29)).astype(dtype)}[weighted]
    expected = getattr(fa, loss)(x, y, reduction=reduction, weight=weight)
    for rows in (1, 10):
        got = getattr(fd, loss)(blocks(x, rows, {3: 10}), blocks(y, 7), reduction=reduction, weight=weight)
        assert got.shape == np.shape(expected) and got.dtype == dtype
        np.testing.assert_array_equal(client.compute(got).result(), expected, err_msg=f"blocks of {rows}")


def test_pixel_loss_with_activation_and_params(client, rng):
    x = rng.standard_normal((40, 1000)).astype(np.float32)
    y = rng.uniform(0, 1, x.shape).astype(np.float32)
    expected = fa.bce(x, y, activation="sigmoid")
    np.testing.assert_array_equal(fd.bce(blocks(x, 3), y, activation="sigmoid").compute(), expected)
    expected = fa.huber(x, y, delta=0.3, reduction="sum")
    np.testing.assert_array_equal(fd.huber(blocks(x, 9), y, delta=0.3, reduction="sum").compute(), expected)


def test_blocks_of_the_other_byte_order_equal_native_ones(rng):
    """Big-endian blocks reached the kernels raw in the pixel losses' sums (a Numba TypingError)."""
    x = rng.uniform(0.05, 0.95, (6, 2, 9, 11)).astype(np.float32)
    y = rng.uniform(0, 1, x.shape).astype(np.float32)
    weight = rng.uniform(0, 2, x.shape).astype(np.float32)
    swapped = x.dtype.newbyteorder(">" if sys.byteorder == "little" else "<")
    for loss in ("mse", "bce"):
        expected = getattr(fa, loss)(x, y, weight=weight)
        got = getattr(fd, loss)(blocks(x.astype(swapped), 2), blocks(y.astype(swapped), 3),
                                weight=blocks(weight.astype(swapped), 4))
        np.testing.assert_array_equal(got.compute(), expected)


def test_lazy_and_checked_at_once(rng):
    x = da.from_array(rng.standard_normal((10, 8)), chunks=5)
    D = dictionary(rng, 8, 12, np.float64)
    with pytest.raises(ValueError, match="alpha"):
        fd.ista(x, D, -1.0)
    with pytest.raises(ValueError, match="n_iter"):
        fd.ista(x, D, 1.0, n_iter=0)
    with pytest.raises(ValueError, match="shape"):
        fd.ista(x, D[:5], 1.0)
    with pytest.raises(TypeError, match="mixed dtypes"):
        fd.ista(x, D.astype(np.float32), 1.0)
    with pytest.raises(ValueError, match="orthonormal"):
        fd.lasso_codes(x, D, 1.0)
    with pytest.raises(ValueError, match="lam"):
        fd.soft_threshold(x, -rng.uniform(0, 1, 8))
    with pytest.raises(ValueError, match="broadcast"):
        fd.soft_threshold(x, rng.uniform(0, 1, 3))
    images = da.from_array(rng.uniform(0, 1, (4, 1, 16, 16)), chunks=2)
    with pytest.raises(ValueError, match="reduction"):
        fd.ssim(images, images, reduction="sum")
    with pytest.raises(ValueError, match="win_size"):
        fd.ssim(images, images, win_size=4)
    with pytest.raises(ValueError, match="smaller than the window"):
        fd.ssim(images[..., :8, :8], images[..., :8, :8])
    with pytest.raises(ValueError, match="reduction"):
        fd.mse(images, images, reduction="max")
    with pytest.raises(ValueError, match="delta"):
        fd.huber(images, images, delta=-1.0)
    with pytest.raises(ValueError, match="shape"):
        fd.mse(images, images[:3])
    with pytest.raises(TypeError, match="must be a dask"):
        fd.mse([1.0], [1.0])
    bad = da.from_array(np.full((4, 1, 16, 16), 2.0), chunks=2)  # outside bce's domain: found when computed
    value = fd.bce(bad, images)
    with pytest.raises(ValueError, match="outside"):
        value.compute()


def test_import_fastae_never_needs_dask():
    code = ("import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None; import fastae, "
            "fastae.torch; print(fastae.mse.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
