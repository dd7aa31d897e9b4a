"""Hostile input: aliasing buffers, exotic autograd modes, autocast, broken dictionaries and saved
models, malformed command lines. Each case gives the right number or a clear error; no input is
destroyed, no command prints a traceback, nothing allocates what the caller's sizes forbid."""
import json
import os
import subprocess
import sys
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastae as fa
import fastae.torch as ft
from conftest import assert_close
from fastae.cli import main as cli
from fastae.models import Autoencoder, HierarchicalAutoencoder


# ---------------------------------------------------------------- out= that aliases an input
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shift", [1, -1, 0])
def test_pointwise_out_overlapping_pred_is_exact(rng, dtype, shift):
    base = rng.standard_normal(70_003).astype(dtype)
    target = rng.random(70_000).astype(dtype)
    pred = base[1:70_001]
    expected = fa.bce(pred.copy(), target, activation="sigmoid", grad=True)
    buffer = base.copy()
    out = buffer[1 + shift:70_001 + shift]
    value, grad = fa.bce(buffer[1:70_001], target, activation="sigmoid", grad=True, out=out)
    assert grad is out and value.tobytes() == expected.loss.tobytes()  # the same loss bits as a fresh buffer
    np.testing.assert_array_equal(out, expected.grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_equal_to_target_or_weight(rng, dtype):
    pred, target, weight = (rng.random((5, 301)).astype(dtype) for _ in range(3))
    expected = fa.mse(pred, target, weight=weight, grad=True)
    for aliased in ("target", "weight"):
        t, w = target.copy(), weight.copy()
        out = t if aliased == "target" else w
        value, grad = fa.mse(pred, t, weight=w, grad=True, out=out)
        assert value.tobytes() == expected.loss.tobytes() and grad is out
        np.testing.assert_array_equal(out, expected.grad)


@pytest.mark.parametrize("fn,kwargs", [(fa.mixed_loss, {"alpha": 0.5}), (fa.mixed_loss, {"alpha": 0.2, "pixel": "mse"}),
                                        (fa.ssim_loss, {}), (fa.ssim, {"padding": "same"}), (fa.ms_ssim, {})])
@pytest.mark.parametrize("aliased", ["pred", "target"])
def test_structural_out_aliasing_either_image_is_exact(rng, fn, kwargs, aliased):
    shape = (1, 2, 180, 177) if fn is fa.ms_ssim else (2, 3, 33, 35)
    x = rng.random(shape).astype(np.float32)
    y = np.clip(x + 0.1 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    expected = fn(x, y, grad=True, **kwargs)
    x2, y2 = x.copy(), y.copy()
    out = x2 if aliased == "pred" else y2
    value, grad = fn(x2, y2, grad=True, out=out, **kwargs)
    assert grad is out and float(value) == float(expected.loss)
    np.testing.assert_array_equal(out, expected.grad)


def test_failed_call_leaves_every_input_as_it_was():
    p = np.array([0.5, 1.5, 0.2], np.float32)
    t = np.array([0.0, 1.0, 0.5], np.float32)
    for out in ("pred", "target"):
        p2, t2 = p.copy(), t.copy()
        with pytest.raises(ValueError, match="1 of 3 values of pred lie outside"):
            fa.bce(p2, t2, grad=True, out=p2 if out == "pred" else t2)
        np.testing.assert_array_equal(p2, p)
        np.testing.assert_array_equal(t2, t)


def test_sparse_operators_with_aliased_buffers(rng):
    c = rng.standard_normal(1001).astype(np.float32)
    expected = fa.soft_threshold(c, 0.3, grad=True)
    for shift in (1, -1):
        buffer = np.concatenate([[0], c, [0]]).astype(np.float32)
        out = buffer[1 + shift:1002 + shift]
        assert fa.soft_threshold(buffer[1:1002], 0.3, out=out) is out
        np.testing.assert_array_equal(out, expected.codes)
    in_place = c.copy()
    assert fa.soft_threshold(in_place, 0.3, out=in_place) is in_place  # the documented in-place use
    np.testing.assert_array_equal(in_place, expected.codes)
    lam = np.abs(rng.standard_normal(1001)).astype(np.float32)
    lam_copy = lam.copy()
    codes = fa.soft_threshold(c, lam, out=lam)  # out is the threshold array itself
    np.testing.assert_array_equal(codes, fa.soft_threshold(c, lam_copy))
    with pytest.raises(ValueError, match="out and mask_out overlap"):
        fa.soft_threshold(c, 0.3, grad=True, out=in_place, mask_out=in_place)
    w = rng.standard_normal(500)
    value = fa.l2_penalty(w, 0.1)
    w2 = w.copy()
    assert fa.l2_penalty(w2, 0.1, accumulate_into=w2).tobytes() == value.tobytes()
    np.testing.assert_allclose(w2, w + 0.2 * w, rtol=1e-15)
    z = rng.standard_normal(300)
    expected = fa.l1_penalty(z, 0.5, grad=True)
    z2 = z.copy()
    value, grad = fa.l1_penalty(z2, 0.5, grad=True, out=z2)
    assert value.tobytes() == expected.loss.tobytes() and grad is z2
    np.testing.assert_array_equal(z2, expected.grad)


# ---------------------------------------------------------------- accuracy promises
def test_float32_bce_near_zero_and_one_matches_float64(rng):
    p = np.array([1 - 6e-8, 1e-7, 1e-30, 1 - 1e-3, 1e-3, 0.5, 0.3, 0.999], np.float32)
    for t in (0.0, 1.0, 0.3):
        target = np.full(p.size, t, np.float32)
        ours = fa.bce(p, target, reduction="none")
        exact = F.binary_cross_entropy(torch.tensor(p, dtype=torch.float64), torch.tensor(target, dtype=torch.float64),
                                       reduction="none").numpy()
        np.testing.assert_allclose(ours, exact, rtol=2e-7, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logit_sums_keep_the_log1p_term(dtype):
    z = np.array([80.0, 30.0, -80.0, 17.0], dtype)
    t = np.array([1.0, 1.0, 0.0, 1.0], dtype)
    exact = np.log1p(np.exp(-np.abs(z.astype(np.float64)))).sum()
    value = fa.bce(z, t, activation="sigmoid", reduction="sum")
    np.testing.assert_allclose(float(value), exact, rtol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_slope_near_saturation(dtype):
    z = np.array([1e-8, 0.1, 0.49, 0.51, 5.0, 8.0, 9.5, 12.0, -9.5, -0.7, 30.0], dtype)
    z64 = z.astype(np.float64)
    e = np.exp(-2 * np.abs(z64))
    exact = 2 * np.tanh(z64) * 4 * e / (1 + e) ** 2  # d tanh(z)^2 / dz, no cancellation
    _, grad = fa.mse(z, np.zeros_like(z), activation="tanh", reduction="sum", grad=True)
    np.testing.assert_allclose(grad, exact, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=0)


# ---------------------------------------------------------------- torch: autograd modes, autocast, data
def _x_t():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(2, 1, 20, 20, generator=g, dtype=torch.float64, requires_grad=True),
            torch.rand(2, 1, 20, 20, generator=g, dtype=torch.float64))


LOSSES = [lambda a, b: ft.mse_loss(a, b), lambda a, b: ft.ssim_loss(a, b, win_size=7),
          lambda a, b: ft.mixed_loss(a, b, 0.3, win_size=7), lambda a, b: ft.soft_threshold(a - b, 0.1).sum(),
          lambda a, b: ft.kl_sparsity(torch.sigmoid(a.reshape(4, -1)), 0.1)]


@pytest.mark.parametrize("loss", LOSSES)
def test_second_derivatives_raise_naming_fastae(loss):
    x, t = _x_t()
    (first,) = torch.autograd.grad(loss(x, t), x, create_graph=True)  # first order under create_graph: right
    x2 = x.detach().clone().requires_grad_()
    loss(x2, t).backward()
    torch.testing.assert_close(first.detach(), x2.grad)
    with pytest.raises(RuntimeError, match="fastae.torch: the fused kernels give first derivatives only"):
        torch.autograd.grad(first.square().sum(), x)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.gradgradcheck(lambda a: loss(a, t), (x,))


def test_forward_mode_and_func_transforms_raise_naming_fastae():
    x, t = _x_t()
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="fastae.torch losses do not support forward-mode"):
        ft.mse_loss(fwAD.make_dual(x.detach(), torch.ones_like(x)), t)
    tangent = (torch.ones_like(x),)
    for transform in (lambda f: torch.func.grad(f)(x), lambda f: torch.func.jacrev(f)(x),
                      lambda f: torch.func.hessian(f)(x), lambda f: torch.func.jvp(f, (x,), tangent),
                      lambda f: torch.func.vmap(f)(x[None].expand(3, -1, -1, -1, -1))):
        with pytest.raises(RuntimeError, match="do not support torch.func transforms"):
            transform(lambda a: ft.ssim_loss(a, t))


def test_autocast_runs_the_losses_in_float32_as_torch_does():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 16, 16, generator=g).bfloat16().requires_grad_()
    t = torch.rand(4, 3, 16, 16, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for ours, theirs in [(ft.mse_loss, F.mse_loss), (ft.l1_loss, F.l1_loss),
                             (ft.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits)]:
            value = ours(x, t)
            assert value.dtype == theirs(x, t).dtype == torch.float32
            torch.testing.assert_close(value, theirs(x.float(), t.float()))
        value = ft.ssim_loss(x.float().sigmoid().bfloat16(), t)
        assert value.dtype == torch.float32
    value.backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16


def test_data_that_requires_grad_warns_once(monkeypatch):
    monkeypatch.setattr(ft, "_warned", set())
    x, t = _x_t()
    t.requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ft.mse_loss(x, t)  # a target that requires grad gets it: no warning
        ft.mse_loss(x, t.detach(), weight=torch.ones_like(t, requires_grad=True))
        ft.mse_loss(x, t.detach(), weight=torch.ones_like(t, requires_grad=True))
    messages = [str(w.message) for w in caught]
    assert not any("target requires grad" in m for m in messages)
    assert sum("weight requires grad but gets no gradient" in m for m in messages) == 1


def test_soft_threshold_computes_no_mask_without_grad(monkeypatch):
    calls = []
    real = fa.soft_threshold
    monkeypatch.setattr(fa, "soft_threshold", lambda *a, **k: calls.append(k.get("grad", False)) or real(*a, **k))
    x = torch.randn(10)
    ft.soft_threshold(x, 0.5)
    ft.soft_threshold(x.requires_grad_(), 0.5).sum().backward()
    assert calls == [False, True]


def test_negated_tensor_views_keep_their_sign():
    z = torch.randn(50, dtype=torch.complex64)
    negated = z.conj().imag  # a view with the negative bit set
    assert negated.is_neg()
    plain = negated.clone()
    target = torch.ones(50)
    assert float(fa.mse(negated, target)) == float(fa.mse(plain, target))
    assert float(fa.l1_penalty(negated, 1.0, grad=True).grad.sum()) == float(torch.sign(plain).sum())
    with pytest.raises(ValueError, match="negative bit"):
        fa.mse(plain, target, grad=True, out=torch.zeros(50, dtype=torch.complex64).conj().imag)


# ---------------------------------------------------------------- sizes, parameters, dictionaries
def test_huge_windows_are_refused_before_anything_is_allocated():
    a = np.ones((16, 16))
    tracemalloc.start()
    for padding, message in (("valid", "smaller than the window"), ("same", "more than twice the 16x16 images")):
        with pytest.raises(ValueError, match=message):
            fa.ssim(a, a, win_size=2**31 + 1, padding=padding)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


def test_huge_but_finite_parameters_give_numbers(rng):
    x, t = rng.random(5), rng.random(5)
    sigma = 1e200
    value = fa.gaussian_nll(x, t, sigma=sigma, reduction="none")
    np.testing.assert_allclose(value, np.log(sigma) + 0.5 * np.log(2 * np.pi), rtol=1e-15)
    np.testing.assert_allclose(fa.laplace_nll(x, t, scale=1e308, reduction="none"), np.log(2.0) + np.log(1e308))
    image = rng.random((1, 1, 16, 16))
    value, grad = fa.ssim(image, image * 0.5, sigma=1e200, grad=True)  # a flat window
    assert np.isfinite(value) and np.isfinite(grad).all()


def test_dictionaries_with_nan_or_inf_are_refused():
    x = np.ones((3, 4))
    for bad in (np.nan, np.inf):
        d = np.eye(4, 2)
        d[1, 1] = bad
        with pytest.raises(ValueError, match="D holds non-finite values"):
            fa.ista(x, d, 0.1)
        with pytest.raises(ValueError, match="U holds non-finite values"):
            fa.lasso_codes(x, d, 0.1)
        with pytest.raises(ValueError, match="must hold finite values"):
            HierarchicalAutoencoder(d[:, :1], d[:, 1:])


def test_ista_takes_empty_signals_and_numpy_integers(rng):
    assert fa.ista(np.ones((3, 0)), np.ones((0, 2)), 0.1).tolist() == [[0.0, 0.0]] * 3
    d = np.linalg.qr(rng.standard_normal((8, 4)))[0]
    x = rng.standard_normal((5, 8))
    np.testing.assert_allclose(fa.ista(x, d, 0.1, n_iter=np.int64(500)), fa.ista(x, d, 0.1, n_iter=500))
    with pytest.raises(ValueError, match="n_iter must be a positive integer"):
        fa.ista(x, d, 0.1, n_iter=np.float64(5))


def test_a_bad_thread_count_falls_back_with_a_warning():
    code = "import numpy as np, fastae as fa; print(float(fa.mse(np.ones(100000), np.zeros(100000))))"
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, NUMBA_NUM_THREADS="abc"))
    assert done.returncode == 0 and done.stdout.strip() == "1.0", done.stderr
    assert "NUMBA_NUM_THREADS='abc' is not an integer" in done.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arrays_of_the_other_byte_order_are_read_and_refused_as_buffers(rng, dtype):
    """Big-endian arrays ('>f4' here) met the compiled kernels as a Numba TypingError ('non-precise type
    pyobject'). They are read through a native copy (the same results, bit for bit, the inputs untouched);
    as a buffer to write, out is refused, naming it."""
    x, y = (rng.random((2, 3, 20, 21)).astype(dtype) for _ in range(2))
    swapped = np.dtype(dtype).newbyteorder(">" if np.little_endian else "<")
    xs, ys = x.astype(swapped), y.astype(swapped)
    before = xs.copy()
    d = rng.standard_normal((21, 9)).astype(dtype)
    calls = [lambda a, b: fa.mse(a, b, grad=True), lambda a, b: fa.bce(a, b, activation="sigmoid", grad=True),
             lambda a, b: fa.ssim_loss(a, b, grad=True, target_grad=True),
             lambda a, b: fa.mixed_loss(a, b, alpha=0.2, grad=True), lambda a, b: fa.soft_threshold(a, 0.3, grad=True),
             lambda a, b: fa.ista(a.reshape(-1, 21)[:7], d.astype(a.dtype), 0.1)]
    for call in calls:
        for got, want in zip(_parts(call(xs, ys)), _parts(call(x, y))):
            assert got.dtype.isnative and np.array_equal(got, want)
    np.testing.assert_array_equal(xs, before)
    with pytest.raises(ValueError, match="out has the other byte order"):
        fa.mse(x, y, grad=True, out=np.empty(x.shape, swapped))


def test_array_subclasses_are_read_as_arrays_and_masked_ones_refused(rng, tmp_path):
    """np.memmap and np.matrix met the kernels as Numba typing errors, and a masked array would have had its mask
    ignored: subclasses are read (and a memmap written as out) as plain arrays; a masked one is refused,
    naming the argument."""
    x, y = (rng.random((2, 3, 20, 21)).astype(np.float32) for _ in range(2))
    mapped = np.memmap(tmp_path / "x", dtype=np.float32, mode="w+", shape=x.shape)
    mapped[...] = x
    out = np.memmap(tmp_path / "g", dtype=np.float32, mode="w+", shape=x.shape)
    value, grad = fa.ssim_loss(mapped, y, grad=True, out=out)
    want = fa.ssim_loss(x, y, grad=True)
    assert grad is out and value == want.loss and np.array_equal(np.asarray(out), want.grad)
    m, t = np.matrix(x[0, 0]), np.matrix(y[0, 0])
    assert np.array_equal(fa.l1(m, t, grad=True).grad, fa.l1(x[0, 0], y[0, 0], grad=True).grad)
    masked = np.ma.array(x, mask=x > 0.5)
    for args, name in (((masked, y), "pred"), ((x, masked), "target")):
        with pytest.raises(TypeError, match=f"{name} is a numpy.ma.MaskedArray: fastae would ignore its mask"):
            fa.mse(*args)


def test_an_integer_beyond_floats_range_is_a_named_error(rng):
    """float(10**400) raised OverflowError ('int too large to convert to float'), naming nothing."""
    x = rng.random((1, 1, 16, 16))
    for call, name in ((lambda: fa.ssim(x, x, data_range=10 ** 400), "data_range"),
                       (lambda: fa.mse(x, x, weight=-10 ** 400), "weight"),
                       (lambda: fa.soft_threshold(x, 10 ** 400), "lam")):
        with pytest.raises(ValueError, match=f"{name} must be a finite number, got an integer of 1329 bits"):
            call()


def _parts(result):
    return [np.asarray(part) for part in (result if isinstance(result, tuple) else (result,))]


# ---------------------------------------------------------------- models
def test_models_refuse_what_they_cannot_do(tmp_path, rng):
    x = rng.random((40, 16)).astype(np.float32)
    m = Autoencoder(16, 4, hidden=[8], loss="mse")
    with pytest.raises(ValueError, match="optimizer must be one of 'adam', 'sgd', got 'adamw'"):
        m.fit(x, optimizer="adamw", progress=False)
    for kwargs, message in (({"epochs": 0}, "epochs"), ({"batch_size": -5}, "batch_size"), ({"lr": float("nan")}, "lr")):
        with pytest.raises(ValueError, match=message):
            m.fit(x, progress=False, **kwargs)
    path = tmp_path / "model.bin"
    m.save(path)
    assert path.exists() and not (tmp_path / "model.bin.npz").exists()
    np.testing.assert_array_equal(Autoencoder.load(path).reconstruct(x), m.reconstruct(x))
    other = Autoencoder(16, 4, hidden=[8], loss="mse", dtype=np.float64)
    with np.load(path) as f:
        arrays = dict(f)
    for change, message in ((lambda a: a.update(p0=a["p0"][:, :3]), r"parameter 0 is float32 \(16, 3\)"),
                            (lambda a: a.update(p1=a["p1"].astype(np.float64)), "parameter 1 is float64"),
                            (lambda a: a.pop("p2"), "parameter arrays")):
        broken = dict(arrays)
        change(broken)
        np.savez(tmp_path / "broken.npz", **broken)
        with pytest.raises(ValueError, match=message):
            Autoencoder.load(tmp_path / "broken.npz")
    assert other.dtype == np.float64


# ---------------------------------------------------------------- the command
BAD_FLAGS = [
    (["train", "--epochs", "0"], "--epochs"), (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--batch-size", "-5"], "--batch-size"), (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--lr", "nan"], "--lr"), (["train", "--lr", "-1"], "--lr"), (["train", "--code", "0"], "--code"),
    (["train", "--hidden", "0"], "--hidden"), (["train", "--hidden", "12,abc"], "--hidden"),
    (["train", "--sparsity", "kl:0.1:1:5"], "--sparsity"), (["train", "--sparsity", "l1"], "--sparsity"),
    (["train", "--sparsity", "l1:abc"], "--sparsity"), (["train", "--alpha", "2"], "--alpha"),
    (["train", "--loss", "mse", "--alpha", "0.5"], "--alpha"), (["train", "--device", "cuda"], "--device"),
    (["train", "--model", "conv", "--crop", "36"], "--crop"), (["train", "--model", "conv", "--loss", "bce"], "--loss"),
    (["train", "--model", "conv", "--hidden", "64"], "--hidden"), (["train", "--micro-batches", "2"], "--micro-batches"),
    (["pareto", "--alphas", "0,a"], "--alphas"), (["bench", "--size", "2^x"], "--size"),
    (["bench", "--threads", "0"], "--threads"),
    (["train", "--loss", "bce", "--output-activation", "tanh"], "--output-activation"),
    (["train", "--out", "/dev/null/out"], "--out"), (["pareto", "--out", "/dev/null/out"], "--out"),
    pytest.param(["bench", "--cuda"], "--cuda", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                                         reason="a CUDA device: bench --cuda runs")),
]


@pytest.mark.parametrize("argv,flag", BAD_FLAGS, ids=[" ".join(getattr(case, "values", case)[0]) for case in BAD_FLAGS])
def test_every_bad_flag_is_one_line_and_exit_status_2(capsys, argv, flag):
    with pytest.raises(SystemExit) as stop:
        cli(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "Traceback" not in err[0], err


def test_several_bad_flags_each_get_their_line(capsys, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(SystemExit):
        cli(["train", "--lr", "nan", "--epochs", "0", "--out", str(a_file)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and [line.split(":")[2].strip() for line in err] == \
        ["argument --epochs", "argument --lr", "argument --out"]


def test_loss_bce_trains_on_sigmoid_outputs_by_default(tmp_path, capsys):
    """--loss bce alone made the dense model's identity outputs meet BCE: a ValueError traceback mid-training."""
    assert cli(["train", "--loss", "bce", "--quick", "--epochs", "1", "--data", "digits", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["output_activation"] == "sigmoid" and np.isfinite(metrics["final"]["val_psnr"])


def test_help_describes_every_flag_with_its_default():
    done = subprocess.run([sys.executable, "-m", "fastae", "train", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    from fastae.train import DEFAULTS
    for flag, default in [("--epochs", "30"), ("--batch-size", DEFAULTS["batch_size"]), ("--lr", DEFAULTS["lr"]),
                          ("--code", "32"), ("--loss", "mixed"), ("--hidden", "128"), ("--weight-decay", "0.0"),
                          ("--seed", "0"), ("--out", "fastae-out"), ("--data", "patches"),
                          ("--activation", DEFAULTS["activation"]), ("--schedule", DEFAULTS["schedule"])]:
        assert flag in done.stdout and f"default: {default}" in done.stdout.replace("\n", " ").replace("  ", " ")
