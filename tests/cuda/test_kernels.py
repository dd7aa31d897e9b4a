"""The CUDA backend against the float64 references, the CPU backend and torch on CUDA.

Every test here carries the ``gpu`` marker: without CuPy and a CUDA device it
is skipped (tests/conftest.py), so CI on machines without a GPU stays green
while the kernels are compile-checked there by ``python -m fastae.cuda.check``.
"""
import warnings

import numpy as np
import pytest

import fastae as fa
import fastae.cuda
from reference import pointwise as reference_pointwise
from conftest import assert_close, cuda_runtime, loss_inputs, loss_params

pytestmark = pytest.mark.gpu
cp = cuda_runtime() or pytest.skip("needs CuPy (or FASTAE_CUDA_EMULATOR=1)", allow_module_level=True)
torch = pytest.importorskip("torch")

LOSSES = [(loss, loss_params(loss)) for loss in fa.LOSSES]
ACTIVATIONS = list(fa.ACTIVATIONS)
REDUCTIONS = ["mean", "sum", "none", "batchmean"]
_inputs = loss_inputs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss,params", LOSSES)
def test_pointwise_matches_reference_and_cpu(rng, loss, params, activation, dtype):
    shape = (5, 3, 67, 41)  # odd: a vector body and a scalar tail
    pred, target = _inputs(rng, loss, activation, shape, dtype)
    weight = rng.random((3, 1, 41)).astype(dtype)
    for reduction in REDUCTIONS:
        for w in (None, 0.5, weight):
            value, grad = getattr(fa, loss)(cp.asarray(pred), cp.asarray(target), reduction=reduction, weight=None if
                                            w is None else (w if np.isscalar(w) else cp.asarray(w)),
                                            activation=activation, grad=True, **params)
            assert isinstance(value, cp.ndarray) and isinstance(grad, cp.ndarray)
            assert value.dtype == dtype and grad.dtype == dtype
            ref_w = None if w is None else np.broadcast_to(w, shape)
            ref_value, ref_grad = reference_pointwise(loss, pred, target, reduction=reduction, weight=ref_w,
                                                      activation=activation, **params)
            what = f"{loss}/{activation}/{reduction}/{type(w).__name__}"
            assert_close(cp.asnumpy(value), ref_value, dtype, what)
            assert_close(cp.asnumpy(grad), ref_grad, dtype, what + " grad")
            cpu_value, cpu_grad = getattr(fa, loss)(pred, target, reduction=reduction, weight=w if w is None or
                                                    np.isscalar(w) else weight, activation=activation, grad=True,
                                                    **params)
            assert_close(cp.asnumpy(grad), cpu_grad, dtype, what + " vs cpu")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pointwise_unaligned_views_out_and_determinism(rng, dtype):
    base = rng.standard_normal(100_003).astype(dtype)
    pred = cp.asarray(base)[1:]        # 4 or 8 bytes off a 16-byte boundary: the scalar path
    target = cp.asarray(rng.random(100_002).astype(dtype))
    out = cp.empty_like(target)
    value, grad = fa.bce(pred, target, activation="sigmoid", grad=True, out=out)
    assert grad is out
    ref_value, ref_grad = reference_pointwise("bce", base[1:], cp.asnumpy(target), activation="sigmoid")
    assert_close(cp.asnumpy(value), ref_value, dtype)
    assert_close(cp.asnumpy(out), ref_grad, dtype)
    again = fa.bce(pred, target, activation="sigmoid")
    assert cp.asnumpy(again).tobytes() == cp.asnumpy(value).tobytes()  # bit-identical, run after run
    strided = cp.asarray(rng.standard_normal((64, 80)).astype(dtype))[:, ::2]
    t = cp.asarray(rng.random((64, 40)).astype(dtype))
    ref = reference_pointwise("mse", cp.asnumpy(strided), cp.asnumpy(t))
    value, grad = fa.mse(strided, t, grad=True)
    assert_close(cp.asnumpy(value), ref[0], dtype)
    assert_close(cp.asnumpy(grad), ref[1], dtype)


def test_pointwise_nan_and_out_of_domain():
    pred = cp.asarray(np.array([0.5, np.nan, 0.2, 1.5], np.float32))
    target = cp.asarray(np.array([0.0, 1.0, 0.5, 1.0], np.float32))
    value, grad = fa.mse(pred, target, grad=True)
    assert np.isnan(float(value)) and np.isnan(cp.asnumpy(grad)[1]) and np.isfinite(cp.asnumpy(grad)[[0, 2, 3]]).all()
    assert np.isnan(float(fa.bce(pred[[0, 2, 3]], target[[0, 2, 3]])))  # 1.5 is no probability: NaN, no raise
    per = cp.asnumpy(fa.bce(pred[[0, 2, 3]], target[[0, 2, 3]], reduction="none"))
    assert np.isfinite(per[:2]).all() and np.isnan(per[2])


@pytest.mark.torch_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("loss,activation", [("mse", "identity"), ("l1", "tanh"), ("bce", "sigmoid"),
                                             ("mse", "sigmoid")])
def test_half_precision_through_torch(rng, loss, activation, dtype):
    tdtype = getattr(torch, dtype)
    pred = torch.tensor(rng.standard_normal((7, 3, 33, 35)), dtype=tdtype, device="cuda")
    target = torch.tensor(rng.random((7, 3, 33, 35)), dtype=tdtype, device="cuda")
    value, grad = getattr(fa, loss)(pred, target, activation=activation, grad=True)
    assert value.dtype == tdtype and grad.dtype == tdtype and grad.device == pred.device
    ref_value, ref_grad = reference_pointwise(loss, pred.double().cpu().numpy(), target.double().cpu().numpy(),
                                              activation=activation)
    rtol = 1e-2 if dtype == "bfloat16" else 2e-3  # the result's own rounding; sums accumulate in float32
    assert_close(value.double().cpu().numpy(), ref_value, np.float32, loss, rtol32=rtol)
    # Each gradient element is the float64 reference rounded to the result's format, within rtol or one step of
    # its smallest spacing: a mean's gradient is ~1e-5 here, where float16 is subnormal (steps of 2^-24).
    expected = torch.from_numpy(ref_grad).to(tdtype).double().numpy()
    tiny = torch.finfo(tdtype).smallest_normal * torch.finfo(tdtype).eps
    np.testing.assert_allclose(grad.double().cpu().numpy(), expected, rtol=rtol,
                               atol=max(rtol * np.abs(expected).max(), tiny), err_msg=loss + " grad")


@pytest.mark.torch_cuda
def test_torch_cuda_tensors_and_modules_match_torch(rng):
    import fastae.torch as ft
    import torch.nn.functional as F
    x = torch.tensor(rng.standard_normal((4, 3, 40, 48)), dtype=torch.float32, device="cuda", requires_grad=True)
    t = torch.tensor(rng.random((4, 3, 40, 48)), dtype=torch.float32, device="cuda")
    for ours, theirs in [(ft.mse_loss, F.mse_loss), (ft.l1_loss, F.l1_loss),
                         (ft.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits)]:
        (g_ours,) = torch.autograd.grad(ours(x, t), x)
        (g_theirs,) = torch.autograd.grad(theirs(x, t), x)
        assert g_ours.device == x.device
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-8)
    compiled = torch.compile(lambda a, b: ft.mse_loss(a, b), fullgraph=True)
    torch.testing.assert_close(compiled(x, t), F.mse_loss(x, t), rtol=1e-6, atol=0)


def test_respects_the_current_stream(rng):
    pred = cp.asarray(rng.standard_normal(1 << 20).astype(np.float32))
    target = cp.asarray(rng.random(1 << 20).astype(np.float32))
    expected = cp.asnumpy(fa.mse(pred, target))
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        value = fa.mse(pred, target)
    stream.synchronize()
    assert cp.asnumpy(value).tobytes() == expected.tobytes()


@pytest.mark.torch_cuda
def test_respects_torch_current_stream(rng):
    pred = cp.asarray(rng.standard_normal(1 << 20).astype(np.float32))
    target = cp.asarray(rng.random(1 << 20).astype(np.float32))
    expected = cp.asnumpy(fa.mse(pred, target))
    torch_stream = torch.cuda.Stream()
    with torch.cuda.stream(torch_stream):
        tp, tt = torch.as_tensor(pred, device="cuda"), torch.as_tensor(target, device="cuda")
        tv = fa.mse(tp, tt)
    torch_stream.synchronize()
    assert tv.cpu().numpy().tobytes() == expected.tobytes()


def test_errors_on_mixed_kinds_and_dtypes():
    a = cp.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="mixed array types: pred is cupy, target is numpy"):
        fa.mse(a, np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="mixed dtypes: target is float64, pred is float32"):
        fa.mse(a, cp.zeros((2, 3), np.float64))
    with pytest.raises(TypeError, match="pred must be float32, float64, float16 or bfloat16, got int32"):
        fa.mse(cp.zeros(3, np.int32), cp.zeros(3, np.int32))


@pytest.mark.slow
def test_indexing_beyond_2_to_the_31():
    if fastae.cuda.EMULATOR:
        pytest.skip("2^31 elements: too slow to emulate")
    n = (1 << 31) + 17
    pred = cp.ones(n, np.float16)
    target = cp.zeros(n, np.float16)
    value, grad = fa.mse(pred, target, reduction="sum", grad=True)
    assert float(value) == float(np.float16(n))  # every element counted once
    assert float(grad[-1]) == 2.0 and float(grad[(1 << 31) + 3]) == 2.0 and float(grad[0]) == 2.0


# ---------------------------------------------------------------- SSIM family
SSIM_CASES = [((2, 3, 37, 53), 11, "valid"), ((3, 1, 29, 31), 7, "same"), ((45, 40), 11, "same"),
              ((1, 2, 19, 23), 3, "valid")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,win,padding", SSIM_CASES)
def test_ssim_matches_cpu(rng, shape, win, padding, dtype):
    x = rng.random(shape).astype(dtype)
    y = np.clip(x + 0.1 * rng.standard_normal(shape), 0, 1).astype(dtype)
    for fn in (fa.ssim, fa.ssim_loss):
        for reduction in ("mean", "none"):
            v, g = fn(cp.asarray(x), cp.asarray(y), win_size=win, padding=padding, reduction=reduction, grad=True)
            rv, rg = fn(x, y, win_size=win, padding=padding, reduction=reduction, grad=True)
            assert_close(cp.asnumpy(v), rv, dtype, f"{fn.__name__} {reduction}")
            assert_close(cp.asnumpy(g), rg, dtype, f"{fn.__name__} {reduction} grad", rtol32=1e-4)
    v, g = fa.mixed_loss(cp.asarray(x), cp.asarray(y), alpha=0.3, win_size=win, padding=padding, grad=True)
    rv, rg = fa.mixed_loss(x, y, alpha=0.3, win_size=win, padding=padding, grad=True)
    assert_close(cp.asnumpy(v), rv, dtype, "mixed")
    assert_close(cp.asnumpy(g), rg, dtype, "mixed grad", rtol32=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_identical_images_give_exactly_one_and_a_zero_gradient(rng, dtype):
    for x in (rng.random((2, 3, 37, 45)), 0.9 + 0.01 * rng.random((2, 3, 37, 45)), np.full((1, 2, 40, 33), 0.7)):
        x = cp.asarray(x.astype(dtype))
        for padding in ("valid", "same"):
            value, grad = fa.ssim(x, x.copy(), grad=True, padding=padding)
            assert float(value) == 1.0 and not bool(grad.any())


@pytest.mark.parametrize("dtype,data_range", [(np.float32, 1e30), (np.float32, 1e-30), (np.float64, 1e-250)])
def test_ssim_and_mixed_loss_at_extreme_data_ranges_match_cpu(rng, dtype, data_range):
    """The device kernels see the images brought near 1 by a power of two (see fastae.ssim._Images): values as
    at data_range 1, gradients times 1 / data_range (and the mixed loss's L1 term on the images as given)."""
    x = rng.random((2, 3, 27, 30))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    xs, ys = (x * data_range).astype(dtype), (y * data_range).astype(dtype)
    for fn, options in ((fa.ssim_loss, {}), (fa.ssim_loss, {"padding": "same"}), (fa.mixed_loss, {"alpha": 0.3})):
        value, grad, target_grad = fn(cp.asarray(xs), cp.asarray(ys), data_range=data_range, grad=True,
                                      target_grad=True, **options)
        expected = fn(xs, ys, data_range=data_range, grad=True, target_grad=True, **options)
        assert np.isfinite(cp.asnumpy(grad)).all()
        for got, want in zip((value, grad, target_grad), expected):
            got, want = np.asarray(cp.asnumpy(got), np.float64), np.asarray(want, np.float64)
            assert_close(got / np.abs(want).max(), want / np.abs(want).max(), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ms_ssim_matches_cpu(rng, dtype):
    x = rng.random((2, 3, 181, 171)).astype(dtype)
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1).astype(dtype)
    v, g = fa.ms_ssim(cp.asarray(x), cp.asarray(y), grad=True)
    rv, rg = fa.ms_ssim(x, y, grad=True)
    assert_close(cp.asnumpy(v), rv, dtype, "ms_ssim")
    assert_close(cp.asnumpy(g), rg, dtype, "ms_ssim grad", rtol32=1e-4)


@pytest.mark.torch_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_ssim_half_precision_and_pytorch_msssim(rng, dtype):
    from pytorch_msssim import ms_ssim, ssim
    x64 = rng.random((4, 3, 180, 180))
    y64 = np.clip(x64 + 0.1 * rng.standard_normal(x64.shape), 0, 1)
    tdtype = getattr(torch, dtype)
    x = torch.tensor(x64, dtype=tdtype, device="cuda")
    y = torch.tensor(y64, dtype=tdtype, device="cuda")
    xd = x.double().requires_grad_()
    ref = ssim(xd, y.double(), data_range=1.0)
    (ref_grad,) = torch.autograd.grad(ref, xd)
    v, g = fa.ssim(x, y, grad=True)
    assert v.dtype == tdtype and g.dtype == tdtype
    assert abs(float(v) - float(ref)) < (1e-2 if dtype == "bfloat16" else 2e-3)
    assert_close(g.double().cpu().numpy(), ref_grad.cpu().numpy(), np.float32, "grad", rtol32=2e-2)
    ms = fa.ms_ssim(x, y)
    assert abs(float(ms) - float(ms_ssim(x.double(), y.double(), data_range=1.0))) < 1e-2


# ---------------------------------------------------------------- sparse
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_operators_match_cpu(rng, dtype):
    c = rng.standard_normal((301, 48)).astype(dtype)
    for lam in (0.4, rng.random(48).astype(dtype), rng.random((301, 48)).astype(dtype)):
        device_lam = lam if np.isscalar(lam) else cp.asarray(lam)
        codes, mask = fa.soft_threshold(cp.asarray(c), device_lam, grad=True)
        ref_codes, ref_mask = fa.soft_threshold(c, lam, grad=True)
        assert_close(cp.asnumpy(codes), ref_codes, dtype)
        np.testing.assert_array_equal(cp.asnumpy(mask), ref_mask)
    v, g = fa.l1_penalty(cp.asarray(c), 0.3, grad=True)
    rv, rg = fa.l1_penalty(c, 0.3, grad=True)
    assert_close(cp.asnumpy(v), rv, dtype)
    assert_close(cp.asnumpy(g), rg, dtype)
    acc = cp.asarray(c.copy())
    v = fa.l2_penalty(cp.asarray(c), 0.2, accumulate_into=acc)
    assert_close(cp.asnumpy(v), fa.l2_penalty(c, 0.2), dtype)
    assert_close(cp.asnumpy(acc), c + 0.4 * c, dtype)
    h = rng.uniform(0.01, 0.99, (200, 48)).astype(dtype)
    v, g = fa.kl_sparsity(cp.asarray(h), 0.05, beta=2.0, grad=True)
    rv, rg = fa.kl_sparsity(h, 0.05, beta=2.0, grad=True)
    assert_close(cp.asnumpy(v), rv, dtype)
    assert_close(cp.asnumpy(g), rg, dtype)
    assert np.isnan(float(fa.kl_sparsity(cp.asarray(np.full((3, 2), 1.5, dtype)), 0.1)))


@pytest.mark.filterwarnings("ignore::fastae.ConvergenceWarning")  # float32 codes cannot settle to tol=1e-10
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lasso_and_ista_match_cpu(rng, dtype):
    q, _ = np.linalg.qr(rng.standard_normal((64, 48)))
    x = rng.standard_normal((500, 64)).astype(dtype)
    assert_close(cp.asnumpy(fa.lasso_codes(cp.asarray(x), cp.asarray(q.astype(dtype)), 0.5)),
                 fa.lasso_codes(x, q.astype(dtype), 0.5), dtype)
    d = rng.standard_normal((64, 48)).astype(dtype)
    d /= np.linalg.norm(d, axis=0)

    def objective(z):
        return np.sum((x - z @ d.T) ** 2, axis=1) + 0.2 * np.abs(z).sum(axis=1)

    z_gpu = cp.asnumpy(fa.ista(cp.asarray(x), cp.asarray(d), 0.2, n_iter=2000, tol=1e-10))
    z_cpu = fa.ista(x, d, 0.2, n_iter=2000, tol=1e-10)
    gap = (objective(z_gpu.astype(np.float64)) - objective(z_cpu.astype(np.float64))) / objective(z_cpu)
    assert gap.max() < (1e-5 if dtype == np.float32 else 1e-8)


@pytest.mark.parametrize("dtype,scale", [(np.float32, 1e30), (np.float32, 1e-25), (np.float64, 1e250)])
def test_ista_at_extreme_scales_matches_cpu(rng, dtype, scale):
    """ista rescales x D and D by powers of two before the solver on either backend: codes(s x, D, s alpha)
    = s codes(x, D, alpha) at scales whose squares overflow or underflow."""
    d = rng.standard_normal((24, 16))
    d /= np.linalg.norm(d, axis=0)
    x = rng.standard_normal((40, 24))
    unit = fa.ista(x, d, 0.2, n_iter=2000)
    xs, ds = (x * scale).astype(dtype), d.astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-13  # (FISTA's codes are as exact as its stopping rule)
    codes = cp.asnumpy(fa.ista(cp.asarray(xs), cp.asarray(ds), 0.2 * scale, n_iter=5000, tol=tol))
    assert codes.dtype == dtype and np.isfinite(codes).all()
    np.testing.assert_allclose(codes / scale, unit, rtol=0, atol=1e-4 if dtype == np.float32 else 1e-9)


def test_empty_inputs_behave_as_on_the_cpu():
    empty = cp.zeros((0, 5), cp.float32)
    assert np.isnan(float(fa.mse(empty, empty))) and float(fa.mse(empty, empty, reduction="sum")) == 0
    d = cp.asarray(np.eye(5, 3))
    assert fa.ista(cp.zeros((0, 5)), d, 0.1).shape == (0, 3)
    images = cp.zeros((0, 3, 16, 16), cp.float32)
    value, grad = fa.ssim_loss(images, images, grad=True)
    assert np.isnan(float(value)) and grad.shape == images.shape


def test_ista_warns_when_steps_run_out(rng):
    d = rng.standard_normal((16, 8))
    x = cp.asarray(rng.standard_normal((10, 16)))
    with pytest.warns(fa.ConvergenceWarning, match="ista: 10 of 10 signals still moved"):
        fa.ista(x, cp.asarray(d), 0.1, n_iter=2, tol=0.0)
    x[3, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        codes = fa.ista(x, cp.asarray(d), 0.1, n_iter=5000)
    assert cp.isnan(codes[3]).all() and cp.isfinite(codes[[0, 1, 2, 4]]).all()


# ---------------------------------------------------------------- float16 arrays, bfloat16 bits, every instance
@pytest.mark.parametrize("loss,params", LOSSES)
def test_float16_arrays_every_activation(rng, loss, params):
    for activation in ACTIVATIONS:
        pred, target = _inputs(rng, loss, activation, (3, 5, 37), np.float16)
        for reduction in ("mean", "none"):
            value, grad = getattr(fa, loss)(cp.asarray(pred), cp.asarray(target), activation=activation,
                                            reduction=reduction, grad=True, **params)
            assert value.dtype == np.float16 and grad.dtype == np.float16
            ref_value, ref_grad = reference_pointwise(loss, pred.astype(np.float64), target.astype(np.float64),
                                                      reduction=reduction, activation=activation, **params)
            what = f"float16 {loss}/{activation}/{reduction}"
            assert_close(cp.asnumpy(value), ref_value, np.float32, what, rtol32=2e-3)  # the result's rounding
            assert_close(cp.asnumpy(grad), ref_grad, np.float32, what + " grad", rtol32=2e-3)


def test_float16_structural_and_sparse(rng):
    x = rng.random((2, 2, 45, 47)).astype(np.float16)
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float16)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    for padding in ("valid", "same"):
        for fn, kwargs in [(fa.ssim, {}), (fa.ssim_loss, {"reduction": "none"}), (fa.mixed_loss, {"alpha": 0.4})]:
            v, g = fn(cp.asarray(x), cp.asarray(y), padding=padding, grad=True, **kwargs)
            rv, rg = fn(x32, y32, padding=padding, grad=True, **kwargs)
            assert g.dtype == np.float16
            assert_close(cp.asnumpy(v), rv, np.float32, f"{fn.__name__} {padding}", rtol32=2e-3)
            assert_close(cp.asnumpy(g), rg, np.float32, f"{fn.__name__} {padding} grad", rtol32=5e-3)
    big = rng.random((1, 2, 101, 97)).astype(np.float16)
    other = np.clip(big + 0.1 * rng.standard_normal(big.shape), 0, 1).astype(np.float16)
    v, g = fa.ms_ssim(cp.asarray(big), cp.asarray(other), win_size=7, weights=[0.3, 0.3, 0.4], grad=True)
    rv, rg = fa.ms_ssim(big.astype(np.float32), other.astype(np.float32), win_size=7, weights=[0.3, 0.3, 0.4],
                        grad=True)
    assert_close(cp.asnumpy(v), rv, np.float32, "ms_ssim", rtol32=2e-3)
    assert_close(cp.asnumpy(g), rg, np.float32, "ms_ssim grad", rtol32=1e-2)
    c = rng.standard_normal((41, 24)).astype(np.float16)
    codes, mask = fa.soft_threshold(cp.asarray(c), 0.25, grad=True)
    ref = np.sign(c.astype(np.float32)) * np.maximum(np.abs(c.astype(np.float32)) - np.float32(0.25), 0)
    np.testing.assert_array_equal(cp.asnumpy(codes), ref.astype(np.float16))  # one rounding, as the CPU would
    np.testing.assert_array_equal(cp.asnumpy(mask), (np.abs(c) > np.float16(0.25)).astype(np.float16))
    h = rng.uniform(0.05, 0.95, (64, 12)).astype(np.float16)
    v, g = fa.kl_sparsity(cp.asarray(h), 0.1, beta=2.0, grad=True)
    rv, rg = fa.kl_sparsity(h.astype(np.float64), 0.1, beta=2.0, grad=True)
    assert_close(cp.asnumpy(v), rv, np.float32, "kl", rtol32=2e-3)
    assert_close(cp.asnumpy(g), rg, np.float32, "kl grad", rtol32=2e-3)
    v, g = fa.l1_penalty(cp.asarray(c), 0.3, grad=True)
    assert_close(cp.asnumpy(v), 0.3 * np.abs(c.astype(np.float64)).sum(), np.float32, "l1", rtol32=2e-3)


def _bfloat16_bits(values):
    """Nearest bfloat16 (ties to even) of float32 values, as int16 bit patterns."""
    u = np.asarray(values, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).view(np.int16)


def _from_bfloat16(bits):
    return (np.asarray(bits).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


BFLOAT16_PARAMS = {loss: fa.LOSSES[loss].kernel_fields(params) for loss, params in LOSSES}  # the kernels' fields


def test_bfloat16_kernels_through_the_launchers(rng):
    """bfloat16 reaches the kernels only from torch CUDA tensors (as int16 bits); here the launchers get the bits."""
    from fastae._neutral import gaussian_window
    from fastae.cpu import ssim as cpu_ssim
    from fastae.cuda import bfloat16, pointwise as cuda_pointwise, sparse as cuda_sparse, ssim as cuda_ssim
    values = rng.standard_normal(1000).astype(np.float32) * 3
    bits = _bfloat16_bits(values)
    np.testing.assert_array_equal(cp.asnumpy(bfloat16.to_float32(cp.asarray(bits))), _from_bfloat16(bits))
    out = cp.empty(1000, np.int16)
    bfloat16.from_float32(cp.asarray(values), out)
    np.testing.assert_array_equal(cp.asnumpy(out), bits)
    for (loss, params), (_, public) in zip(BFLOAT16_PARAMS.items(), LOSSES):
        for activation in ACTIVATIONS:
            pred, target = _inputs(rng, loss, activation, (4, 77), np.float32)
            p, t = _bfloat16_bits(pred), _bfloat16_bits(target)
            grad = cp.empty(p.shape, np.int16)
            value, total, _ = cuda_pointwise.pointwise(loss, params, activation, 0.01, cp.asarray(p), cp.asarray(t),
                                                    None, grad, None, 1.0 / p.size, 1.0 / p.size)
            ref_value, ref_grad = reference_pointwise(loss, _from_bfloat16(p).astype(np.float64),
                                                      _from_bfloat16(t).astype(np.float64), activation=activation,
                                                      **public)
            what = f"bfloat16 {loss}/{activation}"
            assert_close(float(total) / p.size, ref_value, np.float32, what, rtol32=1e-4)
            assert_close(_from_bfloat16(cp.asnumpy(value)), ref_value, np.float32, what, rtol32=1e-2)
            assert_close(_from_bfloat16(cp.asnumpy(grad)), ref_grad, np.float32, what + " grad", rtol32=1e-2)
    x = _bfloat16_bits(rng.random((3, 37, 41)))
    y = _bfloat16_bits(np.clip(_from_bfloat16(x) + 0.1 * rng.standard_normal(x.shape), 0, 1))
    window = gaussian_window(7, 1.5)
    for pad in (0, 3):
        grad = cp.empty(x.shape, np.int16)
        sums = cuda_ssim.ssim_planes(cp.asarray(x), cp.asarray(y), window, pad, 1e-4, 9e-4, False,
                                     cp.full(3, 0.5), grad, False)
        ref_grad = np.empty(x.shape, np.float32)
        ref_sums = cpu_ssim.ssim_planes(_from_bfloat16(x), _from_bfloat16(y), window, pad, 1e-4, 9e-4, False,
                                        np.full(3, 0.5), ref_grad, False)
        assert_close(cp.asnumpy(sums), ref_sums, np.float32, f"bfloat16 ssim pad {pad}", rtol32=1e-4)
        assert_close(_from_bfloat16(cp.asnumpy(grad)), ref_grad, np.float32, "bfloat16 ssim grad", rtol32=1e-2)
    c = _bfloat16_bits(rng.standard_normal((33, 16)))
    out, mask = cp.empty(c.shape, np.int16), cp.empty(c.shape, np.int16)
    cuda_sparse.soft_threshold(cp.asarray(c), 0.25, out, mask)
    decoded = _from_bfloat16(c)
    np.testing.assert_array_equal(cp.asnumpy(out), _bfloat16_bits(  # one rounding; +0 below the threshold
        np.where(np.abs(decoded) > 0.25, decoded - np.sign(decoded) * np.float32(0.25), 0)))
    np.testing.assert_array_equal(_from_bfloat16(cp.asnumpy(mask)), (np.abs(decoded) > 0.25).astype(np.float32))
    h = _bfloat16_bits(rng.uniform(0.05, 0.95, (50, 8)))
    grad = cp.empty(h.shape, np.int16)
    value = cuda_sparse.kl_sparsity(cp.asarray(h), 0.1, 2.0, grad)
    ref_value, ref_grad = fa.kl_sparsity(_from_bfloat16(h).astype(np.float64), 0.1, beta=2.0, grad=True)
    assert_close(cp.asnumpy(value), ref_value, np.float32, "bfloat16 kl", rtol32=1e-5)
    assert_close(_from_bfloat16(cp.asnumpy(grad)), ref_grad, np.float32, "bfloat16 kl grad", rtol32=1e-2)


@pytest.mark.skipif(not fastae.cuda.EMULATOR, reason="the emulator records the instances it launches")
def test_every_kernel_instance_runs(rng):
    """Every instance the launchers can name, launched once through its launcher (values checked elsewhere)."""
    from fastae.cuda import kernels_launched
    from fastae.cuda import filters as cuda_filters, pointwise as cuda_pointwise, sparse as cuda_sparse
    from fastae.cuda import ssim as cuda_ssim
    from fastae.cuda.check import instances_by_file
    for dtype in ("float32", "float64", "float16", "int16"):
        a, b = (cp.asarray(rng.random((3, 20, 21)).astype(dtype)) for _ in range(2))
        for loss, params in BFLOAT16_PARAMS.items():
            for activation in ACTIVATIONS:
                cuda_pointwise.pointwise(loss, params, activation, 0.01, a, b, None, cp.empty_like(a), None, 1.0, 1.0)
        for activation in ACTIVATIONS:
            cuda_pointwise.activate(activation, 0.01, a, cp.empty_like(a), cp.empty_like(a))
        for win in (5, cuda_ssim.UNROLLED_WINDOW):  # (the generic instance, and the one unrolled for 11 taps)
            cuda_ssim.ssim_planes(a, b, np.ones(win) / win, win // 2, 1e-4, 9e-4, False, cp.full(3, 1.0),
                                  cp.empty_like(a), False)
        filtered = cuda_filters.filter_axis(a, np.ones(3) / 3, 1, 1, True)
        cuda_filters.filter_axis_adjoint(filtered, np.ones(3) / 3, 1, 1, True, 20)
        cuda_sparse.soft_threshold(a, 0.1, cp.empty_like(a), None)
        cuda_sparse.kl_sparsity(a.reshape(3, -1), 0.1, 1.0, cp.empty_like(a).reshape(3, -1))
        if dtype in ("float32", "float64"):
            gram = cp.asarray(np.eye(21, dtype=dtype))
            cuda_sparse.lasso(a.reshape(-1, 21), gram, 0.02, 3, 0.0, True)
    expected = {e for expressions in instances_by_file().values() for e in expressions}
    assert expected - kernels_launched() == set()


def test_out_overlapping_an_input_is_exact(rng):
    x = rng.random((2, 3, 33, 35)).astype(np.float32)
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    expected = fa.mixed_loss(cp.asarray(x), cp.asarray(y), alpha=0.4, grad=True)
    dx = cp.asarray(x)
    value, grad = fa.mixed_loss(dx, cp.asarray(y), alpha=0.4, grad=True, out=dx)
    assert grad is dx and float(value) == float(expected.loss)
    np.testing.assert_array_equal(cp.asnumpy(dx), cp.asnumpy(expected.grad))
    base = cp.asarray(rng.standard_normal(50_001).astype(np.float32))
    target = cp.asarray(rng.random(50_000).astype(np.float32))
    expected = fa.mse(base[:-1].copy(), target, grad=True)
    value, grad = fa.mse(base[:-1], target, grad=True, out=base[1:])
    assert cp.asnumpy(value).tobytes() == cp.asnumpy(expected.loss).tobytes()
    np.testing.assert_array_equal(cp.asnumpy(base[1:]), cp.asnumpy(expected.grad))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_activations_alone_match_the_cpu(rng, dtype):
    z = (rng.standard_normal((7, 301)) * 4).astype(dtype)
    for activation in ACTIVATIONS:
        value, slope = fa.activate(cp.asarray(z), activation, grad=True)
        ref_value, ref_slope = fa.activate(z.astype(np.float64), activation, grad=True)
        rtol = 2e-3 if dtype == np.float16 else None
        assert_close(cp.asnumpy(value), ref_value, np.float32 if rtol else dtype, activation, rtol32=rtol or 2e-5)
        assert_close(cp.asnumpy(slope), ref_slope, np.float32 if rtol else dtype, activation, rtol32=rtol or 2e-5)
