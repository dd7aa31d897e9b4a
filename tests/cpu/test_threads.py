"""The CPU backend's threads: every chunk exactly once, in pieces of at least the asked size, whatever
the thread count, and a slow thread taking fewer pieces than a fast one; tasks from the atomic counter
each taken once and finished on return."""
import os
import sys
import threading
import time

import numpy as np
import pytest
from numba import njit, typeof

from fastae.cpu import _threads
from fastae.cpu._threads import _cpu, _witness, next_task, num_threads, pulled, run_chunks, run_pulled, take_task


def test_run_chunks_covers_every_chunk_once_in_pieces_of_the_asked_size(monkeypatch):
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("NUMBA_NUM_THREADS", threads)
        for n_chunks, least in ((57, 1), (57, 4), (8, 3), (3, 4), (1, 1)):
            pieces = []
            run_chunks(lambda first, stop: pieces.append((first, stop)), n_chunks, least)
            pieces.sort()
            assert [c for first, stop in pieces for c in range(first, stop)] == list(range(n_chunks))
            if len(pieces) > 1:
                assert min(stop - first for first, stop in pieces) >= least, (threads, n_chunks, least)


def test_the_thread_count_follows_the_environment_as_it_is_now(monkeypatch):
    """A NUMBA_NUM_THREADS set for a while and compiled under (Numba rereads the environment when it
    compiles) no longer holds once unset: all cores again. (It stayed: fastae bench's one-thread SSIM rows
    left every later row of the report on one thread, its LASSO rows at half their speed.)"""
    import numba
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    numba.config.reload_config()  # (what a compilation does)
    assert num_threads() == 1
    monkeypatch.delenv("NUMBA_NUM_THREADS")
    assert num_threads() == max(1, numba.config.NUMBA_DEFAULT_NUM_THREADS)
    numba.config.reload_config()


def test_a_slow_thread_takes_fewer_pieces(monkeypatch):
    """Pieces go to the threads as they come free: the thread that sleeps longer per piece runs fewer."""
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    caller = threading.get_ident()
    taken = {}

    def kernel(first, stop):
        me = threading.get_ident()
        taken[me] = taken.get(me, 0) + 1
        time.sleep(0.004 if me == caller else 0.024)
    run_chunks(kernel, 64, 1)
    assert sum(taken.values()) == 8  # (PIECES_PER_THREAD pieces per thread)
    others = [n for who, n in taken.items() if who != caller]
    assert taken[caller] > max(others, default=0)


@njit(inline="always")
def _spend(delay):
    """``delay`` loops of work (a chain of square roots, ~10 ns each: a sum of i * 1e-9 was optimised away);
    a non-negative number."""
    acc = 0.0
    for i in range(delay):
        acc = np.sqrt(acc + i)
    return acc


@njit(nogil=True)
def _pull(queue, n_tasks, seen, delay):
    """Take tasks until none is left, counting each in ``seen``, and spend ``delay`` loops on each."""
    k = take_task(queue)
    while k < n_tasks:
        seen[k] += 1 + (_spend(delay) < 0)
        k = next_task(queue)


@njit(nogil=True)
def _pull_pulled(args, words, jobs, helper, count, job, finished):
    return pulled(_pull, args, words, jobs, helper, count, job, finished)


@njit(nogil=True)
def _mark(queue, n_tasks, marks, value):
    """Another kernel (another kind of job): marks[k] = value for each task k taken."""
    k = take_task(queue)
    while k < n_tasks:
        marks[k] = value
        k = next_task(queue)


@njit(nogil=True)
def _mark_pulled(args, words, jobs, helper, count, job, finished):
    return pulled(_mark, args, words, jobs, helper, count, job, finished)


@njit(nogil=True)
def _where(queue, n_tasks, cpus, delay):
    """Take tasks until none is left, writing the CPU each ran on into ``cpus`` (``delay`` loops each)."""
    scratch = np.empty(2, np.int64)
    k = take_task(queue)
    while k < n_tasks:
        cpus[k] = _cpu(scratch) + (_spend(delay) < 0)
        k = next_task(queue)


@njit(nogil=True)
def _where_pulled(args, words, jobs, helper, count, job, finished):
    return pulled(_where, args, words, jobs, helper, count, job, finished)


@njit(nogil=True)
def _fail_at(queue, n_tasks, bad, delay):
    """Raises when it takes task ``bad`` (after ``delay`` loops, so that a helper takes it now and then)."""
    k = take_task(queue)
    while k < n_tasks:
        if _spend(delay) >= 0 and k == bad:
            raise ValueError("task failed")
        k = next_task(queue)


@njit(nogil=True)
def _fail_at_pulled(args, words, jobs, helper, count, job, finished):
    return pulled(_fail_at, args, words, jobs, helper, count, job, finished)


def _pull_all(n_tasks, delay, threads=3):
    seen = np.zeros(n_tasks, np.int64)
    run_pulled(_pull, _pull_pulled, (np.zeros(2, np.int64), n_tasks, seen, delay), n_tasks, threads)
    return seen


def test_run_pulled_takes_every_task_once_and_returns_when_all_are_finished(monkeypatch):
    """Threads take tasks from the atomic counter: each task exactly once for 1, 2 or 3 threads, and
    every task's result is written when run_pulled returns (the caller waits for every helper that started
    the job, not for one that woke too late to take a task)."""
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("NUMBA_NUM_THREADS", threads)
        for n_tasks, delay in ((1, 0), (7, 0), (64, 20000), (500, 100)):
            assert (_pull_all(n_tasks, delay) == 1).all(), (threads, n_tasks)
        for pause in (0.0, 0.001, 0.02):  # (a helper awake, yielding, asleep)
            time.sleep(pause)
            assert (_pull_all(16, 5000) == 1).all(), (threads, pause)


def test_the_helpers_serve_kernels_of_several_kinds_in_turn(monkeypatch):
    """Jobs of another kernel, or of the same kernel with other argument types, between a kernel's jobs:
    each runs its own function on its own arguments."""
    monkeypatch.setenv("NUMBA_NUM_THREADS", "3")
    for round_ in range(20):
        assert (_pull_all(32, 2000) == 1).all()
        marks = np.zeros(32, np.float32 if round_ % 2 else np.float64)
        run_pulled(_mark, _mark_pulled, (np.zeros(2, np.int64), 32, marks, round_ + 1.0), 32, 3)
        assert (marks == round_ + 1).all()
        view = np.zeros(64, np.int64)[::2]  # (a strided array: another kind again)
        run_pulled(_pull, _pull_pulled, (np.zeros(2, np.int64), 32, view, 2000), 32, 3)
        assert (view == 1).all()


def test_run_pulled_from_several_threads_at_once(monkeypatch):
    """Callers in several Python threads: one at a time has the helpers, the others run alone; every
    call's tasks are each taken once."""
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    failures = []

    def caller():
        for _ in range(30):
            seen = _pull_all(24, 3000)
            if not (seen == 1).all():
                failures.append(seen)
    callers = [threading.Thread(target=caller) for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(60)
    assert not any(t.is_alive() for t in callers) and not failures


@pytest.mark.skipif(_threads.SYSCALLS is None or len(os.sched_getaffinity(0)) < 2,
                    reason="helpers need Linux's futex, and moving needs two CPUs")
def test_a_helper_on_its_caller_s_cpu_moves_off_it(monkeypatch):
    """A helper held on the CPU of the thread that posts the jobs moves itself off it (its affinity: the
    main thread's CPUs but that one), and the jobs' tasks are each taken once meanwhile."""
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    assert (_pull_all(16, 2000, threads=2) == 1).all()  # (the helper exists)
    helper = next(t for t in threading.enumerate() if t.name == "fastae-0")
    cpus = sorted(os.sched_getaffinity(0))
    results = []

    def caller():  # (a thread of its own, held on one CPU: the main thread's CPUs stay as they are)
        os.sched_setaffinity(0, {cpus[0]})
        os.sched_setaffinity(helper.native_id, {cpus[0]})
        for _ in range(50):
            results.append((_pull_all(16, 2000, threads=2) == 1).all())
            time.sleep(0.001)
    thread = threading.Thread(target=caller)
    thread.start()
    thread.join(60)
    try:
        assert all(results) and len(results) == 50
        assert os.sched_getaffinity(helper.native_id) == set(cpus) - {cpus[0]}
    finally:
        os.sched_setaffinity(helper.native_id, set(cpus))


@pytest.mark.skipif(_threads.SYSCALLS is None or len(os.sched_getaffinity(0)) < 2,
                    reason="helpers need Linux's futex, and moving needs two CPUs")
@pytest.mark.alone  # (its helper runs at idle priority: a busy neighbour would starve it)
def test_a_caller_moves_a_helper_that_last_ran_on_its_cpu(monkeypatch):
    """The thread that posts a job moves a helper that last ran on its CPU off it (the main thread's CPUs but
    that one): a woken helper is queued behind the thread that woke it, which, never blocking, kept it from
    running at all (a third of the calls of four 59 us tasks ran on one CPU). Here the helper runs only when
    nothing else would (SCHED_IDLE), and still takes its share of the tasks."""
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    helpers = _threads._Helpers()  # (a helper of its own, retired after the test)
    monkeypatch.setattr(_threads, "_helpers", helpers)
    cpus = sorted(os.sched_getaffinity(0))
    taken, where = [], []

    def run(n_tasks, delay):
        where = np.full(n_tasks, -1)
        run_pulled(_where, _where_pulled, (np.zeros(2, np.int64), n_tasks, where, delay), n_tasks, 2)
        return where

    def caller():  # (a thread of its own: the main thread's CPUs stay as they are)
        os.sched_setaffinity(0, {cpus[1]})
        run(2, 0)  # (the helper starts)
        helper = helpers.words[_threads.TID]
        os.sched_setaffinity(helper, {cpus[0]})
        run(16, 20000)  # (it runs there: its last CPU)
        where.append(helpers.words[_threads.WHERE])
        os.sched_setscheduler(helper, os.SCHED_IDLE, os.sched_param(0))
        time.sleep(0.05)  # (every thread that spins after its work asleep by now: other helpers, OpenMP's)
        os.sched_setaffinity(0, {cpus[0]})
        taken.append(run(32, 50000))  # (~0.5 ms a task)
    thread = threading.Thread(target=caller)
    thread.start()
    thread.join(60)
    assert where == [cpus[0]] and len(taken) == 1 and (taken[0] >= 0).all()
    assert (taken[0] != cpus[0]).sum() >= 12, taken[0]  # (16 here; 0-7 without the move)


def test_a_kernel_that_raises(monkeypatch):
    """Alone, the kernel's own exception; in threads, a RuntimeError naming the kernel (an exception cannot
    cross from a helper's nogil call), and the helpers serve the next call as before."""
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    with pytest.raises(ValueError, match="task failed"):
        run_pulled(_fail_at, _fail_at_pulled, (np.zeros(2, np.int64), 8, 5, 0), 8, 1)
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    for bad in range(8):
        with pytest.raises(RuntimeError, match="_fail_at.*NUMBA_NUM_THREADS=1"):
            run_pulled(_fail_at, _fail_at_pulled, (np.zeros(2, np.int64), 8, bad, 20000), 8, 2)
    assert (_pull_all(16, 2000, threads=2) == 1).all()


def test_the_helpers_keep_no_reference_to_a_call_s_arrays(monkeypatch):
    """After run_pulled returns, nothing of fastae's holds the arrays it was given (a helper enters its
    kernel's server with small stand-ins of the same types, and its frame keeps neither the call's arguments
    nor the stand-ins' source while it serves: fresh helpers, so that this call is the one they enter with)."""
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    monkeypatch.setattr(_threads, "_helpers", _threads._Helpers())
    seen = np.zeros(64, np.int64)
    before = sys.getrefcount(seen)
    run_pulled(_pull, _pull_pulled, (np.zeros(2, np.int64), 64, seen, 5000), 64, 2)
    time.sleep(0.01)
    assert (seen == 1).all() and sys.getrefcount(seen) == before


@pytest.mark.parametrize("make", [
    lambda: np.zeros((3, 4), np.float32),
    lambda: np.zeros((3, 4), np.float64).T,
    lambda: np.zeros((3, 8))[:, ::2],
    lambda: np.broadcast_to(np.zeros(4, np.float32), (3, 4)),
    lambda: np.zeros(5, np.int64)[::-1],
    lambda: (np.zeros(3), None, (np.float32(1), np.float32(2)), 7, True),
])
def test_a_witness_has_its_value_s_numba_type(make):
    value = make()
    assert typeof(_witness(value)) == typeof(value)


def test_without_futexes_pool_threads_take_the_tasks(monkeypatch):
    """Where there is no futex (not Linux), run_pulled's other threads are pool threads: the same tasks,
    each once, and a helper's exception raised as it was."""
    monkeypatch.setattr(_threads, "SYSCALLS", None)
    monkeypatch.setenv("NUMBA_NUM_THREADS", "3")
    for n_tasks, delay in ((1, 0), (7, 0), (64, 20000)):
        assert (_pull_all(n_tasks, delay) == 1).all()
    with pytest.raises(ValueError, match="task failed"):
        run_pulled(_fail_at, _fail_at_pulled, (np.zeros(2, np.int64), 8, 7, 20000), 8, 3)
