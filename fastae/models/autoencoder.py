"""A dense autoencoder trained with NumPy BLAS products and fastae's fused kernels."""
import collections
import json
import sys
import time

import numpy as np

import fastae as fa
from fastae._arrays import check_positive_integer, is_positive_integer
from fastae.cpu._threads import one_blas_thread

ACTIVATIONS = tuple(fa.ACTIVATIONS)
POINTWISE_LOSSES = tuple(fa.LOSSES)
LOSSES = (*POINTWISE_LOSSES, "ssim", "mixed")


CLOCK = collections.defaultdict(float)  # seconds per part of the training steps: loss, products, activations


def _timed(part, function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    CLOCK[part] += time.perf_counter() - start
    return result


def _product(a, b):
    return _timed("products", np.matmul, a, b)


def _act(name, a):
    """activation(a), by the very kernels the losses fuse."""
    return a if name == "identity" else _timed("activations", fa.activate, a, name)


def _act_grad(name, a, h):
    """d h / d a for h = act(a), as an array (or None for identity)."""
    return None if name == "identity" else _timed("activations", fa.activate, a, name, grad=True).slope


class Adam:
    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, params, grads):
        self.t += 1
        b1, b2 = self.betas
        scale = self.lr * np.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (scale * m / (np.sqrt(v) + self.eps)).astype(p.dtype)


class SGD:
    def __init__(self, params, lr):
        self.lr = lr

    def step(self, params, grads):
        for p, g in zip(params, grads):
            p -= p.dtype.type(self.lr) * g


class Autoencoder:
    """Dense autoencoder x -> z -> x_hat, trained on fastae's fused losses.

    Encoder layers d -> hidden... -> k use ``activation`` (the code layer
    ``sigmoid`` when ``sparsity=("kl", rho, beta)``, which needs codes in
    (0, 1)); the decoder mirrors them, and its output pre-activation goes into
    the loss fused with ``output_activation``, so the gradient comes back
    w.r.t. the logits in one pass. ``tied=True`` uses W_dec = W_enc^T (d*k
    fewer parameters per layer pair: structural regularisation).
    ``loss``: mse, l1, bce, ssim or mixed (``alpha`` * L1 + (1 - alpha) * (1 -
    SSIM); ssim and mixed need ``image_shape`` and use ``padding="same"``, so
    that small patches keep every pixel in the map). ``weight_decay`` adds
    lam * sum W^2 fused into the weight gradients; ``sparsity=("l1", alpha)``
    or ``("kl", rho, beta)`` penalises the codes. ``bias_init`` (e.g. 0.01)
    starts ReLU units slightly active, against dead units.
    """

    def __init__(self, d, k, *, hidden=(), activation="relu", output_activation="sigmoid", tied=False,
                 loss="bce", alpha=None, image_shape=None, weight_decay=0.0, sparsity=None, bias_init=0.0,
                 seed=0, dtype=np.float32, code_activation=None, center=False):
        for name, value in (("d", d), ("k", k)):
            check_positive_integer(value, name)
        for value in hidden:
            if not is_positive_integer(value):
                raise ValueError(f"hidden sizes must be positive integers, got {value!r}")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {np.dtype(dtype).name}")
        if alpha is not None and loss != "mixed":
            raise ValueError(f"alpha weighs the pixel term of loss='mixed' only (loss is {loss!r})")
        if code_activation is None:
            code_activation = "sigmoid" if sparsity is not None and sparsity[0] == "kl" else activation
        if any(a not in ACTIVATIONS for a in (activation, output_activation, code_activation)):
            raise ValueError(f"activations must be among {ACTIVATIONS}")
        if sparsity is not None and sparsity[0] == "kl" and code_activation != "sigmoid":
            raise ValueError("sparsity=('kl', ...) needs codes in (0, 1): code_activation='sigmoid'")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if loss == "bce" and output_activation not in ("sigmoid", "identity"):
            raise ValueError("loss='bce' needs output_activation='sigmoid' (or identity on probabilities)")
        if loss in ("ssim", "mixed") and (image_shape is None or int(np.prod(image_shape)) != d):
            raise ValueError(f"loss={loss!r} needs image_shape with prod == d ({d}), got {image_shape}")
        if loss == "mixed" and alpha is None:
            raise ValueError("loss='mixed' needs alpha")
        if sparsity is not None and sparsity[0] not in ("l1", "kl"):
            raise ValueError(f"sparsity must be ('l1', alpha) or ('kl', rho, beta), got {sparsity!r}")
        self.config = dict(d=d, k=k, hidden=list(hidden), activation=activation,
                           output_activation=output_activation, tied=tied, loss=loss, alpha=alpha,
                           image_shape=None if image_shape is None else list(image_shape),
                           weight_decay=weight_decay, sparsity=None if sparsity is None else list(sparsity),
                           bias_init=bias_init, seed=seed, dtype=np.dtype(dtype).name,
                           code_activation=code_activation, center=bool(center))
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        sizes = [d, *hidden, k]
        acts = [activation] * len(hidden) + [code_activation]
        self.enc_w = [self._init(rng, sizes[i], sizes[i + 1], acts[i]) for i in range(len(sizes) - 1)]
        self.enc_b = [np.full(n, bias_init, self.dtype) for n in sizes[1:]]
        back = sizes[::-1]
        dec_acts = [activation] * len(hidden) + [output_activation]
        self.dec_w = [] if tied else [self._init(rng, back[i], back[i + 1], dec_acts[i])
                                      for i in range(len(back) - 1)]
        self.dec_b = [np.full(n, bias_init if i < len(back) - 2 else 0.0, self.dtype)
                      for i, n in enumerate(back[1:])]
        self.code_activation = code_activation
        self.mean = np.zeros(d, self.dtype)  # the input's mean (center=True: learned by fit, from the data)

    def _init(self, rng, n_in, n_out, activation):
        """He's initialisation before a ReLU-like unit (half its inputs are cut), Glorot's otherwise."""
        var = 2.0 / n_in if activation in ("relu", "leaky_relu") else 2.0 / (n_in + n_out)
        return (rng.standard_normal((n_in, n_out)) * np.sqrt(var)).astype(self.dtype)

    # ---------------------------------------------------------------- structure
    @property
    def params(self):
        return self.enc_w + self.enc_b + self.dec_w + self.dec_b

    @property
    def n_params(self):
        return sum(p.size for p in self.params)

    def _decoder_weights(self):
        return [w.T for w in self.enc_w[::-1]] if self.config["tied"] else self.dec_w

    # ---------------------------------------------------------------- passes
    def _encode(self, x):
        """Activations of every encoder layer: [x, h1, ..., z] and pre-activations."""
        hs, pre = [x - self.mean if self.config["center"] else x], []
        n = len(self.enc_w)
        for i, (w, b) in enumerate(zip(self.enc_w, self.enc_b)):
            a = _product(hs[-1], w) + b
            pre.append(a)
            hs.append(_act(self.code_activation if i == n - 1 else self.config["activation"], a))
        return hs, pre

    def _decode(self, z):
        """Decoder activations [z, ..., h] and the output pre-activation (logits)."""
        hs, pre = [z], []
        weights = self._decoder_weights()
        for i, (w, b) in enumerate(zip(weights, self.dec_b)):
            a = _product(hs[-1], w) + b
            pre.append(a)
            if i < len(weights) - 1:
                hs.append(_act(self.config["activation"], a))
        return hs, pre

    def _rows(self, x, width, name="x"):
        """x as the model's dtype, checked to hold rows of ``width`` values ((n, width) or (width,))."""
        x = np.asarray(x, self.dtype)
        if x.ndim not in (1, 2) or x.shape[-1] != width:
            raise ValueError(f"{name} must have shape (n, {width}) or ({width},), got {x.shape}")
        return x

    def encode(self, x):
        return self._encode(self._rows(x, self.config["d"]))[0][-1]

    def decode(self, z):
        logits = self._decode(self._rows(z, self.config["k"], "z"))[1][-1]
        return _act(self.config["output_activation"], logits)

    def reconstruct(self, x):
        return self.decode(self.encode(x))

    def _loss(self, logits, x, grad):
        """Reconstruction loss (mean) and its gradient w.r.t. the output logits."""
        cfg = self.config
        name, out_act = cfg["loss"], cfg["output_activation"]
        if name in POINTWISE_LOSSES:
            return getattr(fa, name)(logits, x, activation=out_act, grad=grad)
        y = _act(out_act, logits)
        images = (-1, 1, *cfg["image_shape"])
        if name == "ssim":
            result = fa.ssim_loss(y.reshape(images), x.reshape(images), padding="same", grad=grad)
        else:
            result = fa.mixed_loss(y.reshape(images), x.reshape(images), alpha=cfg["alpha"], padding="same",
                                   grad=grad)
        if not grad:
            return result
        dy = result.grad.reshape(y.shape)
        dact = _act_grad(out_act, logits, y)
        return fa.LossGrad(result.loss, dy if dact is None else dy * dact)

    def loss(self, x):
        """The training objective on x: reconstruction loss plus penalties."""
        x = self._rows(x, self.config["d"])
        hs, _ = self._encode(x)
        logits = self._decode(hs[-1])[1][-1]
        total = float(self._loss(logits, x, False)) + self._code_penalty(hs[-1], None)
        return total + sum(float(fa.l2_penalty(w, self.config["weight_decay"])) for w in self._weights()
                           if self.config["weight_decay"])

    def _weights(self):
        return self.enc_w + self.dec_w

    def _code_penalty(self, z, grad_z):
        """Sparsity penalty on the codes; adds its gradient into grad_z when given."""
        s = self.config["sparsity"]
        if s is None:
            return 0.0
        if s[0] == "l1":  # alpha * sum_j |z_j| per sample, averaged over the batch
            r = fa.l1_penalty(z, s[1] / len(z), grad=grad_z is not None)
        else:
            r = fa.kl_sparsity(z, s[1], beta=s[2] if len(s) > 2 else 1.0, grad=grad_z is not None)
        if grad_z is None:
            return float(r)
        grad_z += r.grad
        return float(r.loss)

    def gradients(self, x):
        """(objective, gradients in the order of ``params``) on a batch."""
        cfg = self.config
        hs, pre = self._encode(x)
        dhs, dpre = self._decode(hs[-1])
        value, dz = _timed("loss", self._loss, dpre[-1], x, True)
        value = float(value)
        dec_weights = self._decoder_weights()
        g_dec_w, g_dec_b = [None] * len(dec_weights), [None] * len(dec_weights)
        for i in range(len(dec_weights) - 1, -1, -1):  # decoder, last layer first
            g_dec_w[i] = _product(dhs[i].T, dz)
            g_dec_b[i] = dz.sum(axis=0)
            dh = _product(dz, dec_weights[i].T)
            if i > 0:
                dz = dh * _act_grad(cfg["activation"], dpre[i - 1], dhs[i]) \
                    if cfg["activation"] != "identity" else dh
        value += _timed("loss", self._code_penalty, hs[-1], dh)
        g_enc_w, g_enc_b = [None] * len(self.enc_w), [None] * len(self.enc_w)
        n = len(self.enc_w)
        for i in range(n - 1, -1, -1):
            act = self.code_activation if i == n - 1 else cfg["activation"]
            dact = _act_grad(act, pre[i], hs[i + 1])
            da = dh if dact is None else dh * dact
            g_enc_w[i] = _product(hs[i].T, da)
            g_enc_b[i] = da.sum(axis=0)
            if i > 0:
                dh = _product(da, self.enc_w[i].T)
        if cfg["tied"]:  # W_enc[i] also serves as the decoder's W[n - 1 - i]^T
            for i in range(n):
                g_enc_w[i] += g_dec_w[n - 1 - i].T
            g_dec_w = []
        grads = g_enc_w + g_enc_b + g_dec_w + g_dec_b
        if cfg["weight_decay"]:
            for w, g in zip(self._weights(), g_enc_w + g_dec_w):
                value += float(_timed("loss", fa.l2_penalty, w, cfg["weight_decay"], accumulate_into=g))
        return value, grads

    def dead_units(self, x):
        """Per encoder layer of (leaky) ReLUs, the units whose input is never positive on x: a dead ReLU
        passes no gradient, a leaky one only its small negative slope."""
        _, pre = self._encode(self._rows(x, self.config["d"]))
        n = len(self.enc_w)
        return [int((a.max(axis=0) <= 0).sum()) for i, a in enumerate(pre)
                if (self.code_activation if i == n - 1 else self.config["activation"]) in ("relu", "leaky_relu")]

    # ---------------------------------------------------------------- training
    def fit(self, x, epochs=10, batch_size=128, lr=1e-3, optimizer="adam", validation=None, progress=True,
            seed=0, on_epoch=None, schedule="constant"):
        """Minibatch training with ``optimizer`` "adam" or "sgd"; returns the history (one dict per epoch).
        ``schedule="cosine"`` lowers the learning rate from ``lr`` to 0 along a half cosine over all steps."""
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}, got {optimizer!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got {schedule!r}")
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            check_positive_integer(value, name)
        if not (isinstance(lr, (int, float, np.floating)) and np.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        x = self._rows(x, self.config["d"])
        if len(x) == 0 or x.ndim == 1:
            raise ValueError(f"x must hold rows to train on, got shape {x.shape}")
        if validation is not None:
            validation = self._rows(validation, self.config["d"], "validation")
        with one_blas_thread():
            return self._fit(x, epochs, batch_size, lr, optimizer, validation, progress, seed, on_epoch, schedule)

    def _fit(self, x, epochs, batch_size, lr, optimizer, validation, progress, seed, on_epoch, schedule):
        x = np.asarray(x, self.dtype)
        if self.config["center"] and not self.mean.any():
            self._center_on(x)
        params = self.params
        opt = OPTIMIZERS[optimizer](params, lr)
        rng = np.random.default_rng(seed)
        history = []
        n_batches = max(1, -(-len(x) // batch_size))
        for epoch in range(1, epochs + 1):
            order = rng.permutation(len(x))
            total = 0.0
            for b in range(n_batches):
                batch = x[order[b * batch_size:(b + 1) * batch_size]]
                value, grads = self.gradients(batch)
                opt.lr = lr * SCHEDULES[schedule](((epoch - 1) * n_batches + b) / (epochs * n_batches))
                _timed("optimizer", opt.step, params, grads)
                total += value * len(batch)
                if progress:
                    _bar(epoch, epochs, b + 1, n_batches, total / min(len(x), (b + 1) * batch_size))
            record = {"epoch": epoch, "train_loss": total / len(x), "dead_units": self.dead_units(batch)}
            if validation is not None:
                record["val_loss"] = self.loss(validation)
            if on_epoch is not None:
                on_epoch(record)
            history.append(record)
            if progress:
                extra = "".join(f" {k} {v:.4g}" for k, v in record.items() if k.startswith("val_"))
                dead = f" dead ReLUs {record['dead_units']}" if any(record["dead_units"]) else ""
                sys.stderr.write(f"\r{_bar_text(epoch, epochs, 1, 1, record['train_loss'])}{extra}{dead}\n")
        return history

    def _center_on(self, x):
        """Inputs centred on the data's mean, and an output that starts at that mean (the last bias)."""
        self.mean[...] = x.mean(axis=0)
        m = np.clip(self.mean.astype(np.float64), 1e-4, 1 - 1e-4)
        start = {"identity": self.mean, "sigmoid": np.log(m / (1 - m)), "tanh": np.arctanh(m)}
        out = self.config["output_activation"]
        if out in start:
            self.dec_b[-1][...] = start[out]

    # ---------------------------------------------------------------- persistence
    def save(self, path):
        """Write the configuration and parameters to ``path`` (an .npz archive, whatever its name)."""
        arrays = {f"p{i}": p for i, p in enumerate(self.params)}
        arrays["mean"] = self.mean
        with open(path, "wb") as f:  # (np.savez given a name would append .npz to it)
            np.savez(f, config=json.dumps(self.config), **arrays)

    @classmethod
    def load(cls, path):
        """The model ``save`` wrote; ValueError when the file's parameters do not fit its configuration."""
        with np.load(path) as f:
            try:
                config = json.loads(str(f["config"]))
                model = cls(**{k: v for k, v in config.items() if k not in ("d", "k")}, d=config["d"], k=config["k"])
            except (KeyError, TypeError, json.JSONDecodeError) as e:
                raise ValueError(f"{path} holds no fastae Autoencoder configuration ({e})") from None
            if "mean" in f.files:
                model.mean[...] = f["mean"]
            names = sorted((n for n in f.files if n not in ("config", "mean")),
                           key=lambda n: int(n[1:]) if n[1:].isdigit() else -1)
            if names != [f"p{i}" for i in range(len(model.params))]:
                raise ValueError(f"{path} holds {len(names)} parameter arrays; its configuration needs "
                                 f"{len(model.params)}")
            for i, p in enumerate(model.params):
                stored = f[f"p{i}"]
                if stored.shape != p.shape or stored.dtype != p.dtype:
                    raise ValueError(f"{path}: parameter {i} is {stored.dtype} {stored.shape}, the configuration "
                                     f"needs {p.dtype} {p.shape}")
                p[...] = stored
        return model


OPTIMIZERS = {"adam": Adam, "sgd": SGD}
SCHEDULES = {"constant": lambda progress: 1.0, "cosine": lambda progress: 0.5 * (1.0 + np.cos(np.pi * progress))}


def _bar_text(epoch, epochs, done, total, loss, width=24):
    filled = int(width * done / total)
    return f"epoch {epoch}/{epochs} [{'#' * filled}{'.' * (width - filled)}] loss {loss:.4g}"


_last_draw = [0.0]


def _bar(epoch, epochs, done, total, loss):
    """Redraw the progress line, at most ten times a second."""
    now = time.monotonic()
    if now - _last_draw[0] >= 0.1:
        _last_draw[0] = now
        sys.stderr.write("\r" + _bar_text(epoch, epochs, done, total, loss))
        sys.stderr.flush()
