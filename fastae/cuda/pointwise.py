"""Fused pointwise losses on CUDA devices (``kernels/pointwise.cu``): value,
gradient and a deterministic two-pass reduction, results left on the device;
and the output activations with their derivatives, element-wise."""
import numpy as np

from .._table import ACTIVATIONS, LOSSES, MAX_FIELDS
from . import cupy as cuda_runtime
from ._module import ELEMENT_TYPES, THREADS, aligned, blocks_for, element_type, function, ptr


def partials_kernel(ctype, loss, activation):
    return f"fastae::pointwise_partials<{ctype}, fastae::{LOSSES[loss].kernel}, fastae::{ACTIVATIONS[activation].kernel}>"


def finish_kernel(ctype):
    return f"fastae::pointwise_finish<{ctype}>"


def activate_kernel(ctype, activation):
    return f"fastae::activate<{ctype}, fastae::{ACTIVATIONS[activation].kernel}>"


def instances():
    """Every kernel this module can launch: (file, name expression)."""
    for ctype in ELEMENT_TYPES.values():
        for loss in LOSSES:
            for activation in ACTIVATIONS:
                yield "pointwise.cu", partials_kernel(ctype, loss, activation)
        yield "pointwise.cu", finish_kernel(ctype)
        for activation in ACTIVATIONS:
            yield "pointwise.cu", activate_kernel(ctype, activation)


def pointwise(loss, fields, activation, negative_slope, pred, target, weight, grad, values, scale, value_scale,
              grad_add=None, target_grad=None):
    """The fused loop over C-contiguous CuPy arrays of one dtype (see fastae/backends.md).

    Returns ``(value, total, outside)`` as 0-d device arrays: ``total * value_scale`` in pred's dtype (NaN
    when an element lay outside the loss's domain), the float64 sum of the weighted losses, and the
    count of elements outside the domain (float64). Writes ``grad`` (scale * w * dloss/dpred) and
    ``values`` (w * loss, NaN outside the domain) and ``target_grad`` (scale * w * dloss/dtarget) and
    adds into ``grad_add`` when they are arrays.
    ``target`` None is a zero target; ``weight`` None, a number, or an array of pred's size. No host
    synchronisation.
    """
    cupy = cuda_runtime()
    n = pred.size
    ctype = element_type(pred)
    names = LOSSES[loss].field_names
    p0, p1 = [float(fields[name]) for name in names] + [0.0] * (MAX_FIELDS - len(names))  # by name, in order
    weights = weight if isinstance(weight, cupy.ndarray) else None
    w_scalar = 1.0 if weight is None or weights is not None else float(weight)
    into = grad if grad is not None else grad_add
    blocks = blocks_for(n, 16 // pred.itemsize)
    sums = cupy.empty(blocks, np.float64)
    bad = cupy.empty(blocks, np.float64)
    function("pointwise.cu", partials_kernel(ctype, loss, activation))(
        (blocks,), (THREADS,),
        (pred, ptr(target), ptr(weights), np.float64(w_scalar), ptr(into), np.int32(grad_add is not None),
         ptr(values), ptr(target_grad), np.float64(scale), np.float64(p0), np.float64(p1),
         np.float64(negative_slope), np.int64(n), np.int32(aligned(pred, target, weights, into, values, target_grad)),
         sums, bad))
    value = cupy.empty((), pred.dtype)
    total = cupy.empty((), np.float64)
    outside = cupy.empty((), np.float64)
    function("pointwise.cu", finish_kernel(ctype))(
        (1,), (1024,), (sums, bad, np.int64(blocks), np.float64(value_scale), value, total, outside))
    return value, total, outside


def activate(activation, negative_slope, z, y, dy):
    """y = activation(z) and, unless ``dy`` is None, dy = its derivative, over C-contiguous arrays."""
    function("pointwise.cu", activate_kernel(element_type(z), activation))(
        (blocks_for(z.size),), (THREADS,), (z, y, ptr(dy), np.float64(negative_slope), np.int64(z.size)))
