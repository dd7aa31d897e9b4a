"""The CPU backend's threads: every chunk exactly once, in pieces of at least the asked size, whatever
the thread count, and a slow thread taking fewer pieces than a fast one; tasks from the atomic counter
each taken once and finished on return."""
import threading
import time

import numpy as np
from numba import njit

from fastae.cpu._threads import next_task, num_threads, run_chunks, run_pulled, take_task


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


@njit(nogil=True)
def _pull(queue, n_tasks, seen, delay):
    """Take tasks until none is left, counting each in ``seen``, and spend ``delay`` loops on each."""
    k = take_task(queue)
    while k < n_tasks:
        acc = 0.0
        for i in range(delay):  # (a chain of square roots, ~10 ns each: a sum of i * 1e-9 was optimised away)
            acc = np.sqrt(acc + i)
        seen[k] += 1 + (acc < 0)
        k = next_task(queue)


def test_run_pulled_takes_every_task_once_and_returns_when_all_are_finished(monkeypatch):
    """Threads take tasks from the atomic counter: each task exactly once for 1, 2 or 3 threads, and
    every task's result is written when run_pulled returns (the caller waits for the tasks taken, not for a
    pool thread that woke too late to take one)."""
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("NUMBA_NUM_THREADS", threads)
        for n_tasks, delay in ((1, 0), (7, 0), (64, 20000), (500, 100)):
            seen = np.zeros(n_tasks, np.int64)
            # (bound now: a pool thread that wakes after run_pulled returned calls this with its own, spent
            # queue, and must not see the next case's arrays)
            run_pulled(lambda queue, n=n_tasks, s=seen, d=delay: _pull(queue, n, s, d), n_tasks, threads=3)
            assert (seen == 1).all(), (threads, n_tasks)
