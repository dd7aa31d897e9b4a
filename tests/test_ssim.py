import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as msssim_reference
from pytorch_msssim import ssim as ssim_reference

import fastae as fa
from conftest import assert_close
from reference import as_4d, gaussian_window, ssim_same_padding

DTYPES = [np.float32, np.float64]
IDS = ["f32", "f64"]


def image_pair(rng, shape, dtype, data_range=1.0, noise=0.15):
    x = rng.random(shape)
    y = np.clip(x + noise * rng.standard_normal(shape), 0, 1)
    return (x * data_range).astype(dtype), (y * data_range).astype(dtype)


def torch_reference(fn, pred, target, reduction="mean", **kw):
    """pytorch-msssim's value and gradient in float64 (with the float64 window)."""
    shape = np.shape(pred)
    x = torch.tensor(as_4d(pred), dtype=torch.float64, requires_grad=True)
    y = torch.tensor(as_4d(target), dtype=torch.float64)
    win = torch.tensor(gaussian_window(kw.pop("win_size", 11), kw.pop("sigma", 1.5))).repeat(x.shape[1], 1, 1, 1)
    k = (kw.pop("k1", 0.01), kw.pop("k2", 0.03))
    value = fn(x, y, win=win, K=k, size_average=reduction == "mean", **kw)
    value.sum().backward()
    value = value.detach().numpy()
    return (value if reduction == "mean" else value.reshape(shape[:-3])), x.grad.numpy().reshape(shape)


def check(fa_fn, ref_fn, pred, target, dtype, reduction="mean", rtol32=2e-5, **kw):
    value, grad = fa_fn(pred, target, grad=True, reduction=reduction, **kw)
    ref_value, ref_grad = ref_fn(pred, target, reduction=reduction, **kw)
    assert value.dtype == dtype and grad.dtype == dtype and grad.shape == np.shape(pred)
    assert value.shape == np.shape(ref_value)
    assert_close(value, ref_value, dtype, "value")
    assert_close(grad, ref_grad, dtype, "grad", rtol32)
    np.testing.assert_array_equal(fa_fn(pred, target, reduction=reduction, **kw), value)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape", [(2, 3, 37, 41), (1, 1, 11, 11), (4, 2, 24, 13), (3, 29, 17), (33, 19)])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ssim_matches_pytorch_msssim(rng, dtype, shape, reduction):
    pred, target = image_pair(rng, shape, dtype)
    check(fa.ssim, lambda p, t, **kw: torch_reference(ssim_reference, p, t, data_range=1.0, **kw),
          pred, target, dtype, reduction)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("window", [(7, 1.0), (5, 0.8), (13, 2.0), (1, 1.0)])
def test_ssim_other_windows_constants_and_range(rng, dtype, window):
    win_size, sigma = window
    pred, target = image_pair(rng, (2, 3, 27, 30), dtype, data_range=255.0)
    kw = dict(data_range=255.0, win_size=win_size, sigma=sigma, k1=0.02, k2=0.05)
    check(fa.ssim, lambda p, t, **k: torch_reference(ssim_reference, p, t, **k), pred, target, dtype, **kw)


def test_ssim_matches_scikit_image(rng):
    from skimage.metrics import structural_similarity
    pred, target = image_pair(rng, (3, 45, 52), np.float64)
    ref = structural_similarity(pred, target, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0, channel_axis=0)
    assert abs(float(fa.ssim(pred, target)) - ref) < 1e-10


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape", [(2, 3, 31, 26), (1, 2, 5, 7), (3, 1, 1), (40, 9)])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ssim_same_padding(rng, dtype, shape, reduction):
    """Zero padding on every filtered map; images smaller than the window are fine."""
    pred, target = image_pair(rng, shape, dtype)
    value, grad = fa.ssim(pred, target, padding="same", reduction=reduction, grad=True)
    ref_value, ref_grad = ssim_same_padding(pred, target, reduction=reduction)
    assert grad.shape == np.shape(pred)
    assert_close(value, ref_value, dtype, "value")
    assert_close(grad, ref_grad, dtype, "grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_ssim_loss_is_one_minus_ssim(rng, dtype):
    pred, target = image_pair(rng, (2, 3, 20, 22), dtype)
    s, gs = fa.ssim(pred, target, grad=True)
    out = np.full(pred.shape, np.nan, dtype)
    loss, gl = fa.ssim_loss(pred, target, grad=True, out=out)
    assert gl is out
    assert_close(loss, 1 - np.float64(s), dtype)
    np.testing.assert_array_equal(gl, -gs)
    per_image = fa.ssim_loss(pred, target, reduction="none")
    assert_close(per_image, 1 - fa.ssim(pred, target, reduction="none").astype(np.float64), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("kind", ["random", "bright", "flat"])
def test_identical_images_give_exactly_one_and_a_zero_gradient(rng, dtype, kind):
    x = {"random": rng.random((2, 3, 30, 33)), "bright": 0.9 + 0.01 * rng.random((2, 3, 30, 33)),
         "flat": np.full((2, 3, 30, 33), 0.7)}[kind].astype(dtype)
    for padding in ("valid", "same"):
        for fn in (fa.ssim, fa.ssim_loss):
            value, grad = fn(x, x.copy(), grad=True, padding=padding)
            assert float(value) == (1.0 if fn is fa.ssim else 0.0) and not grad.any(), (fn.__name__, padding)
        value, grad = fa.mixed_loss(x, x.copy(), alpha=0.3, grad=True, padding=padding)
        assert float(value) == 0.0 and not grad.any()
    big = np.broadcast_to(x[:, :, :1, :1], (2, 3, 180, 180)).copy() if kind == "flat" else \
        np.tile(x, (1, 1, 6, 6))
    value, grad = fa.ms_ssim(big, big.copy(), grad=True)
    assert float(value) == 1.0 and not grad.any()


def test_float32_ssim_on_bright_low_contrast_images_beats_pytorch_msssim(rng):
    """E[x^2] - mu^2 cancels in float32 on bright images; fastae's moments of the shifted plane do not."""
    ours, theirs = [], []
    for _ in range(4):
        x = 0.85 + 0.1 * rng.random((2, 3, 64, 64))
        y = np.clip(x + 0.01 * rng.standard_normal(x.shape), 0, 1)
        exact, exact_grad = fa.ssim(x, y, grad=True)
        value, grad = fa.ssim(x.astype(np.float32), y.astype(np.float32), grad=True)
        peer = ssim_reference(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32),
                              data_range=1.0)
        peer_exact = ssim_reference(torch.tensor(x), torch.tensor(y), data_range=1.0)
        ours.append(abs(float(value) - float(exact)))
        theirs.append(abs(float(peer) - float(peer_exact)))
        assert_close(grad, exact_grad, np.float32, "grad", rtol32=1e-5)
    assert max(ours) <= max(theirs) and max(ours) < 1e-7, (ours, theirs)


def test_constant_images(rng):
    const = np.full((1, 1, 16, 16), 0.5)
    s, g = fa.ssim(const, const * 0.9, grad=True)
    assert np.isfinite(s) and np.isfinite(g).all()
    ref, ref_grad = torch_reference(ssim_reference, const, const * 0.9, data_range=1.0)
    assert_close(s, ref, np.float64)
    assert_close(g, ref_grad, np.float64)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_empty_batch_gives_nan_as_pytorch_msssim(dtype):
    """No images: the mean of nothing is NaN (pytorch-msssim and torch's losses agree), quietly;
    the gradient is empty, and reduction="none" gives no values."""
    from pytorch_msssim import ssim as peer
    empty = np.zeros((0, 3, 16, 16), dtype)
    assert np.isnan(peer(torch.from_numpy(empty), torch.from_numpy(empty), data_range=1.0).item())
    for value, grad in (fa.ssim(empty, empty, grad=True), fa.ssim_loss(empty, empty, grad=True),
                        fa.mixed_loss(empty, empty, alpha=0.3, grad=True),
                        fa.ms_ssim(*(np.zeros((0, 1, 170, 170), dtype),) * 2, grad=True)):
        assert value.dtype == dtype and np.isnan(value) and grad.size == 0
    assert fa.ssim(empty, empty, reduction="none").shape == (0,)


def test_torch_tensors_and_determinism(rng):
    pred, target = image_pair(rng, (4, 3, 40, 40), np.float32)
    first = fa.ssim_loss(pred, target, grad=True)
    again = fa.ssim_loss(pred, target, grad=True)
    assert first.loss.tobytes() == again.loss.tobytes() and first.grad.tobytes() == again.grad.tobytes()
    t = fa.ssim_loss(torch.from_numpy(pred), torch.from_numpy(target), grad=True)
    assert isinstance(t.loss, torch.Tensor) and isinstance(t.grad, torch.Tensor)
    np.testing.assert_array_equal(t.grad.numpy(), first.grad)


# ---------------------------------------------------------------- MS-SSIM
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ms_ssim_matches_pytorch_msssim(rng, dtype, reduction):
    pred, target = image_pair(rng, (2, 3, 171, 166), dtype, noise=0.1)
    # float32: E[x^2] - mu^2 cancels at every level and the levels multiply: 1e-4 for the gradient
    check(fa.ms_ssim, lambda p, t, **kw: torch_reference(msssim_reference, p, t, data_range=1.0, **kw),
          pred, target, dtype, reduction, rtol32=1e-4)


def test_ms_ssim_custom_weights_window_and_range(rng):
    pred, target = image_pair(rng, (1, 2, 101, 97), np.float64, data_range=255.0, noise=0.1)
    kw = dict(data_range=255.0, win_size=7, sigma=1.2, weights=[0.2, 0.3, 0.5])
    value, grad = fa.ms_ssim(pred, target, grad=True, **kw)
    ref_value, ref_grad = torch_reference(msssim_reference, pred, target, **kw)
    assert_close(value, ref_value, np.float64)
    assert_close(grad, ref_grad, np.float64)


# ---------------------------------------------------------------- mixed loss
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("pixel", ["l1", "mse"])
@pytest.mark.parametrize("alpha", [0.0, 0.16, 0.84, 1.0])
def test_mixed_loss(rng, dtype, pixel, alpha):
    pred, target = image_pair(rng, (2, 3, 23, 25), dtype)
    value, grad = fa.mixed_loss(pred, target, alpha=alpha, pixel=pixel, grad=True)
    x = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(target, dtype=torch.float64)
    win = torch.tensor(gaussian_window(11, 1.5)).repeat(3, 1, 1, 1)
    pixel_loss = torch.nn.functional.l1_loss(x, y) if pixel == "l1" else torch.nn.functional.mse_loss(x, y)
    ref = alpha * pixel_loss + (1 - alpha) * (1 - ssim_reference(x, y, data_range=1.0, win=win))
    ref.backward()
    assert_close(value, ref.item(), dtype)
    assert_close(grad, x.grad.numpy(), dtype)


def test_errors_name_the_argument(rng):
    x = np.zeros((1, 3, 20, 20))
    with pytest.raises(ValueError, match=r"images of 8x20 are smaller than the window \(11\)"):
        fa.ssim(np.zeros((8, 20)), np.zeros((8, 20)))
    with pytest.raises(ValueError, match="win_size must be a positive odd integer"):
        fa.ssim(x, x, win_size=10)
    with pytest.raises(ValueError, match="target has shape"):
        fa.ssim(x, x[..., :19])
    with pytest.raises(ValueError, match="data_range must be a positive"):
        fa.ssim(x, x, data_range=0)
    with pytest.raises(ValueError, match="sigma must be a positive"):
        fa.ssim_loss(x, x, sigma=-1.0)
    with pytest.raises(ValueError, match="padding must be one of"):
        fa.ssim(x, x, padding="circular")
    with pytest.raises(ValueError, match="padding='reflect' with win_size=11 needs images larger than 5"):
        fa.ssim(np.zeros((5, 30)), np.zeros((5, 30)), padding="reflect")
    with pytest.raises(ValueError, match="window must be a 1-D sequence"):
        fa.ssim(x, x, window=[0.25, 0.5, 0.25, 0.0])
    with pytest.raises(ValueError, match="eps must be a non-negative"):
        fa.ssim(x, x, eps=-1.0)
    with pytest.raises(ValueError, match="target_grad=True adds"):
        fa.ssim(x, x, target_grad=True)
    with pytest.raises(ValueError, match="weights has shape"):
        fa.ssim_map(x, x, weights=np.zeros((1, 3, 20, 20)))
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'none'"):
        fa.ssim(x, x, reduction="sum")
    with pytest.raises(ValueError, match=r"pred must be \(H, W\), \(C, H, W\), \(N, C, H, W\) images or "):
        fa.ssim(np.zeros(30), np.zeros(30))
    for shape in [(1, 3, 0, 20), (2, 0, 20, 20), (20, 0)]:
        with pytest.raises(ValueError, match=r"pred's images must have channels and pixels, got shape \("):
            fa.ssim(np.zeros(shape), np.zeros(shape), padding="same")
    with pytest.raises(ValueError, match="needs images larger than 160 pixels a side"):
        fa.ms_ssim(np.zeros((1, 1, 160, 200)), np.zeros((1, 1, 160, 200)))
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        fa.mixed_loss(x, x, alpha=1.5)
    with pytest.raises(ValueError, match="pixel must be one of"):
        fa.mixed_loss(x, x, alpha=0.5, pixel="huber")
    with pytest.raises(TypeError, match="mixed dtypes"):
        fa.ssim(x, x.astype(np.float32))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("shape", [(1, 4, 3 * 256 + 17, 41), (17, 1, 700, 20)])
def test_tall_planes_in_bands_and_any_thread_count(rng, monkeypatch, dtype, padding, shape):
    """Planes taller than a band (fastae.cpu.ssim.BAND output rows) are cut into bands that share their
    halo rows, narrow ones interleaved in strips (the last strip holding fewer); the result matches the
    reference and is bit-identical for 1 and 2 threads."""
    from fastae.cpu import ssim as cpu_ssim
    pred, target = image_pair(rng, shape, dtype)
    planes = shape[0] * shape[1]
    m, bands = cpu_ssim.layout(planes, *pred.shape[-2:], 5 if padding == "same" else 0, 11)
    assert bands >= 3 and m >= 2 and (shape[0] == 1 or planes % m)
    ref_fn = ssim_same_padding if padding == "same" else lambda p, t, **kw: torch_reference(ssim_reference, p, t,
                                                                                            data_range=1.0, **kw)
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("NUMBA_NUM_THREADS", threads)
        for fn in (fa.ssim, fa.mixed_loss):
            kw = {"alpha": 0.3} if fn is fa.mixed_loss else {}
            results.append([a.tobytes() for a in fn(pred, target, padding=padding, grad=True, **kw)])
    assert results[:2] == results[2:]
    value, grad = fa.ssim(pred, target, padding=padding, grad=True)
    ref_value, ref_grad = ref_fn(pred, target)
    assert_close(value, ref_value, dtype, "value")
    assert_close(grad, ref_grad, dtype, "grad", rtol32=1e-4)


def test_small_planes_interleaved_match_one_at_a_time(rng):
    """Small planes share strips (interleaved column by column, each with its own padding; here 26 and 25
    planes): every plane's value and gradient are the same numbers as alone, and a NaN or an Inf in one
    plane stays in that plane."""
    from fastae.cpu import ssim as cpu_ssim
    pred, target = image_pair(rng, (51, 1, 16, 16), np.float32)
    pred[9, 0, 3, 4], target[30, 0, 15, 0] = np.nan, np.inf
    assert cpu_ssim.layout(51, 16, 16, 5, 11)[0] == 26
    together = fa.ssim(pred, target, padding="same", reduction="none", grad=True)
    assert np.isnan(together.loss[[9, 30]]).all() and np.isfinite(np.delete(together.loss, [9, 30])).all()
    assert np.isfinite(np.delete(together.grad, [9, 30], axis=0)).all()
    for i in (0, 8, 9, 10, 25, 26, 29, 30, 31, 50):
        alone = fa.ssim(pred[i:i + 1], target[i:i + 1], padding="same", reduction="none", grad=True)
        assert alone.loss.tobytes() == together.loss[i:i + 1].tobytes()
        np.testing.assert_array_equal(alone.grad[0], together.grad[i])


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("window", [(7, 1.0), (13, 2.0), (15, 2.5), (17, 3.0)])
def test_rows_in_fours_and_rows_in_whole_vectors_at_their_edges(rng, padding, window):
    """The vertical passes take output and input rows four at a time from a ring of a power of two rows
    (win + 3 = 16 for win 13, 18 -> 32 for 15, 20 -> 32 for 17), a band's last one to three rows computed
    and dropped; loops along a strip row run to whole vectors of 8 columns. Output rows 1, 2, 3 past a
    multiple of four and strip rows of 8k + 1 .. 7 columns (5 planes interleaved): the value and both
    gradients match the float64 references, and a NaN in the last column of the last plane stays there
    (the scratch columns after it see it)."""
    win_size, sigma = window
    pad = win_size // 2 if padding == "same" else 0
    for h in (win_size + 4, win_size + 5, win_size + 6, win_size + 7):
        shape = (5, 1, h, win_size + 6)
        pred, target = image_pair(rng, shape, np.float64)
        kw = dict(win_size=win_size, sigma=sigma)
        value, grad = fa.ssim(pred, target, padding=padding, grad=True, **kw)
        if padding == "same":
            ref_value, ref_grad = ssim_same_padding(pred, target, **kw)
        else:
            ref_value, ref_grad = torch_reference(ssim_reference, pred, target, data_range=1.0, **kw)
        assert_close(value, ref_value, np.float64, "value")
        assert_close(grad, ref_grad, np.float64, "grad")
        both = fa.mixed_loss(pred, target, alpha=0.0, padding=padding, grad=True, target_grad=True, **kw)
        assert_close(both.target_grad, -torch_target_grad(pred, target, padding, **kw), np.float64, "target grad")
        pred[4, 0, 1, -1] = np.nan
        lossy = fa.ssim(pred, target, padding=padding, reduction="none", grad=True, **kw)
        assert np.isnan(lossy.loss[4]) and np.isfinite(lossy.loss[:4]).all() and np.isfinite(lossy.grad[:4]).all()
        alone = fa.ssim(pred[:4], target[:4], padding=padding, reduction="none", grad=True, **kw)
        np.testing.assert_array_equal(alone.grad, lossy.grad[:4])


def test_a_last_strip_with_fewer_planes_clears_the_first_strips_scratch(rng):
    """41 planes of 17x17, 'same': strips of 16, 16 and 9 planes, rows of 272, 272 and 153 output columns,
    the last run to 160, so its scratch columns held the first strips' numbers: its gradient still
    matches the float64 reference, and each plane's equals the plane's alone."""
    from fastae.cpu import ssim as cpu_ssim
    pred, target = image_pair(rng, (41, 1, 17, 17), np.float64)
    assert cpu_ssim.layout(41, 17, 17, 5, 11)[0] == 16
    value, grad = fa.ssim(pred, target, padding="same", grad=True)
    ref_value, ref_grad = ssim_same_padding(pred, target)
    assert_close(value, ref_value, np.float64, "value")
    assert_close(grad, ref_grad, np.float64, "grad")
    together = fa.ssim(pred, target, padding="same", reduction="none", grad=True)
    for i in (0, 15, 16, 31, 32, 40):
        alone = fa.ssim(pred[i:i + 1], target[i:i + 1], padding="same", reduction="none", grad=True)
        np.testing.assert_array_equal(alone.grad[0], together.grad[i])


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_strips_of_whole_vectors_of_planes_change_no_bit(rng, monkeypatch, dtype):
    """A strip takes a multiple of 8 planes where the last strip is left at least half full (256 planes
    of 16x16: 8 strips of 32, not 7 of 37; 51: 26 and 25 still, as 24 would leave 3); the value and both
    gradients are the same bits as with strips alike."""
    from fastae.cpu import ssim as cpu_ssim
    assert [cpu_ssim.layout(p, 16, 16, 5, 11)[0] for p in (256, 51, 7)] == [32, 26, 7]
    pred, target = image_pair(rng, (64, 4, 16, 16), dtype)
    new = fa.mixed_loss(pred, target, alpha=0.2, padding="same", grad=True, target_grad=True)
    used = []
    monkeypatch.setattr(cpu_ssim, "layout", lambda planes, *sizes: used.append(planes) or (37, 1))
    monkeypatch.setattr(cpu_ssim, "_plan", cpu_ssim._plan.__wrapped__)  # (the plans made meanwhile: not kept)
    old = fa.mixed_loss(pred, target, alpha=0.2, padding="same", grad=True, target_grad=True)
    assert used and [a.tobytes() for a in new] == [a.tobytes() for a in old]


def test_an_8x8_transpose_by_shuffles():
    """_transposed's three stages of two-vector shuffles (as the kernel's LLVM code makes them) turn eight rows
    into their eight columns."""
    from fastae.cpu.ssim import _transposed
    rows = [[(q, j) for j in range(8)] for q in range(8)]
    columns = _transposed(rows, lambda a, b, mask: [(a + b)[i] for i in mask])
    assert columns == [[(q, j) for q in range(8)] for j in range(8)]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape, padding", [((48, 1, 13, 19), "same"), ((24, 1, 9, 7), "same"),
                                            ((2, 20, 12, 26), "same"), ((32, 3, 12, 33), "valid")])
def test_rows_of_many_planes_loaded_in_8x8_blocks_change_no_bit(rng, monkeypatch, dtype, shape, padding):
    """Strips of 16 or 24 planes load their rows in blocks of 8 planes x 8 columns transposed (the columns
    past the last whole block one at a time: 19, 7, 26, 33 columns); the value and both gradients
    are the same bits as plane by plane (37 planes a strip), and a NaN stays in its plane, in a block's
    column and in a column past the blocks."""
    from fastae.cpu import ssim as cpu_ssim
    pred, target = image_pair(rng, shape, dtype)
    planes = pred.reshape((-1,) + pred.shape[-2:])
    assert cpu_ssim.layout(len(planes), *planes.shape[1:], 5 if padding == "same" else 0, 11)[0] in (16, 24)
    planes[3, 2, 5], planes[-2, -1, -1] = np.nan, np.nan
    new = fa.mixed_loss(pred, target, alpha=0.2, padding=padding, grad=True, target_grad=True)
    one_each = fa.ssim(planes[:, None], target.reshape(planes.shape)[:, None], padding=padding, reduction="none")
    assert np.flatnonzero(np.isnan(one_each)).tolist() == [3, len(planes) - 2]
    used = []
    monkeypatch.setattr(cpu_ssim, "layout", lambda planes, *sizes: used.append(planes) or (37, 1))
    monkeypatch.setattr(cpu_ssim, "_plan", cpu_ssim._plan.__wrapped__)  # (the plans made meanwhile: not kept)
    old = fa.mixed_loss(pred, target, alpha=0.2, padding=padding, grad=True, target_grad=True)
    assert used and [a.tobytes() for a in new] == [a.tobytes() for a in old]


def torch_target_grad(pred, target, padding, **kw):
    """d SSIM / d target in float64 (both references take the gradient in pred: swap the images, as SSIM
    is symmetric)."""
    if padding == "same":
        return ssim_same_padding(target, pred, **kw)[1]
    return torch_reference(ssim_reference, target, pred, data_range=1.0, **kw)[1]


# ---------------------------------------------------------------- the general path: volumes, reflect, eps, maps
def peers_gradients(fn, pred, target):
    """fn(x, y) in torch float64 (a scalar): its value and its gradients in both images."""
    x = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(target, dtype=torch.float64, requires_grad=True)
    value = fn(x, y)
    value.backward()
    return value.detach().numpy(), x.grad.numpy(), y.grad.numpy()


def window64(win_size, sigma, channels, dims):
    return torch.tensor(gaussian_window(win_size, sigma)).reshape((1,) * (dims + 1) + (-1,)).repeat(
        (channels,) + (1,) * (dims + 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape", [(2, 3, 17, 21, 19), (1, 1, 12, 40, 33)])
def test_volumes_match_pytorch_msssim_in_both_images(rng, dtype, shape):
    x, y = image_pair(rng, shape, dtype, data_range=255.0)
    win = window64(7, 1.5, shape[1], 3)
    for reduction in ("mean", "none"):
        value, grad, target_grad = fa.ssim(x, y, data_range=255.0, win_size=7, reduction=reduction, grad=True,
                                           target_grad=True)
        ref = peers_gradients(lambda a, b: ssim_reference(a, b, data_range=255.0, win=win,
                                                          size_average=reduction == "mean").sum(), x, y)
        assert value.dtype == grad.dtype == target_grad.dtype == dtype and value.shape == shape[:1][:value.ndim]
        assert_close(np.sum(value), ref[0], dtype, "value")
        assert_close(grad, ref[1], dtype, "grad")
        assert_close(target_grad, ref[2], dtype, "target grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_ms_ssim_on_volumes_matches_pytorch_msssim(rng, dtype):
    x, y = image_pair(rng, (1, 2, 40, 52, 49), dtype)
    win = window64(3, 1.5, 2, 3)
    weights = [0.3, 0.3, 0.4]
    value, grad, target_grad = fa.ms_ssim(x, y, win_size=3, weights=weights, grad=True, target_grad=True)
    ref = peers_gradients(lambda a, b: msssim_reference(a, b, data_range=1.0, win=win, weights=weights), x, y)
    assert_close(value, ref[0], dtype, "value")
    assert_close(grad, ref[1], dtype, "grad")
    assert_close(target_grad, ref[2], dtype, "target grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape", [(2, 3, 23, 31), (1, 2, 9, 14, 12)])
def test_reflect_padding_eps_and_the_map_match_kornia(rng, dtype, shape):
    kornia = pytest.importorskip("kornia")
    x, y = image_pair(rng, shape, dtype)
    peer = kornia.metrics.ssim if len(shape) == 4 else kornia.metrics.ssim3d
    window = 5
    weights = rng.uniform(-1, 1, shape).astype(dtype)  # the map's incoming gradient
    m, gx, gy = fa.ssim_map(x, y, win_size=window, padding="reflect", eps=1e-6, weights=weights)
    ref = peers_gradients(lambda a, b: (peer(a, b, window, eps=1e-6) * torch.tensor(weights, dtype=a.dtype)).sum(),
                          x, y)
    ref_map = peer(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64), window,
                   eps=1e-6).numpy()
    assert m.shape == shape and m.dtype == dtype
    # kornia sums raw moments (E[x^2] - mu^2): in float32 it is itself off by ~1e-5 on these images
    assert_close(m, ref_map, dtype, "map", rtol32=1e-5)
    assert_close(gx, ref[1], dtype, "grad", rtol32=1e-4)
    assert_close(gy, ref[2], dtype, "target grad", rtol32=1e-4)
    value = fa.ssim(x, y, win_size=window, padding="reflect", eps=1e-6, reduction="none")
    assert_close(value, ref_map.reshape(shape[0], -1).mean(axis=1), dtype, "mean of the map")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_a_callers_window_and_padding_same_on_the_general_path(rng, dtype):
    x, y = image_pair(rng, (2, 2, 19, 24), dtype)
    window = np.array([0.1, 0.2, 0.4, 0.2, 0.1])  # not a Gaussian
    win = torch.tensor(window).reshape(1, 1, 1, -1).repeat(2, 1, 1, 1)
    value, grad = fa.ssim(x, y, window=window, grad=True)
    ref = peers_gradients(lambda a, b: ssim_reference(a, b, data_range=1.0, win=win), x, y)
    assert_close(value, ref[0], dtype, "value")
    assert_close(grad, ref[1], dtype, "grad")
    # zero padding on the general path (a volume with one slice and a window of one tap along D) = the
    # fused kernel's 2-D padding="same"
    fused = fa.ssim(x, y, padding="same", grad=True, target_grad=True)
    m, gx, gy = fa.ssim_map(x, y, padding="same", weights=np.full((2, 2, 19, 24), 1 / x.size, dtype))
    assert_close(m.mean(), fused.loss, dtype, "value")
    assert_close(gx, fused.grad, dtype, "grad")
    assert_close(gy, fused.target_grad, dtype, "target grad")


def test_identical_images_are_exactly_one_with_zero_gradients_on_the_general_path(rng):
    x = rng.uniform(100, 200, (1, 2, 9, 13, 12)).astype(np.float32)  # bright: float32 cancellation
    value, grad, target_grad = fa.ssim(x, x.copy(), data_range=255.0, win_size=5, padding="reflect", grad=True,
                                       target_grad=True)
    assert value == 1.0 and not grad.any() and not target_grad.any()
    m = fa.ssim_map(x, x.copy(), data_range=255.0, win_size=5, padding="same")
    assert (m == 1.0).all()


def test_mixed_loss_gives_the_target_its_gradient(rng):
    x, y = image_pair(rng, (2, 3, 20, 22), np.float64)
    value, grad, target_grad = fa.mixed_loss(x, y, alpha=0.3, grad=True, target_grad=True)
    ref = peers_gradients(lambda a, b: 0.3 * torch.nn.functional.l1_loss(a, b) + 0.7 * (
        1 - ssim_reference(a, b, data_range=1.0, win=window64(11, 1.5, 3, 2))), x, y)
    assert_close(value, ref[0], np.float64, "value")
    assert_close(grad, ref[1], np.float64, "grad")
    assert_close(target_grad, ref[2], np.float64, "target grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape, padding", [((3, 2, 40, 37), "valid"), ((1, 1, 600, 45), "same"),
                                            ((70, 1, 16, 16), "same"), ((17, 1, 700, 20), "same")])
def test_the_fused_kernel_gives_the_target_its_gradient_in_the_same_pass(rng, monkeypatch, dtype, shape, padding):
    """Strips of small planes, bands of tall ones: the target's gradient, computed beside the prediction's,
    equals the prediction's gradient of the swapped call (SSIM is symmetric), for 1 and 2 threads, and
    accumulates in mixed_loss."""
    x, y = image_pair(rng, shape, dtype)
    swapped = fa.ssim(y, x, padding=padding, grad=True).grad
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("NUMBA_NUM_THREADS", threads)
        results.append(fa.ssim(x, y, padding=padding, grad=True, target_grad=True))
    np.testing.assert_array_equal(results[0].target_grad, results[1].target_grad)
    np.testing.assert_array_equal(results[0].grad, results[1].grad)
    assert_close(results[0].target_grad, swapped, dtype, "target grad")
    np.testing.assert_array_equal(results[0].grad, fa.ssim(x, y, padding=padding, grad=True).grad)
    mixed = fa.mixed_loss(x, y, alpha=0.4, padding=padding, grad=True, target_grad=True)
    assert_close(mixed.target_grad, fa.mixed_loss(y, x, alpha=0.4, padding=padding, grad=True).grad, dtype, "mixed")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("pixel", ["l1", "mse"])
@pytest.mark.parametrize("shape, padding, win", [((3, 2, 40, 37), "valid", 11), ((70, 1, 16, 16), "same", 11),
                                                 ((1, 1, 600, 45), "same", 11), ((17, 1, 700, 20), "valid", 11),
                                                 ((2, 1, 300, 301), "same", 3), ((3, 1, 300, 300), "valid", 11)])
def test_mixed_loss_takes_the_pixel_loss_in_the_ssim_pass(rng, monkeypatch, dtype, pixel, shape, padding, win):
    """The pixel loss is taken as the SSIM kernel reads its input rows, each row by the one band that owns it
    (strips of small planes, bands of tall ones, a last strip one plane short), its gradient added to the
    SSIM's as that is written (a strip of one plane; a shared row when its bands' parts are joined; a strip
    of several planes too large to take at once: 3x300^2 in float32 has a strip of two planes and one of
    one, each cut in two bands) or written first (several small planes, at once): value and both gradients
    against torch in float64, bit-identical for 1 and 2 threads, the value alone the same."""
    x, y = image_pair(rng, shape, dtype)
    kw = dict(alpha=0.3, pixel=pixel, padding=padding, win_size=win)
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("NUMBA_NUM_THREADS", threads)
        results.append(fa.mixed_loss(x, y, grad=True, target_grad=True, **kw))
    for one, two in zip(results[0], results[1]):
        np.testing.assert_array_equal(one, two)
    value, grad, target_grad = results[0]
    assert fa.mixed_loss(x, y, **kw) == value
    if padding == "same":
        ssim_value, ssim_grad = ssim_same_padding(x, y, win_size=win)
    else:
        ssim_value, ssim_grad = torch_reference(ssim_reference, x, y, data_range=1.0, win_size=win)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = torch.tensor(y, dtype=torch.float64)
    pixel_loss = getattr(torch.nn.functional, f"{pixel}_loss")(xt, yt)
    pixel_loss.backward()
    assert_close(value, 0.3 * pixel_loss.item() + 0.7 * (1 - ssim_value), dtype, "value")
    assert_close(grad, 0.3 * xt.grad.numpy() - 0.7 * ssim_grad, dtype, "grad")
    assert_close(target_grad, fa.mixed_loss(y, x, grad=True, **kw).grad, dtype, "target grad")


def test_bench_rows_hold_small_patches_against_the_big_batch(monkeypatch):
    """fastae bench's SSIM rows: Mpixel/s at each thread count, for ssim_loss the fraction of the flop limit
    (SSIM_FLOPS a pixel at the measured multiply-add peak), the peer's ratio where it has the padding, and
    the 'same' patches' rate over the first case's, thread count for thread count (the issue's bar)."""
    import fastae.bench as bench
    monkeypatch.setattr(bench, "flop_peak", lambda threads: 50.0 * threads)
    rows = bench.ssim_rows(1, cases=[("ssim_loss", (1, 2, 40, 40), "valid"), ("ssim_loss", (8, 1, 16, 16), "same"),
                                     ("mixed_loss", (1, 1, 30, 30), "valid")])
    big, small, mixed = rows
    assert big["x peer"] > 0 and "x peer" not in small and "x big batch" not in big
    assert small["x big batch"] == "/".join(f"{small[f'{n}T Mpx/s'] / big[f'{n}T Mpx/s']:.2f}" for n in (1, 2))
    for row in (big, small):
        for n in (1, 2):
            assert row[f"{n}T of limit"] == pytest.approx(row[f"{n}T Mpx/s"] * 1e6 * bench.SSIM_FLOPS / 1e9 / (50.0 * n))
    assert "1T of limit" not in mixed and mixed["x ssim_loss time"] > 0


def test_flop_peak_counts_the_multiply_adds_it_times():
    """The limit the SSIM rows are held against: 32 multiply-adds (64 flops) an element per repetition, in four
    chains, timed on each thread at once; more than a GFLOP/s on any machine that runs the kernels at all."""
    from fastae.bench import _fma_chains, flop_peak
    a, out = np.linspace(0.1, 0.9, 512, dtype=np.float32), np.empty(512, np.float32)
    _fma_chains(a, out, 2)
    chains = [a.astype(np.float64) + start for start in (0.0, 0.25, 0.5, 0.75)]
    for _ in range(8):
        chains = [u * a + 0.5 for u in chains]
    np.testing.assert_allclose(out, (chains[0] + chains[1]) + (chains[2] + chains[3]), rtol=1e-5)
    assert flop_peak(1, seconds=0.02) > 1.0


RANGES = {np.float32: [1e-30, 1e-10, 1e10, 1e30], np.float64: [1e-250, 1e-100, 1e100, 1e250]}
STRUCTURAL = [("ssim", {}), ("ssim", {"padding": "same"}), ("ssim", {"padding": "reflect"}),
              ("mixed_loss", {"alpha": 0.3}), ("ms_ssim", {}), ("ms_ssim_l1_loss", {})]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, options", STRUCTURAL, ids=["valid", "same", "reflect", "mixed", "ms_ssim", "ms_l1"])
def test_the_structural_losses_are_the_same_at_any_data_range(rng, dtype, name, options):
    """SSIM(s x, s y; data_range s) = SSIM(x, y; 1), both gradients times 1/s (the mixed loss's L1 term times
    s): so at any finite s, though the moments of s x and the constants (k s)^2 leave float32 from s ~ 1e19
    (NaN from 1e30) and float64 below 1e-154 (NaN from 1e-200; C1 raised OverflowError from 1e200)."""
    shape = (1, 1, 170, 165) if name == "ms_ssim" else (2, 3, 24, 27)
    x, y = image_pair(rng, shape, np.float64)
    fn = getattr(fa, name)
    unit = fn(x, y, data_range=1.0, grad=True, target_grad=True, **options)
    if name == "ssim" and not options:  # (the unit problem itself against the peer)
        assert_close(unit.loss, torch_reference(ssim_reference, x, y, data_range=1.0)[0], np.float64)
    for s in RANGES[dtype]:
        value, grad, target_grad = fn((x * s).astype(dtype), (y * s).astype(dtype), data_range=s, grad=True,
                                      target_grad=True, **options)
        assert grad.dtype == dtype and np.isfinite(grad).all() and np.isfinite(target_grad).all()
        expected = [unit.loss, unit.grad / s, unit.target_grad / s]
        if name == "mixed_loss":  # alpha |x - y| / n scales with s, its gradient does not
            l1, l1_grad = fa.l1(x, y, grad=True)
            expected = [unit.loss + 0.3 * l1 * (s - 1), (unit.grad - 0.3 * l1_grad) / s + 0.3 * l1_grad,
                        (unit.target_grad + 0.3 * l1_grad) / s - 0.3 * l1_grad]
        for got, want, what in zip((value, grad, target_grad), expected, ("value", "grad", "target_grad")):
            scale = np.abs(want).max()
            assert_close(np.asarray(got, np.float64) / scale, want / scale, dtype, what, 1e-4)


def test_bench_timings_let_each_function_follow_each_other(monkeypatch):
    """median_times runs each round in a new order: what one function leaves behind (pytorch-msssim's freed
    memory, a helper thread asleep) slows the next, so a fixed order favoured one of two functions by up to
    15%. Over 12 rounds of three functions each follows each other, and each is timed once a round."""
    import fastae.bench as bench
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: None)
    calls = []
    functions = [lambda name=name: calls.append(name) for name in "abc"]
    times = bench.median_times(functions, 12, sample=0.0)
    assert len(times) == 3 and all(t >= 0 for t in times)
    timed = calls[6:]  # (two calls each to warm up and count the calls a sample takes)
    assert sorted(timed) == sorted("abc" * 12)
    rounds = [timed[i:i + 3] for i in range(0, 36, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    follows = {(r[i], r[i + 1]) for r in rounds for i in range(2)}
    assert follows == {(p, q) for p in "abc" for q in "abc" if p != q}
