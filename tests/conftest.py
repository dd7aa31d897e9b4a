import os
import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded from the test's name: new data for each case, reproducible."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def assert_close(actual, expected, dtype, what="", rtol32=2e-5):
    """Equal to the float64 reference within 2e-5 (float32; ``rtol32``) or 1e-10
    (float64), relative to the largest reference magnitude (element-wise
    cancellation in float32 makes a pure element-wise relative test meaningless)."""
    rtol = rtol32 if np.dtype(dtype) == np.float32 else 1e-10
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=f"{what}: non-finite values")
    scale = np.abs(expected[finite]).max(initial=0.0)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=rtol * scale, err_msg=what)


def loss_inputs(rng, loss, activation, shape, dtype):
    """pred (pre-activation) and target for a loss of the table; for a loss whose domain is [0, 1] the
    activated pred lies inside it (drawn again where the activation put it outside)."""
    import fastae
    from reference import activation as activated
    pred = rng.normal(0.0, 2.0, shape)
    if fastae.LOSSES[loss].domain:
        for _ in range(200):
            y = activated(activation, pred)
            bad = (y < 0.01) | (y > 0.99)  # (float32 1 - y keeps two digits more than at 0.999)
            if not bad.any():
                break
            pred[bad] = rng.uniform(-3.0, 3.0, int(bad.sum()))
        else:
            raise ValueError(f"{activation} gives no values in [0, 1] for {loss}")
    return pred.astype(dtype), rng.uniform(0.0, 1.0, shape).astype(dtype)


def loss_params(loss):
    """Parameters of a loss of the table other than its defaults: 0.7 times each, at least 0.1 (a smaller
    scale, such as Charbonnier's eps = 1e-3, makes the float32 gradient ill-conditioned near y = t, for any
    implementation, beyond the tests' 2e-5)."""
    import fastae
    return {p.name: max(0.7 * p.default, 0.1) for p in fastae.LOSSES[loss].params}


def cuda_runtime():
    """CuPy, or the host emulator under FASTAE_CUDA_EMULATOR; None without either."""
    import fastae.cuda
    try:
        return fastae.cuda.cupy()
    except ImportError:
        return None


def _cuda_device_count():
    try:
        return cuda_runtime().cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver, no device
        return 0


def _torch_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CuPy and a CUDA device (or the host emulator), those marked
    ``torch_cuda`` torch CUDA tensors; without them they are skipped, saying why. Tests marked ``alone`` need
    the machine to themselves (a helper at idle priority, say): in a pytest-xdist worker, whose neighbours
    keep the other cores busy, they are skipped; ``python -m pytest tests -m alone`` runs them."""
    skip_gpu = pytest.mark.skip(reason="needs CuPy and a CUDA device (or FASTAE_CUDA_EMULATOR=1)")
    skip_torch = pytest.mark.skip(reason="needs torch CUDA tensors: a CUDA device (the emulator runs CuPy arrays only)")
    skip_alone = pytest.mark.skip(reason="needs the machine to itself: run by `python -m pytest tests -m alone`")
    gpu, torch_cuda = _cuda_device_count() > 0, _torch_cuda()
    in_worker = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    for item in items:
        if "alone" in item.keywords and in_worker:
            item.add_marker(skip_alone)
        if "gpu" in item.keywords and not gpu:
            item.add_marker(skip_gpu)
        elif "torch_cuda" in item.keywords and not torch_cuda:
            item.add_marker(skip_torch)
