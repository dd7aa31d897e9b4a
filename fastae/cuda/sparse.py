"""Sparse-coding kernels on CUDA devices (``kernels/sparse.cu``): soft-thresholding,
the KL sparsity penalty and batched FISTA (cuBLAS products through CuPy)."""
import numpy as np

from . import cupy as cuda_runtime

from ._module import ELEMENT_TYPES, THREADS, aligned, blocks_for, element_type, function, ptr

CHECK_EVERY = 8  # FISTA steps between convergence checks (each waits for the device)


def instances():
    for ctype in ELEMENT_TYPES.values():
        yield "sparse.cu", f"fastae::soft_threshold<{ctype}>"
        yield "sparse.cu", f"fastae::column_means<{ctype}>"
        yield "sparse.cu", f"fastae::spread_columns<{ctype}>"
    for ctype in ("float", "double"):
        yield "sparse.cu", f"fastae::fista_step<{ctype}>"


def soft_threshold(c, lam, out, mask):
    """soft(c, lam) into ``out`` (may be ``c``) and its derivative into ``mask``
    unless None; ``lam`` a number or a C-contiguous array whose flat values
    repeat along c's (or match them one to one)."""
    cupy = cuda_runtime()
    n = c.size
    lams = lam if isinstance(lam, cupy.ndarray) else None
    scalar = 0.0 if lams is not None else float(lam)
    period = n if lams is None else lams.size
    vectorized = lams is None and aligned(c, out, mask)
    function("sparse.cu", f"fastae::soft_threshold<{element_type(c)}>")(
        (blocks_for(n, 16 // c.itemsize if vectorized else 1),), (THREADS,),
        (c, ptr(lams), np.float64(scalar), np.int64(period), out, ptr(mask), np.int64(n), np.int32(vectorized)))


def kl_sparsity(h, rho, beta, grad):
    """beta * sum_j KL(rho || mean_i h_ij) as a 0-d float64 device array (NaN
    when a value of h lies outside (0, 1)), and its gradient into ``grad``."""
    cupy = cuda_runtime()
    n, k = h.shape
    ctype = element_type(h)
    rho_hat = cupy.empty(k, np.float64)
    bad = cupy.empty(k, np.float64)
    function("sparse.cu", f"fastae::column_means<{ctype}>")((blocks_for(k),), (THREADS,),
                                                            (h, np.int64(n), np.int64(k), rho_hat, bad))
    value = beta * cupy.sum(rho * cupy.log(rho / rho_hat) + (1 - rho) * cupy.log((1 - rho) / (1 - rho_hat)))
    value = cupy.where(bad.sum() > 0, np.nan, value)
    if grad is not None:
        per_column = beta * (-rho / rho_hat + (1 - rho) / (1 - rho_hat)) / n
        function("sparse.cu", f"fastae::spread_columns<{ctype}>")((blocks_for(n * k),), (THREADS,),
                                                                  (per_column, np.int64(n), np.int64(k), grad))
    return value


def lasso(b, gram, alpha, n_iter, tol, accelerated):
    """Codes (n, k) minimising ||x - D z||^2 + alpha ||z||_1 for every signal,
    from b = x D and gram = D^T D, by batched FISTA with adaptive restart
    (``accelerated``, else ISTA): step 1 / L with L = 2 ||D||_2^2, the largest
    eigenvalue of 2 G. Stops when every signal's codes changed by at most
    ``tol`` relatively (checked every CHECK_EVERY steps) or after ``n_iter``
    steps. Returns the codes and the count of signals whose codes still moved
    more than ``tol``."""
    cupy = cuda_runtime()
    n, k = b.shape
    lipschitz = 2.0 * float(cupy.linalg.eigvalsh(gram.astype(np.float64))[-1]) if k else 0.0
    if lipschitz <= 0.0:  # a zero dictionary: zero codes
        return cupy.zeros((n, k), b.dtype), 0
    step, thr = 1.0 / lipschitz, alpha / lipschitz
    z = cupy.zeros((n, k), b.dtype)
    if n == 0:
        return z, 0  # (a grid of no blocks is a launch error)
    y = cupy.zeros((n, k), b.dtype)
    gy = cupy.empty((n, k), b.dtype)
    z_new = cupy.empty((n, k), b.dtype)
    t = cupy.ones(n, np.float64)
    change = cupy.empty(n, np.float64)
    step_kernel = function("sparse.cu", f"fastae::fista_step<{element_type(b)}>")
    for i in range(n_iter):
        cupy.matmul(y, gram, out=gy)
        step_kernel((-(-n // THREADS),), (THREADS,),
                    (y, gy, b, z, z_new, np.int64(n), np.int32(k), np.float64(step), np.float64(thr), t,
                     np.int32(accelerated), change))
        if (i + 1) % CHECK_EVERY == 0 and not int(cupy.count_nonzero(change > tol * tol)):
            return z, 0  # (NaN codes, from non-finite signals, count as done: no step mends them)
    return z, int(cupy.count_nonzero(change > tol * tol))
