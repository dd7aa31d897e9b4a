"""Fused pointwise losses on CUDA devices (``kernels/pointwise.cu``): value,
gradient and a deterministic two-pass reduction, results left on the device."""
import numpy as np

from . import cupy as cuda_runtime

from ._module import ELEMENT_TYPES, THREADS, aligned, blocks_for, element_type, function, ptr

LOSSES = {"mse": "MSE", "l1": "L1", "huber": "Huber", "bce": "BCE", "gaussian_nll": "GaussianNLL",
          "laplace_nll": "LaplaceNLL"}
ACTIVATIONS = {"identity": "Identity", "sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "ReLU",
               "leaky_relu": "LeakyReLU"}


def partials_kernel(ctype, loss, activation):
    return f"fastae::pointwise_partials<{ctype}, fastae::{LOSSES[loss]}, fastae::{ACTIVATIONS[activation]}>"


def finish_kernel(ctype):
    return f"fastae::pointwise_finish<{ctype}>"


def instances():
    """Every kernel this module can launch: (file, name expression)."""
    for ctype in ELEMENT_TYPES.values():
        for loss in LOSSES:
            for activation in ACTIVATIONS:
                yield "pointwise.cu", partials_kernel(ctype, loss, activation)
        yield "pointwise.cu", finish_kernel(ctype)


def pointwise(loss, params, activation, negative_slope, pred, target, weight, grad, values, scale, value_scale,
              grad_add=None):
    """Run the fused loop over C-contiguous CuPy arrays of one dtype.

    Returns ``(value, total)`` as 0-d device arrays: ``value`` the sum times
    ``value_scale`` in pred's dtype, NaN when any element lay outside the
    loss's domain; ``total`` the plain sum in float64. Writes ``grad`` (scale *
    w * dloss/dpred) and ``values`` (w * loss, NaN outside the domain) and
    adds into ``grad_add`` when they are arrays. ``target`` None is a zero
    target; ``weight`` None, a number, or an array of pred's size. No host
    synchronisation.
    """
    cupy = cuda_runtime()
    n = pred.size
    ctype = element_type(pred)
    p0, p1 = (tuple(params.values()) + (0.0, 0.0))[:2]  # the loss's fields, in its spec's order
    weights = weight if isinstance(weight, cupy.ndarray) else None
    w_scalar = 1.0 if weight is None or weights is not None else float(weight)
    into = grad if grad is not None else grad_add
    per_pack = 16 // pred.itemsize
    blocks = blocks_for(n, per_pack)
    sums = cupy.empty(blocks, np.float64)
    bad = cupy.empty(blocks, np.float64)
    function("pointwise.cu", partials_kernel(ctype, loss, activation))(
        (blocks,), (THREADS,),
        (pred, ptr(target), ptr(weights), np.float64(w_scalar), ptr(into), np.int32(grad_add is not None),
         ptr(values), np.float64(scale), np.float64(p0), np.float64(p1), np.float64(negative_slope),
         np.int64(n), np.int32(aligned(pred, target, weights, into, values)), sums, bad))
    value = cupy.empty((), pred.dtype)
    total = cupy.empty((), np.float64)
    function("pointwise.cu", finish_kernel(ctype))(
        (1,), (1024,), (sums, bad, np.int64(blocks), np.float64(value_scale), value, total))
    return value, total
