"""Compiling ahead of the first call.

fastae's CPU kernels are compiled by Numba at their first call and cached on disk (beside the package, or
in the user's cache directory where the package cannot be written: see the README, "The first call"), so
each install pays each kernel's compile once. ``compiling`` says so in one line while a first call takes
long; ``warm_up`` (``fastae compile``) compiles what a job needs ahead, the groups in parallel processes,
each writing its own cache entries.
"""
import contextlib
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np


@contextlib.contextmanager
def compiling(what, after=1.0, stream=None):
    """Print one line on ``stream`` (standard error) if the block runs longer than ``after`` seconds: that
    ``what`` is being compiled, once per install. Nothing is printed for a block that ends sooner."""
    stream = stream or sys.stderr
    line = (f"fastae: compiling {what} (once per install: later runs load them from the cache; "
            "`fastae compile` does it ahead)")
    timer = threading.Timer(after, lambda: print(line, file=stream, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _images(dtype, shape=(2, 1, 16, 16)):
    rng = np.random.default_rng(0)
    return rng.random(shape).astype(dtype), rng.random(shape).astype(dtype)


def _ssim(dtype):
    """The SSIM family's streaming kernel (ssim, ssim_loss, mixed_loss with either pixel loss, any padding,
    with or without the gradient: one compiled kernel for a window length and dtype) and MS-SSIM's."""
    import fastae as fa
    x, y = _images(dtype)
    fa.mixed_loss(x, y, alpha=0.5, padding="same", grad=True)
    x, y = _images(dtype, (1, 1, 176, 176))
    fa.ms_ssim(x, y, grad=True)


def _pointwise(dtype):
    """The pixel losses' fused pass with and without a gradient, for each loss with the identity output."""
    import fastae as fa
    x, y = _images(dtype)
    for name in ("mse", "l1", "huber", "bce"):
        getattr(fa, name)(x, y, grad=True)
        getattr(fa, name)(x, y)


def _sparse(dtype):
    """ISTA/FISTA and the LASSO solvers, on a well-conditioned and an overcomplete dictionary."""
    import fastae as fa
    rng = np.random.default_rng(0)
    for atoms in (12, 48):
        dictionary = rng.standard_normal((16, atoms)).astype(dtype)
        dictionary /= np.linalg.norm(dictionary, axis=0)
        fa.ista(rng.standard_normal((40, 16)).astype(dtype), dictionary, alpha=0.1)


def _train(dtype):
    """The main job's training step and evaluation (``fastae train``'s defaults, a few patches)."""
    from .train import DEFAULTS, build, evaluate
    config = dict(DEFAULTS)
    rng = np.random.default_rng(0)
    x = rng.random((2 * config["batch_size"], 256)).astype(dtype)
    model = build(config, (16, 16))
    model.fit(x, epochs=1, batch_size=config["batch_size"], lr=config["lr"], progress=False,
              schedule=config["schedule"])
    evaluate(model, x[:8], (16, 16))


JOBS = {"ssim": _ssim, "train": _train, "pointwise": _pointwise, "sparse": _sparse}


def _timed(job, dtype):
    start = time.perf_counter()
    JOBS[job](np.dtype(dtype))
    return time.perf_counter() - start


def warm_up(jobs=None, dtypes=("float32",), processes=None):
    """Compile the kernels of ``jobs`` (names of JOBS; all by default) for each dtype, each job in a process
    of its own (``processes`` at a time: the cores by default), which writes its kernels into the cache.
    Returns {(job, dtype): seconds}."""
    jobs = list(JOBS) if jobs is None else list(jobs)
    unknown = [job for job in jobs if job not in JOBS]
    if unknown:
        raise ValueError(f"jobs must be among {', '.join(JOBS)}; got {', '.join(map(repr, unknown))}")
    work = [(job, str(np.dtype(dtype))) for job in jobs for dtype in dtypes]
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        seconds = pool.map(_timed, *zip(*work)) if work else []
        return dict(zip(work, seconds))
