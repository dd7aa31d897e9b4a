"""The CPU backend's side of the contract in fastae/backends.md."""
import numpy as np

from ._kernels import CHUNK as SUM_PIECE  # noqa: F401  (pointwise sums pieces of this many elements)
from ._threads import num_threads, one_blas_thread, run_chunks  # noqa: F401  (fastae bench's threads)
from .pointwise import activate, pointwise  # noqa: F401
from .sparse import kl_sparsity, lasso, soft_threshold  # noqa: F401
from .filters import filter_axis, filter_axis_adjoint  # noqa: F401
from .pool import avg_pool, avg_pool_adjoint  # noqa: F401
from .products import rows_times  # noqa: F401
from .ssim import ssim_planes  # noqa: F401

SSIM_PIXEL = True  # ssim_planes takes mixed_loss's pixel loss in its own pass


def to_float32(a):
    """``a``'s values as float32 (the CPU holds float32 and float64 only)."""
    return a.astype(np.float32)


def from_float32(values, out):
    """``values`` rounded into ``out``'s dtype."""
    out[...] = values
