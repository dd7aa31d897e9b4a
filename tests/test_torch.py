import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim as peer_ms_ssim
from pytorch_msssim import ssim as peer_ssim

import fastae
import fastae.torch as ft
from reference import gaussian_window

DTYPES = [torch.float32, torch.float64]
IDS = ["f32", "f64"]


def tol(dtype):
    return dict(rtol=2e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)


def both(fn_ours, fn_ref, x, *args):
    """Value and input gradient of each, from the same data."""
    a = x.detach().clone().requires_grad_()
    b = x.detach().clone().requires_grad_()
    va, vb = fn_ours(a, *args), fn_ref(b, *args)
    va.sum().backward()
    vb.sum().backward()
    return va.detach(), vb.detach(), a.grad, b.grad


POINTWISE = [
    ("mse_loss", F.mse_loss), ("l1_loss", F.l1_loss), ("huber_loss", F.huber_loss),
    ("binary_cross_entropy_with_logits", F.binary_cross_entropy_with_logits),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,ref", POINTWISE, ids=[p[0] for p in POINTWISE])
def test_pointwise_matches_torch(dtype, reduction, name, ref):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 9, 7, generator=g, dtype=dtype)
    t = torch.rand(4, 3, 9, 7, generator=g, dtype=dtype)
    va, vb, ga, gb = both(lambda a: getattr(ft, name)(a, t, reduction=reduction),
                          lambda b: ref(b, t, reduction=reduction), x)
    torch.testing.assert_close(va, vb, **tol(dtype))
    torch.testing.assert_close(ga, gb, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_bce_on_probabilities_with_weight(dtype):
    g = torch.Generator().manual_seed(1)
    p = torch.rand(5, 6, generator=g, dtype=dtype).clamp(0.01, 0.99)
    t = torch.rand(5, 6, generator=g, dtype=dtype)
    w = torch.rand(6, generator=g, dtype=dtype)
    va, vb, ga, gb = both(lambda a: ft.binary_cross_entropy(a, t, weight=w),
                          lambda b: F.binary_cross_entropy(b, t, weight=w), p)
    torch.testing.assert_close(va, vb, **tol(dtype))
    torch.testing.assert_close(ga, gb, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_structural_losses_match_pytorch_msssim(dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 40, 36, generator=g, dtype=dtype)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=dtype)).clamp(0, 1)
    win = torch.tensor(gaussian_window(11, 1.5), dtype=dtype).repeat(3, 1, 1, 1)
    va, vb, ga, gb = both(lambda a: ft.ssim_loss(a, y), lambda b: 1 - peer_ssim(b, y, data_range=1.0, win=win), x)
    torch.testing.assert_close(va, vb, **tol(dtype))
    torch.testing.assert_close(ga, gb, **tol(dtype))
    va, vb, ga, gb = both(lambda a: ft.ssim(a, y, reduction="none"),
                          lambda b: peer_ssim(b, y, data_range=1.0, win=win, size_average=False), x)
    torch.testing.assert_close(va, vb, **tol(dtype))
    torch.testing.assert_close(ga, gb, **tol(dtype))
    va, vb, ga, gb = both(lambda a: ft.mixed_loss(a, y, 0.16),
                          lambda b: 0.16 * F.l1_loss(b, y) + 0.84 * (1 - peer_ssim(b, y, data_range=1.0, win=win)), x)
    torch.testing.assert_close(va, vb, **tol(dtype))
    torch.testing.assert_close(ga, gb, **tol(dtype))


def test_ms_ssim_matches_pytorch_msssim():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 170, 165, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    win = torch.tensor(gaussian_window(11, 1.5)).repeat(1, 1, 1, 1)
    va, vb, ga, gb = both(lambda a: ft.MSSSIMLoss()(a, y), lambda b: 1 - peer_ms_ssim(b, y, data_range=1.0, win=win), x)
    torch.testing.assert_close(va, vb, **tol(torch.float64))
    torch.testing.assert_close(ga, gb, **tol(torch.float64))


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.rand(3, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: ft.mse_loss(a, t, activation="tanh"), (x,))
    assert torch.autograd.gradcheck(lambda a: ft.binary_cross_entropy_with_logits(a, t, reduction="none"), (x,))
    assert torch.autograd.gradcheck(lambda a: ft.huber_loss(a, t, delta=0.5, reduction="sum"), (x,))
    img = torch.rand(1, 2, 13, 12, generator=g, dtype=torch.float64, requires_grad=True)
    ref = torch.rand(1, 2, 13, 12, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: ft.ssim_loss(a, ref, win_size=7), (img,))
    assert torch.autograd.gradcheck(lambda a: ft.ssim(a, ref, padding="same", reduction="none"), (img,))
    assert torch.autograd.gradcheck(lambda a: ft.mixed_loss(a, ref, 0.3, pixel="mse", win_size=5), (img,))
    codes = torch.randn(4, 6, generator=g, dtype=torch.float64)
    codes = codes[(codes.abs() - 0.3).abs() > 1e-3].requires_grad_()  # away from the kinks
    assert torch.autograd.gradcheck(lambda a: ft.soft_threshold(a, 0.3), (codes,))
    h = torch.rand(6, 4, generator=g, dtype=torch.float64).clamp(0.05, 0.95).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: ft.kl_sparsity(a, 0.1, beta=2.0), (h,))


def test_no_gradient_work_without_requires_grad(monkeypatch):
    calls = []
    original = fastae.mse

    def spy(*args, **kw):
        calls.append(kw["grad"])
        return original(*args, **kw)
    monkeypatch.setattr(fastae, "mse", spy)
    x, t = torch.rand(4, 4), torch.rand(4, 4)
    ft.mse_loss(x, t)
    with torch.no_grad():
        ft.mse_loss(x.requires_grad_(), t)
    ft.mse_loss(x, t)
    assert calls == [False, False, True]


class TinyAutoencoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dec = torch.nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.dec(torch.relu(self.enc(x))))


def test_compiles_without_graph_breaks():
    model = TinyAutoencoder()
    x = torch.rand(2, 3, 24, 24)
    loss_fn = ft.MixedLoss(alpha=0.16)

    def step(batch):
        recon = model(batch)
        return loss_fn(recon, batch) + ft.mse_loss(recon, batch) + ft.binary_cross_entropy(recon, batch)
    assert torch._dynamo.explain(step)(x).graph_break_count == 0
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    eager_value = step(x)
    eager_value.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled_value = compiled(x)
    compiled_value.backward()
    torch.testing.assert_close(compiled_value, eager_value)
    for p, e in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, e)


@pytest.mark.parametrize("which", ["mse", "bce_logits", "ssim"])
def test_training_follows_pytorch_trajectory(which):
    """30 SGD steps with fastae's loss land on the same weights as with PyTorch's (float64)."""
    torch.manual_seed(0)
    data = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    runs = []
    win = torch.tensor(gaussian_window(11, 1.5)).repeat(3, 1, 1, 1)
    for ours in (True, False):
        torch.manual_seed(1)
        model = TinyAutoencoder().double()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(30):
            opt.zero_grad()
            z = model.dec(torch.relu(model.enc(data)))  # logits
            if which == "mse":
                loss = ft.mse_loss(torch.sigmoid(z), data) if ours else F.mse_loss(torch.sigmoid(z), data)
            elif which == "bce_logits":
                loss = ft.binary_cross_entropy_with_logits(z, data) if ours else \
                    F.binary_cross_entropy_with_logits(z, data)
            else:
                y = torch.sigmoid(z)
                loss = ft.ssim_loss(y, data) if ours else 1 - peer_ssim(y, data, data_range=1.0, win=win)
            loss.backward()
            opt.step()
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_modules_and_perceptual_loss():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 20, 20, generator=g, requires_grad=True)
    y = torch.rand(2, 3, 20, 20, generator=g)
    assert torch.allclose(ft.MSELoss()(x, y), F.mse_loss(x, y))
    assert torch.allclose(ft.L1Loss(reduction="sum")(x, y), F.l1_loss(x, y, reduction="sum"))
    assert torch.allclose(ft.HuberLoss(delta=0.2)(x, y), F.huber_loss(x, y, delta=0.2))
    assert torch.allclose(ft.BCELoss()(x.clamp(0.01, 0.99), y), F.binary_cross_entropy(x.clamp(0.01, 0.99), y))
    assert torch.allclose(ft.BCEWithLogitsLoss()(x, y), F.binary_cross_entropy_with_logits(x, y))
    assert torch.allclose(ft.SSIMLoss()(x, y), 1 - ft.ssim(x, y))
    features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 5, 3))
    loss = ft.PerceptualLoss(features, layers=["1", "2"], weights=[0.5, 2.0], alpha=0.25, pixel="l1")
    value = loss(x, y)
    f1x, f1y = torch.relu(features[0](x)), torch.relu(features[0](y))
    f2x, f2y = features[2](f1x), features[2](f1y)
    expected = 0.25 * F.l1_loss(x, y) + 0.75 * (0.5 * F.mse_loss(f1x, f1y) + 2.0 * F.mse_loss(f2x, f2y))
    torch.testing.assert_close(value, expected)
    features[1].train()
    value = loss(x, y)
    value.backward()
    assert all(p.grad is None for p in features.parameters())  # the network's parameters get no gradient ...
    assert all(p.requires_grad for p in features.parameters())  # ... and are not frozen in place
    assert features.training and features[1].training  # its modes as they were
    assert not features[1]._forward_hooks and not features[2]._forward_hooks  # no hook left behind
    ref_x = x.detach().clone().requires_grad_()
    f1 = torch.relu(features[0](ref_x))
    (0.25 * F.l1_loss(ref_x, y) + 0.75 * (0.5 * F.mse_loss(f1, f1y) + 2.0 * F.mse_loss(features[2](f1), f2y))).backward()
    torch.testing.assert_close(x.grad, ref_x.grad)
    with pytest.raises(ValueError, match="not submodules"):
        ft.PerceptualLoss(features, layers=["nope"])


@pytest.mark.parametrize("loss", list(fastae.LOSSES))
def test_every_loss_of_the_table_under_autograd(loss):
    """fastae.torch's function and module of each table row: value and gradient as the float64 reference."""
    from conftest import loss_inputs, loss_params
    from reference import pointwise as reference
    row = fastae.LOSSES[loss]
    params = loss_params(loss)
    activation = "sigmoid" if row.domain else "tanh"
    pred, target = loss_inputs(np.random.default_rng(9), loss, activation, (3, 4, 5), np.float64)
    ref_value, ref_grad = reference(loss, pred, target, activation=activation, **params)
    function = (lambda a, t: ft.binary_cross_entropy(torch.sigmoid(a), t)) if row.torch is None else \
        (lambda a, t: getattr(ft, row.torch)(a, t, activation=activation, **params))
    module = None if row.module is None or row.torch is None else getattr(ft, row.module)(activation=activation, **params)
    for fn in filter(None, (function, module)):
        x = torch.tensor(pred, requires_grad=True)
        value = fn(x, torch.tensor(target))
        value.backward()
        np.testing.assert_allclose(value.detach().numpy(), ref_value, rtol=1e-10)
        np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("loss", list(fastae.LOSSES))
@pytest.mark.parametrize("activation", ["identity", "sigmoid"])  # (each pair compiles its own loop: kept few)
def test_target_gets_the_gradient_torch_gives_it(rng, loss, activation):
    """d loss / d target as torch.nn.functional's autograd gives it (float64), with a weight and each
    reduction; and gradcheck in both arguments."""
    from conftest import loss_inputs, loss_params
    from fastae._table import torch_peer
    params = loss_params(loss)
    pred, target = loss_inputs(rng, loss, activation, (3, 4, 5), np.float64)
    if fastae.LOSSES[loss].domain and activation == "identity":
        pred = np.clip(pred, 0.05, 0.95)
    ours = (lambda a, t: ft.binary_cross_entropy(a, t, activation=activation)) if loss == "bce" else \
        (lambda a, t: getattr(ft, fastae.LOSSES[loss].torch)(a, t, activation=activation, **params))
    theirs = torch_peer(loss, activation, **params)
    grads = []
    for fn in (ours, theirs):
        x, t = torch.tensor(pred, requires_grad=True), torch.tensor(target, requires_grad=True)
        fn(x, t).backward()
        grads.append((x.grad, t.grad))
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-9, atol=1e-13)
    w = torch.tensor(rng.uniform(0.5, 2.0, (4, 1)))
    for reduction in ("sum", "none", "batchmean"):
        f = (lambda a, t: ft.binary_cross_entropy(a, t, w, reduction, activation=activation)) if loss == "bce" \
            else (lambda a, t: getattr(ft, fastae.LOSSES[loss].torch)(a, t, reduction, weight=w,
                                                                        activation=activation, **params))
        x, t = torch.tensor(pred, requires_grad=True), torch.tensor(target, requires_grad=True)
        assert torch.autograd.gradcheck(f, (x, t)), reduction


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_structural_losses_give_both_images_their_gradient(rng, dtype):
    x = torch.tensor(rng.uniform(0, 1, (2, 3, 41, 37)), dtype=dtype)
    y = torch.tensor(np.clip(x.double().numpy() + 0.1 * rng.standard_normal(x.shape), 0, 1), dtype=dtype)
    big = [torch.tensor(rng.uniform(0, 1, (1, 2, 170, 163)), dtype=dtype) for _ in range(2)]
    win = torch.tensor(gaussian_window(11, 1.5)).reshape(1, 1, 1, 11).repeat(3, 1, 1, 1)  # float64: as ours

    def peer(a, b, **kw):
        return peer_ssim(a, b, data_range=1.0, win=win[:a.shape[1]], **kw)
    pairs = [(lambda a, b: ft.ssim(a, b), lambda a, b: peer(a, b), x, y),
             (lambda a, b: ft.ssim_loss(a, b, reduction="none").sum(),
              lambda a, b: (1 - peer(a, b, size_average=False)).sum(), x, y),
             (lambda a, b: ft.mixed_loss(a, b, 0.4, pixel="mse"),
              lambda a, b: 0.4 * F.mse_loss(a, b) + 0.6 * (1 - peer(a, b)), x, y),
             (lambda a, b: ft.ms_ssim(a, b), lambda a, b: peer_ms_ssim(a, b, data_range=1.0, win=win[:2]), *big)]
    for ours, theirs, a, b in pairs:
        grads = []
        for fn in (ours, theirs):
            p, q = a.clone().requires_grad_(), b.clone().requires_grad_()
            fn(p, q).backward()
            grads.append((p.grad, q.grad))
        scale = grads[1][1].abs().max()
        tol = 2e-5 if dtype == torch.float32 else 1e-9
        torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=tol * scale)
        torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=tol * scale)
    img = torch.rand(1, 2, 13, 12, dtype=torch.float64, requires_grad=True)
    ref = torch.rand(1, 2, 13, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ft.ssim(a, b, padding="same", win_size=5), (img, ref))


def test_the_target_gradient_is_computed_only_when_asked(monkeypatch):
    calls = []
    original = fastae.ssim

    def spy(*args, **kw):
        calls.append((kw["grad"], kw["target_grad"]))
        return original(*args, **kw)
    monkeypatch.setattr(fastae, "ssim", spy)
    x, t = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    ft.ssim(x, t)
    ft.ssim(x.requires_grad_(), t)
    ft.ssim(x, t.requires_grad_())
    assert calls == [(False, False), (True, False), (True, True)]


BAD_NUMBERS = [
    (lambda x, y: ft.ssim(x, y, data_range=None), TypeError, "data_range must be a real number, got NoneType"),
    (lambda x, y: ft.ssim(x, y, data_range="255"), TypeError, "data_range must be a real number, got str"),
    (lambda x, y: ft.ssim(x, y, data_range=10 ** 400), ValueError, "data_range must be a finite number"),
    (lambda x, y: ft.ssim(x, y, win_size=11.5), ValueError, "win_size must be a positive odd integer, got 11.5"),
    (lambda x, y: ft.ssim(x, y, win_size="11"), ValueError, "win_size must be a positive odd integer, got '11'"),
    (lambda x, y: ft.ssim(x, y, window=[1, "a", 1]), TypeError, "window must be a real number, got str"),
    (lambda x, y: ft.mixed_loss(x, y, alpha=None), TypeError, "alpha must be a real number, got NoneType"),
    (lambda x, y: ft.ms_ssim_l1_loss(x, y, sigmas=3), TypeError, "sigmas must be a sequence of real numbers"),
    (lambda x, y: ft.l1_penalty(x, None), TypeError, "alpha must be a real number, got NoneType"),
    (lambda x, y: ft.kl_sparsity(x.sigmoid().flatten(1), None), TypeError, "rho must be a real number, got NoneType"),
]


@pytest.mark.parametrize("call, error, message", BAD_NUMBERS, ids=range(len(BAD_NUMBERS)))
def test_numbers_are_checked_as_the_library_checks_them(call, error, message):
    """fastae.torch turned its numbers into floats and ints before the library saw them: int(11.5) took a
    win_size of 11.5 as 11 and float('255') a string, None and 10**400 failed inside float() naming nothing."""
    x, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    with pytest.raises(error, match=message):
        call(x, y)


def test_a_one_element_tensor_is_a_number():
    x, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    assert ft.ssim(x, y, data_range=torch.tensor(2.0)) == ft.ssim(x, y, data_range=2.0)


BAD_OPTIONS = [
    (lambda x, y: ft.mse_loss(x, y, reduction=None), "reduction must be one of 'mean', 'sum', 'none', 'batchmean'"),
    (lambda x, y: ft.l1_loss(x, y, activation=None), "activation must be one of 'identity'"),
    (lambda x, y: ft.ssim(x, y, padding=None), "padding must be one of 'valid', 'same', 'reflect'; got None"),
    (lambda x, y: ft.ssim_loss(x, y, reduction="sum"), "reduction must be one of 'mean', 'none'; got 'sum'"),
    (lambda x, y: ft.ssim_map(x, y, padding=1), "padding must be one of"),
    (lambda x, y: ft.mixed_loss(x, y, alpha=0.5, pixel=None), "pixel must be one of 'l1', 'mse'; got None"),
    (lambda x, y: ft.ms_ssim_l1_loss(x, y, reduction=None), "reduction must be one of 'mean', 'sum', 'none'"),
]


@pytest.mark.parametrize("call, message", BAD_OPTIONS, ids=range(len(BAD_OPTIONS)))
def test_string_options_are_checked_before_the_custom_ops(call, message):
    """A non-string option (reduction=None) met the custom ops' schemas first: a RuntimeError from the
    dispatcher ('Expected a value of type str for argument reduction'). Now the library's ValueError."""
    x, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match=message):
        call(x, y)
