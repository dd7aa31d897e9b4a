"""Load ``kernels/*.cu`` through CuPy: NVRTC compiles each template instance
on first use (CuPy keeps it in its on-disk cache), per device."""
import functools
import glob
import os
import sys
from pathlib import Path

import numpy as np

from . import EMULATOR
from . import cupy as cuda_runtime

# The kernels' element type of each array dtype; bfloat16 travels as its int16 bits (CuPy has no bfloat16).
ELEMENT_TYPES = {"float32": "float", "float64": "double", "float16": "__half", "int16": "__nv_bfloat16"}
THREADS = 256       # threads per block of the element-wise kernels
MAX_BLOCKS = 1024   # grid of the reductions: fixed by the size alone, so results do not depend on the device


def kernel_dir():
    """``fastae/kernels`` in an installed wheel, ``kernels/`` beside the package in a checkout."""
    package = Path(__file__).resolve().parent.parent
    for where in (package / "kernels", package.parent / "kernels"):
        if (where / "common.cuh").is_file():
            return where
    raise FileNotFoundError(f"fastae's CUDA sources (kernels/*.cu) are missing beside {package}")


@functools.cache
def source(file):
    """The text of ``file`` with ``common.cuh`` inlined, so CuPy's cache key covers the helpers too."""
    where = kernel_dir()
    return (where / file).read_text().replace('#include "common.cuh"', (where / "common.cuh").read_text())


@functools.cache
def include_options():
    """-I options for the CUDA headers (cuda_fp16.h, cuda_bf16.h): the toolkit CuPy found, else
    CUDA_HOME/CUDA_PATH, else the headers of NVIDIA's pip packages."""
    cupy = cuda_runtime()
    roots = [cupy.cuda.get_cuda_path(), os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates = [os.path.join(root, "include") for root in roots if root]
    for entry in sys.path:
        candidates += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "include")))
    for where in candidates:
        if os.path.isfile(os.path.join(where, "cuda_fp16.h")):
            return (f"-I{where}",)
    return ()  # NVRTC's own headers, where it has them


@functools.cache
def _function(file, expression, device):
    cupy = cuda_runtime()
    if EMULATOR and expression in _launchable(file):
        return _emulated(file).get_function(expression)
    module = cupy.RawModule(code=source(file), options=("--std=c++17",) + include_options(),
                            name_expressions=(expression,))
    return module.get_function(expression)


def _launchable(file):
    from .check import instances_by_file
    return instances_by_file().get(file, ())


@functools.cache
def _emulated(file):
    """Under the emulator, one host build per file of every instance the launchers can name: one compiler
    run instead of one per instance (NVRTC on a device compiles each on first use instead)."""
    return cuda_runtime().RawModule(code=source(file), options=include_options(),
                                    name_expressions=tuple(_launchable(file)))


def function(file, expression):
    """The kernel ``expression`` (e.g. ``fastae::soft_threshold<float>``) of ``file``, for the current device."""
    cupy = cuda_runtime()
    return _function(file, expression, cupy.cuda.Device().id)


def element_type(a):
    """The C++ element type the kernels take for the array ``a``."""
    return ELEMENT_TYPES[a.dtype.name]


def ptr(a):
    """A kernel argument for an optional array: the array, or a null pointer for None."""
    return np.uint64(0) if a is None else a


def aligned(*arrays):
    """True when every array given (None skipped) starts on a 16-byte boundary."""
    return all(a is None or a.data.ptr % 16 == 0 for a in arrays)


def blocks_for(n, per_thread=1):
    """Grid size of a grid-stride loop over ``n`` elements: at most MAX_BLOCKS, at least 1."""
    return max(1, min(MAX_BLOCKS, -(-n // (THREADS * per_thread))))
