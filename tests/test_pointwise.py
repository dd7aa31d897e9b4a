import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastae as fa
from conftest import assert_close, loss_inputs, loss_params
from reference import pointwise as reference

LOSSES = list(fa.LOSSES)
ACTIVATIONS = list(fa.ACTIVATIONS)
REDUCTIONS = ["mean", "sum", "none", "batchmean"]
DTYPES = [np.float32, np.float64]
PARAMS = {loss: loss_params(loss) for loss in LOSSES}
inputs = loss_inputs


def plain_activation(loss):
    """The activation a loss is used with most: sigmoid (logits) for one on [0, 1], else none."""
    return "sigmoid" if fa.LOSSES[loss].domain else "identity"


def check(loss, pred, target, dtype, **kw):
    params = PARAMS.get(loss, {})
    value, grad = getattr(fa, loss)(pred, target, grad=True, **params, **kw)
    ref_value, ref_grad = reference(loss, pred, target, **params, **kw)
    assert value.dtype == dtype and grad.dtype == dtype
    assert grad.shape == np.shape(pred)
    if kw.get("reduction") == "none":
        assert value.shape == np.shape(pred)
    else:
        assert value.shape == ()
    assert_close(value, ref_value, dtype, f"{loss} value")
    assert_close(grad, ref_grad, dtype, f"{loss} grad")
    # the value alone (no gradient pass) is the same number
    # (a separately compiled loop: its vector sums may round in another order)
    alone = getattr(fa, loss)(pred, target, **params, **kw)
    np.testing.assert_allclose(alone, value, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_matches_torch(rng, loss, activation, reduction, dtype):
    pred, target = inputs(rng, loss, activation, (3, 5, 7), dtype)
    check(loss, pred, target, dtype, reduction=reduction, activation=activation)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("layout", ["one", "scalar", "odd", "4d", "transposed", "strided", "large"])
@pytest.mark.parametrize("loss", LOSSES)
def test_layouts(rng, loss, layout, dtype):
    activation = plain_activation(loss)
    shape = {"one": (1,), "scalar": (), "odd": (13,), "4d": (2, 3, 5, 9), "transposed": (9, 11),
             "strided": (8, 13), "large": (3, 100_003)}[layout]
    pred, target = inputs(rng, loss, activation, shape, dtype)
    if layout == "transposed":
        pred, target = pred.T, target.T
    if layout == "strided":
        pred, target = pred[::2, ::3], target[1::2, ::3]
    check(loss, pred, target, dtype, activation=activation, reduction="mean")


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("weight_shape", [(3, 1, 1), (2, 3, 4, 5), (5,), ()])
def test_weight(rng, loss, weight_shape):
    activation = plain_activation(loss)
    pred, target = inputs(rng, loss, activation, (2, 3, 4, 5), np.float64)
    weight = rng.uniform(-0.5, 2.0, weight_shape)
    for reduction in REDUCTIONS:
        check(loss, pred, target, np.float64, weight=weight, reduction=reduction, activation=activation)


def test_weight_number_and_torch_tensor(rng):
    pred, target = inputs(rng, "mse", "identity", (4, 6), np.float32)
    v, g = fa.mse(pred, target, weight=2.5, grad=True)
    rv, rg = reference("mse", pred, target, weight=np.float64(2.5))
    assert_close(v, rv, np.float32)
    assert_close(g, rg, np.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_out_receives_gradient_without_allocation(rng, dtype):
    pred, target = inputs(rng, "mse", "tanh", (4, 3, 5), dtype)
    out = np.full(pred.shape, np.nan, dtype)
    value, grad = fa.mse(pred, target, activation="tanh", reduction="batchmean", grad=True, out=out)
    assert grad is out
    ref_value, ref_grad = reference("mse", pred, target, activation="tanh", reduction="batchmean")
    assert_close(out, ref_grad, dtype)
    assert_close(value, ref_value, dtype)
    # the gradient may overwrite pred itself (in-place backward)
    fa.mse(pred, target, activation="tanh", reduction="batchmean", grad=True, out=pred)
    assert_close(pred, ref_grad, dtype)


def test_torch_tensors_in_torch_tensors_out(rng):
    pred, target = inputs(rng, "bce", "sigmoid", (6, 7), np.float32)
    p = torch.from_numpy(pred).requires_grad_()
    t = torch.from_numpy(target)
    out = torch.empty_like(p, requires_grad=False)
    value, grad = fa.bce(p, t, activation="sigmoid", grad=True, out=out)
    assert isinstance(value, torch.Tensor) and value.shape == () and value.dtype == torch.float32
    assert grad is out
    ref = torch.nn.functional.binary_cross_entropy_with_logits(p, t)
    ref.backward()
    torch.testing.assert_close(value, ref.detach(), rtol=2e-6, atol=0)
    torch.testing.assert_close(out, p.grad, rtol=2e-6, atol=1e-9)
    # a transposed (non-contiguous) tensor works too
    v2 = fa.bce(p.T, t.T, activation="sigmoid")
    torch.testing.assert_close(v2, ref.detach(), rtol=2e-6, atol=0)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_nan_propagates_to_its_element_only(rng, loss, activation):
    pred, target = inputs(rng, loss, activation, (5, 7), np.float32)
    pred[2, 3] = np.nan
    value, grad = getattr(fa, loss)(pred, target, activation=activation, grad=True)
    assert np.isnan(value)
    nan = np.isnan(grad)
    assert nan[2, 3] and nan.sum() == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_inf_propagates(dtype):
    pred = np.array([0.5, np.inf, 0.25], dtype)
    target = np.zeros(3, dtype)
    value, grad = fa.mse(pred, target, grad=True, reduction="sum")
    assert value == np.inf and grad[1] == np.inf and np.isfinite(grad[[0, 2]]).all()
    value, grad = fa.l1(pred, target, grad=True)
    assert value == np.inf and list(grad * 3) == [1, 1, 1]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_extreme_logits_and_probabilities(dtype):
    z = np.array([-1e4, -88.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 88.0, 1e4], dtype)
    t = np.linspace(0, 1, z.size).astype(dtype)
    check("bce", z, t, dtype, activation="sigmoid", reduction="none")
    check("mse", z, t, dtype, activation="sigmoid", reduction="none")
    check("mse", z, t, dtype, activation="tanh", reduction="none")
    # probabilities at the ends: the logs clamp at -100, as in torch
    p = np.array([0.0, 1e-45 if dtype == np.float32 else 1e-300, 1e-30, 0.5, 1 - 1e-7, 1.0], dtype)
    t = np.array([1.0, 1.0, 0.0, 0.3, 0.0, 0.0], dtype)
    check("bce", p, t, dtype, reduction="none")
    check("bce", p, t, dtype, reduction="sum")


def test_empty_input():
    e = np.zeros((0, 3), np.float32)
    assert np.isnan(fa.mse(e, e))
    assert fa.mse(e, e, reduction="sum") == 0
    assert fa.l1(e, e, reduction="none").shape == (0, 3)
    value, grad = fa.bce(e, e, grad=True, activation="sigmoid")
    assert np.isnan(value) and grad.shape == (0, 3)


def test_bit_identical_across_calls(rng):
    pred, target = inputs(rng, "bce", "sigmoid", (1_000_003,), np.float32)
    first = fa.bce(pred, target, activation="sigmoid", grad=True)
    for _ in range(3):
        again = fa.bce(pred, target, activation="sigmoid", grad=True)
        assert again.loss.tobytes() == first.loss.tobytes()
        assert again.grad.tobytes() == first.grad.tobytes()


_DIGEST = """
import hashlib, numpy as np, fastae as fa
rng = np.random.default_rng(7)
p = rng.normal(size=3_000_017).astype(np.float32); t = rng.random(3_000_017).astype(np.float32)
h = hashlib.sha256()
for f in (fa.mse, fa.bce):
    v, g = f(p, t, activation="sigmoid", grad=True)
    h.update(v.tobytes()); h.update(g.tobytes())
print(h.hexdigest())
"""


def test_bit_identical_across_thread_counts():
    digests = set()
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        run = subprocess.run([sys.executable, "-c", _DIGEST], env=env, capture_output=True, text=True, check=True)
        digests.add(run.stdout.strip())
    assert len(digests) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_works_in_a_forked_child(rng):
    """A DataLoader-style worker forked after the thread pool started must not hang."""
    import multiprocessing
    pred, target = inputs(rng, "mse", "identity", (1 << 20,), np.float32)
    expected = fa.mse(pred, target)  # starts the pool in the parent
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(fa.mse, (pred, target)).get(timeout=60)
    assert got == expected
    x, y = (rng.random((8, 1, 128, 128)).astype(np.float32) for _ in range(2))  # (two of run_pulled's threads)
    expected = fa.ssim_loss(x, y, padding="same", grad=True)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(fa.ssim_loss, (x, y), {"padding": "same", "grad": True}).get(timeout=60)
    assert got[0] == expected[0] and np.array_equal(got[1], expected[1])


def test_float32_mean_of_1e8_elements_is_accurate():
    n = 100_000_000
    rng = np.random.default_rng(3)
    pred = rng.random(n, dtype=np.float32)
    target = rng.random(n, dtype=np.float32)
    value = fa.mse(pred, target)
    exact = 0.0
    for i in range(0, n, 10_000_000):
        d = pred[i:i + 10_000_000].astype(np.float64) - target[i:i + 10_000_000]
        exact += np.dot(d, d)
    exact /= n
    assert abs(float(value) - exact) <= 1e-6 * exact


# ---------------------------------------------------------------- errors
def test_errors_name_the_argument():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"target has shape \(3, 2\), pred has shape \(2, 3\)"):
        fa.mse(x, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="reduction must be one of"):
        fa.mse(x, x, reduction="avg")
    with pytest.raises(ValueError, match="activation must be one of"):
        fa.mse(x, x, activation="no such activation")
    with pytest.raises(ValueError, match="delta must be a positive"):
        fa.huber(x, x, delta=-1.0)
    with pytest.raises(ValueError, match="sigma must be a positive"):
        fa.gaussian_nll(x, x, sigma=0.0)
    with pytest.raises(ValueError, match="scale must be a positive"):
        fa.laplace_nll(x, x, scale=-2)
    with pytest.raises(ValueError, match=r"bce: 1 of 6 values of pred lie outside \[0, 1\]"):
        fa.bce(np.array([[0.1, 1.5, 0.2], [0, 1, 0.5]], np.float32), x)
    with pytest.raises(ValueError, match=r"tanh\(pred\) lie outside"):
        fa.bce(np.array([[-0.1, 0.5, 0.2], [0, 1, 0.5]], np.float32), x, activation="tanh")
    with pytest.raises(ValueError, match=r"out has shape \(6,\)"):
        fa.mse(x, x, grad=True, out=np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="out must be a writeable C-contiguous"):
        fa.mse(x, x, grad=True, out=np.zeros((3, 2), np.float32).T)
    with pytest.raises(ValueError, match="pass grad=True"):
        fa.mse(x, x, out=np.zeros_like(x))
    with pytest.raises(ValueError, match=r"weight of shape \(4,\) does not broadcast"):
        fa.mse(x, x, weight=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="batchmean"):
        fa.mse(np.ones((), np.float32), np.ones((), np.float32), reduction="batchmean")


def test_type_errors_name_the_argument():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="pred must be a numpy.ndarray, a cupy.ndarray or a torch.Tensor, got list"):
        fa.mse([[0.0] * 3] * 2, x)
    with pytest.raises(TypeError, match="target must be"):
        fa.mse(x, 1.0)
    with pytest.raises(TypeError, match="pred must be float32 or float64, got int64"):
        fa.mse(np.zeros((2, 3), np.int64), x)
    with pytest.raises(TypeError, match="mixed dtypes: target is float64, pred is float32"):
        fa.mse(x, x.astype(np.float64))
    with pytest.raises(TypeError, match="mixed dtypes: out is float64"):
        fa.mse(x, x, grad=True, out=np.zeros((2, 3)))
    with pytest.raises(TypeError, match="mixed array types: pred is numpy, target is torch"):
        fa.mse(x, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="weight must be float32 or float64"):
        fa.mse(x, x, weight=np.ones(3, np.int32))
    with pytest.raises(TypeError, match="delta must be a real number"):
        fa.huber(x, x, delta="1")
    with pytest.raises(TypeError, match="float32 or float64, got float16"):
        fa.mse(x.astype(np.float16), x.astype(np.float16))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activate_alone(rng, activation, dtype):
    from reference import activation as reference_activation
    z = (rng.standard_normal((5, 203)) * 4).astype(dtype)
    value, slope = fa.activate(z, activation, negative_slope=0.1, grad=True)
    assert value.dtype == slope.dtype == dtype
    assert_close(value, reference_activation(activation, z, 0.1), dtype, activation)
    _, ref_slope = reference("l1", z, np.full(z.shape, -1e6), activation=activation, negative_slope=0.1,
                             reduction="sum")  # d |act(z) + 1e6| / dz = act'(z)
    assert_close(slope, ref_slope, dtype, activation + " slope")
    np.testing.assert_array_equal(fa.activate(z, activation, negative_slope=0.1), value)
    with pytest.raises(ValueError, match="activation must be one of"):
        fa.activate(z, "no such activation")
