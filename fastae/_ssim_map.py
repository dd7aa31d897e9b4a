"""The SSIM map of planes with any number of spatial axes, by separable filters: the general path of
the structural losses (volumes, reflect padding, kornia's eps, per-pixel maps, a window per axis),
written once against the array module (NumPy or CuPy) and the backend's ``filter_axis``.

With x' = x - s, y' = y - s (s the plane's mean: float32 keeps its digits) and F the window along
every spatial axis, the moments mx = F x', my = F y', Sxx = F x'^2, Syy = F y'^2, Sxy = F x'y' give
mu = m + s, var_x = Sxx - mx^2, cov = Sxy - mx my, and

    SSIM = a b / (c d + eps),   a = 2 mu_x mu_y + C1,  b = 2 cov + C2,
                                c = mu_x^2 + mu_y^2 + C1,  d = var_x + var_y + C2

(contrast-structure: b / (d + eps)). Identical images give exactly 1 (a = c and b = d bit for bit)
and gradients of exactly 0. With upstream weights W on the map, both gradients come from four
adjoint-filtered maps:

    d/dx = F^T(W dS/dmx) + 2 x' F^T(W dS/dd) + y' F^T(2 W dS/db),  d/dy likewise with x and y swapped.
"""
import numpy as np


class Filter:
    """F and F^T: one window per spatial axis (the last ``len(windows)`` axes), padding ``pad`` each."""

    def __init__(self, backend, windows, pads, reflect):
        self.backend, self.windows, self.pads, self.reflect = backend, windows, pads, reflect

    def __call__(self, a):
        first = a.ndim - len(self.windows)
        for axis, (w, pad) in enumerate(zip(self.windows, self.pads)):
            a = self.backend.filter_axis(a, w, first + axis, pad, self.reflect)
        return a

    def adjoint(self, g, shape):
        first = g.ndim - len(self.windows)
        for axis in reversed(range(len(self.windows))):
            g = self.backend.filter_axis_adjoint(g, self.windows[axis], first + axis, self.pads[axis],
                                                 self.reflect, shape[first + axis])
        return g


def ssim_map(xp, backend, x, y, windows, pads, reflect, c1, c2, eps=0.0, use_cs=False, weights=None,
             grad_x=False, grad_y=False):
    """The SSIM (or contrast-structure) map of planes x, y (P, *spatial), C-contiguous, one dtype, and,
    with upstream ``weights`` of the map's shape, the gradients of sum(weights * map) in x and in y
    (each only when asked). Returns (map, grad_x or None, grad_y or None)."""
    dtype = x.dtype.type
    f = Filter(backend, [w.astype(x.dtype) for w in windows], pads, reflect)
    planes = x.shape[0]
    spatial = (1,) * (x.ndim - 1)
    size = max(1, int(np.prod(x.shape[1:])))
    s = ((x.reshape(planes, -1).sum(axis=1, dtype=np.float64) + y.reshape(planes, -1).sum(axis=1, dtype=np.float64))
         / (2 * size)).astype(x.dtype).reshape((planes,) + spatial)
    xs, ys = x - s, y - s
    crop = None
    if not reflect and any(pads):  # zero padding of x, y: -s in the shifted coordinates
        crop = (slice(None),) + tuple(slice(p, p + n) for p, n in zip(pads, x.shape[1:]))
        xs, ys = _padded(xp, xs, pads, -s), _padded(xp, ys, pads, -s)
        f.pads = [0] * len(pads)
    mx, my = f(xs), f(ys)
    sxx, syy, sxy = f(xs * xs), f(ys * ys), f(xs * ys)
    two, c1, c2, eps = dtype(2), dtype(c1), dtype(c2), dtype(eps)
    # A window whose weights do not sum to 1 (a caller's, or pytorch-msssim's float32 Gaussian) moves the
    # moments of x - s: with W its total weight and k = 1 - W, mu = m + s W, var = Sxx - m^2 + 2 s k m + s^2 W k,
    # cov = Sxy - mx my + s k (mx + my) + s^2 W k. (k = 0 for a normalised window: the plain formulas.)
    total = float(np.prod([np.sum(np.asarray(w, np.float64)) for w in windows]))
    k = 1.0 - total
    if abs(k) <= 4 * np.finfo(np.float64).eps:
        k, total = 0.0, 1.0
    sk = s * dtype(k)
    if k:
        extra = s * s * dtype(total * k)
        sxx, syy = sxx + two * sk * mx + extra, syy + two * sk * my + extra
        sxy = sxy + sk * (mx + my) + extra
    b = two * (sxy - mx * my) + c2
    d = (sxx - mx * mx) + (syy - my * my) + c2
    if use_cs:
        a = c = None
        q = d + eps
        value = b / q
    else:
        ux, uy = mx + s * dtype(total), my + s * dtype(total)
        a = two * ux * uy + c1
        c = ux * ux + uy * uy + c1
        q = c * d + eps
        value = a * b / q
    if weights is None or not (grad_x or grad_y):
        return value, None, None
    w = weights.astype(x.dtype, copy=False)
    # dS/db = a / q, dS/dd = -a b c / q^2 (a = c = 1 for contrast-structure): written so that both vanish
    # exactly in the gradient where x = y (b c / q and a d / q are then exactly 1)
    if use_cs:
        a_q = w / q
        bc_q = b / q
        lum_x = lum_y = None
    else:
        a_q = w * a / q
        bc_q = b * c / q
        ad_q = a * d / q
        b_q = two * w * b / q
        lum_x, lum_y = b_q * (uy - ux * ad_q), b_q * (ux - uy * ad_q)
    dd = -a_q * bc_q                      # W dS/dSxx = W dS/dSyy = W dS/dd
    bxy = two * a_q                       # W dS/dSxy = 2 W dS/db
    ex, ey = (mx - sk, my - sk) if k else (mx, my)  # (d var_x / d mx = -2 (mx - s k), likewise cov)
    cs_x = two * a_q * (ex * bc_q - ey)   # through b and d: d/dmx
    cs_y = two * a_q * (ey * bc_q - ex)
    shape = xs.shape
    t_dd, t_bxy = f.adjoint(dd, shape), f.adjoint(bxy, shape)
    gx = gy = None
    if grad_x:
        gx = f.adjoint(cs_x if lum_x is None else cs_x + lum_x, shape) + two * xs * t_dd + ys * t_bxy
    if grad_y:
        gy = f.adjoint(cs_y if lum_y is None else cs_y + lum_y, shape) + two * ys * t_dd + xs * t_bxy
    if crop is not None:
        gx = None if gx is None else xp.ascontiguousarray(gx[crop])
        gy = None if gy is None else xp.ascontiguousarray(gy[crop])
    return value, gx, gy


def _padded(xp, a, pads, fill):
    """a (P, *spatial) with ``pads`` more positions on each side of each spatial axis, valued ``fill`` (P,
    broadcast)."""
    out = xp.empty((a.shape[0],) + tuple(n + 2 * p for n, p in zip(a.shape[1:], pads)), a.dtype)
    out[...] = fill
    out[(slice(None),) + tuple(slice(p, p + n) for p, n in zip(pads, a.shape[1:]))] = a
    return out
