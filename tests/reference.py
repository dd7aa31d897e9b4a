"""Slow, obviously correct references: PyTorch autograd in float64.

Every backend is compared with these; nothing here is tuned for speed.
"""
import numpy as np
import torch
import torch.nn.functional as F

ACTIVATIONS = {
    "identity": lambda z, slope: z,
    "sigmoid": lambda z, slope: torch.sigmoid(z),
    "tanh": lambda z, slope: torch.tanh(z),
    "relu": lambda z, slope: torch.relu(z),
    "leaky_relu": lambda z, slope: F.leaky_relu(z, slope),
}


def _per_element(loss, y, z, t, activation, params):
    if loss == "mse":
        return F.mse_loss(y, t, reduction="none")
    if loss == "l1":
        return F.l1_loss(y, t, reduction="none")
    if loss == "huber":
        return F.huber_loss(y, t, reduction="none", delta=params.get("delta", 1.0))
    if loss == "bce":
        if activation == "sigmoid":
            return F.binary_cross_entropy_with_logits(z, t, reduction="none")
        return F.binary_cross_entropy(y, t, reduction="none")
    if loss == "gaussian_nll":
        sigma = params.get("sigma", 1.0)
        return 0.5 * ((y - t) / sigma) ** 2 + np.log(sigma) + 0.5 * np.log(2 * np.pi)
    if loss == "laplace_nll":
        scale = params.get("scale", 1.0)
        return (y - t).abs() / scale + np.log(2 * scale)
    raise KeyError(loss)


def pointwise(loss, pred, target, *, reduction="mean", weight=None, activation="identity",
              negative_slope=0.01, **params):
    """(value, d value / d pred) as float64 NumPy arrays, by torch autograd."""
    z = torch.tensor(np.asarray(pred), dtype=torch.float64, requires_grad=True)
    t = torch.tensor(np.asarray(target), dtype=torch.float64)
    y = ACTIVATIONS[activation](z, negative_slope)
    per = _per_element(loss, y, z, t, activation, params)
    if weight is not None:
        per = per * torch.tensor(np.asarray(weight), dtype=torch.float64)
    if reduction == "mean":
        value = per.mean()
    elif reduction == "sum":
        value = per.sum()
    elif reduction == "batchmean":
        value = per.sum() / per.shape[0]
    else:
        value = per
    value.sum().backward()
    return value.detach().numpy(), z.grad.numpy()
