"""fastae: fused loss-and-gradient kernels for training autoencoders fast."""
from ._table import ACTIVATIONS, LOSSES
from .pointwise import *  # noqa: F401,F403  (one function per loss of the table, LossGrad, activate)
from .pointwise import __all__ as _pointwise
from .ssim import mixed_loss, ms_ssim, ms_ssim_l1_loss, ssim, ssim_loss, ssim_map
from .sparse import (ConvergenceWarning, Thresholded, ista, kl_sparsity, l1_penalty, l2_penalty, lasso_codes,
                     soft_threshold)

__version__ = "0.1.0"
__all__ = ["LOSSES", "ACTIVATIONS", *_pointwise, "mixed_loss", "ms_ssim", "ssim", "ssim_loss",
           "ssim_map", "ms_ssim_l1_loss",
           "ConvergenceWarning", "Thresholded", "ista", "kl_sparsity", "l1_penalty", "l2_penalty", "lasso_codes",
           "soft_threshold"]
