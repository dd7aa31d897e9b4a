"""fused-ssim's API on fastae's kernels: ``from fastae.compat.fused_ssim import fused_ssim``.

``fused_ssim(img1, img2, padding="same", train=True)``: the mean SSIM with the 11-tap Gaussian
(sigma 1.5), C1 = 0.01^2 and C2 = 0.03^2 (images in [0, 1]), "same" zero-padding every filtered map
(3D Gaussian Splatting's convention) or "valid" (the same map without its 5-pixel border).
``train=False`` computes no gradient. Unlike fused-ssim, it runs on the CPU too, and img2 gets a
gradient when it requires one. ``fused_ssim3d`` takes volumes (N, C, D, H, W) or (C, D, H, W).
"""
import torch

import fastae.torch as ft

__all__ = ["fused_ssim", "fused_ssim3d"]
allowed_padding = ["same", "valid"]


def _fused(img1, img2, padding, train):
    # (fused-ssim's own check, an assert)
    assert padding in allowed_padding, f"padding must be one of {allowed_padding}, got {padding!r}"
    if not train:
        with torch.no_grad():
            return ft.ssim(img1, img2, padding=padding)
    return ft.ssim(img1, img2, padding=padding)


def fused_ssim(img1, img2, padding="same", train=True):
    """Mean SSIM of images (N, C, H, W) or (C, H, W)."""
    return _fused(img1, img2, padding, train)


def fused_ssim3d(img1, img2, padding="same", train=True):
    """Mean 3-D SSIM of volumes (N, C, D, H, W) or (C, D, H, W)."""
    if img1.dim() == 4:
        img1, img2 = img1.unsqueeze(0), img2.unsqueeze(0)
    return _fused(img1, img2, padding, train)
