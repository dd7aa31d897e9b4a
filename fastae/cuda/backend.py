"""The CUDA backend's side of the contract in fastae/backends.md."""
from contextlib import nullcontext as one_blas_thread  # noqa: F401  (cuBLAS: nothing to limit)

from .bfloat16 import from_float32, to_float32  # noqa: F401
from .._neutral import avg_pool, avg_pool_adjoint  # noqa: F401  (CuPy's strided passes)
from .._neutral import rows_times  # noqa: F401  (cuBLAS, a single row as two)
from .filters import filter_axis, filter_axis_adjoint  # noqa: F401
from .pointwise import activate, pointwise  # noqa: F401
from .sparse import kl_sparsity, lasso, soft_threshold  # noqa: F401
from .ssim import ssim_planes  # noqa: F401

SUM_PIECE = None  # pointwise sums the whole array in one tree
SSIM_PIXEL = False  # mixed_loss's pixel loss: the pointwise kernel first
