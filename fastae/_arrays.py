"""Argument checks and array-type dispatch shared by every public function.

A call's arrays must all be of one kind. NumPy arrays run on the CPU kernels
and torch CPU tensors are viewed as NumPy arrays through DLPack (no copy).
CuPy arrays, torch CUDA tensors (through DLPack) and any other
``__cuda_array_interface__`` array run on the CUDA kernels. Results come back
in the caller's array type, on its device.
"""
import contextlib
import functools
import math
import numbers
import sys

import numpy as np

from . import cuda
from .cpu import backend as cpu_backend
from .cuda import backend as cuda_backend

CPU_DTYPES = ("float32", "float64")
GPU_DTYPES = ("float32", "float64", "float16", "bfloat16")
GPU_KINDS = ("cupy", "cuda", "torch_cuda")


def _torch_tensor_type():
    torch = sys.modules.get("torch")  # never import torch ourselves
    return None if torch is None else torch.Tensor


def kind_of(x, name):
    """'numpy', 'torch', 'cupy', 'torch_cuda' or 'cuda' (another CUDA array); TypeError for anything else."""
    cupy = cuda.loaded_cupy()  # never import CuPy ourselves
    if cupy is not None and isinstance(x, cupy.ndarray):
        return "cupy"
    if isinstance(x, np.ndarray):
        if isinstance(x, np.ma.MaskedArray):
            raise TypeError(f"{name} is a numpy.ma.MaskedArray: fastae would ignore its mask; pass {name}.filled(...) "
                            f"(and the mask as weight=, where the loss takes one)")
        return "numpy"
    tensor = _torch_tensor_type()
    if tensor is not None and isinstance(x, tensor):
        if x.device.type == "cpu":
            return "torch"
        if x.device.type == "cuda":
            return "torch_cuda"
        raise TypeError(f"{name} is a torch tensor on {x.device}: fastae runs on the CPU and on CUDA devices")
    if hasattr(x, "__cuda_array_interface__"):
        return "cuda"
    raise TypeError(f"{name} must be a numpy.ndarray, a cupy.ndarray or a torch.Tensor, got {type(x).__name__}")


_FLOAT_NAMES = {np.dtype(t): np.dtype(t).name for t in (np.float16, np.float32, np.float64)}


def dtype_name(x):
    """'float32', 'bfloat16', ... of an array or tensor."""
    if isinstance(x, np.ndarray):
        return _FLOAT_NAMES.get(x.dtype) or x.dtype.name  # dtype.name takes over a microsecond
    tensor = _torch_tensor_type()
    if tensor is not None and isinstance(x, tensor):
        return str(x.dtype).removeprefix("torch.")
    dtype = np.dtype(x.dtype if hasattr(x, "dtype") else x.__cuda_array_interface__["typestr"])
    return _FLOAT_NAMES.get(dtype) or dtype.name


def _cupy():
    try:
        return cuda.cupy()
    except ImportError:
        raise ImportError("a CUDA array was passed: the CUDA backend needs CuPy "
                          "(pip install 'fastae[cuda]')") from None


def as_array(x, kind):
    """A NumPy (CPU) or CuPy (CUDA) view of ``x``, no copy. bfloat16 tensors are
    viewed as int16 (CuPy has no bfloat16): the kernels read their bits. A NumPy
    array of the other byte order (``'>f4'`` here) is read through a native copy:
    the compiled kernels take native floats only (see Call.out for buffers); a
    subclass (np.memmap, np.matrix) is viewed as a plain ndarray."""
    if kind == "numpy":
        if type(x) is not np.ndarray:
            x = x.view(np.ndarray)
        return x if x.dtype.isnative else x.astype(x.dtype.newbyteorder("="))
    if kind == "cupy":
        return x
    if kind in ("torch", "torch_cuda") and x.is_neg():  # DLPack would drop torch's lazy negation
        x = x.detach().resolve_neg()
    if kind == "torch":
        return np.from_dlpack(x.detach())
    cupy = _cupy()
    if kind == "cuda":
        return cupy.asarray(x)
    x = x.detach()
    if x.dtype == sys.modules["torch"].bfloat16:
        x = x.view(sys.modules["torch"].int16)
    return cupy.from_dlpack(x)


def device_context(x):
    """Where the CUDA kernels of a call on ``x`` run: x's device and the caller's
    current stream (torch's, for a torch tensor). Nothing for CPU arrays."""
    try:
        kind = kind_of(x, "x")
    except TypeError:
        return contextlib.nullcontext()  # the call's own checks will say what is wrong
    if kind not in GPU_KINDS:
        return contextlib.nullcontext()
    cupy = _cupy()
    stack = contextlib.ExitStack()
    if kind == "torch_cuda":
        torch = sys.modules["torch"]
        stack.enter_context(cupy.cuda.Device(x.device.index))
        stack.enter_context(cupy.cuda.ExternalStream(torch.cuda.current_stream(x.device).cuda_stream, x.device.index))
    else:
        stack.enter_context(cupy.cuda.Device(as_array(x, kind).device.id))
    return stack


def on_device(function):
    """Run ``function(x, ...)`` inside ``device_context(x)``: every copy, allocation and
    kernel of the call on x's device and the caller's stream."""
    @functools.wraps(function)
    def run(x, *args, **kwargs):
        with device_context(x):
            return function(x, *args, **kwargs)
    return run


def check_float(name_of_dtype, name, gpu=False):
    allowed = GPU_DTYPES if gpu else CPU_DTYPES
    if name_of_dtype not in allowed:
        where = " (float16 and bfloat16 run on CUDA devices only)" if not gpu and name_of_dtype in GPU_DTYPES else ""
        raise TypeError(f"{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {name_of_dtype}{where}")


def contiguous(a):
    """``a`` itself when C-contiguous, else a C-ordered copy (0-d stays 0-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_target_grad(grad, target_grad):
    if target_grad and not grad:
        raise ValueError("target_grad=True adds the target's gradient to the result: pass grad=True with it")


def is_number(value):
    return type(value) in (float, int) or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def check_number(value, name, *, positive=False, nonnegative=False):
    """A finite real number (positive or non-negative when asked); returns it as a float."""
    if type(value) is not float:  # (the usual case first: a call checks several, ~1 us each otherwise)
        if not is_number(value):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        value = check_finite_or_nan(value, name)
    if not math.isfinite(value) or (positive and value <= 0) or (nonnegative and value < 0):
        kind = "positive " if positive else "non-negative " if nonnegative else ""
        raise ValueError(f"{name} must be a {kind}finite number, got {value}")
    return value


def is_positive_integer(value):
    """An integer (Python's or NumPy's, not a bool) of at least 1."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= 1


def check_positive_integer(value, name):
    """A positive integer (see is_positive_integer), returned as an int; else a ValueError naming it."""
    if not is_positive_integer(value):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_finite_or_nan(value, name):
    """A real number as a float, NaN and infinities too (they propagate), but not an int beyond float's range."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a finite number, got an integer of {value.bit_length()} bits") from None


def address(a):
    """The address of a NumPy or CuPy array's first element."""
    return (getattr(a, "__cuda_array_interface__", None) or a.__array_interface__)["data"][0]


def same_memory(a, b):
    """True when ``a`` and ``b`` view exactly the same elements in the same order."""
    return a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype and address(a) == address(b)


class Call:
    """The arrays of one call, checked and viewed as NumPy (CPU) or CuPy (CUDA).

    ``pred`` fixes the array kind, the device, the dtype and the shape; every
    other array is checked against it. ``xp`` is the array module of the
    views, ``backend`` the backend that runs them (``fastae.cpu.backend`` or
    ``fastae.cuda.backend``), ``gpu`` whether that is the CUDA one.
    """

    def __init__(self, pred, name="pred"):
        self.kind = kind_of(pred, name)
        self.gpu = self.kind in GPU_KINDS
        self.dtype_name = dtype_name(pred)
        check_float(self.dtype_name, name, self.gpu)
        self.pred = as_array(pred, self.kind)
        self.xp = _cupy() if self.gpu else np
        self.backend = cuda_backend if self.gpu else cpu_backend  # the functions of fastae/backends.md
        self.name = name
        # the dtype in which values (losses) are computed before they are handed back
        self.value_dtype = np.dtype(np.float32) if self.dtype_name == "bfloat16" else self.pred.dtype

    def like_pred(self, x, name, *, shape=True):
        """``x`` checked to be of pred's kind, device and dtype (and shape), as a view."""
        kind = kind_of(x, name)
        if kind != self.kind:
            raise TypeError(f"mixed array types: {self.name} is {self.kind}, {name} is {kind}")
        dtype = dtype_name(x)
        check_float(dtype, name, self.gpu)
        if dtype != self.dtype_name:
            raise TypeError(f"mixed dtypes: {name} is {dtype}, {self.name} is {self.dtype_name}")
        a = as_array(x, kind)
        if self.gpu and a.device.id != self.pred.device.id:
            raise TypeError(f"mixed devices: {name} is on CUDA device {a.device.id}, {self.name} on "
                            f"{self.pred.device.id}")
        if shape and a.shape != self.pred.shape:
            raise ValueError(f"{name} has shape {a.shape}, {self.name} has shape {self.pred.shape}")
        return a

    def weight(self, weight):
        """None; a float for a number or a one-element array (the kernels take it as is);
        else a C-contiguous array of pred's shape from a broadcastable array."""
        if weight is None:
            return None
        if is_number(weight):
            return check_finite_or_nan(weight, "weight")
        w = self.like_pred(weight, "weight", shape=False)
        try:
            full = self.xp.broadcast_to(w, self.pred.shape)
        except ValueError:
            raise ValueError(f"weight of shape {w.shape} does not broadcast to {self.name}'s shape "
                             f"{self.pred.shape}") from None
        if w.size == 1 and not self.gpu:
            return float(w.reshape(()))
        return contiguous(full)  # on the GPU, float() would wait for the device

    def empty(self, shape=None):
        """A new C-contiguous array of pred's dtype (and shape), on its device."""
        return self.xp.empty(self.pred.shape if shape is None else shape, self.pred.dtype)

    def out(self, out, name="out", reads=(), in_place=False):
        """A new C-contiguous buffer of pred's shape and dtype, or ``out`` checked to be one.

        When ``out`` shares memory with an array of ``reads`` (what the kernels read while they write),
        a new buffer all the same, which ``deliver`` copies into ``out`` once the call has succeeded: the
        result is exact for any overlap (NumPy's ufuncs copy likewise) and a call that fails leaves
        every input as it was. ``in_place``: the kernel reads each element before it writes that
        element alone and sums nothing, so ``out`` may be exactly one of ``reads`` (no copy).
        """
        if out is None:
            return self.empty()
        if isinstance(out, np.ndarray) and not out.dtype.isnative:
            raise ValueError(f"{name} has the other byte order ({out.dtype.str!r}): the kernels write native floats; "
                             f"pass an array of {self.dtype_name}")
        if self.kind in ("torch", "torch_cuda") and kind_of(out, name) == self.kind and out.is_neg():
            raise ValueError(f"{name} is a lazily negated torch view (its negative bit is set): writes into it "
                             "cannot land; pass a tensor of its own")
        a = self.like_pred(out, name)
        if not a.flags.c_contiguous or (not self.gpu and not a.flags.writeable):
            raise ValueError(f"{name} must be a writeable C-contiguous array")
        for r in reads:
            if r is None or is_number(r) or not self.xp.may_share_memory(a, r):
                continue
            if not (in_place and same_memory(a, r)):
                return self.empty()
        return a

    def deliver(self, buffer, out):
        """What the caller gets for a buffer from ``out``: ``out`` itself (``buffer`` copied in when it is
        a stand-in), else ``buffer`` in the caller's array type."""
        if out is None:
            return self.back(buffer)
        a = as_array(out, self.kind)
        if buffer is not a:
            a[...] = buffer
        return out

    def back(self, a):
        """``a`` handed back in the caller's array type (no copy, but a value of a
        bfloat16 call, computed in float32, is cast)."""
        if self.kind == "torch":
            return sys.modules["torch"].from_dlpack(a)
        if self.kind != "torch_cuda":
            return a
        torch = sys.modules["torch"]
        t = torch.from_dlpack(a)
        if self.dtype_name == "bfloat16":
            t = t.view(torch.bfloat16) if t.dtype == torch.int16 else t.to(torch.bfloat16)
        return t
