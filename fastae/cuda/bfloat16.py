"""bfloat16 on CuPy, which has no such dtype: the values travel as their int16
bit patterns (the top half of a float32's bits)."""
import numpy as np

from . import cupy as cuda_runtime


def bits_to_float32(bits):
    """float32 values of bfloat16 bit patterns (an int16 CuPy array); exact."""
    return (bits.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bits(values, bits):
    """Round float32 ``values`` to the nearest bfloat16 (ties to even) into ``bits`` (int16); NaN stays NaN."""
    cupy = cuda_runtime()
    u = values.view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16
    rounded = cupy.where(cupy.isnan(values), np.uint32(0x7FC0), rounded)
    bits[...] = rounded.astype(np.uint16).view(np.int16)


def to_float32(a):
    """``a``'s values as float32: bfloat16 bits (int16) decoded, other floats cast."""
    return bits_to_float32(a) if a.dtype == np.int16 else a.astype(np.float32)


def from_float32(values, out):
    """float32 ``values`` rounded into ``out``'s dtype (bfloat16 bits: to nearest, ties to even)."""
    if out.dtype == np.int16:
        float32_to_bits(values, out)
    else:
        out[...] = values
