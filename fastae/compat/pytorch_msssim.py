"""pytorch-msssim's API on fastae's kernels: ``from fastae.compat import pytorch_msssim``.

The same names, signatures and defaults (``data_range=255``, ``size_average``, ``win_size``,
``win_sigma``, ``win``, ``K``, ``nonnegative_ssim``, ``channel``, ``spatial_dims``), the same checks and
messages, images (N, C, H, W) or volumes (N, C, D, H, W), singleton axes after the channels squeezed
as pytorch-msssim does, an axis shorter than the window left unsmoothed with a warning. Gradients flow
to both images. The Gaussian window is pytorch-msssim's own (computed in float32, then cast to the
images' dtype), so float64 results agree to rounding. ``win`` (C, 1, ..., win_size) filters each
channel with its own row, as pytorch-msssim's grouped convolution does (one pass when the rows are alike).
Under torch.compile, ssim and ms_ssim without ``win`` trace whole (fullgraph=True); a ``win`` (the modules'
too) is read on every call, a graph break, so that a changed window is never a stale constant.
"""
import functools
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

import fastae.torch as ft

__all__ = ["ssim", "ms_ssim", "SSIM", "MS_SSIM"]


def _prepare(X, Y, win_size, win, win_sigma):
    if not X.shape == Y.shape:
        raise ValueError(f"Input images should have the same dimensions, but got {X.shape} and {Y.shape}.")
    for d in range(len(X.shape) - 1, 1, -1):
        X = X.squeeze(dim=d)
        Y = Y.squeeze(dim=d)
    if len(X.shape) not in (4, 5):
        raise ValueError(f"Input images should be 4-d or 5-d tensors, but got {X.shape}")
    if win is not None:
        win_size = win.shape[-1]
    if not (win_size % 2 == 1):
        raise ValueError("Window size should be odd.")
    if win is None:
        return win_size, [(X, Y, _gaussian(win_size, win_sigma))]
    # (compared as floats: torch.equal cost ~15 us a call; under torch.compile a graph break, as win's values may
    # change between calls)
    rows = win.detach().reshape(win.shape[0], -1).tolist()
    if all(row == rows[0] for row in rows):
        return win_size, [(X, Y, rows[0])]
    if len(rows) != X.shape[1]:
        raise ValueError(f"win holds {len(rows)} different windows for images of {X.shape[1]} channels: "
                         f"give one per channel, or one for all")
    return win_size, [(X[:, c:c + 1], Y[:, c:c + 1], row) for c, row in enumerate(rows)]


def _planes(X):
    """(N, C, *spatial) viewed as N * C single-channel images: one value per channel."""
    return X.reshape((X.shape[0] * X.shape[1], 1) + X.shape[2:])


def ssim(X: Tensor, Y: Tensor, data_range: float = 255, size_average: bool = True, win_size: int = 11,
         win_sigma: float = 1.5, win: Optional[Tensor] = None, K: Union[Tuple[float, float], List[float]] = (0.01, 0.03),
         nonnegative_ssim: bool = False) -> Tensor:
    """SSIM of X and Y (valid filtering): the mean over images and channels (``size_average``), else one
    value per image; ``nonnegative_ssim`` clamps each channel's SSIM at 0."""
    win_size, groups = _prepare(X, Y, win_size, win, win_sigma)
    k1, k2 = K  # (pytorch-msssim unpacks K: a K of another length is its ValueError)
    values = [ft.ssim(_planes(x), _planes(y), data_range, "none", win_size=win_size, sigma=win_sigma, k1=k1, k2=k2,
                      window=window, small="skip").reshape(x.shape[:2]) for x, y, window in groups]
    per_channel = values[0] if len(values) == 1 else torch.cat(values, dim=1)
    if nonnegative_ssim:
        per_channel = torch.relu(per_channel)
    return per_channel.mean() if size_average else per_channel.mean(1)


def ms_ssim(X: Tensor, Y: Tensor, data_range: float = 255, size_average: bool = True, win_size: int = 11,
            win_sigma: float = 1.5, win: Optional[Tensor] = None, weights: Optional[List[float]] = None,
            K: Union[Tuple[float, float], List[float]] = (0.01, 0.03)) -> Tensor:
    """MS-SSIM of X and Y: five levels (or ``weights``), 2x average pooling between them."""
    win_size, groups = _prepare(X, Y, win_size, win, win_sigma)
    smaller_side = min(groups[0][0].shape[-2:])
    assert smaller_side > (win_size - 1) * (2 ** 4), \
        "Image size should be larger than %d due to the 4 downsamplings in ms-ssim" % ((win_size - 1) * (2 ** 4))
    reduction = "mean" if size_average and len(groups) == 1 else "none"
    k1, k2 = K
    values = [ft.ms_ssim(x, y, data_range, reduction, win_size=win_size, sigma=win_sigma, k1=k1, k2=k2,
                         weights=weights, window=window, small="skip") for x, y, window in groups]
    if len(groups) == 1:
        return values[0]
    per_image = torch.stack(values, dim=1).mean(1)  # (each group one channel: the mean over channels)
    return per_image.mean() if size_average else per_image


@torch.compiler.assume_constant_result
def _gaussian(win_size, win_sigma):
    """pytorch-msssim's default window's values (see _cached_gaussian): a constant under torch.compile (a
    function of two numbers alone), so that ssim and ms_ssim without win compile without a graph break."""
    return _cached_gaussian(win_size, win_sigma)


@functools.lru_cache(maxsize=16)
def _cached_gaussian(win_size, win_sigma):
    """The values of pytorch-msssim's window (float32), once per size and sigma: building it costs a call on
    a small image ~0.1 ms, which pytorch-msssim pays every time."""
    return tuple(_window(win_size, win_sigma, 1, 1).reshape(-1).tolist())


def _window(win_size, win_sigma, channel, spatial_dims):
    """pytorch-msssim's module window: the 1-D Gaussian, shaped (channel, 1, 1, ..., win_size)."""
    coords = torch.arange(win_size, dtype=torch.float) - win_size // 2
    g = torch.exp(-(coords ** 2) / (2 * win_sigma ** 2))
    g = g / g.sum()
    return g.reshape((1, 1) + (1,) * (spatial_dims - 1) + (win_size,)).repeat([channel, 1] + [1] * spatial_dims)


class _Window(torch.nn.Module):
    """What both modules hold: pytorch-msssim's window (``win``) and its options."""

    def __init__(self, data_range, size_average, win_size, win_sigma, channel, spatial_dims, K):
        super().__init__()
        self.win_size = win_size
        self.win = _window(win_size, win_sigma, channel, spatial_dims)
        self.size_average = size_average
        self.data_range = data_range
        self.K = K


class SSIM(_Window):
    def __init__(self, data_range: float = 255, size_average: bool = True, win_size: int = 11, win_sigma: float = 1.5,
                 channel: int = 3, spatial_dims: int = 2, K: Union[Tuple[float, float], List[float]] = (0.01, 0.03),
                 nonnegative_ssim: bool = False) -> None:
        super().__init__(data_range, size_average, win_size, win_sigma, channel, spatial_dims, K)
        self.nonnegative_ssim = nonnegative_ssim

    def forward(self, X: Tensor, Y: Tensor) -> Tensor:
        return ssim(X, Y, data_range=self.data_range, size_average=self.size_average, win=self.win, K=self.K,
                    nonnegative_ssim=self.nonnegative_ssim)


class MS_SSIM(_Window):
    def __init__(self, data_range: float = 255, size_average: bool = True, win_size: int = 11, win_sigma: float = 1.5,
                 channel: int = 3, spatial_dims: int = 2, weights: Optional[List[float]] = None,
                 K: Union[Tuple[float, float], List[float]] = (0.01, 0.03)) -> None:
        super().__init__(data_range, size_average, win_size, win_sigma, channel, spatial_dims, K)
        self.weights = weights

    def forward(self, X: Tensor, Y: Tensor) -> Tensor:
        return ms_ssim(X, Y, data_range=self.data_range, size_average=self.size_average, win=self.win,
                       weights=self.weights, K=self.K)
