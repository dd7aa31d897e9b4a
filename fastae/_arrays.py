"""Argument checks and array-type dispatch shared by every public function.

A call's arrays must all be of one kind: NumPy arrays run on the CPU kernels,
torch CPU tensors are viewed as NumPy arrays through DLPack (no copy) and the
results are handed back as tensors. CUDA arrays (CuPy, torch on CUDA) belong
to the CUDA backend.
"""
import numbers
import sys

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _torch_tensor_type():
    torch = sys.modules.get("torch")  # never import torch ourselves
    return None if torch is None else torch.Tensor


def kind_of(x, name):
    """'numpy' or 'torch'; TypeError for anything else."""
    if isinstance(x, np.ndarray):
        return "numpy"
    tensor = _torch_tensor_type()
    if tensor is not None and isinstance(x, tensor):
        if x.device.type != "cpu":
            raise NotImplementedError(f"{name} is a torch tensor on {x.device}: the CUDA backend is not built yet")
        return "torch"
    if hasattr(x, "__cuda_array_interface__"):
        raise NotImplementedError(f"{name} is a CUDA array ({type(x).__name__}): the CUDA backend is not built yet")
    raise TypeError(f"{name} must be a numpy.ndarray or a torch.Tensor, got {type(x).__name__}")


def as_numpy(x, kind):
    """A NumPy view of ``x`` (no copy)."""
    return x if kind == "numpy" else np.from_dlpack(x.detach())


def from_numpy(a, kind):
    """``a`` handed back in the caller's array type (no copy)."""
    if kind == "numpy":
        return a
    return sys.modules["torch"].from_dlpack(a)


def contiguous(a):
    """``a`` itself when C-contiguous, else a C-ordered copy (0-d stays 0-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def check_float(a, name):
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")


def check_same_dtype(a, name, ref, ref_name):
    if a.dtype != ref.dtype:
        raise TypeError(f"mixed dtypes: {name} is {a.dtype}, {ref_name} is {ref.dtype}")


def check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_number(value, name, *, positive=False, nonnegative=False):
    """A finite real number (positive or non-negative when asked); returns it as a float."""
    if not is_number(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or (positive and value <= 0) or (nonnegative and value < 0):
        kind = "positive " if positive else "non-negative " if nonnegative else ""
        raise ValueError(f"{name} must be a {kind}finite number, got {value}")
    return value


class Call:
    """The arrays of one call, checked and viewed as NumPy.

    ``pred`` fixes the array kind, the dtype and the shape; every other array
    is checked against it.
    """

    def __init__(self, pred, name="pred"):
        self.kind = kind_of(pred, name)
        self.pred = as_numpy(pred, self.kind)
        check_float(self.pred, name)
        self.name = name

    def like_pred(self, x, name, *, shape=True):
        """``x`` checked to be of pred's kind and dtype (and shape), as NumPy."""
        kind = kind_of(x, name)
        if kind != self.kind:
            raise TypeError(f"mixed array types: {self.name} is {self.kind}, {name} is {kind}")
        a = as_numpy(x, kind)
        check_float(a, name)
        check_same_dtype(a, name, self.pred, self.name)
        if shape and a.shape != self.pred.shape:
            raise ValueError(f"{name} has shape {a.shape}, {self.name} has shape {self.pred.shape}")
        return a

    def weight(self, weight):
        """None; a float for a number or a one-element array (the kernels take it as is);
        else a C-contiguous array of pred's shape from a broadcastable array."""
        if weight is None:
            return None
        if is_number(weight):
            return float(weight)
        w = self.like_pred(weight, "weight", shape=False)
        try:
            full = np.broadcast_to(w, self.pred.shape)
        except ValueError:
            raise ValueError(f"weight of shape {w.shape} does not broadcast to {self.name}'s shape "
                             f"{self.pred.shape}") from None
        return float(w.reshape(())) if w.size == 1 else contiguous(full)

    def out(self, out, name="out"):
        """A new C-contiguous buffer of pred's shape and dtype, or ``out`` checked to be one."""
        if out is None:
            return np.empty(self.pred.shape, self.pred.dtype)
        a = self.like_pred(out, name)
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{name} must be a writeable C-contiguous array")
        return a

    def back(self, a):
        return from_numpy(a, self.kind)
