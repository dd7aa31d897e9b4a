"""The CUDA backend's side of the contract in fastae/backends.md."""
from .bfloat16 import from_float32, to_float32  # noqa: F401
from .pointwise import activate, pointwise  # noqa: F401
from .sparse import fista, kl_sparsity, soft_threshold  # noqa: F401
from .ssim import ssim_planes  # noqa: F401
