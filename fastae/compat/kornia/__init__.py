"""kornia's SSIM API on fastae's kernels: ``from fastae.compat import kornia``, then
``kornia.metrics.ssim``, ``kornia.losses.SSIMLoss``, ... as with kornia itself.

The same names, signatures, defaults and conventions: the Gaussian window of sigma 1.5 whatever
``window_size``, ``padding="same"`` reflecting the images (case-insensitive; "valid" drops
window_size // 2 pixels a side), ``max_val`` the data range, ``eps`` added to the denominator, the
per-pixel map from the metrics and clamp((1 - SSIM) / 2, 0, 1) from the losses, reduced by
``reduction`` ("mean", "sum", "none"). Gradients flow to both images. Differences: errors are
ValueError and TypeError (not kornia's own exception classes); float32 moments are taken about the
plane's mean (kornia's raw moments lose some 1e-5 on bright images).
"""
from . import losses, metrics

__all__ = ["losses", "metrics"]
