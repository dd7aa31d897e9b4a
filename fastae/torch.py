"""fastae.torch: drop-in PyTorch losses on fastae's fused kernels.

Each loss is a real custom operator (``torch.library.custom_op``) with a fake
implementation and an autograd formula, so ``torch.compile`` traces it without
a graph break. The forward computes the gradient in the same fused pass and
saves it; the backward only scales it by the incoming gradient. When no input
requires grad (or grad mode is off), no gradient is computed at all.

Gradients flow to ``input`` and, as torch.nn.functional's and pytorch-msssim's
do, to a ``target`` that requires grad (computed only then, in the same pass).
Weights and thresholds are data (one that requires grad gets a warning, once). First derivatives only: differentiating a gradient again
(``create_graph=True`` and then backward, gradient penalties, ``gradgradcheck``)
raises, as do forward-mode AD and the ``torch.func`` transforms. Under
``torch.autocast`` the losses run in float32, as ``torch.nn.functional``'s do.
"""
import contextlib
import functools
import inspect
import numbers
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

import fastae as _fa
from fastae._arrays import check_choice, check_finite_or_nan, is_number
from fastae._table import ACTIVATIONS, LOSSES
from fastae.pointwise import REDUCTIONS, loss_params
from fastae.ssim import PADDINGS

# ---------------------------------------------------------------- the operators


@torch.library.custom_op("fastae::pointwise", mutates_args=())
def _pointwise(input: Tensor, target: Tensor, weight: Optional[Tensor], loss: str, reduction: str,
               activation: str, negative_slope: float, params: List[float], need_grad: bool,
               need_target_grad: bool) -> Tuple[Tensor, Tensor, Tensor]:
    kw = dict(zip((p.name for p in LOSSES[loss].params), params))  # the table's parameters, in its order
    result = getattr(_fa, loss)(input.detach(), target.detach(), reduction=reduction,
                                weight=None if weight is None else weight.detach(), activation=activation,
                                negative_slope=negative_slope, grad=need_grad or need_target_grad,
                                target_grad=need_target_grad, **kw)
    if not (need_grad or need_target_grad):  # (two empties: a custom op's outputs may not alias each other)
        return result, input.new_empty(0), input.new_empty(0)
    empty = input.new_empty(0)
    return result[0], result[1] if need_grad else empty, result[2] if need_target_grad else empty


@_pointwise.register_fake
def _(input, target, weight, loss, reduction, activation, negative_slope, params, need_grad, need_target_grad):
    value = input.new_empty(input.shape if reduction == "none" else ())
    return value, input.new_empty(input.shape if need_grad else (0,)), \
        input.new_empty(input.shape if need_target_grad else (0,))


@torch.library.custom_op("fastae::penalty", mutates_args=())
def _penalty(input: Tensor, kind: str, coefficient: float, need_grad: bool) -> Tuple[Tensor, Tensor]:
    result = getattr(_fa, kind)(input.detach(), coefficient, grad=need_grad)
    return (result.loss, result.grad) if need_grad else (result, input.new_empty(0))


@_penalty.register_fake
def _(input, kind, coefficient, need_grad):
    return input.new_empty(()), input.new_empty(input.shape if need_grad else (0,))


@torch.library.custom_op("fastae::structural", mutates_args=())
def _structural(input: Tensor, target: Tensor, kind: str, reduction: str, data_range: float, win_size: int,
                sigma: float, k1: float, k2: float, padding: str, alpha: float, pixel: str,
                weights: Optional[List[float]], window: Optional[List[float]], eps: float, small: str,
                need_grad: bool, need_target_grad: bool) -> Tuple[Tensor, Tensor, Tensor]:
    kw = dict(data_range=data_range, win_size=win_size, sigma=sigma, k1=k1, k2=k2, window=window)
    if kind == "mixed":
        call = functools.partial(_fa.mixed_loss, alpha=alpha, pixel=pixel, padding=padding, eps=eps, **kw)
    elif kind == "ms_ssim":
        call = functools.partial(_fa.ms_ssim, weights=weights, reduction=reduction, small=small, **kw)
    else:
        call = functools.partial(getattr(_fa, kind), padding=padding, reduction=reduction, eps=eps, small=small, **kw)
    result = call(input.detach(), target.detach(), grad=need_grad or need_target_grad,
                  target_grad=need_target_grad)
    if not (need_grad or need_target_grad):  # (two empties: a custom op's outputs may not alias each other)
        return result, input.new_empty(0), input.new_empty(0)
    empty = input.new_empty(0)
    return result[0], result[1] if need_grad else empty, result[2] if need_target_grad else empty


@_structural.register_fake
def _(input, target, kind, reduction, data_range, win_size, sigma, k1, k2, padding, alpha, pixel, weights,
      window, eps, small, need_grad, need_target_grad):
    dims = 3 if input.dim() == 5 else 2
    value = input.new_empty(input.shape[:-dims - 1] if reduction == "none" else ())
    return value, input.new_empty(input.shape if need_grad else (0,)), \
        input.new_empty(input.shape if need_target_grad else (0,))


@torch.library.custom_op("fastae::ssim_map", mutates_args=())
def _ssim_map(input: Tensor, target: Tensor, data_range: float, win_size: int, sigma: float, k1: float,
              k2: float, padding: str, window: Optional[List[float]], eps: float) -> Tensor:
    return _fa.ssim_map(input.detach(), target.detach(), data_range=data_range, win_size=win_size, sigma=sigma,
                        k1=k1, k2=k2, padding=padding, window=window, eps=eps)


@_ssim_map.register_fake
def _(input, target, data_range, win_size, sigma, k1, k2, padding, window, eps):
    size = len(window) if window is not None else win_size
    dims = 3 if input.dim() == 5 else 2
    pad = 0 if padding == "valid" else size // 2
    return input.new_empty(input.shape[:-dims] + tuple(n + 2 * pad - size + 1 for n in input.shape[-dims:]))


@torch.library.custom_op("fastae::ms_ssim_l1", mutates_args=())
def _ms_ssim_l1(input: Tensor, target: Tensor, sigmas: List[float], data_range: float, k1: float, k2: float,
                alpha: float, compensation: float, reduction: str) -> Tensor:
    return _fa.ms_ssim_l1_loss(input.detach(), target.detach(), sigmas=sigmas, data_range=data_range, k1=k1, k2=k2,
                               alpha=alpha, compensation=compensation, reduction=reduction)


@_ms_ssim_l1.register_fake
def _(input, target, sigmas, data_range, k1, k2, alpha, compensation, reduction):
    return input.new_empty((input.shape[0],) + input.shape[2:] if reduction == "none" else ())


def _ms_ssim_l1_backward(ctx, grad_value):
    """Both gradients of sum(upstream * loss map) in one pass over the scales (nothing saved but the images)."""
    x, y = ctx.saved_tensors
    sigmas, data_range, k1, k2, alpha, compensation, reduction = ctx.options
    if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return (None,) * 9
    n, _, h, w = x.shape
    scale = 1.0 / (n * h * w) if reduction == "mean" else 1.0
    upstream = (grad_value * scale).expand(n, h, w).to(x.dtype).contiguous()
    _, gx, gy = _fa.ms_ssim_l1_loss(x.detach(), y.detach(), sigmas=sigmas, data_range=data_range, k1=k1, k2=k2,
                                    alpha=alpha, compensation=compensation, reduction="none",
                                    upstream=upstream.detach(), grad=True, target_grad=True)
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        gx, _ = torch._C._functions.DelayedError(_TWICE, 2)(gx, x)
    return (gx if ctx.needs_input_grad[0] else None, gy if ctx.needs_input_grad[1] else None) + (None,) * 7


def _save_images(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.options = inputs[2:]


def _ssim_map_backward(ctx, grad_map):
    """The map's two gradients in one pass of the general path, weighted by the incoming gradient (the
    map is not saved: the backward filters the images again)."""
    x, y = ctx.saved_tensors
    if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return (None,) * 10
    data_range, win_size, sigma, k1, k2, padding, window, eps = ctx.options
    _, gx, gy = _fa.ssim_map(x.detach(), y.detach(), data_range=data_range, win_size=win_size, sigma=sigma, k1=k1,
                             k2=k2, padding=padding, window=window, eps=eps,
                             weights=grad_map.detach().to(x.dtype).contiguous())
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        gx, _ = torch._C._functions.DelayedError(_TWICE, 2)(gx, x)
    return (gx if ctx.needs_input_grad[0] else None, gy if ctx.needs_input_grad[1] else None) + (None,) * 8


@torch.library.custom_op("fastae::soft_threshold", mutates_args=())
def _soft_threshold(input: Tensor, lam: Tensor, need_grad: bool) -> Tuple[Tensor, Tensor]:
    if need_grad:
        codes, mask = _fa.soft_threshold(input.detach(), lam.detach(), grad=True)
        return codes, mask
    return _fa.soft_threshold(input.detach(), lam.detach()), input.new_empty(0)


@_soft_threshold.register_fake
def _(input, lam, need_grad):
    return torch.empty_like(input, memory_format=torch.contiguous_format), \
        (torch.empty_like(input, memory_format=torch.contiguous_format) if need_grad else input.new_empty(0))


@torch.library.custom_op("fastae::kl_sparsity", mutates_args=())
def _kl_sparsity(h: Tensor, rho: float, beta: float, need_grad: bool) -> Tuple[Tensor, Tensor]:
    if need_grad:
        value, grad = _fa.kl_sparsity(h.detach(), rho, beta=beta, grad=True)
        return value, grad
    return _fa.kl_sparsity(h.detach(), rho, beta=beta), h.new_empty(0)


@_kl_sparsity.register_fake
def _(h, rho, beta, need_grad):
    return h.new_empty(()), h.new_empty(h.shape if need_grad else (0,))


def _save_grad(ctx, inputs, output):
    ctx.save_for_backward(*output[1:], inputs[0])


_TWICE = (b"fastae.torch: the fused kernels give first derivatives only; a second derivative (create_graph=True "
          b"then backward, a gradient penalty, gradgradcheck) would silently be wrong, so it is refused. Use "
          b"torch.nn.functional (or pytorch-msssim) for that loss term")


def _scaled(grad_value, saved, input):
    """d loss / d an input = incoming gradient x the gradient saved by the forward (None where none was
    computed). Under create_graph the result carries a node that raises when it is differentiated again
    (the saved gradient is data)."""
    if saved.numel() == 0 and input.numel() != 0:
        return None
    while grad_value.dim() < saved.dim():  # per-image values: broadcast over the image axes
        grad_value = grad_value.unsqueeze(-1)
    result = grad_value * saved
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        result, _ = torch._C._functions.DelayedError(_TWICE, 2)(result, input)  # a node between input and result
    return result


def _backward(n_inputs):
    """The autograd formula of an operator with ``n_inputs`` arguments: the saved gradients go to its
    first arguments (input, and target where the operator returns a gradient for it), None to the rest."""
    def backward(ctx, grad_value, *_):
        *saved, input = ctx.saved_tensors
        grads = tuple(_scaled(grad_value, g, input) for g in saved)
        return grads + (None,) * (n_inputs - len(grads))
    return backward


_OPS = (_pointwise, _penalty, _structural, _soft_threshold, _kl_sparsity)
for _op in _OPS:
    _op.register_autograd(_backward(len(_op._opoverload._schema.arguments)), setup_context=_save_grad)
_ssim_map.register_autograd(_ssim_map_backward, setup_context=_save_images)
_ms_ssim_l1.register_autograd(_ms_ssim_l1_backward, setup_context=_save_images)
for _op in (*_OPS, _ssim_map, _ms_ssim_l1):
    for _device in ("cpu", "cuda"):  # autocast: float32, as F.mse_loss
        torch.library.register_autocast(_op._qualname, _device, torch.float32)

_warned = set()


def _check(*inputs, **data):
    """Refuse what the fused kernels cannot differentiate; warn (once) about data (``data``: weights,
    thresholds) that asks for a gradient: ``inputs`` get theirs."""
    if torch.compiler.is_compiling():
        return
    tensors = (*inputs, *(d for d in data.values() if isinstance(d, Tensor)))
    if any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors):
        raise RuntimeError("fastae.torch losses do not support torch.func transforms (grad, vmap, jvp, jacrev, "
                           "hessian): use torch.autograd (loss.backward(), torch.autograd.grad) instead")
    if any(torch.autograd.forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        raise RuntimeError("fastae.torch losses do not support forward-mode AD (torch.autograd.forward_ad): "
                           "use reverse mode (loss.backward(), torch.autograd.grad) instead")
    for name, d in data.items():
        if isinstance(d, Tensor) and d.requires_grad and torch.is_grad_enabled() and name not in _warned:
            _warned.add(name)
            warnings.warn(f"fastae.torch: {name} requires grad but gets no gradient (gradients flow to input "
                          f"and target only); detach it to silence this warning", stacklevel=4)


def _needs_grad(input):
    return torch.is_grad_enabled() and input.requires_grad


# ---------------------------------------------------------------- functional API
def _pointwise_loss(loss, input, target, reduction, weight, activation, negative_slope, **params):
    _check(input, target, weight=weight)
    _choices(reduction=(reduction, REDUCTIONS), activation=(activation, _ACTIVATION_NAMES))
    checked = loss_params(loss, params, LOSSES[loss].torch)
    input, target, dtype = _float32_on_cpu(input, target)
    if dtype is not None and isinstance(weight, Tensor) and weight.dtype == dtype:
        weight = weight.float()
    value, _, _ = _pointwise(input, target, weight, loss, reduction, activation,
                             _real(negative_slope, "negative_slope"), list(checked.values()), _needs_grad(input),
                             _needs_grad(target))
    return value if dtype is None else value.to(dtype)


def _functional(row):
    """fastae.torch's function of a table row: (input, target, reduction, <its parameters>, *, weight, ...),
    the order of torch.nn.functional's losses (huber_loss(input, target, reduction, delta))."""
    def loss(input, target, reduction="mean", *args, weight=None, activation="identity", negative_slope=0.01,
             **params):
        if len(args) > len(row.params):
            raise TypeError(f"{row.torch}() takes at most {3 + len(row.params)} positional arguments")
        params.update(zip((p.name for p in row.params), args))
        return _pointwise_loss(row.name, input, target, reduction, weight, activation, negative_slope, **params)
    kind = inspect.Parameter
    own = [kind(p.name, kind.POSITIONAL_OR_KEYWORD, default=p.default) for p in row.params]
    tail = [kind(name, kind.KEYWORD_ONLY, default=default)
            for name, default in (("weight", None), ("activation", "identity"), ("negative_slope", 0.01))]
    loss.__signature__ = inspect.Signature([kind("input", kind.POSITIONAL_OR_KEYWORD),
                                            kind("target", kind.POSITIONAL_OR_KEYWORD),
                                            kind("reduction", kind.POSITIONAL_OR_KEYWORD, default="mean"),
                                            *own, *tail])
    loss.__name__ = loss.__qualname__ = row.torch
    loss.__doc__ = f"fastae.{row.name} under autograd, fused with ``activation`` and ``weight``: {row.doc}"
    return loss


for _row in LOSSES.values():
    if _row.torch:
        globals()[_row.torch] = _functional(_row)


def binary_cross_entropy(input, target, weight=None, reduction="mean", *, activation="identity",
                         negative_slope=0.01):
    """torch.nn.functional.binary_cross_entropy on probabilities (logs clamped at -100)."""
    return _pointwise_loss("bce", input, target, reduction, weight, activation, negative_slope)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean"):
    """torch.nn.functional.binary_cross_entropy_with_logits (no pos_weight)."""
    return _pointwise_loss("bce", input, target, reduction, weight, "sigmoid", 0.01)


def _penalty_of(kind, z, coefficient):
    _check(z)
    value, _ = _penalty(z, kind, _real(coefficient, "alpha" if kind == "l1_penalty" else "lam"), _needs_grad(z))
    return value


def l1_penalty(z, alpha):
    """alpha * sum |z| (a Laplace prior on codes), as fastae.l1_penalty."""
    return _penalty_of("l1_penalty", z, alpha)


def l2_penalty(w, lam):
    """lam * sum w^2 (weight decay, a Gaussian prior), as fastae.l2_penalty."""
    return _penalty_of("l2_penalty", w, lam)


def _structural_loss(kind, input, target, reduction="mean", data_range=1.0, win_size=11, sigma=1.5, k1=0.01,
                     k2=0.03, padding="valid", alpha=0.0, pixel="l1", weights=None, window=None, eps=0.0,
                     small="raise"):
    _check(input, target)
    _choices(reduction=(reduction, ("mean", "none")), padding=(padding, PADDINGS), pixel=(pixel, ("l1", "mse")),
             small=(small, ("raise", "skip")))
    input, target, dtype = _float32_on_cpu(input, target)
    value, _, _ = _structural(input, target, kind, reduction, _real(data_range, "data_range"), _win_size(win_size),
                              _real(sigma, "sigma"), _real(k1, "k1"), _real(k2, "k2"), padding, _real(alpha, "alpha"),
                              pixel, None if weights is None else _reals(weights, "weights"), _window(window),
                              _real(eps, "eps"), small, _needs_grad(input), _needs_grad(target))
    return value if dtype is None else value.to(dtype)


def _float32_on_cpu(input, target):
    """float16 and bfloat16 CPU tensors computed in float32 (the CPU kernels hold float32 and float64), the
    result handed back in their dtype: (input, target, that dtype or None)."""
    if input.device.type == "cpu" and input.dtype in (torch.float16, torch.bfloat16) and target.dtype == input.dtype:
        # (under autocast the result stays float32, as torch.nn.functional's losses)
        return input.float(), target.float(), None if torch.is_autocast_enabled("cpu") else input.dtype
    return input, target, None


_ACTIVATION_NAMES = tuple(ACTIVATIONS)


def _choices(**given):
    """Each string option among its choices (name=(value, choices)), checked before the custom ops, whose
    schemas would refuse a non-string with the dispatcher's message ('Expected a value of type str')."""
    for name, (value, choices) in given.items():
        check_choice(value, name, choices)


def _real(value, name):
    """A number for the custom ops' schema (a one-element tensor's value too), as the library takes numbers:
    anything else (None, a string) is a TypeError naming the argument; its range the library checks."""
    if isinstance(value, float):  # (first: torch.compile's traced constants answer isinstance, not type())
        return value
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if not is_number(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return check_finite_or_nan(value, name)


def _reals(values, name):
    """A sequence of numbers as a list of floats (see _real)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence of real numbers, got {type(values).__name__}")
    return [_real(v, name) for v in values]


def _win_size(value):
    """win_size as an int; 11.5 or '11' refused as the library refuses them (int() took them)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"win_size must be a positive odd integer, got {value!r}")
    return int(value)


def _window(window):
    """A caller's 1-D window as a list of floats (a tensor's values, any shape with one axis longer than 1)."""
    if window is None:
        return None
    if isinstance(window, Tensor):  # (under torch.compile a graph break: its values may change between calls)
        window = window.detach().to("cpu", torch.float64).reshape(-1).tolist()
    return _reals(window, "window")


def ssim(input, target, data_range=1.0, reduction="mean", *, win_size=11, sigma=1.5, k1=0.01, k2=0.03,
         padding="valid", window=None, eps=0.0, small="raise"):
    """SSIM (pytorch-msssim's convention; ``reduction="none"``: one value per image). Images (N, C, H, W)
    or volumes (N, C, D, H, W); padding "valid", "same" (zeros) or "reflect"; see fastae.ssim."""
    return _structural_loss("ssim", input, target, reduction, data_range, win_size, sigma, k1, k2, padding,
                            window=window, eps=eps, small=small)


def ssim_loss(input, target, data_range=1.0, reduction="mean", *, win_size=11, sigma=1.5, k1=0.01, k2=0.03,
              padding="valid", window=None, eps=0.0, small="raise"):
    """1 - SSIM."""
    return _structural_loss("ssim_loss", input, target, reduction, data_range, win_size, sigma, k1, k2, padding,
                            window=window, eps=eps, small=small)


def ssim_map(input, target, data_range=1.0, *, win_size=11, sigma=1.5, k1=0.01, k2=0.03, padding="valid",
             window=None, eps=0.0):
    """The per-pixel SSIM map (kornia's ``metrics.ssim``), differentiable in both images."""
    _check(input, target)
    _choices(padding=(padding, PADDINGS))
    input, target, dtype = _float32_on_cpu(input, target)
    value = _ssim_map(input, target, _real(data_range, "data_range"), _win_size(win_size), _real(sigma, "sigma"),
                      _real(k1, "k1"), _real(k2, "k2"), padding, _window(window), _real(eps, "eps"))
    return value if dtype is None else value.to(dtype)


def ms_ssim(input, target, data_range=1.0, reduction="mean", *, win_size=11, sigma=1.5, k1=0.01, k2=0.03,
            weights=None, window=None, small="raise"):
    """MS-SSIM as pytorch-msssim's ms_ssim (volumes pool 2x2x2)."""
    return _structural_loss("ms_ssim", input, target, reduction, data_range, win_size, sigma, k1, k2,
                            weights=weights, window=window, small=small)


def ms_ssim_l1_loss(input, target, *, sigmas=(0.5, 1.0, 2.0, 4.0, 8.0), data_range=1.0, k1=0.01, k2=0.03,
                    alpha=0.025, compensation=200.0, reduction="mean"):
    """The MS-SSIM + L1 loss of Zhao et al., as kornia's MS_SSIMLoss (see fastae.ms_ssim_l1_loss)."""
    _check(input, target)
    _choices(reduction=(reduction, ("mean", "sum", "none")))
    input, target, dtype = _float32_on_cpu(input, target)
    value = _ms_ssim_l1(input, target, _reals(sigmas, "sigmas"), _real(data_range, "data_range"), _real(k1, "k1"),
                        _real(k2, "k2"), _real(alpha, "alpha"), _real(compensation, "compensation"), reduction)
    return value if dtype is None else value.to(dtype)


def mixed_loss(input, target, alpha, pixel="l1", data_range=1.0, *, win_size=11, sigma=1.5, k1=0.01, k2=0.03,
               padding="valid", window=None, eps=0.0):
    """alpha * pixel + (1 - alpha) * (1 - SSIM), pixel the mean L1 or MSE."""
    return _structural_loss("mixed", input, target, "mean", data_range, win_size, sigma, k1, k2, padding,
                            alpha, pixel, window=window, eps=eps)


def soft_threshold(input, lam):
    """sign(x) max(|x| - lam, 0); ``lam`` a number or a tensor broadcastable to input."""
    _check(input, lam=lam)
    lam = lam if isinstance(lam, Tensor) else torch.tensor(_real(lam, "lam"), dtype=input.dtype, device=input.device)
    codes, _ = _soft_threshold(input, lam, _needs_grad(input))
    return codes


def kl_sparsity(h, rho, beta=1.0):
    """beta * sum_j KL(rho || mean_i h_ij) for sigmoid activations h (n, k)."""
    _check(h)
    value, _ = _kl_sparsity(h, _real(rho, "rho"), _real(beta, "beta"), _needs_grad(h))
    return value


# ---------------------------------------------------------------- modules
class _Loss(nn.Module):
    def __init__(self, fn, **options):
        super().__init__()
        self._fn = fn
        self.options = options

    def forward(self, input, target):
        return self._fn(input, target, **self.options)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


def _module(row):
    """The nn.Module of a table row's loss: its options (reduction, the loss's parameters, weight,
    activation) given once, at construction."""
    def __init__(self, reduction="mean", **options):
        _Loss.__init__(self, globals()[row.torch], reduction=reduction, **options)
    return type(row.module, (_Loss,), {"__init__": __init__, "__doc__": f"{row.torch} as a module.",
                                        "__module__": __name__})


for _row in LOSSES.values():
    if _row.module and _row.torch:
        globals()[_row.module] = _module(_row)


class BCELoss(_Loss):
    def __init__(self, weight=None, reduction="mean", **extras):
        super().__init__(binary_cross_entropy, weight=weight, reduction=reduction, **extras)


class BCEWithLogitsLoss(_Loss):
    def __init__(self, weight=None, reduction="mean"):
        super().__init__(binary_cross_entropy_with_logits, weight=weight, reduction=reduction)


class SSIMLoss(_Loss):
    """1 - SSIM."""

    def __init__(self, data_range=1.0, reduction="mean", **options):
        super().__init__(ssim_loss, data_range=data_range, reduction=reduction, **options)


class MSSSIMLoss(_Loss):
    """1 - MS-SSIM."""

    def __init__(self, data_range=1.0, **options):
        super().__init__(ms_ssim, data_range=data_range, **options)

    def forward(self, input, target):
        return 1 - super().forward(input, target)


class MSSSIML1Loss(_Loss):
    """The MS-SSIM + L1 loss of Zhao et al. (ms_ssim_l1_loss) as a module."""

    def __init__(self, **options):
        super().__init__(ms_ssim_l1_loss, **options)


class MixedLoss(_Loss):
    """alpha * pixel + (1 - alpha) * (1 - SSIM)."""

    def __init__(self, alpha, pixel="l1", data_range=1.0, **options):
        super().__init__(mixed_loss, alpha=alpha, pixel=pixel, data_range=data_range, **options)


class PerceptualLoss(nn.Module):
    """sum_l w_l ||phi_l(input) - phi_l(target)||^2 (mean squared error per
    feature map) over the features phi_l of a user-supplied network, with an
    optional pixel term: alpha * pixel + (1 - alpha) * perceptual.

    ``layers`` names submodules of ``feature_extractor`` whose outputs are the
    features (read with forward hooks that live only during a call); without
    it, the network's output (a tensor, or a list or tuple of tensors) is. Any
    network works: a pretrained one is loaded the usual way, e.g.
    ``torchvision.models.vgg16()`` with ``load_state_dict(torch.load(path))``
    from a local file. The network is left as it is: it runs in eval mode for
    the call (each submodule's mode is restored after), its parameters are read
    detached (they get no gradient, and nothing is frozen in place), and the
    target's features are computed without gradient.
    """

    def __init__(self, feature_extractor: nn.Module, layers: Optional[Sequence[str]] = None,
                 weights: Optional[Sequence[float]] = None, alpha: float = 0.0, pixel: str = "mse"):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if pixel not in ("mse", "l1"):
            raise ValueError(f"pixel must be 'mse' or 'l1', got {pixel!r}")
        self.features = feature_extractor
        self.layers = list(layers) if layers is not None else None
        self.weights = list(weights) if weights is not None else None
        self.alpha, self.pixel = alpha, pixel
        if self.layers is not None:
            modules = dict(self.features.named_modules())
            missing = [name for name in self.layers if name not in modules]
            if missing:
                raise ValueError(f"layers {missing} are not submodules of the feature extractor")

    @contextlib.contextmanager
    def _evaluating(self):
        """The network in eval mode and hooked for one call, as it was afterwards."""
        modes = [(m, m.training) for m in self.features.modules()]
        captured, handles = {}, []
        if self.layers is not None:
            modules = dict(self.features.named_modules())
            for name in self.layers:
                handles.append(modules[name].register_forward_hook(
                    lambda module, args, output, name=name: captured.__setitem__(name, output)))
        self.features.eval()
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()
            for module, mode in modes:
                module.training = mode

    def _phi(self, x):
        state = {name: p.detach() for name, p in self.features.named_parameters()}
        state.update(self.features.named_buffers())
        with self._evaluating() as captured:
            out = torch.func.functional_call(self.features, state, (x,))
        if self.layers is not None:
            return [captured[name] for name in self.layers]
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def forward(self, input, target):
        feats = self._phi(input)
        with torch.no_grad():
            target_feats = self._phi(target)
        weights = self.weights or [1.0] * len(feats)
        if len(weights) != len(feats):
            raise ValueError(f"{len(weights)} weights for {len(feats)} feature maps")
        perceptual = sum(w * mse_loss(f, t) for w, f, t in zip(weights, feats, target_feats))
        if self.alpha == 0.0:
            return perceptual
        pixel = (mse_loss if self.pixel == "mse" else l1_loss)(input, target)
        return self.alpha * pixel + (1 - self.alpha) * perceptual
