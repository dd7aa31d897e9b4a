"""fastae: fused loss-and-gradient kernels for training autoencoders fast."""
from .pointwise import LossGrad, bce, gaussian_nll, huber, l1, laplace_nll, mse
from .ssim import mixed_loss, ms_ssim, ssim, ssim_loss
from .sparse import (ConvergenceWarning, Thresholded, ista, kl_sparsity, l1_penalty, l2_penalty, lasso_codes,
                     soft_threshold)

__version__ = "0.1.0"
__all__ = ["LossGrad", "bce", "gaussian_nll", "huber", "l1", "laplace_nll", "mse",
           "mixed_loss", "ms_ssim", "ssim", "ssim_loss",
           "ConvergenceWarning", "Thresholded", "ista", "kl_sparsity", "l1_penalty", "l2_penalty", "lasso_codes",
           "soft_threshold"]
