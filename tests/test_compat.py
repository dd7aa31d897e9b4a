"""fastae.compat against the installed peers, as their own test suites check them: pytorch-msssim and
kornia (values and both images' gradients, float32 and float64, images and volumes, every argument),
fused-ssim against its documented formula (zero-padded moments, C1 = 0.01^2, C2 = 0.03^2)."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference import gaussian_window

pm = pytest.importorskip("pytorch_msssim")
kornia = pytest.importorskip("kornia")
from fastae.compat import kornia as fk  # noqa: E402
from fastae.compat import pytorch_msssim as fp  # noqa: E402
from fastae.compat.fused_ssim import fused_ssim, fused_ssim3d  # noqa: E402

DTYPES = [torch.float32, torch.float64]


def pair(rng, shape, dtype, scale=1.0, noise=0.1):
    x = rng.uniform(0, 1, shape)
    y = np.clip(x + noise * rng.standard_normal(shape), 0, 1)
    return torch.tensor(x * scale, dtype=dtype), torch.tensor(y * scale, dtype=dtype)


def both(fn, x, y):
    """fn(x, y) summed, and its gradients in x and y."""
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    value = fn(a, b)
    value.sum().backward()
    return value.detach(), a.grad, b.grad


def peer(fn, x, y):
    """The peer's value and gradients computed in float64 (the reference), in x's dtype."""
    return tuple(t.to(x.dtype) for t in both(fn, x.double(), y.double()))


def assert_same(ours, theirs, dtype, rtol=None):
    """Values and both gradients, relative to each one's largest magnitude."""
    tol = rtol or (1e-5 if dtype == torch.float32 else 1e-10)
    for got, want, what in zip(ours, theirs, ("value", "grad of the first image", "grad of the second")):
        assert got.shape == want.shape and got.dtype == want.dtype, what
        scale = float(want.abs().max()) or 1.0
        torch.testing.assert_close(got, want, rtol=0, atol=tol * scale, msg=what)


# ---------------------------------------------------------------- pytorch-msssim
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 37, 41), (1, 1, 64, 50), (2, 2, 13, 24, 22)])
def test_pytorch_msssim_ssim(rng, dtype, shape):
    x, y = pair(rng, shape, dtype, scale=255.0)
    rtol = 1e-4 if dtype == torch.float32 else None  # (raw moments, as above: see test_pytorch_msssim_ms_ssim)
    for kw in [{}, dict(size_average=False), dict(nonnegative_ssim=True, size_average=False),
               dict(win_size=7, win_sigma=2.0, K=(0.02, 0.05)), dict(data_range=1.0)]:
        assert_same(both(lambda a, b: fp.ssim(a, b, **kw), x, y), peer(lambda a, b: pm.ssim(a, b, **kw), x, y), dtype,
                    rtol)
    win = torch.tensor([0.3, 0.5, 0.9, 0.5, 0.3]).reshape((1, 1) + (1,) * (len(shape) - 3) + (5,)).repeat(
        (shape[1],) + (1,) * (len(shape) - 1))  # a window of the caller's, not summing to 1
    assert_same(both(lambda a, b: fp.ssim(a, b, win=win), x, y), peer(lambda a, b: pm.ssim(a, b, win=win), x, y),
                dtype, rtol)
    dims = len(shape) - 2
    ours, theirs = fp.SSIM(channel=shape[1], spatial_dims=dims), pm.SSIM(channel=shape[1], spatial_dims=dims)
    assert_same(both(ours, x, y), peer(theirs, x, y), dtype, rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3, 170, 165), (1, 1, 20, 200, 181)])
def test_pytorch_msssim_ms_ssim(rng, dtype, shape):
    x, y = pair(rng, shape, dtype, scale=255.0)
    warnings.simplefilter("ignore")  # (both warn that the 20 slices, then fewer, are not smoothed)
    # (pytorch-msssim's float32 window does not sum to 1: its moments are taken raw, as pytorch-msssim takes
    # them, which costs float32 some digits on 0..255 images: 1e-4 of the largest gradient, as the peer itself)
    rtol = 1e-4 if dtype == torch.float32 else None
    for kw in [{}, dict(size_average=False), dict(weights=[0.2, 0.3, 0.5], win_size=7)]:
        assert_same(both(lambda a, b: fp.ms_ssim(a, b, **kw), x, y), peer(lambda a, b: pm.ms_ssim(a, b, **kw), x, y),
                    dtype, rtol)
    dims = len(shape) - 2
    assert_same(both(fp.MS_SSIM(channel=shape[1], spatial_dims=dims), x, y),
                peer(pm.MS_SSIM(channel=shape[1], spatial_dims=dims), x, y), dtype, rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 37, 41), (1, 2, 9, 20, 17), (2, 3, 170, 165)])
def test_pytorch_msssim_filters_each_channel_with_its_own_window(rng, dtype, shape):
    """A ``win`` with a different row per channel (pytorch-msssim's grouped convolution filters each channel
    with its own), asymmetric and not summing to 1; a window count that fits no channel count is refused."""
    x, y = pair(rng, shape, dtype)
    rows = torch.tensor(rng.uniform(0.1, 1.0, (shape[1], 5)), dtype=dtype)
    win = rows.reshape((shape[1], 1) + (1,) * (len(shape) - 3) + (5,))
    rtol = 1e-4 if dtype == torch.float32 else None
    for kw in [dict(data_range=1.0), dict(data_range=1.0, size_average=False)]:
        assert_same(both(lambda a, b: fp.ssim(a, b, win=win, **kw), x, y),
                    peer(lambda a, b: pm.ssim(a, b, win=win.double(), **kw), x, y), dtype, rtol)
        if min(shape[-2:]) > 4 * 16:  # (ms-ssim: sides above (win_size - 1) * 2^4)
            assert_same(both(lambda a, b: fp.ms_ssim(a, b, win=win, **kw), x, y),
                        peer(lambda a, b: pm.ms_ssim(a, b, win=win.double(), **kw), x, y), dtype, rtol)
    with pytest.raises(ValueError, match=f"win holds {shape[1] + 1} different windows for images of {shape[1]} "):
        fp.ssim(x, y, win=torch.cat([win, win[:1] * 2]))


@pytest.mark.parametrize("shape", [(2, 3, 8, 30), (2, 3, 8, 9), (1, 2, 6, 7, 8)])
def test_pytorch_msssim_small_images_are_not_smoothed_along_short_axes(rng, shape):
    """Images shorter than the window along some axes, or all (then SSIM is taken pixel by pixel: it was
    'min() arg is an empty sequence')."""
    x, y = pair(rng, shape, torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = both(lambda a, b: fp.ssim(a, b, data_range=1.0), x, y)
        theirs = peer(lambda a, b: pm.ssim(a, b, data_range=1.0), x, y)
    assert any("not smoothed" in str(w.message) for w in caught)
    assert_same(ours, theirs, torch.float64)


def test_pytorch_msssim_trains_the_second_image_towards_the_first(rng):
    """pytorch-msssim's own training test: the second image, requiring grad, optimised towards the first."""
    from skimage import data
    target = torch.tensor(data.camera()[200:264, 200:264] / 255.0, dtype=torch.float32)[None, None].repeat(1, 3, 1, 1)
    image = torch.rand_like(target, generator=torch.Generator().manual_seed(0)).requires_grad_()
    optimizer = torch.optim.Adam([image], lr=0.01)
    for step in range(500):
        optimizer.zero_grad()
        loss = 1 - fp.ssim(target, image, data_range=1.0)
        loss.backward()
        optimizer.step()
        if 1 - loss.item() > 0.99:
            break
    assert 1 - loss.item() > 0.99, f"SSIM {1 - loss.item():.4f} after {step + 1} steps"


def test_pytorch_msssim_matches_scikit_image_on_a_photograph():
    from skimage import data
    from skimage.metrics import structural_similarity
    image = data.camera()[:200, :220].astype(np.float64)
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 20, image.shape), 0, 255)
    expected = structural_similarity(image, noisy, data_range=255, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    value = fp.ssim(torch.tensor(image)[None, None], torch.tensor(noisy)[None, None])
    # (scikit-image averages the map without its border, (win - 1) / 2 pixels wide: the valid map.) The drop-in
    # keeps pytorch-msssim's float32 window, whose weights miss 1 by ~1e-8, which moves this SSIM by 3e-5 as it
    # moves pytorch-msssim's; fastae's own float64 window agrees to rounding.
    np.testing.assert_allclose(value.item(), expected, rtol=1e-4)
    np.testing.assert_allclose(value.item(), pm.ssim(torch.tensor(image)[None, None],
                                                     torch.tensor(noisy)[None, None]).item(), rtol=1e-12)
    import fastae
    np.testing.assert_allclose(float(fastae.ssim(image, noisy, data_range=255.0)), expected, rtol=1e-12)


def test_pytorch_msssim_errors(rng):
    x, y = pair(rng, (1, 3, 32, 32), torch.float32)
    with pytest.raises(ValueError, match="Input images should have the same dimensions"):
        fp.ssim(x, y[..., :31])
    with pytest.raises(ValueError, match="Window size should be odd"):
        fp.ssim(x, y, win_size=10)
    with pytest.raises(ValueError, match="Input images should be 4-d or 5-d tensors"):
        fp.ssim(x[0, 0], y[0, 0])
    with pytest.raises(AssertionError, match="Image size should be larger than 160"):
        fp.ms_ssim(x, y)
    for fn in (fp.ssim, pm.ssim):  # (ours was an IndexError)
        with pytest.raises(ValueError, match="not enough values to unpack"):
            fn(x, y, K=(0.01,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cpu_tensors_run_in_float32(rng, dtype):
    x, y = pair(rng, (2, 3, 24, 24), torch.float32)
    value = fp.ssim(x.to(dtype), y.to(dtype), data_range=1.0)
    assert value.dtype == dtype
    expected = fp.ssim(x.to(dtype).float(), y.to(dtype).float(), data_range=1.0)
    torch.testing.assert_close(value, expected.to(dtype))
    a = x.to(dtype).requires_grad_()
    fk.losses.ssim_loss(a, y.to(dtype), 5).backward()
    assert a.grad.dtype == dtype and torch.isfinite(a.grad.float()).all()


# ---------------------------------------------------------------- kornia
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", ["same", "valid", "SAME"])
def test_kornia_metrics_and_losses(rng, dtype, padding):
    x, y = pair(rng, (2, 3, 31, 27), dtype)
    rtol = None
    for window, kw in [(11, {}), (5, dict(max_val=2.0, eps=1e-4))]:
        ours = both(lambda a, b: fk.metrics.ssim(a, b, window, padding=padding, **kw), x, y)
        assert_same(ours, peer(lambda a, b: kornia.metrics.ssim(a, b, window, padding=padding.lower(), **kw), x, y),
                    dtype, rtol)
        for reduction in ("mean", "sum", "none"):
            assert_same(both(lambda a, b: fk.losses.ssim_loss(a, b, window, reduction=reduction, padding=padding,
                                                              **kw), x, y),
                        peer(lambda a, b: kornia.losses.ssim_loss(a, b, window, reduction=reduction,
                                                                  padding=padding.lower(), **kw), x, y), dtype, rtol)
    assert_same(both(fk.metrics.SSIM(7), x, y), peer(kornia.metrics.SSIM(7), x, y), dtype, rtol)
    assert_same(both(fk.losses.SSIMLoss(7, reduction="sum"), x, y), peer(kornia.losses.SSIMLoss(7, reduction="sum"),
                                                                        x, y), dtype, rtol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kornia_volumes(rng, dtype):
    x, y = pair(rng, (1, 2, 11, 16, 13), dtype)
    rtol = None
    for padding in ("same", "valid"):
        assert_same(both(lambda a, b: fk.metrics.ssim3d(a, b, 5, padding=padding), x, y),
                    peer(lambda a, b: kornia.metrics.ssim3d(a, b, 5, padding=padding), x, y), dtype, rtol)
        assert_same(both(lambda a, b: fk.losses.ssim3d_loss(a, b, 5, padding=padding, reduction="none"), x, y),
                    peer(lambda a, b: kornia.losses.ssim3d_loss(a, b, 5, padding=padding, reduction="none"), x, y),
                    dtype, rtol)
    assert_same(both(fk.metrics.SSIM3D(3), x, y), peer(kornia.metrics.SSIM3D(3), x, y), dtype, rtol)
    assert_same(both(fk.losses.SSIM3DLoss(3), x, y), peer(kornia.losses.SSIM3DLoss(3), x, y), dtype, rtol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kornia_ms_ssim_l1_loss(rng, dtype):
    x, y = pair(rng, (2, 3, 40, 35), dtype)
    for kw in [{}, dict(sigmas=(0.5, 1.0, 2.0), alpha=0.84, compensation=1.0, data_range=2.0, K=(0.02, 0.04)),
               dict(reduction="none"), dict(reduction="sum")]:
        theirs = kornia.losses.MS_SSIMLoss(**kw).to(dtype)
        # kornia's masks are float32 outer products: put in the float64 Gaussians to compare at float64
        sigmas = kw.get("sigmas", (0.5, 1.0, 2.0, 4.0, 8.0))
        size = 2 * int(2 * sigmas[-1]) + 1
        theirs._g_masks = torch.stack([torch.outer(*(torch.tensor(gaussian_window(size, s)),) * 2)
                                       for s in sigmas]).unsqueeze(1).to(dtype)
        assert_same(both(fk.losses.MS_SSIMLoss(**kw), x, y), peer(theirs, x, y), dtype, 1e-4 if dtype == torch.float32
                    else None)
    one = both(fk.losses.MS_SSIMLoss(), x[:1], y)  # a batch of one is compared with every image of the other
    assert_same(one, peer(kornia.losses.MS_SSIMLoss().to(dtype), x[:1], y), dtype, 1e-4)


def test_kornia_errors(rng):
    x, y = pair(rng, (1, 1, 16, 16), torch.float32)
    with pytest.raises(ValueError, match="padding must be 'same' or 'valid'"):
        fk.metrics.ssim(x, y, 5, padding="full")
    with pytest.raises(ValueError, match="Invalid img1 shape"):
        fk.metrics.ssim(x[0], y[0], 5)
    with pytest.raises(TypeError, match="not a torch.Tensor"):
        fk.losses.ssim_loss(x.numpy(), y, 5)
    with pytest.raises(NotImplementedError, match="Invalid reduction"):
        fk.losses.ssim_loss(x, y, 5, reduction="max")
    with pytest.raises(ValueError, match="same shape"):
        fk.losses.MS_SSIMLoss()(x, y.repeat(1, 2, 1, 1))


# ---------------------------------------------------------------- fused-ssim
def fused_reference(img1, img2, padding):
    """fused-ssim's documented formula: the 11-tap Gaussian (sigma 1.5) on zero-padded moments, C1 = 0.01^2,
    C2 = 0.03^2, the mean of the map ("valid": without its 5-pixel border)."""
    if img1.dim() == 3:
        img1, img2 = img1[None], img2[None]
    channels = img1.shape[1]
    g = torch.tensor(gaussian_window(11, 1.5), dtype=img1.dtype)
    dims = img1.dim() - 2
    w = g
    for _ in range(dims - 1):
        w = w[..., None] * g
    w = w.expand((channels, 1) + (11,) * dims)
    conv = F.conv2d if dims == 2 else F.conv3d

    def filt(m):
        return conv(m, w, padding=5, groups=channels)
    mx, my = filt(img1), filt(img2)
    sxx, syy, sxy = filt(img1 * img1) - mx ** 2, filt(img2 * img2) - my ** 2, filt(img1 * img2) - mx * my
    s = (2 * mx * my + 1e-4) * (2 * sxy + 9e-4) / ((mx ** 2 + my ** 2 + 1e-4) * (sxx + syy + 9e-4))
    if padding == "valid":
        s = s[(...,) + (slice(5, -5),) * dims]
    return s.mean()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_fused_ssim_formula_train_flag_and_volumes(rng, dtype, padding):
    x, y = pair(rng, (2, 3, 29, 33), dtype)
    assert_same(both(lambda a, b: fused_ssim(a, b, padding=padding), x, y),
                peer(lambda a, b: fused_reference(a, b, padding), x, y), dtype)
    assert_same(both(lambda a, b: fused_ssim(a[0], b[0], padding=padding), x, y),  # (C, H, W) images
                peer(lambda a, b: fused_reference(a[0], b[0], padding), x, y), dtype)
    a = x.clone().requires_grad_()
    value = fused_ssim(a, y, padding=padding, train=False)
    assert not value.requires_grad
    torch.testing.assert_close(value, fused_reference(x, y, padding))
    v, w = pair(rng, (1, 2, 14, 17, 15), dtype)
    assert_same(both(lambda a, b: fused_ssim3d(a, b, padding=padding), v, w),
                peer(lambda a, b: fused_reference(a, b, padding), v, w), dtype)
    with pytest.raises(AssertionError):
        fused_ssim(x, y, padding="reflect")


def test_kornia_dtypes_and_half_precision_pixel_losses(rng):
    import fastae.torch as ft
    x, y = pair(rng, (1, 2, 20, 18), torch.float64)
    mixed = fk.metrics.ssim(x.float(), y, 5)  # a float32 / float64 pair: float64, as kornia
    assert mixed.dtype == torch.float64
    torch.testing.assert_close(mixed, kornia.metrics.ssim(x.float(), y, 5))
    ints = (x * 255).round().to(torch.uint8), (y * 255).round().to(torch.uint8)
    torch.testing.assert_close(fk.metrics.ssim(*ints, 5, max_val=255.0), kornia.metrics.ssim(*ints, 5, max_val=255.0))
    for dtype in (torch.float16, torch.bfloat16):  # CPU half precision: computed in float32, returned as given
        a, b = x.to(dtype).requires_grad_(), y.to(dtype).requires_grad_()
        value = ft.mse_loss(a, b)
        value.backward()
        assert value.dtype == dtype and a.grad.dtype == b.grad.dtype == dtype
        torch.testing.assert_close(value, F.mse_loss(a.float(), b.float()).to(dtype))
        torch.testing.assert_close(b.grad, -a.grad)


def test_pytorch_msssim_compiles_and_never_keeps_a_stale_window(rng):
    """ssim and ms_ssim without win compile without a graph break (the default window's values were read
    with tolist(), which torch.compile cannot trace: fullgraph=True failed); a win given to the compiled
    function, or a module's win changed in place, is read on every call (a graph break), never kept."""
    x, y = pair(rng, (2, 3, 32, 33), torch.float64)
    compiled = torch.compile(lambda a, b: fp.ssim(a, b, data_range=1.0), fullgraph=True)
    torch.testing.assert_close(compiled(x, y), fp.ssim(x, y, data_range=1.0), rtol=0, atol=1e-15)
    big, other = pair(rng, (1, 1, 170, 165), torch.float64)
    compiled = torch.compile(lambda a, b: fp.ms_ssim(a, b, data_range=1.0), fullgraph=True)
    torch.testing.assert_close(compiled(big, other), fp.ms_ssim(big, other, data_range=1.0), rtol=0, atol=1e-15)
    with_win = torch.compile(lambda a, b, w: fp.ssim(a, b, data_range=1.0, win=w))
    for win in (torch.rand(3, 1, 1, 11, dtype=torch.float64), torch.rand(3, 1, 1, 11, dtype=torch.float64)):
        torch.testing.assert_close(with_win(x, y, win), pm.ssim(x, y, data_range=1.0, win=win))
    module = fp.SSIM(data_range=1.0, channel=3)
    compiled = torch.compile(module)
    compiled(x, y)
    module.win.mul_(1.5)
    torch.testing.assert_close(compiled(x, y), pm.ssim(x, y, data_range=1.0, win=module.win))
