"""Roofline benchmark behind ``fastae bench`` (and the ``benchmarks/`` suite).

Every number is a ratio taken in one run: each kernel against the streaming
ceiling (``np.add(a, b, out=c)``: the 2 reads + 1 write a fused
forward+backward must do at least) and against PyTorch eager doing the same
forward+backward with autograd. NumPy's add runs on one thread, the kernels on
``NUMBA_NUM_THREADS``; so the ceiling is taken twice: plain ``np.add`` and
``np.add`` split over the kernels' threads. Timings are interleaved and the
median kept.
"""
import math
import os
import random
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
from numba import njit

import fastae as fa
from fastae._neutral import gaussian_window
from fastae._table import LOSSES, torch_peer
from fastae.cpu.backend import num_threads, run_chunks

CEILING_CHUNK = 1 << 16


def threaded(ufunc, *arrays, out):
    """``ufunc(*arrays, out=out)`` over the kernels' threads: the streaming ceiling at their thread count."""
    c = CEILING_CHUNK
    run_chunks(lambda first, stop: ufunc(*(a[first * c:stop * c] for a in arrays), out=out[first * c:stop * c]),
               -(-out.size // c))


@dataclass
class Case:
    """One fused loss: its fastae call and the PyTorch eager code it replaces."""
    name: str
    loss: str
    activation: str = "identity"
    params: dict = field(default_factory=dict)
    inputs: str = "normal"  # "normal": pred ~ N(0, 1); "probability": pred in (0, 1)

    def make(self, n, dtype, seed=0):
        rng = np.random.default_rng(seed)
        if self.inputs == "probability":
            pred = rng.uniform(0.01, 0.99, n).astype(dtype)
        else:
            pred = rng.standard_normal(n).astype(dtype)
        return pred, rng.random(n).astype(dtype)

    def fastae(self, pred, target, out):
        return getattr(fa, self.loss)(pred, target, activation=self.activation, grad=True, out=out, **self.params)

    def torch_step(self, pred, target):
        """Forward + backward in PyTorch eager; pred requires grad."""
        loss = torch_peer(self.loss, self.activation, **self.params)(pred, target)
        loss.backward()
        return loss


# Every loss of the table on its own (probabilities for those with a [0, 1] domain), and the fused
# activations users train with.
POINTWISE = [Case(name, name, params={p.name: p.default for p in row.params},
                  inputs="probability" if row.domain else "normal") for name, row in LOSSES.items()] + [
    Case("bce_with_logits", "bce", "sigmoid"),
    Case("sigmoid+mse", "mse", "sigmoid"),
    Case("tanh+mse", "mse", "tanh"),
]


def median_times(functions, repeats, pause=0.02, sample=0.01, threads=None):
    """Median seconds per call of each function, calls interleaved so drift hits all alike; ``threads`` (one
    per function, None: as the environment has it) sets NUMBA_NUM_THREADS around each sample, not each call
    (setting it twice a call took ~2% of a 16^2 patches' SSIM call).

    A sample times as many back-to-back calls as last about ``sample`` seconds (short calls are then
    timed warm, as a training loop makes them, not each after a pause), and is followed by a short
    untimed pause: PyTorch's OpenMP threads spin for a while after a parallel region and would slow
    whatever ran next. Each round runs the functions in a new order (shuffled, seeded), so that each comes
    after each other alike: what one leaves behind slowed the next by up to 15%, measured (mixed_loss's time
    over ssim_loss's read 1.04 or 1.22 as one or the other came after pytorch-msssim).
    """
    threads = threads or [None] * len(functions)

    def seconds(i, n):  # n calls of function i, timed
        start = time.perf_counter()
        for _ in range(n):
            functions[i]()
        return time.perf_counter() - start
    calls = []
    for i in range(len(functions)):
        _with_threads(threads[i], lambda: seconds(i, 1))  # warm up: compile, fault pages in
        once = _with_threads(threads[i], lambda: seconds(i, 1))
        calls.append(max(1, math.ceil(sample / max(once, 1e-9))))
    samples = [[] for _ in functions]
    order = random.Random(0)
    for _ in range(repeats):
        for i in order.sample(range(len(functions)), len(functions)):
            samples[i].append(_with_threads(threads[i], lambda: seconds(i, calls[i])) / calls[i])
            time.sleep(pause)
    return [statistics.median(s) for s in samples]


def pointwise_rows(n, dtype, repeats, cases=POINTWISE, with_torch=True):
    """One dict per case: seconds, GB/s, ratio to np.add, speed-up over torch."""
    try:
        import torch
    except ImportError:
        torch = None
    with_torch = with_torch and torch is not None
    rows = []
    for case in cases:
        pred, target = case.make(n, dtype)
        out, add_out = np.empty_like(pred), np.empty_like(pred)
        functions = [lambda: np.add(pred, target, out=add_out), lambda: threaded(np.add, pred, target, out=add_out),
                     lambda: case.fastae(pred, target, out)]
        if with_torch:
            p = torch.from_numpy(pred).requires_grad_()
            t = torch.from_numpy(target)

            def torch_once():
                p.grad = None
                case.torch_step(p, t)
            functions.append(torch_once)
        add, ceiling, ours, *peer = median_times(functions, repeats)
        rows.append({
            "kernel": case.name, "n": n, "dtype": np.dtype(dtype).name, "ms": ours * 1e3,
            "GB/s": 3 * n * pred.itemsize / ours / 1e9, "x np.add": ours / add, "x ceiling": ours / ceiling,
            "torch x": peer[0] / ours if peer else float("nan"),
        })
    return rows


def sparse_rows(n, dtype, repeats):
    """Soft-thresholding and fused weight decay against their streaming ceilings:
    np.abs (1 read, 1 write) and np.add (2 reads + 1 write, or 1 read + 2 writes)."""
    rng = np.random.default_rng(0)
    c = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    out, mask, o = np.empty_like(c), np.empty_like(c), np.empty_like(c)
    atoms = rng.random(64).astype(dtype)  # one threshold per atom, codes of 64 atoms
    cases = [("soft_threshold", 2, lambda: np.abs(c, out=o), lambda: threaded(np.abs, c, out=o),
              lambda: fa.soft_threshold(c, 0.5, out=out)),
             ("soft_threshold per atom", 2, lambda: np.abs(c, out=o), lambda: threaded(np.abs, c, out=o),
              lambda: fa.soft_threshold(c.reshape(-1, 64), atoms, out=out.reshape(-1, 64))),
             ("soft_threshold+mask", 3, lambda: np.add(c, g, out=o), lambda: threaded(np.add, c, g, out=o),
              lambda: fa.soft_threshold(c, 0.5, grad=True, out=out, mask_out=mask)),
             ("l2_penalty accumulate", 3, lambda: np.add(c, g, out=o), lambda: threaded(np.add, c, g, out=o),
              lambda: fa.l2_penalty(c, 1e-4, accumulate_into=g))]
    rows = []
    for name, arrays, plain, ceiling, ours in cases:
        add, ceil, t = median_times([plain, ceiling, ours], repeats)
        rows.append({"kernel": name, "n": n, "dtype": np.dtype(dtype).name, "ms": t * 1e3,
                     "GB/s": arrays * n * c.itemsize / t / 1e9, "x np.add": t / add, "x ceiling": t / ceil})
    return rows


def dct_dictionary(size=8):
    """The orthonormal 2-D DCT-II of size x size patches: size^2 atoms as columns."""
    n = np.arange(size)
    c = np.sqrt(2.0 / size) * np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * size))
    c[0] /= np.sqrt(2.0)
    return np.kron(c, c).T


LASSO_REGIMES = 7


def lasso_problems(n=2000, seed=0):
    """(name, signals, dictionary (d, k), alpha): the regimes users meet, none built to suit a solver
    (LASSO_REGIMES of them)."""
    rng = np.random.default_rng(seed)

    def unit(a):
        return a / np.linalg.norm(a, axis=0)
    d48, d256 = unit(rng.standard_normal((64, 48))), unit(rng.standard_normal((64, 256)))
    planted = (rng.standard_normal((n, 48)) * (rng.random((n, 48)) < 0.2)) @ d48.T + 0.05 * rng.standard_normal((n, 64))
    gaussian = rng.standard_normal((n, 64))
    try:
        from skimage import data
        image = data.camera().astype(np.float64) / 255.0
        rows, cols = rng.integers(0, image.shape[0] - 8, n), rng.integers(0, image.shape[1] - 8, n)
        patches = np.stack([image[r:r + 8, c:c + 8].ravel() for r, c in zip(rows, cols)])
        patches -= patches.mean(axis=1, keepdims=True)
    except ImportError:  # (scikit-image is the bench extra's)
        patches = rng.standard_normal((n, 64)) * np.linspace(1, 0.05, 64)
    zero_alpha = 2.05 * np.abs(gaussian @ d48).max()
    return [("planted sparse (20% codes + noise)", planted, d48, 0.2),
            ("Gaussian signals, dense codes", gaussian, d48, 0.5),
            ("Gaussian signals", gaussian, d48, 2.0),
            ("image patches, orthonormal DCT", patches, dct_dictionary(), 0.05),
            ("overcomplete, 256 atoms", gaussian, d256, 0.5),
            ("all-zero codes (alpha above 2 max |D^T x|)", gaussian, d48, zero_alpha),
            # the hardest seen: ~63 of 256 atoms active in 64 dimensions, G_SS nearly singular (a quarter of the
            # signals: scikit-learn takes ~3 ms each)
            ("overcomplete, small alpha", gaussian[:n // 4], d256, 0.1)]


def lasso_objective(x, d, alpha, z):
    return float(np.sum((x - z @ d.T) ** 2) + alpha * np.abs(z).sum())


def ista_rows(repeats=3, problems=None):
    """fa.ista against scikit-learn's sparse_encode(lasso_cd, n_jobs=1) on each regime: times (median of
    paired runs after a warm call), speed-up, objective gap, active atoms per signal."""
    import warnings
    from sklearn.decomposition import sparse_encode
    rows = []
    for name, x, d, alpha in problems or lasso_problems():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours, theirs = median_times([lambda: fa.ista(x, d, alpha),
                                         lambda: sparse_encode(x, d.T, algorithm="lasso_cd", alpha=alpha / 2,
                                                               n_jobs=1)], repeats)
            z, ref = fa.ista(x, d, alpha), sparse_encode(x, d.T, algorithm="lasso_cd", alpha=alpha / 2, n_jobs=1)
        gap = lasso_objective(x, d, alpha, z) / lasso_objective(x, d, alpha, ref) - 1
        rows.append({"regime": name, "signals": f"{x.shape[0]} x {x.shape[1]}, {d.shape[1]} atoms",
                     "active": float((ref != 0).sum(axis=1).mean()), "fastae ms": ours * 1e3,
                     "sklearn ms": theirs * 1e3, "speed-up": theirs / ours, "objective vs sklearn": gap})
    return rows


def ista_row(repeats=3):
    """The planted-sparse regime alone (the row fastae bench has always shown)."""
    return ista_rows(repeats, lasso_problems()[:1])[0]


def image_pair(rng, shape):
    """Uniform float32 images and a noisy copy clipped to [0, 1]: the SSIM rows' data."""
    x = rng.random(shape, dtype=np.float32)
    return x, np.clip(x + 0.1 * rng.standard_normal(shape, dtype=np.float32), 0, 1)


SSIM_CASES = [("ssim_loss", (8, 3, 256, 256), "valid"), ("ssim_loss", (1, 3, 1024, 1024), "valid"),
              ("ssim_loss", (1, 1, 2048, 2048), "valid"), ("ssim_loss", (128, 1, 16, 16), "same"),
              ("ssim_loss", (512, 3, 32, 32), "same"), ("ms_ssim", (8, 3, 256, 256), "valid"),
              ("mixed_loss", (8, 3, 256, 256), "valid")]


SSIM_FLOPS = 440  # flops a pixel of SSIM f+b takes: five 11-tap separable moment maps forward, three back, and
#                   the pointwise maths (fastae filters four maps forward: 396)


FMA_ELEMENTS, FMA_CHAIN = 512, 32  # flop_peak: elements a thread (in L1), multiply-adds an element a repetition


@njit(nogil=True, fastmath={"contract"}, cache=True)  # (no reassoc: LLVM would share the chains' powers of v)
def _fma_chains(a, out, reps):
    """FMA_CHAIN multiply-adds on each element of ``a``, in four independent chains, ``reps`` times, at the
    vector width the kernels are compiled for: enough independent work that the FMA units never wait (one
    32-long chain an element leaves them idle a third of the time here)."""
    c, q, t = a.dtype.type(0.5), a.dtype.type(0.25), a.dtype.type(0.75)
    for _ in range(reps):
        for j in range(a.size):
            v = a[j]
            u0, u1, u2, u3 = v, v + q, v + c, v + t
            for _ in range(FMA_CHAIN // 4):
                u0 = u0 * v + c
                u1 = u1 * v + c
                u2 = u2 * v + c
                u3 = u3 * v + c
            out[j] = (u0 + u1) + (u2 + u3)


def flop_peak(threads, seconds=0.1):
    """float32 GFLOP/s of multiply-adds on ``threads`` of fastae's threads at once (run_chunks, as the kernels
    get them; the most of a few tries): the limit that the SSIM rows' 'of limit' columns hold the kernels
    against."""
    arrays = [(np.full(FMA_ELEMENTS, 0.9, np.float32), np.empty(FMA_ELEMENTS, np.float32)) for _ in range(threads)]
    _fma_chains(*arrays[0], 1)  # (compile)
    start = time.perf_counter()
    _fma_chains(*arrays[0], 100)
    reps = max(1, int(100 * seconds / max(time.perf_counter() - start, 1e-9) / 3))

    def chains(first, stop):
        for a, out in arrays[first:stop]:
            _fma_chains(a, out, reps)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        _with_threads(threads, lambda: run_chunks(chains, threads, min_per_thread=1))
        best = max(best, threads * reps * FMA_ELEMENTS * FMA_CHAIN * 2 / (time.perf_counter() - start) / 1e9)
    return best


def ssim_rows(repeats, cases=SSIM_CASES, threads=(1, 2)):
    """The SSIM family, float32 forward+backward, against pytorch-msssim (1 - ssim or 1 - ms_ssim, plus
    F.l1_loss for the mixed loss, autograd) at fastae's thread counts ``threads`` (torch: all cores):
    Mpixel/s, for ssim_loss the fraction of the flop limit (SSIM_FLOPS a pixel at flop_peak), the ratio to
    the peer, the speed-up of the second thread count over the first, and for the small 'same' patches
    their rate over the first case's at each thread count."""
    rng = np.random.default_rng(0)
    try:
        import torch
        import torch.nn.functional as F
        from pytorch_msssim import ms_ssim as peer_ms_ssim
        from pytorch_msssim import ssim as peer_ssim
    except ImportError:
        torch = None
    peaks = {}  # (measured for the first ssim_loss row)
    rows = []
    for kind, shape, padding in cases:
        x, y = image_pair(rng, shape)
        out = np.empty_like(x)
        options = {} if kind == "ms_ssim" else {"padding": padding}
        if kind == "mixed_loss":
            options["alpha"] = 0.16

        def ours():
            getattr(fa, kind)(x, y, grad=True, out=out, **options)
        functions, counts = [ours] * len(threads), list(threads)
        if kind == "mixed_loss":
            functions.append(lambda: fa.ssim_loss(x, y, grad=True, out=out))
            counts.append(threads[-1])
        if torch is not None and padding == "valid":
            X, Y = torch.from_numpy(x).requires_grad_(), torch.from_numpy(y)

            def peer_step():
                X.grad = None
                if kind == "ms_ssim":
                    loss = 1 - peer_ms_ssim(X, Y, data_range=1.0)
                else:
                    loss = 1 - peer_ssim(X, Y, data_range=1.0)
                    if kind == "mixed_loss":
                        loss = 0.16 * F.l1_loss(X, Y) + 0.84 * loss
                loss.backward()
            functions.append(peer_step)
            counts.append(None)
        times = median_times(functions, repeats, threads=counts)
        ours_times, rest = times[:len(threads)], times[len(threads):]
        row = {"loss": kind, "images": "x".join(map(str, shape)), "padding": padding}
        for n, seconds in zip(threads, ours_times):
            row[f"{n}T Mpx/s"] = x.size / seconds / 1e6
        if kind == "ssim_loss":
            peaks = peaks or {n: flop_peak(n) for n in threads}
            for n, seconds in zip(threads, ours_times):
                row[f"{n}T of limit"] = x.size * SSIM_FLOPS / seconds / 1e9 / peaks[n]
        row[f"{threads[-1]}T/{threads[0]}T"] = ours_times[0] / ours_times[-1]
        if kind == "mixed_loss":
            row["x ssim_loss time"] = ours_times[-1] / rest.pop(0)
        if rest:
            row["x peer"] = rest[0] / ours_times[-1]
        rows.append(row)
    big = rows[0]  # (the first case: the big batch the others are held against)
    for row in rows[1:]:
        if row["padding"] == "same":  # the bar: at least half the big batch's rate, thread for thread
            row["x big batch"] = "/".join(f"{row[f'{n}T Mpx/s'] / big[f'{n}T Mpx/s']:.2f}" for n in threads)
    return rows


def shift_cost_rows(repeats, shape=(8, 3, 256, 256), threads=(1, 2)):
    """What the float32 accuracy fix costs: ssim_loss f+b with the Gaussian window (moments about a shift
    near each plane's mean) against the same window times 1 + 1e-12 (it no longer sums to 1, so the
    kernel takes raw moments and no shift), side by side at each thread count."""
    rng = np.random.default_rng(0)
    x, y = image_pair(rng, shape)
    out = np.empty_like(x)
    raw = gaussian_window(11, 1.5) * (1 + 1e-12)
    rows = []
    for n in threads:
        shifted, unshifted = median_times([lambda: fa.ssim_loss(x, y, grad=True, out=out),
                                           lambda: fa.ssim_loss(x, y, grad=True, out=out, window=raw)], repeats,
                                          threads=[n, n])
        rows.append({"images": "x".join(map(str, shape)), "threads": n, "shifted ms": shifted * 1e3,
                     "raw ms": unshifted * 1e3, "cost of the shift": shifted / unshifted - 1})
    return rows


def _with_threads(n, function):
    """function() with NUMBA_NUM_THREADS=n (None: as it is)."""
    if n is None:
        return function()
    previous = os.environ.get("NUMBA_NUM_THREADS")
    os.environ["NUMBA_NUM_THREADS"] = str(n)
    try:
        return function()
    finally:
        if previous is None:
            del os.environ["NUMBA_NUM_THREADS"]
        else:
            os.environ["NUMBA_NUM_THREADS"] = previous


def training_step_row(repeats, n=8, side=128, alpha=0.16):
    """One training step of a small conv autoencoder (3->8->3 channels) with the
    mixed L1 + SSIM loss: fastae.torch against pytorch-msssim."""
    import torch
    import torch.nn.functional as F
    from pytorch_msssim import ssim as peer_ssim

    import fastae.torch as ft
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 3, 3, padding=1), torch.nn.Sigmoid())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    batch = torch.rand(n, 3, side, side)

    def step(loss_fn):
        opt.zero_grad()
        recon = model(batch)
        loss_fn(recon, batch).backward()
        opt.step()
    ours = lambda r, x: ft.mixed_loss(r, x, alpha)  # noqa: E731
    peer = lambda r, x: alpha * F.l1_loss(r, x) + (1 - alpha) * (1 - peer_ssim(r, x, data_range=1.0))  # noqa: E731
    t_ours, t_peer = median_times([lambda: step(ours), lambda: step(peer)], repeats)
    return {"batch": f"{n}x3x{side}^2", "fastae ms": t_ours * 1e3, "pytorch-msssim ms": t_peer * 1e3,
            "speed-up": t_peer / t_ours}


def dense_epoch_row(repeats=3, hidden=128, k=32, batch_size=128):
    """One training epoch of the dense autoencoder (16x16 patches, BCE on logits,
    Adam): fastae.models against the same model in PyTorch eager."""
    import torch
    import torch.nn.functional as F

    from . import datasets
    from .models import Autoencoder
    train, _, _ = datasets.patches(size=16, per_image=1000)
    d = train.shape[1]
    model = Autoencoder(d, k, hidden=(hidden,), loss="bce")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, k),
                              torch.nn.ReLU(), torch.nn.Linear(k, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, d))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    data = torch.from_numpy(train)

    def torch_epoch():
        for b in range(0, len(data), batch_size):
            x = data[b:b + batch_size]
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(net(x), x).backward()
            opt.step()
    ours, peer = median_times([lambda: model.fit(train, epochs=1, batch_size=batch_size, lr=1e-3, progress=False),
                               torch_epoch], repeats)
    return {"model": f"{d}-{hidden}-{k}-{hidden}-{d}", "samples": len(train), "fastae ms": ours * 1e3,
            "torch eager ms": peer * 1e3, "speed-up": peer / ours}


# first calls: (name, setup, call), each run in a new process with an empty Numba cache (see cold_rows)
_IMAGES = ("rng = np.random.default_rng(0); x = rng.random((64, 1, 16, 16), np.float32); "
           "y = np.clip(x + 0.1 * rng.standard_normal(x.shape, np.float32), 0, 1)")
_SIGNALS = ("rng = np.random.default_rng(0); d = rng.standard_normal((64, {atoms})).astype(np.float32); "
            "d /= np.linalg.norm(d, axis=0); s = rng.standard_normal((500, 64)).astype(np.float32)")
_CODES = "rng = np.random.default_rng(0); z = rng.standard_normal((500, 48)).astype(np.float32)"
COLD_CALLS = [
    ("mse, grad", _IMAGES, "fa.mse(x, y, grad=True)"),
    ("l1, grad", _IMAGES, "fa.l1(x, y, grad=True)"),
    ("huber, grad", _IMAGES, "fa.huber(x, y, grad=True)"),
    ("bce sigmoid, grad", _IMAGES, "fa.bce(x, y, activation='sigmoid', grad=True)"),
    ("gaussian_nll, grad", _IMAGES, "fa.gaussian_nll(x, y, grad=True)"),
    ("laplace_nll, grad", _IMAGES, "fa.laplace_nll(x, y, grad=True)"),
    ("charbonnier, grad", _IMAGES, "fa.charbonnier(x, y, grad=True)"),
    ("activate leaky_relu, grad", _IMAGES, "fa.activate(x, 'leaky_relu', grad=True)"),
    ("ssim", _IMAGES, "fa.ssim(x, y)"),
    ("ssim_loss, grad", _IMAGES, "fa.ssim_loss(x, y, grad=True)"),
    ("ssim_loss same, grad", _IMAGES, "fa.ssim_loss(x, y, padding='same', grad=True)"),
    ("ssim_loss reflect, grad", _IMAGES, "fa.ssim_loss(x, y, padding='reflect', grad=True)"),
    ("mixed_loss same, grad", _IMAGES, "fa.mixed_loss(x, y, alpha=0.84, padding='same', grad=True)"),
    ("ssim_map", _IMAGES, "fa.ssim_map(x, y)"),
    ("ms_ssim, grad", _IMAGES.replace("(64, 1, 16, 16)", "(2, 1, 176, 176)"), "fa.ms_ssim(x, y, grad=True)"),
    ("ms_ssim_l1_loss, grad", _IMAGES.replace("(64, 1, 16, 16)", "(2, 1, 176, 176)"),
     "fa.ms_ssim_l1_loss(x, y, grad=True)"),
    ("soft_threshold, grad", _CODES, "fa.soft_threshold(z, 0.5, grad=True)"),
    ("l1_penalty, grad", _CODES, "fa.l1_penalty(z, 0.1, grad=True)"),
    ("l2_penalty, grad", _CODES, "fa.l2_penalty(z, 0.1, grad=True)"),
    ("kl_sparsity, grad", _CODES.replace("standard_normal", "random"), "fa.kl_sparsity(z, 0.05, grad=True)"),
    ("lasso_codes", "rng = np.random.default_rng(0); u = np.linalg.qr(rng.standard_normal((64, 64)))[0]"
     ".astype(np.float32); s = rng.standard_normal((500, 64)).astype(np.float32)", "fa.lasso_codes(s, u, 0.1)"),
    ("ista, 64x48 dictionary", _SIGNALS.format(atoms=48), "fa.ista(s, d, alpha=0.1)"),
    ("ista, 64x256 (overcomplete)", _SIGNALS.format(atoms=256), "fa.ista(s, d, alpha=0.1)"),
]
QUICK_COLD = ("mse, grad", "ssim_loss, grad", "ista, 64x48 dictionary")
_PROBE = """
import json, time
import numpy as np
import fastae as fa
{setup}
start = time.perf_counter(); {call}; cold = time.perf_counter() - start
start = time.perf_counter(); {call}; {call}; {call}; warm = (time.perf_counter() - start) / 3
print(json.dumps([cold, warm]))
"""


def cold_rows(calls=COLD_CALLS):
    """Each call's first run in a new process with an empty Numba cache (what a fresh install meets: the
    compile included) and its warm time after, in the same process."""
    import json
    import subprocess
    import sys
    import tempfile
    rows = []
    for name, setup, call in calls:
        with tempfile.TemporaryDirectory() as cache:
            done = subprocess.run([sys.executable, "-c", _PROBE.format(setup=setup, call=call)], capture_output=True,
                                  text=True, env={**os.environ, "NUMBA_CACHE_DIR": cache}, check=True)
        cold, warm = json.loads(done.stdout.splitlines()[-1])
        rows.append({"first call of": name, "cold s": cold, "warm ms": 1e3 * warm})
    return rows


def cpu_model():
    """The processor's name (lscpu's 'Model name'), for every table: figures differ by up to 2x between the
    Intel AVX-512 and AMD AVX2 machines of one kind."""
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    except OSError:
        names = []
    import platform
    return f"{names[0] if names else platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"


def format_table(rows):
    cols = [c for c in ["kernel", "n", "dtype", "ms", "GB/s", "x np.add", "x ceiling", "torch x"] if c in rows[0]] \
        or list(dict.fromkeys(c for r in rows for c in r))  # every column any row has, in order
    fmt = {"n": lambda v: f"2^{int(np.log2(v))}" if v & (v - 1) == 0 else str(v), "ms": "{:.2f}".format,
           "GB/s": "{:.1f}".format, "x np.add": "{:.2f}".format, "x ceiling": "{:.2f}".format,
           "torch x": "{:.1f}".format}
    default = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt.get(c, default)(r[c]) if c in r else "" for c in cols] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def main(quick=False, sizes=None, dtypes=None, threads=None, repeats=None):
    if threads:
        os.environ["NUMBA_NUM_THREADS"] = str(threads)
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            pass
    sizes = sizes or ([1 << 24] if quick else [1 << 20, 1 << 24])
    dtypes = dtypes or (["float32"] if quick else ["float32", "float64"])
    repeats = repeats or (5 if quick else 15)
    print(f"fastae {fa.__version__} bench on {cpu_model()}: fused forward+backward into out=, {num_threads()} "
          "thread(s)\n"
          "  'x np.add'  = time / np.add(a, b, out=c) time (2 reads + 1 write, NumPy's single thread)\n"
          "  'x ceiling' = time / the same np.add split over fastae's threads (the streaming ceiling)\n"
          "  'torch x'   = torch eager forward+backward time / fastae time (speed-up)")
    few = max(3, repeats // 3)
    sections = [
        ("first calls: cold (a new process, empty Numba cache: the compile included) and warm, float32",
         lambda: cold_rows([c for c in COLD_CALLS if c[0] in QUICK_COLD] if quick else COLD_CALLS)),
        ("pointwise losses", lambda: [row for dtype in dtypes for n in sizes
                                      for row in pointwise_rows(n, np.dtype(dtype), repeats)]),
        ("sparse codes ('x np.add' is against np.abs for soft_threshold alone: 1 read + 1 write)",
         lambda: [row for dtype in dtypes for n in sizes for row in sparse_rows(n, np.dtype(dtype), repeats)]),
        ("SSIM family f+b, float32, 11x11 Gaussian window, fastae on 1 and 2 threads; peer = pytorch-msssim "
         "(autograd, torch's threads; it has no 'same' padding)", lambda: ssim_rows(few)),
        ("SSIM's float32 accuracy fix (moments of shifted data) against raw moments, f+b", lambda: shift_cost_rows(few)),
        ("training step, conv autoencoder 3->8->3, mixed L1 + SSIM loss (alpha 0.16), float32, CPU",
         lambda: [training_step_row(few)]),
        ("dense autoencoder, one epoch (BCE on logits, Adam, batch 128), float32; peer = PyTorch eager",
         lambda: [dense_epoch_row(few)]),
        ("ista, float64, against scikit-learn's sparse_encode(lasso_cd, n_jobs=1), per regime", lambda: ista_rows(few)),
    ]
    results = {}
    for title, make in sections:
        print("\n" + title)
        try:
            results[title] = make()
        except ImportError as missing:
            print(f"  skipped: {missing}")
            continue
        print(format_table(results[title]))
    return results
