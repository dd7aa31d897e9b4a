"""Structural losses: SSIM, MS-SSIM and the mixed pixel + structural loss.

SSIM follows Wang et al. 2004 with a normalised Gaussian window and, by
default, "valid" filtering: exactly what pytorch-msssim computes, and
scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)``. The window is computed in float64 (then cast
to the data's dtype); pytorch-msssim rounds it to float32 first, which moves
SSIM by a few 1e-9 on typical images, about 1e-5 on bright ones. Identical
images give exactly 1 and a zero gradient. ``padding="same"`` zero-pads every filtered map by
win_size // 2 (fused-ssim's convention, used by 3D Gaussian Splatting); ``padding="reflect"``
reflects the images about their edges instead (kornia's "same").
Images are (H, W), (C, H, W) or (N, C, H, W); volumes (N, C, D, H, W) take the window along each
of their three axes (3-D SSIM, as pytorch-msssim and kornia's ssim3d). ``window`` replaces the
Gaussian of win_size and sigma by a caller's own 1-D window (odd length); ``eps`` enters as
kornia's: SSIM = a b / (c d + eps). ``target_grad=True`` (with ``grad=True``) also returns the
gradient in the target: ``LossGrads(loss, grad, target_grad)``. The gradient is exact.
Any finite data_range works alike: SSIM is unchanged when images and data_range are multiplied
together, so one far from 1 is brought near it by a power of two before the moments are taken.

The 2-D images with zero padding and eps = 0 run the fused streaming kernel
(both gradients in one pass, on the CPU and on CUDA); everything else runs the general path
(``fastae/_ssim_map.py``: separable filters, both gradients in one pass).
"""
import functools
import math
import warnings

import numpy as np

from ._arrays import Call, check_choice, check_number, check_target_grad, contiguous, on_device
from ._neutral import gaussian_window, pool_pads, power_of_two_scale
from ._ssim_map import ssim_map as _general_map
from .pointwise import LossGrad, LossGrads

PADDINGS = ("valid", "same", "reflect")
SMALL_WINDOW = 63  # any image takes a window this small with padding="same"
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, as pytorch-msssim


@functools.lru_cache(maxsize=64)
def _gaussian_window(win_size, sigma):
    """gaussian_window, read-only and computed once per (win_size, sigma): small images' calls are short."""
    window = gaussian_window(win_size, sigma)
    window.flags.writeable = False
    return window


class _Settings:
    """A call's checked settings, its arrays aside: the window, the padding, the constants, and what
    they make of images of ``spatial`` size (float32 or float64 ones where ``floating``)."""

    def __init__(self, spatial, floating, data_range, win_size, sigma, k1, k2, padding, reduction, window, eps,
                 small):
        self.dims = len(spatial)
        if window is not None:
            window = np.asarray(window.tolist() if hasattr(window, "tolist") else window, dtype=np.float64)
            if window.ndim != 1 or window.size % 2 == 0 or not np.isfinite(window).all():
                raise ValueError(f"window must be a 1-D sequence of finite numbers of odd length, got shape "
                                 f"{window.shape}")
            win_size = window.size
        if isinstance(win_size, bool) or not isinstance(win_size, (int, np.integer)) or win_size < 1 \
                or win_size % 2 == 0:
            raise ValueError(f"win_size must be a positive odd integer, got {win_size!r}")
        self.data_range = check_number(data_range, "data_range", positive=True)
        self.sigma = check_number(sigma, "sigma", positive=True)
        self.k1 = check_number(k1, "k1", positive=True)
        self.k2 = check_number(k2, "k2", positive=True)
        self.eps = check_number(eps, "eps", nonnegative=True)
        check_choice(padding, "padding", PADDINGS)
        if reduction is not None:
            check_choice(reduction, "reduction", ("mean", "none"))
        self.win_size, self.padding, self.reduction = int(win_size), padding, reduction
        self.spatial = spatial
        self.pad = 0 if padding == "valid" else self.win_size // 2
        check_choice(small, "small", ("raise", "skip"))
        # small="skip": an axis shorter than the window is not smoothed (pytorch-msssim's behaviour)
        self.skip = tuple(i for i, n in enumerate(spatial) if small == "skip" and self.pad == 0
                          and n < self.win_size)
        self.n_pos = self.positions(*spatial)  # (sizes are checked before anything is allocated)
        if self.win_size > max(2 * max(spatial) + 1, SMALL_WINDOW):
            raise ValueError(f"win_size={self.win_size} is more than twice the {'x'.join(map(str, spatial))} "
                             "images: its ends would see nothing but padding")
        if padding == "reflect" and self.pad >= min(spatial):
            raise ValueError(f"padding='reflect' with win_size={self.win_size} needs images larger than "
                             f"{self.pad} a side, got {'x'.join(map(str, spatial))}")
        self.window = _gaussian_window(self.win_size, self.sigma) if window is None else window
        self.general = self.dims == 3 or padding == "reflect" or self.eps > 0 or bool(self.skip)
        # SSIM is the same for (t x, t y, t data_range): a data_range far from 1 is brought into [1/2, 1) by a
        # power of two t (exact), so that no moment or constant overflows or underflows (float32 gave NaN from
        # data_range 1e30, float64 from 1e-200; C1 raised OverflowError from 1e200); every gradient is then
        # taken times t (``unit``).
        self.unit = power_of_two_scale(self.data_range) if floating else 1.0
        self.data_range *= self.unit
        self.c1 = (self.k1 * self.data_range) ** 2
        self.c2 = (self.k2 * self.data_range) ** 2

    def out_shape(self, *spatial):
        """The filtered maps' spatial shape (an axis in ``skip`` is not filtered)."""
        return tuple(n if i in self.skip else n + 2 * self.pad - self.win_size + 1 for i, n in enumerate(spatial))

    def positions(self, *spatial):
        """Valid output positions of a plane; ValueError when there are none."""
        if self.pad == 0 and min((n for i, n in enumerate(spatial) if i not in self.skip), default=self.win_size) \
                < self.win_size:
            raise ValueError(f"images of {'x'.join(map(str, spatial))} are smaller than the window "
                             f"({self.win_size}) with padding='valid'; use padding='same' or a smaller win_size")
        return math.prod(self.out_shape(*spatial))


@functools.lru_cache(maxsize=256, typed=True)
def _plain_settings(*key):
    """_Settings of plain numbers and strings, made once for each (typed: 1, 1.0 and True apart): its checks
    took ~6 us of Python, measured ~13 us of a ~165 us call on 128 patches of 16^2 on two threads."""
    return _Settings(*key)


_PLAIN = frozenset((float, int, str, type(None)))


class _Images(_Settings):
    """pred and target checked and viewed as planes (P, H, W), with the call's settings (see _Settings)."""

    def __init__(self, pred, target, data_range, win_size, sigma, k1, k2, padding, reduction=None, window=None,
                 eps=0.0, small="raise"):
        self.call = Call(pred)
        p = self.call.pred
        t = self.call.like_pred(target, "target")
        if not 2 <= p.ndim <= 5:
            raise ValueError(f"pred must be (H, W), (C, H, W), (N, C, H, W) images or (N, C, D, H, W) volumes, "
                             f"got shape {p.shape}")
        dims = 3 if p.ndim == 5 else 2
        if 0 in p.shape[-dims - 1:]:
            raise ValueError(f"pred's images must have channels and pixels, got shape {p.shape}")
        key = (p.shape[-dims:], p.dtype in (np.float32, np.float64), data_range, win_size, sigma, k1, k2, padding,
               reduction, window, eps, small)
        if window is None and _PLAIN.issuperset(map(type, key[2:])):
            self.__dict__.update(_plain_settings(*key).__dict__)
        else:  # (an array or a tensor among them: checked each time, as its values may change)
            _Settings.__init__(self, *key)
        if self.skip:
            warnings.warn(f"ssim: images of {'x'.join(map(str, self.spatial))} are smaller than the window "
                          f"({self.win_size}) along axes {self.skip}: not smoothed along them", stacklevel=4)
        self.shape = p.shape
        self.h, self.w = p.shape[-2:]
        self.channels = p.shape[-dims - 1] if p.ndim > dims else 1
        self.batch = p.shape[:-dims - 1]  # () or (N,)
        self.xp = self.call.xp
        self.backend = self.call.backend
        # the images as given stay in given_x, given_y; x, y are taken times unit (see _Settings)
        self.x = self.given_x = contiguous(p).reshape((-1,) + self.spatial)
        self.y = self.given_y = contiguous(t).reshape((-1,) + self.spatial)
        if self.unit != 1:
            self.x, self.y = ((a * self.xp.float64(self.unit)).astype(a.dtype) for a in (self.x, self.y))

    def out(self, out):
        """The gradient buffer as planes (see Call.out: a stand-in when ``out`` overlaps the images)."""
        return self.call.out(out, reads=(self.given_x, self.given_y)).reshape(self.x.shape)

    def deliver(self, g, out):
        return self.call.deliver(g.reshape(self.shape), out)

    def map(self, x, y, use_cs=False, weights=None, grad_x=False, grad_y=False):
        """The general path: (map, gradient in x, gradient in y) of planes x, y (see _ssim_map); float16 and
        bfloat16 (on a device) run in float32 and come back in float32."""
        if x.dtype not in (np.float32, np.float64):
            x, y = self.backend.to_float32(x), self.backend.to_float32(y)
            weights = None if weights is None else self.backend.to_float32(weights)
        windows = [np.ones(1) if i in self.skip else self.window for i in range(self.dims)]
        pads = [0 if i in self.skip else self.pad for i in range(self.dims)]
        return _general_map(self.xp, self.backend, x, y, windows, pads, self.padding == "reflect", self.c1, self.c2,
                            self.eps, use_cs, weights, grad_x, grad_y)

    def store(self, values, buffer, accumulate=False):
        """float32 (or the images' dtype) ``values`` written, or added, into ``buffer`` of the images' dtype."""
        if values.dtype == buffer.dtype:
            if accumulate:
                buffer += values
            else:
                buffer[...] = values
            return
        if accumulate:
            values = values + self.backend.to_float32(buffer)
        self.backend.from_float32(values, buffer)

    def planes(self, x, y, use_cs, scales, grad, accumulate=False, target_grad=None, pixel=None):
        """Per-plane sums of the SSIM (or contrast-structure) map; with ``grad`` (``target_grad``),
        scales[p] times each plane's gradient in x (in y) written (or added) into it. With ``pixel`` =
        (loss, scale): the pixel loss's gradient times scale added, in the same pass where the backend
        can (SSIM_PIXEL), and (per-plane sums, the pixel loss's float64 total) returned."""
        fused = not (self.general or self.skip)
        if pixel is not None and not (fused and self.backend.SSIM_PIXEL and self.unit == 1):
            # the pointwise pass first, on the images as given (x, y may be rescaled: see unit)
            _, total, _ = self.backend.pointwise(pixel[0], {}, "identity", 0.0, self.given_x, self.given_y, None, grad,
                                                 None, pixel[1], 1.0, target_grad=target_grad)
            return self.planes(x, y, use_cs, scales, grad, True, target_grad), total
        if fused:
            args = (x, y, self.window, self.pad, self.c1, self.c2, use_cs, scales, grad, accumulate, target_grad)
            return self.backend.ssim_planes(*args) if pixel is None else self.backend.ssim_planes(*args, pixel=pixel)
        weights = None
        if grad is not None or target_grad is not None:
            out_shape = self.out_shape(*x.shape[1:])
            work = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
            weights = self.xp.empty((x.shape[0],) + out_shape, work)
            weights[...] = scales.astype(work).reshape((-1,) + (1,) * len(out_shape))
        value, gx, gy = self.map(x, y, use_cs, weights, grad is not None, target_grad is not None)
        for buffer, g in ((grad, gx), (target_grad, gy)):
            if buffer is not None:
                self.store(g, buffer, accumulate)
        return value.reshape(x.shape[0], -1).sum(axis=1, dtype=np.float64)

    def full(self, planes, value):
        return self.xp.full(planes, value, np.float64)

    def per_image(self, per_plane):
        """Mean over channels: one value per image, shaped as the batch axes."""
        return per_plane.reshape(-1, self.channels).mean(axis=1).reshape(self.batch)

    def reduce(self, per_plane, sign=1.0, offset=0.0):
        if self.reduction == "none":
            value = offset + sign * self.per_image(per_plane)
        else:
            value = offset + sign * mean(per_plane)
        return self.call.back(self.xp.asarray(value, self.call.value_dtype))

    def plane_weight(self):
        """d (reduced value) / d (plane value): planes averaged over all, or over channels
        (0 for an empty batch, which has no gradient to spread)."""
        planes = self.x.shape[0] if self.reduction != "none" else self.channels
        return 1.0 / planes if planes else 0.0


def mean(a):
    """The mean of ``a``; NaN, quietly, for an empty batch (as torch's losses)."""
    return a.sum() / a.size if a.size else np.nan  # (what a.mean() computes, without its ~3 us of Python)


def _result(images, value, g, out, tg):
    if g is None:
        return value
    if tg is None:
        return LossGrad(value, images.deliver(g, out))
    return LossGrads(value, images.deliver(g, out), images.deliver(tg, None))


def _target_buffer(images, grad, target_grad):
    check_target_grad(grad, target_grad)
    return images.out(None) if target_grad else None


def _ssim(images, sign, offset, grad, out, target_grad=False):
    n_pos = images.n_pos
    tg = _target_buffer(images, grad, target_grad)
    g = images.out(out) if grad else None
    scales = images.full(images.x.shape[0], sign * images.plane_weight() / n_pos * images.unit)
    per_plane = images.planes(images.x, images.y, False, scales, g, target_grad=tg) / n_pos
    return _result(images, images.reduce(per_plane, sign, offset), g, out, tg)


@on_device
def ssim(pred, target, *, data_range=1.0, win_size=11, sigma=1.5, k1=0.01, k2=0.03, padding="valid",
         reduction="mean", window=None, eps=0.0, small="raise", grad=False, target_grad=False, out=None):
    """Mean SSIM of pred against target (``reduction="none"``: one value per
    image, the mean over its channels). ``grad=True`` returns
    ``LossGrad(ssim, d ssim / d pred)``; ``out`` receives the gradient.
    ``small="skip"``: with padding="valid", an axis shorter than the window
    is not smoothed, with a warning (pytorch-msssim's behaviour), rather
    than a ValueError."""
    images = _Images(pred, target, data_range, win_size, sigma, k1, k2, padding, reduction, window, eps, small)
    return _ssim(images, 1.0, 0.0, grad, out, target_grad)


@on_device
def ssim_loss(pred, target, *, data_range=1.0, win_size=11, sigma=1.5, k1=0.01, k2=0.03, padding="valid",
              reduction="mean", window=None, eps=0.0, small="raise", grad=False, target_grad=False, out=None):
    """1 - SSIM, and its gradient (the SSIM gradient negated)."""
    images = _Images(pred, target, data_range, win_size, sigma, k1, k2, padding, reduction, window, eps, small)
    return _ssim(images, -1.0, 1.0, grad, out, target_grad)


@on_device
def ssim_map(pred, target, *, data_range=1.0, win_size=11, sigma=1.5, k1=0.01, k2=0.03, padding="valid",
             window=None, eps=0.0, weights=None):
    """The per-pixel SSIM map, shaped as the images with the spatial axes those of the filtered maps
    (kornia's ``metrics.ssim``). With ``weights`` (the map's shape): ``LossGrads(map, d/dpred,
    d/dtarget)`` of sum(weights * map), both gradients in one pass."""
    images = _Images(pred, target, data_range, win_size, sigma, k1, k2, padding, None, window, eps)
    out_spatial = images.out_shape(*images.spatial)
    w = None
    if weights is not None:
        w = images.call.like_pred(weights, "weights", shape=False)
        if w.shape != images.shape[:-images.dims] + out_spatial:
            raise ValueError(f"weights has shape {w.shape}, the map has shape "
                             f"{images.shape[:-images.dims] + out_spatial}")
        w = contiguous(w).reshape((-1,) + out_spatial)
    value, gx, gy = images.map(images.x, images.y, weights=w, grad_x=w is not None, grad_y=w is not None)
    if w is not None and images.unit != 1:
        gx, gy = gx * gx.dtype.type(images.unit), gy * gy.dtype.type(images.unit)

    def back(a, shape):  # in the images' dtype
        out = images.xp.empty(shape, images.x.dtype)
        images.store(a.reshape(shape), out)
        return images.call.back(out)
    value = back(value, images.shape[:-images.dims] + out_spatial)
    if w is None:
        return value
    return LossGrads(value, back(gx, images.shape), back(gy, images.shape))


@on_device
def mixed_loss(pred, target, *, alpha, pixel="l1", data_range=1.0, win_size=11, sigma=1.5, k1=0.01, k2=0.03,
               padding="valid", window=None, eps=0.0, grad=False, target_grad=False, out=None):
    """alpha * pixel + (1 - alpha) * (1 - SSIM), pixel the mean L1 or MSE.

    alpha = 1 is the pixel loss alone, alpha = 0 the structural loss alone;
    every alpha in between minimises a weighted sum of the two objectives, so
    sweeping it traces their Pareto front (the reconstructions no other alpha
    beats on both). Zhao et al. trained with alpha = 0.16 and L1. One call,
    one fused gradient.
    """
    alpha = check_number(alpha, "alpha")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    check_choice(pixel, "pixel", ("l1", "mse"))
    images = _Images(pred, target, data_range, win_size, sigma, k1, k2, padding, "mean", window, eps)
    n_pos = images.n_pos
    tg = _target_buffer(images, grad, target_grad)
    g = images.out(out) if grad else None
    n = images.x.size
    scale = alpha / n if n else 0.0
    scales = images.full(images.x.shape[0], -(1.0 - alpha) * images.plane_weight() / n_pos * images.unit)
    per_plane, pixel_sum = images.planes(images.x, images.y, False, scales, g, target_grad=tg, pixel=(pixel, scale))
    per_plane = per_plane / n_pos
    pixel_mean = pixel_sum / n if n else np.nan
    value = images.call.back(images.xp.asarray(alpha * pixel_mean + (1.0 - alpha) * (1.0 - mean(per_plane)),
                                               images.call.value_dtype))
    return _result(images, value, g, out, tg)


@on_device
def ms_ssim(pred, target, *, data_range=1.0, win_size=11, sigma=1.5, k1=0.01, k2=0.03, weights=None,
            reduction="mean", window=None, small="raise", grad=False, target_grad=False, out=None):
    """Multi-scale SSIM as pytorch-msssim computes it: per level the mean
    contrast-structure (clamped at 0), the SSIM at the last, combined as
    prod_l value_l ** weight_l, the images halved by 2x2 average pooling (odd
    sizes zero-padded) between levels. Valid filtering; the smaller side must
    exceed (win_size - 1) * 2 ** (levels - 1). Gradient exact (a level whose
    value is clamped to 0 passes no gradient). bfloat16 images run in float32.
    Volumes (N, C, D, H, W) pool 2x2x2, as pytorch-msssim's avg_pool3d.
    ``small="skip"``: pytorch-msssim's checks and behaviour, the size checked
    on H and W alone and, at each level, an axis shorter than the window
    left unsmoothed (with a warning).
    """
    check_choice(small, "small", ("raise", "skip"))
    images = _Images(pred, target, data_range, win_size, sigma, k1, k2, "valid", reduction, window, 0.0, small)
    w = np.asarray(MS_SSIM_WEIGHTS if weights is None else weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.isfinite(w).all():
        raise ValueError(f"weights must be a non-empty 1-D sequence of finite numbers, got {weights!r}")
    levels = w.size
    need = (images.win_size - 1) * 2 ** (levels - 1)
    if min(images.spatial[-2:] if small == "skip" else images.spatial) <= need:
        raise ValueError(f"ms_ssim with {levels} levels and win_size={images.win_size} needs images larger "
                         f"than {need} pixels a side, got {'x'.join(map(str, images.spatial))}")
    xp = images.xp
    tresult = _target_buffer(images, grad, target_grad)
    result = images.out(out) if grad else None
    x, y, g, tg = images.x, images.y, result, tresult
    if images.call.dtype_name == "bfloat16":  # pooling needs arithmetic on the values: run in float32
        x, y = images.backend.to_float32(x), images.backend.to_float32(y)
        g = None if result is None else xp.empty(x.shape, np.float32)
        tg = None if tresult is None else xp.empty(x.shape, np.float32)
    # One pass per level: the level's mean (contrast-structure, or SSIM at the last) and, with grad, its
    # gradients per plane at unit weight (the target's in the same pass); the weights depend on every
    # level, so they are applied after.
    pads, values, grads = [], [], []
    for level in range(levels):
        if small == "skip":  # this level's short axes
            images.skip = tuple(i for i, n in enumerate(x.shape[1:]) if n < images.win_size)
        n_pos = images.positions(*x.shape[1:])
        last = level == levels - 1
        here = None if not grad else (g if level == 0 else xp.empty_like(x))
        there = None if tg is None else (tg if level == 0 else xp.empty_like(x))
        values.append(xp.maximum(images.planes(x, y, not last, images.full(x.shape[0], 1.0 / n_pos), here,
                                               target_grad=there) / n_pos, 0.0))
        grads.append((here, there))
        if not last:
            pads.append(pool_pads(*x.shape[1:]))
            x, y = images.backend.avg_pool(x, pads[-1]), images.backend.avg_pool(y, pads[-1])
    values = xp.stack(values)  # (levels, planes)
    w = xp.asarray(w)
    per_plane = xp.prod(values ** w[:, None], axis=0)
    value = images.reduce(per_plane)
    if not grad:
        return value
    totals = [None, None]
    for level in range(levels - 1, -1, -1):  # coarse to fine: this level's term, plus the pooled-up rest
        with np.errstate(divide="ignore", invalid="ignore"):
            d_value = xp.where(values[level] > 0, w[level] * per_plane / values[level], 0.0)
        scale = images.plane_weight() * images.unit * d_value
        for which, here in enumerate(grads[level]):
            if here is None:
                continue
            if totals[which] is None:
                here *= scale.astype(here.dtype).reshape((-1,) + (1,) * images.dims)
            else:
                images.backend.avg_pool_adjoint(totals[which], pads[level], here, scale)
            totals[which] = here
    if g is not result:
        images.backend.from_float32(g, result)
        if tg is not None:
            images.backend.from_float32(tg, tresult)
    return _result(images, value, result, out, tresult)


@on_device
def ms_ssim_l1_loss(pred, target, *, sigmas=(0.5, 1.0, 2.0, 4.0, 8.0), data_range=1.0, k1=0.01, k2=0.03, alpha=0.025,
                    compensation=200.0, reduction="mean", upstream=None, grad=False, target_grad=False):
    """The MS-SSIM + L1 loss of Zhao et al. as kornia's ``MS_SSIMLoss`` computes it, per pixel of images
    (N, C, H, W): compensation (alpha (1 - mean_c P) + (1 - alpha) mean_c(G_M * |x - y|) / data_range),
    P = SSIM at the coarsest sigma times the contrast-structure at every other, each scale a Gaussian of
    2 int(2 sigma_M) + 1 taps at full resolution, every map zero-padded to keep (H, W); reduced over
    (N, H, W) by ``reduction`` ("mean", "sum", "none"). With ``grad``, the gradient of the reduced loss
    (for "none": of sum(upstream * loss), ``upstream`` of shape (N, H, W), default ones); with
    ``target_grad`` also the target's (``LossGrads``). Both in one pass over the scales."""
    sigmas = [check_number(s, "sigmas", positive=True) for s in sigmas]
    if not sigmas:
        raise ValueError("sigmas must hold at least one positive number")
    alpha = check_number(alpha, "alpha")
    compensation = check_number(compensation, "compensation")
    check_choice(reduction, "reduction", ("mean", "sum", "none"))
    check_target_grad(grad, target_grad)
    pad = int(2 * sigmas[-1])
    images = _Images(pred, target, data_range, 2 * pad + 1, sigmas[-1], k1, k2, "same")
    if images.dims != 2 or len(images.shape) != 4:
        raise ValueError(f"ms_ssim_l1_loss takes images (N, C, H, W), got shape {images.shape}")
    xp, backend = images.xp, images.backend
    n, c, h, w = images.shape
    x, y = images.x, images.y
    dtype = x.dtype.type
    windows = [gaussian_window(2 * pad + 1, s) for s in sigmas]
    maps = [_general_map(xp, backend, x, y, [g, g], [pad, pad], False, images.c1, images.c2, 0.0,
                         s < len(sigmas) - 1)[0] for s, g in enumerate(windows)]
    product = maps[0]
    for m in maps[1:]:
        product = product * m
    g_last = windows[-1].astype(x.dtype)
    diff = xp.abs(x - y)
    blurred = backend.filter_axis(backend.filter_axis(contiguous(diff), g_last, 1, pad, False), g_last, 2, pad, False)
    per_pixel = (dtype(compensation) * (dtype(alpha) * (dtype(1) - product.reshape(n, c, h, w).mean(axis=1))
                                        + dtype(1 - alpha) * blurred.reshape(n, c, h, w).mean(axis=1)
                                        / dtype(images.data_range)))
    if reduction == "none":
        value = per_pixel
    else:
        value = per_pixel.sum(dtype=np.float64) / (per_pixel.size if reduction == "mean" else 1)
        value = xp.asarray(value, per_pixel.dtype) if per_pixel.size else xp.asarray(np.nan, per_pixel.dtype)
    value = images.call.back(value)
    if not grad:
        return value
    if upstream is None:
        u = xp.full((n, h, w), 1.0 / max(per_pixel.size, 1) if reduction == "mean" else 1.0, x.dtype)
    else:
        u = contiguous(images.call.like_pred(upstream, "upstream", shape=False)).reshape(n, h, w)
    d_product = xp.repeat((dtype(-compensation * alpha / c) * u)[:, None], c, axis=1).reshape(n * c, h, w)
    # d product / d map_s = the product of the other maps (prefix and suffix products: no division)
    prefix, suffix = [None], [None]  # prefix[s]: maps 0 .. s - 1 multiplied; suffix[s]: maps s + 1 ..
    for m in maps[:-1]:
        prefix.append(m if prefix[-1] is None else prefix[-1] * m)
    for m in maps[:0:-1]:
        suffix.append(m if suffix[-1] is None else suffix[-1] * m)
    suffix.reverse()
    gx = xp.zeros_like(x)
    gy = xp.zeros_like(x) if target_grad else None
    for s, g in enumerate(windows):
        others = d_product
        for part in (prefix[s], suffix[s]):
            if part is not None:
                others = others * part
        _, dx, dy = _general_map(xp, backend, x, y, [g, g], [pad, pad], False, images.c1, images.c2, 0.0,
                                 s < len(sigmas) - 1, others, True, target_grad)
        gx += dx
        if target_grad:
            gy += dy
    scale = dtype(compensation * (1 - alpha) / (c * images.data_range))
    spread = xp.repeat((scale * u)[:, None], c, axis=1).reshape(n * c, h, w)
    back = backend.filter_axis_adjoint(backend.filter_axis_adjoint(contiguous(spread), g_last, 2, pad, False, w),
                                       g_last, 1, pad, False, h)
    sign = xp.sign(x - y)
    gx += back * sign
    if target_grad:
        gy -= back * sign
    if images.unit != 1:  # (see _Images)
        gx *= dtype(images.unit)
        if target_grad:
            gy *= dtype(images.unit)
    if target_grad:
        return LossGrads(value, images.call.back(gx.reshape(images.shape)), images.call.back(gy.reshape(images.shape)))
    return LossGrad(value, images.call.back(gx.reshape(images.shape)))
