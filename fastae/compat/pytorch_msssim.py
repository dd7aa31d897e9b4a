"""pytorch-msssim's API on fastae's kernels: ``from fastae.compat import pytorch_msssim``.

The same names, signatures and defaults (``data_range=255``, ``size_average``, ``win_size``,
``win_sigma``, ``win``, ``K``, ``nonnegative_ssim``, ``channel``, ``spatial_dims``), the same checks and
messages, images (N, C, H, W) or volumes (N, C, D, H, W), singleton axes after the channels squeezed
as pytorch-msssim does, an axis shorter than the window left unsmoothed with a warning. Gradients flow
to both images. The Gaussian window is pytorch-msssim's own (computed in float32, then cast to the
images' dtype), so float64 results agree to rounding. ``win`` is read as one 1-D window (its first
channel's: pytorch-msssim would filter each channel with its own).
"""
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
    window = _window(win_size, win_sigma, 1, 1) if win is None else win
    return X, Y, win_size, window.reshape(window.shape[0], -1)[0]


def _planes(X):
    """(N, C, *spatial) viewed as N * C single-channel images: one value per channel."""
    return X.reshape((X.shape[0] * X.shape[1], 1) + X.shape[2:])


def ssim(X: Tensor, Y: Tensor, data_range: float = 255, size_average: bool = True, win_size: int = 11,
         win_sigma: float = 1.5, win: Optional[Tensor] = None, K: Union[Tuple[float, float], List[float]] = (0.01, 0.03),
         nonnegative_ssim: bool = False) -> Tensor:
    """SSIM of X and Y (valid filtering): the mean over images and channels (``size_average``), else one
    value per image; ``nonnegative_ssim`` clamps each channel's SSIM at 0."""
    X, Y, win_size, window = _prepare(X, Y, win_size, win, win_sigma)
    per_channel = ft.ssim(_planes(X), _planes(Y), data_range, "none", win_size=win_size, sigma=win_sigma, k1=K[0],
                          k2=K[1], window=window, small="skip").reshape(X.shape[:2])
    if nonnegative_ssim:
        per_channel = torch.relu(per_channel)
    return per_channel.mean() if size_average else per_channel.mean(1)


def ms_ssim(X: Tensor, Y: Tensor, data_range: float = 255, size_average: bool = True, win_size: int = 11,
            win_sigma: float = 1.5, win: Optional[Tensor] = None, weights: Optional[List[float]] = None,
            K: Union[Tuple[float, float], List[float]] = (0.01, 0.03)) -> Tensor:
    """MS-SSIM of X and Y: five levels (or ``weights``), 2x average pooling between them."""
    X, Y, win_size, window = _prepare(X, Y, win_size, win, win_sigma)
    smaller_side = min(X.shape[-2:])
    assert smaller_side > (win_size - 1) * (2 ** 4), \
        "Image size should be larger than %d due to the 4 downsamplings in ms-ssim" % ((win_size - 1) * (2 ** 4))
    return ft.ms_ssim(X, Y, data_range, "mean" if size_average else "none", win_size=win_size, sigma=win_sigma,
                      k1=K[0], k2=K[1], weights=weights, window=window, small="skip")


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
