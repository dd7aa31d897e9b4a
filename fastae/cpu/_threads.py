"""Run a nogil Numba kernel over fixed chunks in a few threads.

The chunking is fixed by the data size alone; Python threads take pieces of
consecutive chunks as they come free (``run_chunks``), or each thread makes one
nogil call that takes tasks one by one from an atomic counter (``run_pulled``,
whose other threads are helpers that wait and work without ever taking the
GIL), and write one partial result per chunk, which the caller combines in
chunk order. Results are therefore bit-identical for any thread count. Our own
threads rather than Numba's ``prange``: its workqueue layer aborts the process
when two threads launch at once, and GNU OpenMP's when a forked child does.
"""
import contextlib
import hashlib
import itertools
import os
import platform
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba._dispatcher import compute_fingerprint
from numba.core import cgutils
from numba.extending import intrinsic

_pool = None
MIN_CHUNKS_PER_THREAD = 4  # below this, a thread costs more than it saves
PIECES_PER_THREAD = 4      # pieces of work per thread, taken as threads come free


def _forget_pool():
    """A forked child inherits the pool and the helpers but not their threads: start afresh."""
    global _pool, _helpers
    _pool = _helpers = None


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


def _atomic(operation):
    """An intrinsic f(words, slot, value): words[slot] = words[slot] <operation> value, atomically (sequentially
    consistent), returning the value before (words: an int32 or int64 array)."""
    def typer(typingctx, words, slot, value):
        if not (isinstance(words, types.Array) and words.dtype in (types.int32, types.int64)
                and isinstance(slot, types.Integer) and isinstance(value, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            array = context.make_array(signature.args[0])(context, builder, args[0])
            index = context.cast(builder, args[1], signature.args[1], types.intp)
            amount = context.cast(builder, args[2], signature.args[2], words.dtype)
            return builder.atomic_rmw(operation, builder.gep(array.data, [index]), amount, "seq_cst")
        return words.dtype(words, slot, value), codegen
    return intrinsic(typer)


fetch_add = _atomic("add")    # fetch_add(words, slot, 0) reads words[slot] atomically
exchange = _atomic("xchg")    # a store that no reordering crosses


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


# ---------------------------------------------------------------- helpers that never take the GIL
# run_pulled's other threads ("helpers") wait for work inside a nogil call and run each job there too: the
# caller posts a job (the kernel's kind and the address of its arguments, on the caller's stack) and wakes
# them with a system call, so that neither end of a short call waits on the GIL (a GIL hand-over costs ~50 us
# here, and several hundred on a vCPU that had gone idle). After a job a helper stays awake for AWAKE,
# yielding its core to any other thread, then sleeps in a futex: a loss called once per training step finds
# it awake (as OpenMP runtimes keep theirs).
SYSCALLS = {"x86_64": (202, 24, 228, 309, 39, 204, 203),
            "aarch64": (98, 124, 113, 168, 172, 123, 122)}.get(platform.machine())
if not sys.platform.startswith("linux"):
    SYSCALLS = None  # (no helpers: pool threads instead, see run_pulled)
FUTEX, YIELD, CLOCK, GETCPU, GETPID, GETAFFINITY, SETAFFINITY = SYSCALLS or (0,) * 7
CPU_WORDS = 16                     # words of a CPU mask (1024 CPUs)
FUTEX_WAIT, FUTEX_WAKE = 128, 129  # (FUTEX_PRIVATE_FLAG: within this process)
JOB, STARTED, FINISHED, WHERE, TID = 0, 1, 2, 3, 4  # a helper's words: the job posted (negative: closed),
#                                                     started, finished; the CPU it last ran on, its thread id
LINE = 16                          # words of a helper (a cache line each)
KIND, ADDRESS, FAILED, CPU, ENTRY = 0, 1, 2, 3, 4  # the job's kernel and argument types, arguments' address,
#                                         raises; the caller's CPU; the kernel's compiled entry point (see _entry)
MAX_HELPERS = 255
SPINS = 1 << 12                    # looks at a word before yielding or sleeping (~10-50 us)
AWAKE = 5_000_000                  # ns a helper stays awake after a job
SLEEP = np.array([0, 100_000_000], np.int64)  # a futex wait's longest (timespec): a helper then returns to Python


@intrinsic
def _address(typingctx, array, index):
    """The address of array[index], as an integer."""
    if not (isinstance(array, types.Array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        at = context.cast(builder, args[1], signature.args[1], types.intp)
        return builder.ptrtoint(builder.gep(data, [at]), ir.IntType(64))
    return types.int64(array, index), codegen


@intrinsic
def _syscall(typingctx, number, a, b, c, d):
    """syscall(number, a, b, c, d) (Linux), integer arguments."""
    if not all(isinstance(v, types.Integer) for v in (number, a, b, c, d)):
        return None

    def codegen(context, builder, signature, args):
        word = ir.IntType(64)
        if SYSCALLS is None:
            return word(-1)  # (never called: and no symbol "syscall" to link)
        call = cgutils.get_or_insert_function(builder.module, ir.FunctionType(word, [word], var_arg=True), "syscall")
        return builder.call(call, [context.cast(builder, v, t, types.int64) for v, t in zip(args, signature.args)]
                            + [word(0)])
    return types.int64(number, a, b, c, d), codegen


@njit(inline="always")
def futex(words, slot, operation, value):
    """FUTEX_WAIT: sleep while words[slot] == value (SLEEP at most); FUTEX_WAKE: wake ``value`` threads asleep
    on words[slot] (int32)."""
    return _syscall(FUTEX, _address(words, slot), operation, value, _address(SLEEP, 0))


@njit(inline="always")
def _cpu(scratch):
    """The CPU this thread runs on (scratch: int64[2])."""
    scratch[0] = 0
    _syscall(GETCPU, _address(scratch, 0), 0, 0, 0)
    return scratch[0]


@njit(inline="always")
def _clock(scratch):
    """CLOCK_MONOTONIC in ns (scratch: int64[2])."""
    _syscall(CLOCK, 1, _address(scratch, 0), 0, 0)
    return scratch[0] * 1_000_000_000 + scratch[1]


@intrinsic
def _address_of(typingctx, value):
    """The address of a copy of ``value`` in the calling function's frame (alive until it returns)."""
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, context.get_value_type(signature.args[0]))
        builder.store(args[0], slot)
        return builder.ptrtoint(slot, ir.IntType(64))
    return types.int64(value), codegen


@intrinsic
def _value_at(typingctx, address, like):
    """A new reference to the value of ``like``'s type at ``address`` (see _address_of)."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        kind = signature.args[1]
        value = builder.load(builder.inttoptr(args[0], context.get_value_type(kind).as_pointer()))
        context.nrt.incref(builder, kind, value)
        return value
    return like(address, like), codegen


@intrinsic
def _call_at(typingctx, entry, arguments):
    """Call the compiled kernel at address ``entry`` (Numba's own calling convention, see _entry) with the
    tuple ``arguments``; whether it returned without raising. Through an address, not the dispatcher: a call of
    the dispatcher links the kernel's code into the caller's, where LLVM optimises and emits all of it again
    (as long again as the kernel's own compile: 3.5 s of SSIM's)."""
    if not (isinstance(entry, types.Integer) and isinstance(arguments, types.BaseTuple)):
        return None

    def codegen(context, builder, signature, args):
        kinds = tuple(signature.args[1])
        function = builder.inttoptr(args[0], context.call_conv.get_function_type(types.none, kinds).as_pointer())
        values = [builder.extract_value(args[1], i) for i in range(len(kinds))]
        status, _ = context.call_conv.call_function(builder, function, types.none, kinds, values)
        return builder.not_(status.is_error)
    return types.boolean(entry, arguments), codegen


@intrinsic
def _kind(typingctx, function, arguments):
    """A number for the kernel ``function`` with arguments of these types, the same in every process."""
    python = function.dispatcher.py_func
    text = f"{python.__module__}.{python.__qualname__}{arguments}"
    number = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)

    def codegen(context, builder, signature, args):
        return context.get_constant(types.int64, number)
    return types.int64(function, arguments), codegen


@njit(inline="always")
def _move_off(thread, cpu):
    """Set the affinity of thread ``thread`` (0: this one) to the main thread's CPUs but ``cpu``, where there
    is another; whether it was set. A helper on its caller's CPU only slows it, and the scheduler puts a woken
    thread beside the thread that woke it: it kept the two together for whole runs, the helper queued behind a
    caller that never blocks (a third of the calls of 4 tasks of 59 us on two threads ran on one CPU)."""
    mask = np.zeros(CPU_WORDS, np.int64)  # (only here: seldom)
    if cpu >= 64 * CPU_WORDS or _syscall(GETAFFINITY, _syscall(GETPID, 0, 0, 0, 0), 8 * CPU_WORDS,
                                         _address(mask, 0), 0) <= 0:
        return False
    mask[cpu // 64] &= ~(np.int64(1) << (cpu % 64))
    return mask.any() and _syscall(SETAFFINITY, thread, 8 * CPU_WORDS, _address(mask, 0), 0) == 0


@njit(inline="always")
def _leave_caller(words, line, jobs, scratch):
    """Whether this helper (its words from ``line``) runs on the CPU of the last job's caller after it tried to
    move off it (see _move_off; scratch: int64[2]); the CPU it runs on goes into its WHERE word, which the
    caller reads when it posts a job."""
    here = _seen_on(words, line, scratch)
    cpu = fetch_add(jobs, CPU, 0)  # (-1 before the first job: never a CPU)
    if here == cpu and _move_off(0, cpu):
        here = _seen_on(words, line, scratch)
    return here == cpu


@njit(inline="always")
def _seen_on(words, line, scratch):
    """The CPU this helper runs on, written into its WHERE word (its words from ``line``)."""
    here = _cpu(scratch)
    exchange(words, line + WHERE, here)
    return here


@njit(nogil=True, cache=True)
def _park(words, jobs, helper, finished):
    """Helper ``helper`` has finished job ``finished``: say so (waking a caller asleep on it), then wait for
    a job: looking SPINS times, then yielding its core until AWAKE has passed, then asleep in the futex
    (once: SLEEP at most). Returns the job, marked started, or ``finished`` if none came. Found on the CPU of
    the job's caller, it moves off (see _leave_caller); where it cannot, it sleeps at once rather than keep
    both on one core."""
    line = helper * LINE
    exchange(words, line + FINISHED, finished)
    futex(words, line + FINISHED, FUTEX_WAKE, 1)
    scratch = np.empty(2, np.int64)
    looks, since, shared = 0, 0, _leave_caller(words, line, jobs, scratch)
    while True:
        job = fetch_add(words, line + JOB, 0)
        if job > 0 and job != finished:
            exchange(words, line + STARTED, job)
            _leave_caller(words, line, jobs, scratch)  # (woken beside its caller)
            return job
        looks += 1
        if looks < SPINS and not shared:
            continue
        if looks == SPINS:
            since = _clock(scratch)
        if not shared and _clock(scratch) - since < AWAKE:
            _syscall(YIELD, 0, 0, 0, 0)  # (sched_yield)
            shared = _leave_caller(words, line, jobs, scratch)
        else:
            futex(words, line + JOB, FUTEX_WAIT, job)
            if fetch_add(words, line + JOB, 0) == job:
                return finished  # (unchanged: the wait timed out; a job closed meanwhile wakes it at once)


@njit(nogil=True, cache=True)
def _post(words, jobs, kind, address, count, job):
    """The caller's part before its own share: job number ``job`` of this ``kind``, its arguments at
    ``address``, posted to ``count`` helpers (each woken; one last seen on this CPU moved off it first)."""
    exchange(jobs, KIND, kind)
    exchange(jobs, ADDRESS, address)
    exchange(jobs, FAILED, 0)
    cpu = _cpu(np.empty(2, np.int64))
    exchange(jobs, CPU, cpu)
    for h in range(count):
        if fetch_add(words, h * LINE + WHERE, 0) == cpu:  # (last seen here: it would queue behind this thread)
            _move_off(fetch_add(words, h * LINE + TID, 0), cpu)
        exchange(words, h * LINE + JOB, job)
        futex(words, h * LINE + JOB, FUTEX_WAKE, 1)


@njit(nogil=True, cache=True)
def _close(words, jobs, count, job):
    """The caller's part after its own share: close job ``job`` and wait for every helper that started it
    (they read the arguments in the caller's frame); whether no one raised."""
    for h in range(count):  # (closed: a helper that sees it now leaves it)
        exchange(words, h * LINE + JOB, -job)
    for h in range(count):
        looks = 0
        while fetch_add(words, h * LINE + STARTED, 0) == job:
            done = fetch_add(words, h * LINE + FINISHED, 0)
            if done == job:
                break
            looks += 1
            if looks > SPINS:
                futex(words, h * LINE + FINISHED, FUTEX_WAIT, done)
    return fetch_add(jobs, FAILED, 0) == 0


@njit(nogil=True, cache=True)
def _next_job(words, jobs, helper, kind, job, finished):
    """Helper ``helper``'s next job of this ``kind``: the started ``job`` (unless it is ``finished``) if it
    is still open, else the next one posted (see _park). Returns (job, last finished, whether to run it):
    not for a job of another kind, nor when none came for a while."""
    line = helper * LINE
    while True:
        if job == finished:
            job = _park(words, jobs, helper, finished)
            if job == finished:
                return job, finished, False
        if fetch_add(words, line + JOB, 0) != job:  # (closed since)
            finished = job
            continue
        return job, finished, fetch_add(jobs, KIND, 0) == kind


@njit(inline="always")
def pulled(function, args, words, jobs, helper, count, job, finished):
    """``function(*args)`` in run_pulled's threads, inlined into one small function per kernel (the kernel's
    ``_pulled``; so it is cached: a kernel passed as an argument is not), which calls the kernel's compiled
    entry point (jobs[ENTRY], see _entry) rather than the kernel, so that the kernel's code is compiled once,
    and leaves the protocol to functions compiled once for all kernels. With helper < 0, the caller's part:
    post job number ``job`` to ``count`` helpers, run the function, close the job and wait for every helper
    that started it; returns (whether no one raised, 0). Else helper number ``helper``'s: run the started
    ``job`` (unless it is ``finished``) if it is still open and of this kind, then wait for and run jobs of
    this kind, until one of another kind comes or none for a while; returns (that job or ``finished``, the
    last finished). A kernel's exceptions cannot cross threads: they are counted."""
    kind = _kind(function, args)
    if helper < 0:
        _post(words, jobs, kind, _address_of(args), count, job)
        if not _call_at(fetch_add(jobs, ENTRY, 0), args):
            fetch_add(jobs, FAILED, 1)
        return _close(words, jobs, count, job), 0
    while True:
        job, finished, run = _next_job(words, jobs, helper, kind, job, finished)
        if not run:
            return job, finished
        work = _value_at(fetch_add(jobs, ADDRESS, 0), args)
        if not _call_at(fetch_add(jobs, ENTRY, 0), work):
            fetch_add(jobs, FAILED, 1)
        finished = job


def _witness(value):
    """A small value of ``value``'s Numba type (arrays of 2**ndim elements at most): a helper compiles and
    enters its kernel's server with it, holding none of the caller's arrays."""
    if isinstance(value, np.ndarray):
        shape = (2,) * value.ndim
        if value.ndim and not value.flags.c_contiguous:
            if value.flags.f_contiguous:
                small = np.zeros(shape, value.dtype, order="F")
            else:
                small = np.zeros(shape[:-1] + (4,), value.dtype)[..., ::2]
        else:
            small = np.zeros(shape, value.dtype)
        small.flags.writeable = value.flags.writeable
        return small
    if isinstance(value, tuple):
        items = [_witness(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


class _Helpers:
    """The helper threads and their words (made at first use, and again in a forked child)."""

    def __init__(self):
        self.words = np.zeros(LINE * MAX_HELPERS, np.int32)
        self.words[WHERE::LINE] = -1  # (no CPU yet)
        self.jobs = np.full(LINE, -1, np.int64)  # (CPU -1: none yet)
        self.threads = []
        self.kernel = None  # (the kernel's _pulled, its arguments) while a job is posted
        self.lock = threading.Lock()  # one caller at a time; another runs its tasks alone meanwhile
        self.posted = 0

    def serve(self, helper):
        self.words[helper * LINE + TID] = threading.get_native_id()
        finished = job = 0
        while self is _helpers:  # (a forked child's: retire)
            if job == finished:
                job = _park(self.words, self.jobs, helper, finished)
                if job == finished:
                    continue
            kernel = self.kernel
            if kernel is None:  # (that job was closed since)
                finished = job
                continue
            function, witness = kernel[0], _witness(kernel[1])
            del kernel  # (the server runs on: its frame must not hold the caller's arrays meanwhile)
            try:
                job, finished = function(witness, self.words, self.jobs, helper, 0, job, finished)
            except Exception:  # (could not enter that kernel's server: the caller runs the job without this one)
                finished = job

    def run(self, function, args, helpers, entry):
        while len(self.threads) < helpers:
            self.threads.append(threading.Thread(target=self.serve, args=(len(self.threads),), daemon=True,
                                                 name=f"fastae-{len(self.threads)}"))
            self.threads[-1].start()
        self.posted = self.posted % (1 << 30) + 1
        self.jobs[ENTRY] = entry  # (read after the job is posted, which no reordering crosses)
        self.kernel = function, args
        try:
            ok, _ = function(args, self.words, self.jobs, -1, helpers, self.posted, 0)
        finally:
            self.kernel = None
        return ok


_helpers = None
_entries = {}


def _entry(kernel, args):
    """The address of ``kernel``'s compiled code for the types of ``args`` (compiled now if need be), which
    pulled calls (see _call_at); found by the arguments' type fingerprint (a microsecond)."""
    try:
        key = kernel, compute_fingerprint(args)
    except Exception:  # (a type the fingerprint does not know)
        key = kernel, tuple(kernel.typeof_pyval(a) for a in args)
    address = _entries.get(key)
    if address is None:
        signature = tuple(kernel.typeof_pyval(a) for a in args)
        kernel.compile(signature)
        compiled = kernel.overloads[signature]
        address = _entries[key] = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
    return address


def run_pulled(kernel, pulled_kernel, args, n_tasks, threads):
    """``kernel(*args)`` in up to ``threads`` threads, the caller's among them (``pulled_kernel``: its
    _pulled, see pulled), ``args`` holding a queue: each thread's kernel takes tasks k = take_task(queue),
    then k = next_task(queue) after each, until k >= n_tasks. No thread waits on the GIL, and a task's
    result depends on the task alone, so results are bit-identical for any thread count. A call made while
    another thread's holds the helpers runs on its caller's thread alone."""
    global _helpers
    threads = min(threads, n_tasks)
    if threads > 1:  # (reading the environment costs a short call a microsecond or two)
        threads = min(num_threads(), threads, MAX_HELPERS + 1)
    if threads > 1 and SYSCALLS is None:  # (no futex: pool threads, which take the GIL to start and to end)
        futures = [_thread_pool().submit(kernel, *args) for _ in range(threads - 1)]
        kernel(*args)
        for future in futures:
            future.result()
        return
    if threads > 1 and _helpers is None:
        _helpers = _Helpers()
    helpers = _helpers
    if threads <= 1 or not helpers.lock.acquire(blocking=False):
        kernel(*args)  # (alone: its exceptions as they are)
        return
    try:
        ok = helpers.run(pulled_kernel, args, threads - 1, _entry(kernel, args))
    finally:
        helpers.lock.release()
    if not ok:
        raise RuntimeError(f"{kernel.py_func.__qualname__}: the kernel raised in one of fastae's threads (out of "
                           "memory?); with NUMBA_NUM_THREADS=1 its error is shown")


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

