"""kornia.losses' SSIM losses: ``ssim_loss``, ``ssim3d_loss``, ``SSIMLoss``, ``SSIM3DLoss`` (the structural
dissimilarity clamp((1 - SSIM) / 2, 0, 1), reduced) and ``MS_SSIMLoss`` (fastae.ms_ssim_l1_loss)."""
from typing import Sequence, Tuple

import torch
from torch import nn

import fastae.torch as ft

from . import metrics

__all__ = ["ssim_loss", "ssim3d_loss", "SSIMLoss", "SSIM3DLoss", "MS_SSIMLoss"]


def _reduce(loss, reduction):
    if reduction == "mean":
        return torch.mean(loss)
    if reduction == "sum":
        return torch.sum(loss)
    if reduction == "none":
        return loss
    raise NotImplementedError("Invalid reduction option.")


def ssim_loss(img1: torch.Tensor, img2: torch.Tensor, window_size: int, max_val: float = 1.0, eps: float = 1e-12,
              reduction: str = "mean", padding: str = "same") -> torch.Tensor:
    """clamp((1 - SSIM) / 2, 0, 1) of images (B, C, H, W), reduced."""
    ssim_map = metrics.ssim(img1, img2, window_size, max_val, eps, padding)
    return _reduce(torch.clamp((1.0 - ssim_map) / 2, min=0, max=1), reduction)


def ssim3d_loss(img1: torch.Tensor, img2: torch.Tensor, window_size: int, max_val: float = 1.0, eps: float = 1e-12,
                reduction: str = "mean", padding: str = "same") -> torch.Tensor:
    """clamp((1 - SSIM) / 2, 0, 1) of volumes (B, C, D, H, W), reduced."""
    ssim_map = metrics.ssim3d(img1, img2, window_size, max_val, eps, padding)
    return _reduce(torch.clamp((1.0 - ssim_map) / 2, min=0, max=1), reduction)


class SSIMLoss(nn.Module):
    def __init__(self, window_size: int, max_val: float = 1.0, eps: float = 1e-12, reduction: str = "mean",
                 padding: str = "same") -> None:
        super().__init__()
        self.window_size, self.max_val, self.eps = window_size, max_val, eps
        self.reduction, self.padding = reduction, padding

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        return ssim_loss(img1, img2, self.window_size, self.max_val, self.eps, self.reduction, self.padding)


class SSIM3DLoss(SSIMLoss):
    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        return ssim3d_loss(img1, img2, self.window_size, self.max_val, self.eps, self.reduction, self.padding)


class MS_SSIMLoss(nn.Module):
    """The MS-SSIM + L1 loss of Zhao et al. as kornia computes it (fastae.torch.ms_ssim_l1_loss)."""

    def __init__(self, sigmas: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0), data_range: float = 1.0,
                 K: Tuple[float, float] = (0.01, 0.03), alpha: float = 0.025, compensation: float = 200.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.sigmas, self.DR, self.K = tuple(float(s) for s in sigmas), data_range, K
        self.alpha, self.compensation, self.reduction = alpha, compensation, reduction
        self.pad = int(2 * self.sigmas[-1])

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        for name, img in (("Input", img1), ("Output", img2)):
            if not isinstance(img, torch.Tensor):
                raise TypeError(f"{name} type is not a torch.Tensor. Got {type(img)}")
        for name, img in (("img1", img1), ("img2", img2)):
            if img.dim() != 4:
                raise ValueError(f"Invalid {name} shape, we expect BxCxHxW. Got: {img.shape}")
        if img1.shape[1:] != img2.shape[1:] or not (img1.shape[0] == img2.shape[0] or 1 in (img1.shape[0],
                                                                                             img2.shape[0])):
            raise ValueError("Input and target must have the same shape, except for a batch size of 1. "
                             f"Got: {img1.shape} and {img2.shape}.")
        batch = max(img1.shape[0], img2.shape[0])  # a batch of one is compared with every image of the other
        img1, img2 = img1.expand((batch,) + img1.shape[1:]), img2.expand((batch,) + img2.shape[1:])
        return ft.ms_ssim_l1_loss(img1, img2, sigmas=self.sigmas, data_range=self.DR, k1=self.K[0], k2=self.K[1],
                                  alpha=self.alpha, compensation=self.compensation, reduction=self.reduction)
