"""Run a nogil Numba kernel over fixed chunks in a few Python threads.

The chunking is fixed by the data size alone; threads take pieces of
consecutive chunks as they come free (``run_chunks``), or each thread makes one
nogil call that takes chunks one by one from an atomic counter (``run_pulled``:
no GIL changes hands between chunks), and write one partial result per chunk,
which the caller combines in chunk order. Results are therefore bit-identical
for any thread count. Threads (rather than Numba's ``prange``) keep compile times short:
the parallel machinery is compiled once, here, in Python.
"""
import contextlib
import itertools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, types
from numba.extending import intrinsic

_pool = None
MIN_CHUNKS_PER_THREAD = 4  # below this, a thread costs more than it saves
PIECES_PER_THREAD = 4      # pieces of work per thread, taken as threads come free


def _forget_pool():
    """A forked child inherits the pool object but not its threads: start afresh."""
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


def num_threads():
    """Threads the kernels use: ``NUMBA_NUM_THREADS`` as the environment has it now (default: all cores,
    Numba's NUMBA_DEFAULT_NUM_THREADS). Not ``numba.config.NUMBA_NUM_THREADS``: Numba rereads the environment
    only when it compiles, so a value set for a while (``fastae bench``'s one-thread rows) stayed there after it
    was unset, and every later call ran on one thread. A value that is no positive integer falls back to all
    cores with a warning, once."""
    text = os.environ.get("NUMBA_NUM_THREADS")
    cores = max(1, numba.config.NUMBA_DEFAULT_NUM_THREADS)
    if text is None:
        return cores
    try:
        return max(1, int(text))
    except ValueError:
        if text not in _warned:
            _warned.add(text)
            warnings.warn(f"NUMBA_NUM_THREADS={text!r} is not an integer: fastae uses {cores} threads",
                          RuntimeWarning, stacklevel=3)
        return cores


_warned = set()


def run_chunks(kernel, n_chunks, min_per_thread=MIN_CHUNKS_PER_THREAD):
    """Call ``kernel(first, stop)`` over ``range(n_chunks)`` in pieces of at least ``min_per_thread``
    chunks, which the threads take as they come free: a thread on a slower or busier core takes fewer
    (here the second core often runs a third slower than the first), and since each chunk's result
    depends on the chunk alone, not on the piece or thread that ran it, results stay bit-identical."""
    threads = min(num_threads(), n_chunks // min_per_thread)
    if threads <= 1:
        kernel(0, n_chunks)
        return
    pieces = min(n_chunks // min_per_thread, PIECES_PER_THREAD * threads)
    bounds = [n_chunks * i // pieces for i in range(pieces + 1)]
    run_tasks(lambda i: kernel(bounds[i], bounds[i + 1]), pieces)


def _thread_pool():
    """The pool of fastae's threads, started at first use (and again in a forked child)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=num_threads(), thread_name_prefix="fastae")
    return _pool


def run_tasks(kernel, n_tasks):
    """Call ``kernel(task)`` for every task in ``range(n_tasks)``, each thread taking the next task as it
    comes free, so that a thread on a busy core takes fewer (for tasks whose results do not depend on
    which thread runs them)."""
    threads = min(num_threads(), n_tasks)
    if threads <= 1:
        for task in range(n_tasks):
            kernel(task)
        return
    pool = _thread_pool()
    counter = itertools.count()  # (next() on it is atomic under the GIL)

    def work():
        for task in iter(lambda: next(counter), None):
            if task >= n_tasks:
                return
            kernel(task)
    futures = [pool.submit(work) for _ in range(threads - 1)]
    work()
    for f in futures:
        f.result()


@intrinsic
def fetch_add(typingctx, queue, slot, value):
    """queue[slot] += value, atomically (sequentially consistent); the value before (queue: int64 array)."""
    if not (isinstance(queue, types.Array) and queue.dtype == types.int64 and isinstance(slot, types.Integer)
            and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        amount = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", builder.gep(array.data, [index]), amount, "seq_cst")
    return types.int64(queue, slot, value), codegen


@njit(inline="always")
def take_task(queue):
    """The next task of ``queue`` (see run_pulled) for this thread: queue[0] counts the tasks taken."""
    return fetch_add(queue, 0, 1)


@njit(inline="always")
def next_task(queue):
    """Mark this thread's task finished (queue[1] counts them, its results written before) and take the
    next."""
    fetch_add(queue, 1, 1)
    return take_task(queue)


@njit(nogil=True, cache=True)
def _all_done(queue, n_tasks, spins):
    """Whether queue[1] (tasks finished) reaches n_tasks within ``spins`` looks (a few ns each)."""
    for _ in range(spins):
        if fetch_add(queue, 1, 0) >= n_tasks:
            return True
    return False


SPINS = 1 << 14  # looks at the finished count before waiting on the threads themselves (~0.1-0.3 ms)


def run_pulled(kernel, n_tasks, threads):
    """Call ``kernel(queue)`` in up to ``threads`` threads, the caller's among them, each in one nogil call
    that takes tasks k = take_task(queue), then k = next_task(queue) after each, until k >= n_tasks. No GIL
    changes hands between tasks (a hand-over costs ~0.1 ms here, as long as a small task), and the caller
    does not wait for a pool thread that wakes too late to take any task: it waits, spinning briefly, for
    the tasks to be finished. A task's result depends on the task alone, so results are bit-identical for
    any thread count."""
    queue = np.zeros(2, np.int64)
    threads = min(threads, n_tasks)
    if threads > 1:  # (reading the environment costs a short call a microsecond or two)
        threads = min(num_threads(), threads)
    if threads <= 1:
        kernel(queue)
        return
    pool = _thread_pool()
    futures = [pool.submit(kernel, queue) for _ in range(threads - 1)]
    kernel(queue)
    if not _all_done(queue, n_tasks, SPINS):
        for future in futures:
            future.result()


def one_blas_thread():
    """NumPy's BLAS on one thread for the block: fastae's threads then split the products themselves, and
    no idle OpenBLAS worker spins on the cores they need (it does for some 100 ms after each product).
    Needs threadpoolctl (scikit-learn's dependency); without it, nothing changes."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return contextlib.nullcontext()
        _controller = ThreadpoolController()  # (finding the libraries takes 0.2 ms: once)
    return _controller.limit(limits=1, user_api="blas")


_controller = None

