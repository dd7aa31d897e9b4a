"""Sparse codes and regularisers: the priors of the theory notes as kernels.

- L2 weight decay is a Gaussian prior on the weights (MAP), an L1 penalty on
  the codes a Laplace prior; both are pointwise sums, fused with their gradient.
- For a linear decoder U with orthonormal columns, the LASSO code
  argmin_z ||x - U z||^2 + alpha ||z||_1 is soft(U^T x, alpha / 2).
- For any dictionary D, ``ista`` solves the same problem by (accelerated)
  proximal gradient descent, batched over signals.
"""
import warnings
from collections import namedtuple

import numpy as np

from ._arrays import Call, check_number, check_positive_integer, contiguous, is_number, on_device
from ._neutral import power_of_two_scale, to_unit
from .pointwise import LossGrad

Thresholded = namedtuple("Thresholded", "codes mask")
Thresholded.__doc__ = "Soft-thresholded codes and their derivative (1 where |c| > lam, else 0)."


class ConvergenceWarning(UserWarning):
    """``ista`` ran out of steps (``n_iter``) before some signals converged."""


def _thresholds(call, lam):
    """lam as a non-negative number, or as a C-contiguous array whose flat
    values repeat along c's (varying along trailing axes only) or match them.
    (On a CUDA device the signs of an array lam are not checked: that would
    wait for the device.)"""
    if is_number(lam):
        return check_number(lam, "lam", nonnegative=True)
    a = call.like_pred(lam, "lam", shape=False)
    shape = call.pred.shape
    try:
        fits = np.broadcast_shapes(a.shape, shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"lam of shape {a.shape} does not broadcast to {call.name}'s shape {shape}")
    if not call.gpu and not (a >= 0).all():
        raise ValueError(f"lam must be non-negative, got min {a.min()}")
    if a.size == 1 and not call.gpu:
        return float(a.reshape(()))
    core = a.reshape(a.shape[next(i for i, d in enumerate(a.shape) if d != 1):])  # leading 1s dropped
    if core.shape == shape[len(shape) - core.ndim:]:
        return contiguous(core)
    return contiguous(call.xp.broadcast_to(a, shape))


@on_device
def soft_threshold(c, lam, *, grad=False, out=None, mask_out=None):
    """sign(c) max(|c| - lam, 0), the proximal operator of lam |c|.

    ``lam`` is a non-negative number or an array broadcastable to ``c`` (e.g.
    one threshold per atom). The codes go into ``out`` when given (it may be
    ``c`` itself). ``grad=True`` returns ``Thresholded(codes, mask)``, the mask
    being the derivative: 1 where |c| > lam, else 0, in c's dtype (written
    into ``mask_out`` when given).
    """
    call = Call(c, "c")
    a = contiguous(call.pred)
    lam = _thresholds(call, lam)
    if mask_out is not None and not grad:
        raise ValueError("mask_out receives the derivative: pass grad=True with it")
    if out is not None and mask_out is not None and call.xp.may_share_memory(
            call.like_pred(out, "out"), call.like_pred(mask_out, "mask_out")):
        raise ValueError("out and mask_out overlap: the codes and the mask need memory of their own")
    codes = call.out(out, reads=(a, lam), in_place=True)
    mask = call.out(mask_out, "mask_out", reads=(a, lam), in_place=True) if grad else None
    call.backend.soft_threshold(a, lam, codes, mask)
    result = call.deliver(codes, out)
    if not grad:
        return result
    return Thresholded(result, call.deliver(mask, mask_out))


def _penalty(loss, z, coefficient, name, grad, out, accumulate_into=None):
    """coefficient * sum_i f(z_i) with f the pointwise loss against a zero target."""
    call = Call(z, name)
    a = contiguous(call.pred)
    g = call.out(out, reads=(a,)) if grad else None
    acc = None if accumulate_into is None else call.out(accumulate_into, "accumulate_into")
    if acc is not None and call.xp.may_share_memory(acc, a):
        a = a.copy()  # the sum reads what the accumulation writes: read a copy
    value, _, _ = call.backend.pointwise(loss, {}, "identity", 0.0, a, None, None, g, None, coefficient,
                                         coefficient, grad_add=acc)
    value = call.back(value)
    if not grad:
        return value
    return LossGrad(value, call.deliver(g, out))


@on_device
def l1_penalty(z, alpha, *, grad=False, out=None):
    """alpha * sum |z| (a Laplace prior on the codes); gradient alpha * sign(z), 0 at 0."""
    alpha = check_number(alpha, "alpha", nonnegative=True)
    if out is not None and not grad:
        raise ValueError("out receives the gradient: pass grad=True with it")
    return _penalty("l1", z, alpha, "z", grad, out)


@on_device
def l2_penalty(w, lam, *, grad=False, accumulate_into=None):
    """lam * sum w^2 (weight decay, a Gaussian prior); gradient 2 lam w.

    ``accumulate_into=g`` adds the gradient into ``g`` (C-contiguous, w's
    shape and dtype) in the same pass and returns the value alone.
    """
    lam = check_number(lam, "lam", nonnegative=True)
    if grad and accumulate_into is not None:
        raise ValueError("accumulate_into adds the gradient into a buffer: pass it without grad=True")
    return _penalty("mse", w, lam, "w", grad, None, accumulate_into)


@on_device
def kl_sparsity(h, rho, *, beta=1.0, grad=False):
    """beta * sum_j KL(rho || rho_hat_j), rho_hat_j = mean_i h_ij, for
    activations ``h`` of shape (n, k) in (0, 1): the sparse autoencoder's
    penalty pulling each unit's mean activation towards ``rho``. The gradient
    w.r.t. h_ij is beta (-rho / rho_hat_j + (1 - rho) / (1 - rho_hat_j)) / n."""
    call = Call(h, "h")
    a = call.pred
    rho = check_number(rho, "rho")
    beta = check_number(beta, "beta", nonnegative=True)
    if not 0 < rho < 1:
        raise ValueError(f"rho must lie in (0, 1), got {rho}")
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"h must have shape (n, k) with n >= 1, got {a.shape}")
    # On a CUDA device a value outside (0, 1) makes the result NaN: raising would wait for the device.
    if not call.gpu and not ((a > 0) & (a < 1)).all():
        raise ValueError(f"h must lie in (0, 1) (activations of a sigmoid): found values in "
                         f"[{np.nanmin(a)}, {np.nanmax(a)}]" + (" and nan" if np.isnan(a).any() else ""))
    g = call.empty() if grad else None
    value = call.backend.kl_sparsity(contiguous(a), rho, beta, g)
    value = call.back(call.xp.asarray(value, call.value_dtype))
    return LossGrad(value, call.back(g)) if grad else value


def _signals_and_dictionary(x, D, name):
    call = Call(x, "x")
    if call.gpu and call.dtype_name not in ("float32", "float64"):
        raise TypeError(f"x is {call.dtype_name}: sparse codes are solved in float32 or float64")
    a = call.pred
    d = call.like_pred(D, name, shape=False)
    if d.ndim != 2:
        raise ValueError(f"{name} must have shape (d, k), got {d.shape}")
    if a.ndim not in (1, 2) or a.shape[-1] != d.shape[0]:
        raise ValueError(f"x must have shape (n, {d.shape[0]}) or ({d.shape[0]},) to match {name} of shape "
                         f"{d.shape}; got {a.shape}")
    if not bool(call.xp.isfinite(d).all()):  # (on a CUDA device this waits for it, as the solvers do anyway)
        raise ValueError(f"{name} holds non-finite values (NaN or Inf): no code solves against it")
    return call, a, d


@on_device
def lasso_codes(x, U, alpha):
    """argmin_z ||x - U z||^2 + alpha ||z||_1 for U (d, k) with orthonormal
    columns: soft(U^T x, alpha / 2), for x of shape (n, d) or (d,). (On a
    CUDA device the orthonormality check waits for the device.)"""
    call, a, u = _signals_and_dictionary(x, U, "U")
    alpha = check_number(alpha, "alpha", nonnegative=True)
    off, tolerance = _off_identity(u.T @ u, call.xp)
    if off > tolerance:
        raise ValueError(f"U's columns are not orthonormal: |U^T U - I| reaches {off:.3g} (tolerance "
                         f"{tolerance:.1g}); use fastae.ista for a general dictionary")
    b = call.backend.rows_times(a.reshape(-1, a.shape[-1]), u).reshape(a.shape[:-1] + (u.shape[1],))
    return call.back(_orthonormal_codes(call, b, alpha))


@on_device
def ista(x, D, alpha, *, n_iter=100, tol=1e-6, accelerated=True):
    """argmin_z ||x - D z||^2 + alpha ||z||_1 for any dictionary D (d, k),
    batched over the rows of x ((n, d) or (d,)); returns codes (n, k) or (k,).

    An orthonormal D is solved in closed form, and the signals with
    |x D|_inf <= alpha / 2 (zero codes) by that one product. On the CPU the
    others go by G = D^T D's spectrum: where G is well conditioned, batched
    FISTA finds each support; where it is singular or nearly (more atoms
    than dimensions), coordinate descent on G, each signal alone (full
    sweeps alternating with sweeps over the support). Both end in a linear
    solve on the support, walked by active-set steps to the exact optimum
    (the optimality conditions checked); a signal also stops when a step or
    sweep changes its codes by at most ``tol`` relatively. ``n_iter`` bounds
    the steps or full sweeps.
    On a CUDA device: batched FISTA (``accelerated=True``, with adaptive
    momentum restart) or ISTA, step 1 / L with L = 2 ||D||_2^2, stopping when
    every signal's relative change is under ``tol`` (checked every few
    steps), at most ``n_iter`` steps. Signals and dictionaries of any finite
    size are solved alike: those far from 1 are rescaled by powers of two.
    """
    call, a, d = _signals_and_dictionary(x, D, "D")
    alpha = check_number(alpha, "alpha", nonnegative=True)
    tol = check_number(tol, "tol", nonnegative=True)
    n_iter = check_positive_integer(n_iter, "n_iter")
    xp = call.xp
    signals = a if a.ndim == 2 else a[None]
    n, k = signals.shape[0], d.shape[1]
    # (On the CPU the products take one BLAS thread: its idle workers would spin on the cores the solver needs.)
    with np.errstate(invalid="ignore", over="ignore"), call.backend.one_blas_thread():
        # LASSO is equivariant: codes(x, D, alpha) = (u / v) codes(v x, u D, u v alpha). Powers of two u, v bring
        # D's entries and x D's into a range where no square in the solvers overflows or underflows (finite data
        # gave NaN or silently wrong codes from |x| ~ 1e20 in float32, 1e200 in float64); they change no digit.
        u = power_of_two_scale(_largest(xp, d), SCALE_RANGE)
        d = _times(xp, d, u)
        b, gram = call.backend.rows_times(signals, d), contiguous(d.T @ d)
        off, tolerance = _off_identity(gram, xp)
        if off <= tolerance:  # an orthonormal dictionary (never rescaled): the exact optimum in closed form
            return call.back(_orthonormal_codes(call, b, alpha).reshape(a.shape[:-1] + (k,)))
        codes = xp.zeros((n, k), a.dtype)
        # z = 0 is optimal exactly where |x D|_inf <= alpha / 2 (the optimality conditions at 0): one product
        # finds every all-zero code; only the other signals (NaN ones among them) are iterated.
        largest = xp.abs(b).max(axis=1)
        live = xp.nonzero(~(largest <= u * alpha / 2))[0]
        unfinished = 0
        for rows, products, v in _groups_of_like_size(call, signals, live, b, largest, d):
            solved, left = call.backend.lasso(products, gram, u * v * alpha, n_iter, tol, accelerated)
            codes[rows] = _times(xp, solved, u / v)
            unfinished += left
    if unfinished:
        warnings.warn(f"ista: {unfinished} of {n} signals still moved by more than tol={tol:g} after "
                      f"n_iter={n_iter} iterations; raise n_iter", ConvergenceWarning, stacklevel=3)
    return call.back(codes.reshape(a.shape[:-1] + (k,)))


SCALE_RANGE = 2.0 ** 16  # ista rescales D, and x D, whose largest magnitude lies outside [1 / this, this]


def _largest(xp, a):
    """max |a| (NaN if a holds one; 0 if empty), without a temporary of a's size."""
    return max(float(xp.max(a)), -float(xp.min(a))) if a.size else 0.0


def _times(xp, a, t):
    """a * t in a's dtype (t a power of two, or 1: a itself), taken in float64 (t may exceed float32's range)."""
    return a if t == 1 else (a * xp.float64(t)).astype(a.dtype)


def _groups_of_like_size(call, signals, live, b, largest, d):
    """The live signals (rows ``live`` of ``signals``, their products ``b`` = x d, each row's largest |b|
    ``largest``) as groups (rows, v b[rows], v) solved apart: those whose largest |b| lies in [1 / SCALE_RANGE,
    SCALE_RANGE], or is NaN, or comes from a non-finite x, as they are (v = 1); the others in bands of 2^32
    (float32 keeps 2^126 either side of 1), each scaled by the power of two v that brings its largest into
    [1/2, 1). A row of finite x whose b overflowed (inf, or NaN: inf - inf, as another BLAS orders the same
    sums) has b taken again from x times a power of two."""
    if not live.size:
        return []
    xp = call.xp
    top = largest[live]
    if bool((top >= 1 / SCALE_RANGE).all()) and bool((top <= SCALE_RANGE).all()):  # (the usual case: one group)
        return [(live, contiguous(b[live]), 1.0)]
    top = np.asarray(top.get() if hasattr(top, "get") else top)
    live_host = np.asarray(live.get() if hasattr(live, "get") else live)
    overflowed = live_host[~np.isfinite(top)]  # (NaN too: which of inf or NaN depends on the BLAS's order)
    if overflowed.size:
        finite = np.asarray(xp.isfinite(signals[overflowed]).all(axis=1).tolist(), bool)
        overflowed = overflowed[finite]
    keys = np.zeros(live_host.size, np.int64)  # 0: as they are; 1: overflowed; else 2 + the band of 2^32
    scaled = np.isfinite(top) & ((top < 1 / SCALE_RANGE) | (top > SCALE_RANGE))
    keys[scaled] = 2 + (np.frexp(top[scaled])[1] + 2048) // 32
    keys[np.isin(live_host, overflowed)] = 1
    groups = []
    for key in np.unique(keys):
        rows = live_host[keys == key]
        index = xp.asarray(rows)
        products = b[index]
        w = 1.0
        if key == 1:  # (x w in [1/2, 1): x w d stays finite)
            x = signals[index]
            w = to_unit(_largest(xp, x))
            products = call.backend.rows_times(_times(xp, x, w), d)
        v = 1.0 if key == 0 else to_unit(_largest(xp, products))
        groups.append((index, contiguous(_times(xp, products, v)), w * v))
    return groups


def _off_identity(gram, xp):
    """max |D^T D - I| and the tolerance (sqrt(eps) of the dtype) within which D is orthonormal."""
    off = float(xp.abs(gram - xp.eye(gram.shape[0], dtype=gram.dtype)).max()) if gram.size else 0.0
    return off, np.sqrt(np.finfo(gram.dtype).eps)


def _orthonormal_codes(call, b, alpha):
    """The LASSO codes of an orthonormal dictionary from b = x D: soft(b, alpha / 2), in place."""
    codes = contiguous(b)
    call.backend.soft_threshold(codes, alpha / 2, codes, None)
    return codes
