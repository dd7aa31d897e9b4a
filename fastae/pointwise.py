"""Pixel-wise reconstruction losses, value and gradient in one fused pass.

Every loss here takes ``(pred, target, *, reduction="mean", weight=None,
activation="identity", negative_slope=0.01, grad=False, out=None)``:

- ``activation`` (identity, sigmoid, tanh, relu, leaky_relu) is applied to
  ``pred`` inside the kernel, and the gradient is then d loss / d pred with
  ``pred`` the pre-activation;
- ``reduction``: ``mean`` (over all elements), ``sum``, ``none`` (per
  element), ``batchmean`` (sum over all axes but the first, mean over the first);
- ``weight`` broadcasts to ``pred`` and multiplies each element's loss (mean
  still divides by the element count, as PyTorch does);
- ``grad=True`` returns ``LossGrad(loss, grad)`` with the gradient already
  scaled by the reduction (for ``none``, the element-wise derivative);
  ``out`` is a C-contiguous buffer of pred's shape and dtype that receives it.
"""
from collections import namedtuple

import numpy as np

from ._arrays import Call, check_choice, check_number, contiguous, on_device
from .cpu import pointwise as cpu_pointwise
from .cuda import pointwise as cuda_pointwise

LossGrad = namedtuple("LossGrad", "loss grad")
LossGrad.__doc__ = "A loss and its gradient with respect to the prediction."

REDUCTIONS = ("mean", "sum", "none", "batchmean")
ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu")


@on_device
def _pointwise(loss, params, pred, target, reduction, weight, activation, negative_slope, grad, out):
    call = Call(pred)
    p = contiguous(call.pred)
    t = contiguous(call.like_pred(target, "target"))
    check_choice(reduction, "reduction", REDUCTIONS)
    check_choice(activation, "activation", ACTIVATIONS)
    negative_slope = check_number(negative_slope, "negative_slope")
    if reduction == "batchmean" and p.ndim == 0:
        raise ValueError("reduction='batchmean' needs pred with a batch axis; pred is 0-d")
    if out is not None and not grad:
        raise ValueError("out receives the gradient: pass grad=True with it")
    w = call.weight(weight)
    g = call.out(out, reads=(p, t, w)) if grad else None
    values = call.empty() if reduction == "none" else None

    n = p.size
    count = {"mean": n, "sum": 1, "none": 1, "batchmean": p.shape[0] if p.ndim else 1}[reduction]
    scale = 1.0 / count if count else 0.0
    if call.gpu:  # out-of-domain values make the loss NaN: raising would wait for the device
        value, _ = cuda_pointwise.pointwise(loss, params, activation, negative_slope, p, t, w, g, values,
                                            scale, 1.0 / count if count else np.nan)
    else:
        total, outside = cpu_pointwise.pointwise(loss, params, activation, negative_slope, p, t, w, g, values, scale)
        if outside:
            where = "pred" if activation == "identity" else f"{activation}(pred)"
            raise ValueError(f"{loss}: {outside} of {n} values of {where} lie outside [0, 1]; "
                             "for logits pass activation='sigmoid'")
        value = np.array(total / count if count else np.nan, p.dtype)
    value = call.back(values if values is not None else value)
    if not grad:
        return value
    return LossGrad(value, call.deliver(g, out))


def mse(pred, target, *, reduction="mean", weight=None, activation="identity", negative_slope=0.01,
        grad=False, out=None):
    """Squared error (y - t)^2 with y = activation(pred)."""
    return _pointwise("mse", {}, pred, target, reduction, weight, activation, negative_slope, grad, out)


def l1(pred, target, *, reduction="mean", weight=None, activation="identity", negative_slope=0.01,
       grad=False, out=None):
    """Absolute error |y - t|; its derivative is sign(y - t), 0 at 0."""
    return _pointwise("l1", {}, pred, target, reduction, weight, activation, negative_slope, grad, out)


def huber(pred, target, *, delta=1.0, reduction="mean", weight=None, activation="identity",
          negative_slope=0.01, grad=False, out=None):
    """Huber loss: (y - t)^2 / 2 where |y - t| < delta, else delta (|y - t| - delta / 2)."""
    params = {"delta": check_number(delta, "delta", positive=True)}
    return _pointwise("huber", params, pred, target, reduction, weight, activation, negative_slope, grad, out)


def bce(pred, target, *, reduction="mean", weight=None, activation="identity", negative_slope=0.01,
        grad=False, out=None):
    """Binary cross-entropy -(t log y + (1 - t) log(1 - y)).

    With ``activation="identity"`` pred holds probabilities in [0, 1] and the
    result is torch's ``binary_cross_entropy`` (logs clamped at -100, gradient
    denominator clamped at 1e-12). With ``activation="sigmoid"`` pred holds
    logits and the result is ``binary_cross_entropy_with_logits``, stable for
    any finite logit; its gradient is sigmoid(pred) - t.
    """
    return _pointwise("bce", {}, pred, target, reduction, weight, activation, negative_slope, grad, out)


def gaussian_nll(pred, target, *, sigma=1.0, reduction="mean", weight=None, activation="identity",
                 negative_slope=0.01, grad=False, out=None):
    """Gaussian negative log-likelihood ((y - t) / sigma)^2 / 2 + log sigma + log(2 pi) / 2:
    MSE as a likelihood with fixed noise scale sigma."""
    sigma = check_number(sigma, "sigma", positive=True)
    params = {"inv_var": 1.0 / sigma / sigma, "const": np.log(sigma) + 0.5 * np.log(2 * np.pi)}  # no overflow
    return _pointwise("gaussian_nll", params, pred, target, reduction, weight, activation, negative_slope,
                      grad, out)


def laplace_nll(pred, target, *, scale=1.0, reduction="mean", weight=None, activation="identity",
                negative_slope=0.01, grad=False, out=None):
    """Laplace negative log-likelihood |y - t| / scale + log(2 scale): L1 as a likelihood."""
    scale = check_number(scale, "scale", positive=True)
    params = {"inv_scale": 1.0 / scale, "const": np.log(2.0) + np.log(scale)}  # 2 * scale may overflow
    return _pointwise("laplace_nll", params, pred, target, reduction, weight, activation, negative_slope,
                      grad, out)
