"""SSIM on CUDA devices (``kernels/ssim.cu``): a tiled forward writing the
per-tile sums and the SSIM map's three partial derivatives, a tiled backward
filtering them into the gradient, and a fixed-order sum of the tiles."""
import functools

import numpy as np

from .._neutral import sums_to_one
from . import cupy as cuda_runtime

from ._module import ELEMENT_TYPES, element_type, function

TILE_W = 32        # positions per tile row (the block's x extent)
UNROLLED_WINDOW = 11  # the window length the tiled kernels are also compiled for (unrolled); others run the generic
MAX_PLANES = 65535  # a grid's z extent
SHARED_DEFAULT = 48 * 1024  # bytes of shared memory a block gets without opting in
SHARED_STATIC = 512 * 8     # the kernels' own scratch for the block sum


def block_height(ctype):
    """Threads down a block of the tiled kernels (32 across)."""
    return 8 if ctype == "double" else 16


def instance(win):
    """(WIN, R) of the tiled kernels' instance for a window of ``win`` taps (kernels/ssim.cu): the unrolled one,
    whose threads compute two rows each in the vertical passes (R), where compiled for it; else
    the generic one, a row each."""
    return (win, 2) if win == UNROLLED_WINDOW else (0, 1)


def tile_height(ctype, win):
    """Rows of a tile: R per thread down the block."""
    return instance(win)[1] * block_height(ctype)


def acc_dtype(ctype):
    return np.dtype(np.float64) if ctype == "double" else np.dtype(np.float32)


def forward_shared(ctype, win):
    """Bytes of dynamic shared memory of ssim_forward: the window, x and y tiles with halo, four row-filtered maps."""
    rows, cols = tile_height(ctype, win) + win - 1, TILE_W + win - 1
    return (win + 2 * rows * cols + 4 * rows * TILE_W) * acc_dtype(ctype).itemsize


def backward_shared(ctype, win, maps=3):
    """Bytes of dynamic shared memory of ssim_backward: the window, the coefficient tiles (three, or four with
    the target's gradient), as many filtered."""
    rows, cols = tile_height(ctype, win) + win - 1, TILE_W + win - 1
    return (win + maps * rows * cols + maps * rows * TILE_W) * acc_dtype(ctype).itemsize


def instances():
    for ctype in ELEMENT_TYPES.values():
        for win, rows in (instance(UNROLLED_WINDOW), instance(0)):
            yield "ssim.cu", f"fastae::ssim_forward<{ctype}, {win}, {rows}>"
            yield "ssim.cu", f"fastae::ssim_backward<{ctype}, {win}, {rows}>"
        yield "ssim.cu", f"fastae::plane_shifts<{ctype}>"
    yield "ssim.cu", "fastae::plane_sums"


@functools.cache
def _device_window(window_bytes, device):
    cupy = cuda_runtime()
    return cupy.asarray(np.frombuffer(window_bytes, np.float64))


def _kernel(name, ctype, shared, win):
    """The instance of ``name`` for ``ctype`` and a window of ``win`` taps (unrolled where compiled for it)."""
    cupy = cuda_runtime()
    kernel = function("ssim.cu", f"fastae::{name}<{ctype}, {', '.join(map(str, instance(win)))}>")
    if shared + SHARED_STATIC > SHARED_DEFAULT:
        limit = cupy.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]
        if shared + SHARED_STATIC > limit:
            raise ValueError(f"the SSIM window is too large for this device: its tiles need {shared} bytes of "
                             f"shared memory, the device offers {limit}")
        kernel.max_dynamic_shared_size_bytes = shared
    return kernel


def ssim_planes(x, y, window, pad, c1, c2, use_cs, scales, grad, accumulate, target_grad=None):
    """Per-plane sums (float64, on the device) of the SSIM map (or, with
    ``use_cs``, the contrast-structure map) of the planes x, y (P, H, W),
    zero-padded by ``pad``. With ``grad`` an array of x's shape, writes (or
    adds, with ``accumulate``) scales[p] * d sum_p / dx into it; ``scales``
    is a (P,) float64 device array; ``target_grad`` likewise receives the
    gradient in y, in the same pass (a fourth coefficient map, dS/dmu'_y).
    No host synchronisation."""
    cupy = cuda_runtime()
    planes, h, w = x.shape
    if planes == 0:
        return cupy.zeros(0, np.float64)  # (a grid of no blocks is a launch error)
    ctype = element_type(x)
    win = window.size
    ho, wo = h + 2 * pad - win + 1, w + 2 * pad - win + 1
    th = tile_height(ctype, win)
    g = _device_window(np.ascontiguousarray(window, np.float64).tobytes(), cupy.cuda.Device().id)
    tiles = (-(-wo // TILE_W), -(-ho // th))
    tile_sums = cupy.empty((planes, tiles[0] * tiles[1]), np.float64)
    maps = 3 if target_grad is None else 4
    coef = cupy.empty((planes, maps, ho, wo), acc_dtype(ctype)) if grad is not None else None
    shifts = cupy.zeros(planes, np.float64)
    if sums_to_one(window):  # (else raw moments)
        function("ssim.cu", f"fastae::plane_shifts<{ctype}>")((planes,), (256,), (x, y, np.int64(h * w), shifts))
    fshared, bshared = forward_shared(ctype, win), backward_shared(ctype, win, maps)
    forward = _kernel("ssim_forward", ctype, fshared, win)
    backward = _kernel("ssim_backward", ctype, bshared, win) if grad is not None else None
    for first in range(0, planes, MAX_PLANES):
        part = slice(first, min(first + MAX_PLANES, planes))
        count = part.stop - part.start
        forward(tiles + (count,), (TILE_W, block_height(ctype)),
                (x[part], y[part], shifts[part], np.int32(h), np.int32(w), np.int32(ho), np.int32(wo),
                 np.int32(pad), g, np.int32(win), np.float64(c1), np.float64(c2), np.int32(use_cs),
                 np.uint64(0) if coef is None else coef[part], np.int32(maps), tile_sums[part]), shared_mem=fshared)
        if grad is not None:
            backward((-(-w // TILE_W), -(-h // th), count), (TILE_W, block_height(ctype)),
                     (x[part], y[part], shifts[part], np.int32(h), np.int32(w), np.int32(ho), np.int32(wo),
                      np.int32(pad), g, np.int32(win), coef[part], np.int32(maps), scales[part], np.int32(accumulate),
                      grad[part], np.uint64(0) if target_grad is None else target_grad[part]), shared_mem=bshared)
    sums = cupy.empty(planes, np.float64)
    function("ssim.cu", "fastae::plane_sums")((planes,), (256,), (tile_sums, np.int64(tile_sums.shape[1]), sums))
    return sums
