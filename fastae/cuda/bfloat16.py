"""bfloat16 on CuPy, which has no such dtype: the values travel as their int16
bit patterns (the top half of a float32's bits)."""
import numpy as np

from . import cupy as cuda_runtime


def to_float32(bits):
    """float32 values of bfloat16 bit patterns (an int16 CuPy array); exact."""
    return (bits.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def from_float32(values, bits):
    """Round float32 ``values`` to the nearest bfloat16 (ties to even) into ``bits`` (int16); NaN stays NaN."""
    cupy = cuda_runtime()
    u = values.view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16
    rounded = cupy.where(cupy.isnan(values), np.uint32(0x7FC0), rounded)
    bits[...] = rounded.astype(np.uint16).view(np.int16)
