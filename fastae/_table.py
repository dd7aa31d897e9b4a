"""The one table of fastae's pointwise losses and output activations.

Each row names a loss (or an activation), its parameters with their defaults
and checks, the fields its kernels take (by name, in the kernels' order), its
PyTorch names and the eager PyTorch code it replaces. Everything else derives
from the rows: the public functions (``fastae.mse``, ...), ``fastae.torch``'s
functions and modules, the CPU specs and the CUDA instance list (and with it
the nvcc check), ``fastae bench``'s rows, the models' choices and the tests'
parametrisations. Adding a loss is its math once per backend (a Numba function
``<name>_point`` in ``fastae/cpu/pointwise.py``, a struct in
``kernels/pointwise.cu``), one row here and one reference formula in
``tests/reference.py``; an activation likewise (``<name>_act``).
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

MAX_FIELDS = 2  # the CUDA kernels take a loss's fields as p0, p1


@dataclass(frozen=True)
class Param:
    """A public parameter of a loss: its default and the check it must pass."""
    name: str
    default: float
    check: str = "positive"  # "positive", "nonnegative" or "finite"


@dataclass(frozen=True)
class Loss:
    name: str                     # the public function, fastae.<name>
    kernel: str                   # the CUDA struct and the CPU spec (fastae::Huber, cpu.pointwise.Huber)
    doc: str                      # the public function's docstring: the math
    params: Tuple[Param, ...] = ()
    fields: Tuple[Tuple[str, Callable], ...] = ()  # (kernel field, f(**params)); none: the params themselves
    torch: Optional[str] = None   # fastae.torch function (None: written by hand there, as torch names it)
    module: Optional[str] = None  # fastae.torch module
    peer: Optional[Callable] = None  # the mean loss in PyTorch eager: peer(F, y, t, **params), for the bench
    domain: bool = False          # its values must lie in [0, 1]: the CPU raises, a GPU gives NaN

    def __post_init__(self):
        if len(self.field_names) > MAX_FIELDS:
            raise ValueError(f"loss {self.name}: the CUDA kernels take at most {MAX_FIELDS} fields")

    @property
    def field_names(self):
        return tuple(f for f, _ in self.fields) if self.fields else tuple(p.name for p in self.params)

    def kernel_fields(self, params):
        """{field: value} for the kernels from the checked public parameters."""
        if not self.fields:
            return dict(params)
        return {name: float(derive(**params)) for name, derive in self.fields}


@dataclass(frozen=True)
class Activation:
    name: str
    kernel: str
    doc: str
    peer: Callable  # peer(torch, z, negative_slope): the activation in PyTorch


def _rows(*rows):
    return {row.name: row for row in rows}


LOSSES = _rows(
    Loss("mse", "MSE", "Squared error (y - t)^2 with y = activation(pred).",
         torch="mse_loss", module="MSELoss", peer=lambda F, y, t: F.mse_loss(y, t)),
    Loss("l1", "L1", "Absolute error |y - t|; its derivative is sign(y - t), 0 at 0.",
         torch="l1_loss", module="L1Loss", peer=lambda F, y, t: F.l1_loss(y, t)),
    Loss("huber", "Huber", "Huber loss: (y - t)^2 / 2 where |y - t| < delta, else delta (|y - t| - delta / 2).",
         params=(Param("delta", 1.0),), torch="huber_loss", module="HuberLoss",
         peer=lambda F, y, t, delta: F.huber_loss(y, t, delta=delta)),
    Loss("bce", "BCE", """Binary cross-entropy -(t log y + (1 - t) log(1 - y)).

    With ``activation="identity"`` pred holds probabilities in [0, 1] and the
    result is torch's ``binary_cross_entropy`` (logs clamped at -100, gradient
    denominator clamped at 1e-12). With ``activation="sigmoid"`` pred holds
    logits and the result is ``binary_cross_entropy_with_logits``, stable for
    any finite logit; its gradient is sigmoid(pred) - t.
    """, domain=True, peer=lambda F, y, t: F.binary_cross_entropy(y, t)),
    Loss("gaussian_nll", "GaussianNLL",
         "Gaussian negative log-likelihood ((y - t) / sigma)^2 / 2 + log sigma + log(2 pi) / 2:\n"
         "    MSE as a likelihood with fixed noise scale sigma.",
         params=(Param("sigma", 1.0),),
         fields=(("inv_var", lambda sigma: 1.0 / sigma / sigma),  # (1 / sigma**2 overflows for sigma > 1e154)
                 ("const", lambda sigma: math.log(sigma) + 0.5 * math.log(2 * math.pi))),
         torch="gaussian_nll", module="GaussianNLL",
         peer=lambda F, y, t, sigma: (0.5 * ((y - t) / sigma) ** 2).mean() + (math.log(sigma) + 0.5 * math.log(2 * math.pi))),
    Loss("laplace_nll", "LaplaceNLL", "Laplace negative log-likelihood |y - t| / scale + log(2 scale): L1 as a likelihood.",
         params=(Param("scale", 1.0),),
         fields=(("inv_scale", lambda scale: 1.0 / scale), ("const", lambda scale: math.log(2.0) + math.log(scale))),
         torch="laplace_nll", module="LaplaceNLL",
         peer=lambda F, y, t, scale: (y - t).abs().mean() / scale + (math.log(2.0) + math.log(scale))),
    Loss("charbonnier", "Charbonnier", "Charbonnier loss sqrt((y - t)^2 + eps^2) - eps: the smooth L1 of image restoration.",
         params=(Param("eps", 1e-3),), torch="charbonnier_loss", module="CharbonnierLoss",
         peer=lambda F, y, t, eps: (((y - t) ** 2 + eps * eps).sqrt() - eps).mean()),
)

ACTIVATIONS = _rows(
    Activation("identity", "Identity", "y = z", lambda torch, z, s: z),
    Activation("sigmoid", "Sigmoid", "y = 1 / (1 + exp(-z))", lambda torch, z, s: torch.sigmoid(z)),
    Activation("tanh", "Tanh", "y = tanh(z)", lambda torch, z, s: torch.tanh(z)),
    Activation("relu", "ReLU", "y = max(z, 0)", lambda torch, z, s: torch.relu(z)),
    Activation("leaky_relu", "LeakyReLU", "y = z where z > 0, else negative_slope * z",
               lambda torch, z, s: torch.nn.functional.leaky_relu(z, s)),
    Activation("softplus", "Softplus", "y = log(1 + exp(z))", lambda torch, z, s: torch.nn.functional.softplus(z)),
)


def torch_peer(loss, activation="identity", negative_slope=0.01, **params):
    """f(pred, target): the mean loss in PyTorch eager that ``fastae.<loss>`` with this activation replaces
    (BCE after a sigmoid as binary_cross_entropy_with_logits), for the benchmarks."""
    import torch
    import torch.nn.functional as F
    if loss == "bce" and activation == "sigmoid":
        return lambda p, t: F.binary_cross_entropy_with_logits(p, t)
    act, row = ACTIVATIONS[activation].peer, LOSSES[loss]
    return lambda p, t: row.peer(F, act(torch, p, negative_slope), t, **params)
