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
    "softplus": lambda z, slope: F.softplus(z),
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
    if loss == "charbonnier":
        eps = params.get("eps", 1e-3)
        return torch.sqrt((y - t) ** 2 + eps * eps) - eps
    raise KeyError(loss)


def activation(name, z, negative_slope=0.01):
    """The activation by torch, float64 NumPy in and out."""
    return ACTIVATIONS[name](torch.tensor(np.asarray(z, np.float64)), negative_slope).numpy()


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


def gaussian_window(win_size, sigma):
    coords = np.arange(win_size, dtype=np.float64) - win_size // 2
    g = np.exp(-(coords ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def as_4d(a):
    a = np.asarray(a)
    return a.reshape((1,) * (4 - a.ndim) + a.shape)


def ssim_same_padding(pred, target, *, data_range=1.0, win_size=11, sigma=1.5, k1=0.01, k2=0.03,
                      reduction="mean"):
    """SSIM with every moment map zero-padded by win_size // 2: conv2d on the
    five maps, autograd for the gradient. Returns (value, d value / d pred)."""
    shape = np.shape(pred)
    x = torch.tensor(as_4d(pred), dtype=torch.float64, requires_grad=True)
    y = torch.tensor(as_4d(target), dtype=torch.float64)
    channels = x.shape[1]
    g = torch.tensor(gaussian_window(win_size, sigma))
    w2d = torch.outer(g, g).expand(channels, 1, win_size, win_size)

    def filt(m):
        return F.conv2d(m, w2d, padding=win_size // 2, groups=channels)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx ** 2, filt(y * y) - my ** 2, filt(x * y) - mx * my
    s = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    per_image = s.flatten(2).mean(-1).mean(1)
    value = per_image.mean() if reduction == "mean" else per_image.reshape(shape[:-3])
    value.sum().backward()
    return value.detach().numpy(), x.grad.numpy().reshape(shape)
