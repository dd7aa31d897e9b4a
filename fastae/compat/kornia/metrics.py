"""kornia.metrics' SSIM: ``ssim``, ``ssim3d`` (per-pixel maps) and the ``SSIM``, ``SSIM3D`` modules."""
import torch
from torch import nn

import fastae.torch as ft

__all__ = ["ssim", "ssim3d", "SSIM", "SSIM3D"]


def _padding(padding):
    mode = padding.lower() if isinstance(padding, str) else padding
    if mode not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    return "reflect" if mode == "same" else "valid"


def _map(img1, img2, window_size, max_val, eps, padding, dims):
    for name, img in (("img1", img1), ("img2", img2)):
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"{name} type is not a torch.Tensor. Got {type(img)}")
        if img.dim() != dims + 2:
            raise ValueError(f"Invalid {name} shape, we expect {'BxCxDxHxW' if dims == 3 else 'BxCxHxW'}. "
                             f"Got: {img.shape}")
    if img1.shape != img2.shape:
        raise ValueError(f"img1 and img2 shapes must be the same. Got: {img1.shape} and {img2.shape}")
    if not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd integer. Got: {window_size!r}")
    # kornia's dtypes: integer images as float32, a float32/float64 pair in float64
    dtype = torch.promote_types(img1.dtype if img1.is_floating_point() else torch.float32,
                                img2.dtype if img2.is_floating_point() else torch.float32)
    img1, img2 = img1.to(dtype), img2.to(dtype)
    return ft.ssim_map(img1, img2, float(max_val), win_size=window_size, sigma=1.5, padding=_padding(padding),
                       eps=float(eps))


def ssim(img1: torch.Tensor, img2: torch.Tensor, window_size: int, max_val: float = 1.0, eps: float = 1e-12,
         padding: str = "same") -> torch.Tensor:
    """The SSIM map of images (B, C, H, W): (B, C, H, W), or smaller by window_size // 2 a side ("valid")."""
    return _map(img1, img2, window_size, max_val, eps, padding, 2)


def ssim3d(img1: torch.Tensor, img2: torch.Tensor, window_size: int, max_val: float = 1.0, eps: float = 1e-12,
           padding: str = "same") -> torch.Tensor:
    """The SSIM map of volumes (B, C, D, H, W)."""
    return _map(img1, img2, window_size, max_val, eps, padding, 3)


class SSIM(nn.Module):
    def __init__(self, window_size: int, max_val: float = 1.0, eps: float = 1e-12, padding: str = "same") -> None:
        super().__init__()
        self.window_size, self.max_val, self.eps, self.padding = window_size, max_val, eps, padding

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        return ssim(img1, img2, self.window_size, self.max_val, self.eps, self.padding)


class SSIM3D(SSIM):
    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        return ssim3d(img1, img2, self.window_size, self.max_val, self.eps, self.padding)
