"""Pixel-wise reconstruction losses, value and gradient in one fused pass.

One public function per loss of the table (``fastae/_table.py``): ``mse``,
``l1``, ``huber``, ``bce``, ... Each takes ``(pred, target, *, reduction="mean",
weight=None, activation="identity", negative_slope=0.01, grad=False, out=None)``
and its own parameters (``delta=``, ``sigma=``, ...) by keyword:

- ``activation`` (a name of the table: identity, sigmoid, tanh, relu,
  leaky_relu, ...) is applied to ``pred`` inside the kernel, and the gradient is
  then d loss / d pred with ``pred`` the pre-activation;
- ``reduction``: ``mean`` (over all elements), ``sum``, ``none`` (per
  element), ``batchmean`` (sum over all axes but the first, mean over the first);
- ``weight`` broadcasts to ``pred`` and multiplies each element's loss (mean
  still divides by the element count, as PyTorch does);
- ``grad=True`` returns ``LossGrad(loss, grad)`` with the gradient already
  scaled by the reduction (for ``none``, the element-wise derivative);
  ``out`` is a C-contiguous buffer of pred's shape and dtype that receives it;
  ``target_grad=True`` (with ``grad=True``) also returns d loss / d target,
  in the same pass: ``LossGrads(loss, grad, target_grad)``.

``activate(z, activation)`` applies an activation alone (and its derivative).
"""
import inspect
from collections import namedtuple

import numpy as np

from ._arrays import Call, check_choice, check_number, check_target_grad, contiguous, on_device
from ._table import ACTIVATIONS, LOSSES

LossGrad = namedtuple("LossGrad", "loss grad")
LossGrad.__doc__ = "A loss and its gradient with respect to the prediction."
LossGrads = namedtuple("LossGrads", "loss grad target_grad")
LossGrads.__doc__ = "A loss and its gradients with respect to the prediction and to the target."
Activated = namedtuple("Activated", "value slope")
Activated.__doc__ = "An activation's value and its derivative."

REDUCTIONS = ("mean", "sum", "none", "batchmean")


def loss_params(loss, params, caller=None):
    """The public parameters of ``loss`` (a table name) checked, defaults filled in: {name: float}."""
    row = LOSSES[loss]
    known = {p.name: p for p in row.params}
    for name in params:
        if name not in known:
            raise TypeError(f"{caller or loss}() got an unexpected keyword argument {name!r}")
    return {p.name: check_number(params.get(p.name, p.default), p.name, positive=p.check == "positive",
                                 nonnegative=p.check == "nonnegative") for p in row.params}


@on_device
def _pointwise(loss, params, pred, target, reduction, weight, activation, negative_slope, grad, out,
               target_grad=False):
    call = Call(pred)
    p = contiguous(call.pred)
    t = contiguous(call.like_pred(target, "target"))
    check_choice(reduction, "reduction", REDUCTIONS)
    check_choice(activation, "activation", tuple(ACTIVATIONS))
    negative_slope = check_number(negative_slope, "negative_slope")
    if reduction == "batchmean" and p.ndim == 0:
        raise ValueError("reduction='batchmean' needs pred with a batch axis; pred is 0-d")
    if out is not None and not grad:
        raise ValueError("out receives the gradient: pass grad=True with it")
    check_target_grad(grad, target_grad)
    w = call.weight(weight)
    g = call.out(out, reads=(p, t, w)) if grad else None
    tg = call.empty() if target_grad else None
    values = call.empty() if reduction == "none" else None

    n = p.size
    count = {"mean": n, "sum": 1, "none": 1, "batchmean": p.shape[0] if p.ndim else 1}[reduction]
    value, _, outside = call.backend.pointwise(loss, LOSSES[loss].kernel_fields(params), activation, negative_slope,
                                               p, t, w, g, values, 1.0 / count if count else 0.0,
                                               1.0 / count if count else np.nan, target_grad=tg)
    # A device does not raise on data (that would wait for it): out-of-domain values make its loss NaN.
    if not call.gpu and outside:
        where = "pred" if activation == "identity" else f"{activation}(pred)"
        raise ValueError(f"{loss}: {outside} of {n} values of {where} lie outside [0, 1]; "
                         "for logits pass activation='sigmoid'")
    value = call.back(values if values is not None else value)
    if not grad:
        return value
    if tg is not None:
        return LossGrads(value, call.deliver(g, out), call.back(tg))
    return LossGrad(value, call.deliver(g, out))


def _public(row):
    """The public function of a table row."""
    def loss(pred, target, *, reduction="mean", weight=None, activation="identity", negative_slope=0.01,
             grad=False, target_grad=False, out=None, **params):
        return _pointwise(row.name, loss_params(row.name, params), pred, target, reduction, weight, activation,
                          negative_slope, grad, out, target_grad)
    keyword = inspect.Parameter.KEYWORD_ONLY
    signature = inspect.signature(loss)
    own = [inspect.Parameter(p.name, keyword, default=p.default) for p in row.params]
    loss.__signature__ = signature.replace(parameters=[*list(signature.parameters.values())[:2], *own,
                                                       *list(signature.parameters.values())[2:-1]])
    loss.__name__ = loss.__qualname__ = row.name
    loss.__doc__ = row.doc
    return loss


for _row in LOSSES.values():
    globals()[_row.name] = _public(_row)


@on_device
def activate(z, activation, *, negative_slope=0.01, grad=False):
    """``activation(z)`` element-wise (the very functions the losses fuse); ``grad=True`` returns
    ``Activated(value, slope)`` with the derivative d activation / dz."""
    call = Call(z, "z")
    a = contiguous(call.pred)
    check_choice(activation, "activation", tuple(ACTIVATIONS))
    negative_slope = check_number(negative_slope, "negative_slope")
    y = call.empty()
    dy = call.empty() if grad else None
    call.backend.activate(activation, negative_slope, a, y, dy)
    return Activated(call.back(y), call.back(dy)) if grad else call.back(y)


__all__ = ["LossGrad", "LossGrads", "Activated", "activate", *LOSSES]
