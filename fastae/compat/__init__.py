"""Drop-in replacements for the SSIM packages: change the import, keep the code.

- ``from fastae.compat import pytorch_msssim``: ``ssim``, ``ms_ssim``, ``SSIM``, ``MS_SSIM``;
- ``from fastae.compat import kornia``: ``kornia.metrics`` (``ssim``, ``ssim3d``, ``SSIM``, ``SSIM3D``) and
  ``kornia.losses`` (``ssim_loss``, ``ssim3d_loss``, ``SSIMLoss``, ``SSIM3DLoss``, ``MS_SSIMLoss``);
- ``from fastae.compat.fused_ssim import fused_ssim, fused_ssim3d``.

Each is a thin layer over ``fastae.torch``, with the peer's names, signatures, defaults, return shapes
and conventions; what differs is listed in the README ("Switching from pytorch-msssim, kornia or
fused-ssim"). Needs torch; importing ``fastae.compat`` itself imports nothing.
"""
