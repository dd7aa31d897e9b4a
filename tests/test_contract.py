"""The backend contract (fastae/backends.md), run against every backend at hand with the same references:
the CPU always, the CUDA backend on a device or under FASTAE_CUDA_EMULATOR."""
import numpy as np
import pytest

import fastae
from conftest import assert_close, cuda_runtime, loss_inputs, loss_params
from fastae._neutral import gaussian_window
from reference import activation as reference_activation
from reference import pointwise as reference_pointwise
from reference import ssim_same_padding


def _backends():
    import fastae.cpu.backend
    found = [pytest.param((fastae.cpu.backend, np), id="cpu")]
    cupy = cuda_runtime()
    try:
        if cupy is not None and cupy.cuda.runtime.getDeviceCount() > 0:
            import fastae.cuda.backend
            found.append(pytest.param((fastae.cuda.backend, cupy), id="cuda", marks=pytest.mark.gpu))
    except Exception:
        pass
    return found


@pytest.fixture(params=_backends())
def backend(request):
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pointwise_every_loss_and_activation(backend, rng, dtype):
    module, xp = backend
    for loss, row in fastae.LOSSES.items():
        params = loss_params(loss)
        for activation in fastae.ACTIVATIONS:
            pred, target = loss_inputs(rng, loss, activation, (3, 41), dtype)
            grad, values = xp.empty(pred.shape, dtype), xp.empty(pred.shape, dtype)
            value, total, outside = module.pointwise(loss, row.kernel_fields(params), activation, 0.01,
                                                     xp.asarray(pred), xp.asarray(target), 0.5, grad, values,
                                                     1.0 / pred.size, 2.0 / pred.size)
            ref_value, ref_grad = reference_pointwise(loss, pred, target, weight=np.float64(0.5),
                                                      activation=activation, **params)
            what = f"{loss}/{activation}"
            assert int(outside) == 0, what
            assert_close(np.asarray(total.get() if hasattr(total, "get") else total) / pred.size, ref_value,
                         dtype, what)
            assert_close(_host(value), 2 * ref_value, dtype, what)
            assert_close(_host(grad), ref_grad, dtype, what + " grad")
            assert_close(_host(values), reference_pointwise(loss, pred, target, weight=np.float64(0.5),
                                                            activation=activation, reduction="none",
                                                            **params)[0], dtype, what + " values")


def _host(a):
    return np.asarray(a.get() if hasattr(a, "get") else a)


def test_pointwise_counts_values_outside_the_domain(backend):
    module, xp = backend
    pred = xp.asarray(np.array([0.5, 1.5, -0.25, 0.1], np.float32))
    value, _, outside = module.pointwise("bce", {}, "identity", 0.01, pred, xp.zeros(4, np.float32), None, None,
                                         None, 1.0, 1.0)
    assert int(outside) == 2 and np.isnan(_host(value))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activate(backend, rng, dtype):
    module, xp = backend
    z = (rng.standard_normal(1003) * 4).astype(dtype)
    for activation in fastae.ACTIVATIONS:
        y, dy = xp.empty(z.shape, dtype), xp.empty(z.shape, dtype)
        module.activate(activation, 0.05, xp.asarray(z), y, dy)
        assert_close(_host(y), reference_activation(activation, z, 0.05), dtype, activation)
        _, slope = reference_pointwise("l1", z, np.full(z.shape, -1e6), activation=activation, negative_slope=0.05,
                                       reduction="sum")  # d |act(z) + 1e6| / dz = act'(z)
        assert_close(_host(dy), slope, dtype, activation + " slope")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("win,pad", [(7, 0), (11, 5), (3, 1)])
def test_ssim_planes(backend, rng, dtype, win, pad):
    module, xp = backend
    x = rng.random((3, 29, 37)).astype(dtype)
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(dtype)
    grad = xp.empty(x.shape, dtype)
    sums = module.ssim_planes(xp.asarray(x), xp.asarray(y), gaussian_window(win, 1.5), pad, 1e-4, 9e-4, False,
                              xp.asarray(np.full(3, 1.0)), grad, False)
    if pad:
        ref, ref_grad = ssim_same_padding(x[:, None], y[:, None], win_size=win, reduction="none")
        positions = 29 * 37
    else:
        from test_ssim import ssim_reference, torch_reference
        ref, ref_grad = torch_reference(ssim_reference, x[:, None], y[:, None], reduction="none", win_size=win,
                                        data_range=1.0)
        positions = (29 - win + 1) * (37 - win + 1)
    assert_close(_host(sums), ref * positions, dtype, "sums")
    assert_close(_host(grad), ref_grad.reshape(x.shape) * positions, dtype, "grad", rtol32=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_soft_threshold_and_kl(backend, rng, dtype):
    module, xp = backend
    c = rng.standard_normal((40, 12)).astype(dtype)
    lam = rng.random(12).astype(dtype)
    out, mask = xp.empty(c.shape, dtype), xp.empty(c.shape, dtype)
    module.soft_threshold(xp.asarray(c), xp.asarray(lam), out, mask)
    np.testing.assert_array_equal(_host(out), np.where(np.abs(c) > lam, c - np.sign(c) * lam, 0).astype(dtype))
    np.testing.assert_array_equal(_host(mask), (np.abs(c) > lam).astype(dtype))
    h = rng.uniform(0.05, 0.95, (50, 6)).astype(dtype)
    grad = xp.empty(h.shape, dtype)
    value = module.kl_sparsity(xp.asarray(h), 0.1, 2.0, grad)
    m = h.astype(np.float64).mean(axis=0)
    assert_close(_host(value), 2.0 * np.sum(0.1 * np.log(0.1 / m) + 0.9 * np.log(0.9 / (1 - m))), dtype)
    assert_close(_host(grad), np.broadcast_to(2.0 * (-0.1 / m + 0.9 / (1 - m)) / 50, h.shape), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lasso_reaches_the_optimum(backend, rng, dtype):
    """An orthonormal dictionary (the closed form soft(x D, alpha / 2)), then general ones with fewer and
    with more atoms than dimensions (the optimality conditions)."""
    module, xp = backend
    d = np.linalg.qr(rng.standard_normal((16, 8)))[0]
    x = rng.standard_normal((30, 16))
    b = (x @ d).astype(dtype)
    codes, unfinished = module.lasso(xp.asarray(b), xp.asarray(np.eye(8, dtype=dtype)), 0.3, 500, 1e-12, True)
    exact = np.sign(x @ d) * np.maximum(np.abs(x @ d) - 0.15, 0)
    np.testing.assert_allclose(_host(codes), exact, atol=1e-5 if dtype == np.float32 else 1e-12)
    assert unfinished == 0
    for atoms in (10, 24):
        d = rng.standard_normal((16, atoms))
        d /= np.linalg.norm(d, axis=0)
        b, gram = x @ d, d.T @ d
        codes, unfinished = module.lasso(xp.asarray(b.astype(dtype)), xp.asarray(gram.astype(dtype)), 0.5, 5000,
                                         1e-6 if dtype == np.float32 else 1e-10, True)
        residual = b - _host(codes).astype(np.float64) @ gram
        z = _host(codes)
        assert unfinished == 0 and (z != 0).any() and (z == 0).any()
        on = np.abs(residual - 0.25 * np.sign(z))[z != 0].max()
        off = np.abs(residual)[z == 0].max()
        tolerance = 1e-3 if dtype == np.float32 else 1e-6
        assert on < 0.25 * tolerance and off < 0.25 * (1 + tolerance), (atoms, on, off)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_filter_axis_and_its_adjoint(backend, rng, dtype):
    """The window along each axis, zero or reflect padding, against np.pad; the adjoint by <F a, g> = <a, F^T g>."""
    module, xp = backend
    a = rng.standard_normal((3, 11, 6, 5)).astype(dtype)
    w = rng.random(5)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for axis in (1, 2, 3):
        for pad, reflect in ((0, False), (2, False), (2, True), (1, True)):
            out = _host(module.filter_axis(xp.asarray(a), w.astype(dtype), axis, pad, reflect))
            widths = [(0, 0)] * a.ndim
            widths[axis] = (pad, pad)
            padded = np.pad(a.astype(np.float64), widths, mode="reflect" if reflect else "constant")
            m = out.shape[axis]
            expected = sum(w[t] * np.take(padded, np.arange(t, t + m), axis=axis) for t in range(w.size))
            np.testing.assert_allclose(out, expected, rtol=0, atol=tol * np.abs(expected).max())
            g = rng.standard_normal(out.shape).astype(dtype)
            back = _host(module.filter_axis_adjoint(xp.asarray(g), w.astype(dtype), axis, pad, reflect, a.shape[axis]))
            lhs, rhs = float((out.astype(np.float64) * g).sum()), float((a.astype(np.float64) * back).sum())
            assert abs(lhs - rhs) <= tol * 10 * abs(lhs), (axis, pad, reflect)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spatial", [(16, 18), (17, 9), (1, 2), (5, 6, 7)], ids=str)
def test_avg_pool_and_its_adjoint(backend, rng, dtype, spatial):
    """MS-SSIM's pooling against torch's avg_pool2d/3d (odd sides padded, the padding counted) and its
    adjoint against torch's autograd, on contiguous planes and on a non-contiguous view; every
    backend adds the same corners in the same order, so the CPU's kernel equals the strided passes."""
    import torch
    from fastae import _neutral
    module, xp = backend
    pool = torch.nn.functional.avg_pool2d if len(spatial) == 2 else torch.nn.functional.avg_pool3d
    pads = _neutral.pool_pads(*spatial)
    wide = rng.standard_normal((4,) + spatial[:-1] + (2 * spatial[-1],)).astype(dtype)
    for a in (np.ascontiguousarray(wide[..., ::2]), wide[..., ::2]):
        A = torch.from_numpy(a.astype(np.float64))[:, None].requires_grad_()
        ref = pool(A, 2, padding=pads)
        got = _host(module.avg_pool(xp.asarray(a), pads))
        assert_close(got, ref.detach().numpy()[:, 0], dtype, "pooled")
        np.testing.assert_array_equal(got, _neutral.avg_pool(a, pads))
        g = rng.standard_normal(got.shape).astype(dtype)
        ref.backward(torch.from_numpy(g.astype(np.float64))[:, None])
        out = rng.standard_normal(a.shape).astype(dtype)
        scale = rng.random(a.shape[0])
        expected = out * scale.reshape((-1,) + (1,) * len(spatial)) + A.grad.numpy()[:, 0]
        device_out = xp.asarray(out)
        assert module.avg_pool_adjoint(xp.asarray(g), pads, device_out, xp.asarray(scale)) is None
        assert_close(_host(device_out), expected, dtype, "adjoint")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_general_path_on_every_backend(backend, rng, dtype):
    """Volumes with reflect padding and eps, both gradients, through the public API on the backend's arrays:
    the same numbers as on the CPU in float64."""
    module, xp = backend
    x = rng.random((1, 2, 9, 12, 11))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    expected = fastae.ssim(x, y, win_size=5, padding="reflect", eps=1e-6, grad=True, target_grad=True)
    got = fastae.ssim(xp.asarray(x.astype(dtype)), xp.asarray(y.astype(dtype)), win_size=5, padding="reflect",
                      eps=1e-6, grad=True, target_grad=True)
    for a, b, what in zip(got, expected, ("value", "grad", "target grad")):
        assert_close(_host(a), b, dtype, what, rtol32=1e-4)


def test_the_general_path_in_half_precision_on_a_device(backend, rng):
    module, xp = backend
    if xp is np:
        pytest.skip("float16 runs on CUDA devices only")
    x = rng.random((1, 2, 9, 12, 11))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    expected = fastae.ssim(x, y, win_size=5, padding="reflect", grad=True, target_grad=True)
    got = fastae.ssim(xp.asarray(x.astype(np.float16)), xp.asarray(y.astype(np.float16)), win_size=5,
                      padding="reflect", grad=True, target_grad=True)
    assert got.grad.dtype == got.target_grad.dtype == got.loss.dtype == np.float16
    for a, b, what in zip(got, expected, ("value", "grad", "target grad")):
        np.testing.assert_allclose(_host(a).astype(np.float64), b, rtol=0, atol=5e-3 * np.abs(b).max(), err_msg=what)
    m = fastae.ssim_map(xp.asarray(x.astype(np.float16)), xp.asarray(y.astype(np.float16)), win_size=5)
    assert m.dtype == np.float16 and m.shape == (1, 2, 5, 8, 7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_both_gradients_of_the_fused_path_on_every_backend(backend, rng, dtype):
    module, xp = backend
    x = rng.random((2, 3, 21, 26))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    for padding in ("valid", "same"):
        expected = fastae.mixed_loss(x, y, alpha=0.2, padding=padding, grad=True, target_grad=True)
        got = fastae.mixed_loss(xp.asarray(x.astype(dtype)), xp.asarray(y.astype(dtype)), alpha=0.2, padding=padding,
                                grad=True, target_grad=True)
        for a, b, what in zip(got, expected, ("value", "grad", "target grad")):
            assert_close(_host(a), b, dtype, f"{padding} {what}", rtol32=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pointwise_target_gradient_in_the_same_pass(backend, rng, dtype):
    """target_grad = scale * w * d loss / d target, every loss and activation, against torch autograd through
    the loss's eager PyTorch form (float64); the gradient in pred unchanged by asking for it, to rounding (the
    compiler schedules the loop anew: huber after softplus in float32 moves by a few ulps on the CPU)."""
    import torch
    from fastae._table import torch_peer
    module, xp = backend
    for loss, row in fastae.LOSSES.items():
        params = loss_params(loss)
        for activation in ("identity", "sigmoid", "softplus"):  # (the target's slope is the loss's: a few suffice)
            pred, target = loss_inputs(rng, loss, activation, (3, 41), dtype)
            t = torch.tensor(target, dtype=torch.float64, requires_grad=True)
            (0.5 * torch_peer(loss, activation, **params)(torch.tensor(pred, dtype=torch.float64), t)).backward()
            grad, tgrad, plain = (xp.empty(pred.shape, dtype) for _ in range(3))
            value, total, _ = module.pointwise(loss, row.kernel_fields(params), activation, 0.01, xp.asarray(pred),
                                               xp.asarray(target), 0.5, grad, None, 1.0 / pred.size, 1.0,
                                               target_grad=tgrad)
            module.pointwise(loss, row.kernel_fields(params), activation, 0.01, xp.asarray(pred), xp.asarray(target),
                             0.5, plain, None, 1.0 / pred.size, 1.0)
            assert_close(_host(tgrad), t.grad.numpy(), dtype, f"{loss}/{activation} target grad")
            np.testing.assert_allclose(_host(grad), _host(plain), rtol=1e-5 if dtype == np.float32 else 1e-14, atol=0)
