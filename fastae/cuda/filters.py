"""A 1-D window along one axis, and its adjoint, on CUDA devices (``kernels/filters.cu``): the general
structural losses' building block, as ``fastae/cpu/filters.py`` on the CPU."""
import numpy as np

from . import cupy as cuda_runtime

from ._module import ELEMENT_TYPES, THREADS, blocks_for, element_type, function
from .ssim import _device_window


def instances():
    for ctype in ELEMENT_TYPES.values():
        yield "filters.cu", f"fastae::filter_axis<{ctype}>"
        yield "filters.cu", f"fastae::filter_axis_adjoint<{ctype}>"


def _launch(name, src, window, axis, pad, reflect, n, m, out):
    cupy = cuda_runtime()
    outer = int(np.prod(src.shape[:axis], dtype=np.int64))
    inner = int(np.prod(src.shape[axis + 1:], dtype=np.int64))
    if out.size == 0:
        return out
    w = _device_window(np.ascontiguousarray(window, np.float64).tobytes(), cupy.cuda.Device().id)
    function("filters.cu", f"fastae::{name}<{element_type(src)}>")(
        (blocks_for(out.size),), (THREADS,),
        (src, w, np.int32(window.size), np.int64(outer), np.int64(n), np.int64(inner), np.int64(m), np.int32(pad),
         np.int32(bool(reflect)), out))
    return out


def filter_axis(a, window, axis, pad, reflect):
    """``window`` along ``axis`` of the C-contiguous ``a``, padded by ``pad`` (zero or reflected)."""
    cupy = cuda_runtime()
    n = a.shape[axis]
    m = n + 2 * pad - window.size + 1
    out = cupy.empty(a.shape[:axis] + (m,) + a.shape[axis + 1:], a.dtype)
    return _launch("filter_axis", a, window, axis, pad, reflect, n, m, out)


def filter_axis_adjoint(g, window, axis, pad, reflect, n):
    """The adjoint of ``filter_axis`` for an input ``n`` long on ``axis``."""
    cupy = cuda_runtime()
    out = cupy.empty(g.shape[:axis] + (n,) + g.shape[axis + 1:], g.dtype)
    return _launch("filter_axis_adjoint", cupy.ascontiguousarray(g), window, axis, pad, reflect, n, g.shape[axis],
                   out)
