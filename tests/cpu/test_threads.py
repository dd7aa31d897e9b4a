"""The CPU backend's threads: every chunk exactly once, in pieces of at least the asked size, whatever
the thread count, and a slow thread taking fewer pieces than a fast one; tasks from the atomic counter
each taken once and finished on return."""
import faulthandler
import threading
import time

import numpy as np
from numba import njit

from fastae.cpu._threads import next_task, run_chunks, run_pulled, take_task


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
        for i in range(delay):  # (a chain of square roots: ~10 ns each, not optimised away)
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


@njit(nogil=True)
def _pull_or_fail(queue, n_tasks, seen, delay, fail):
    """_pull, raising on the first task it takes where ``fail``."""
    k = take_task(queue)
    while k < n_tasks:
        if fail:
            raise ValueError("task failed")
        acc = 0.0
        for i in range(delay):  # (a chain of square roots: ~10 ns each, not optimised away)
            acc = np.sqrt(acc + i)
        seen[k] += 1 + (acc < 0)
        k = next_task(queue)


def test_a_crew_threads_error_reaches_the_caller_and_the_crew_goes_on(monkeypatch):
    """A task that raises in a crew thread (the caller's own tasks, slow, leave it some): the caller raises the
    error rather than wait for the task forever, and the next calls take every task once."""
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    faulthandler.dump_traceback_later(120, exit=True)  # (a caller waiting forever ends the run, with its stack)
    try:
        _crew_errors()
    finally:
        faulthandler.cancel_dump_traceback_later()


def _crew_errors():
    outcomes = []
    for attempt in range(10):
        seen = np.zeros(64, np.int64)
        kernel = lambda queue, s=seen: _pull_or_fail(queue, 64, s, 2000,  # noqa: E731
                                                     threading.current_thread() is not threading.main_thread())
        try:
            run_pulled(kernel, 64, threads=2)
            outcomes.append((seen == 1).all())  # (the crew thread came too late for any task)
        except ValueError as error:
            assert "task failed" in str(error)
            outcomes.append("raised")
        for n_tasks in (7, 64):
            seen = np.zeros(n_tasks, np.int64)
            run_pulled(lambda queue, n=n_tasks, s=seen: _pull(queue, n, s, 100), n_tasks, threads=2)
            assert (seen == 1).all()
    assert "raised" in outcomes and all(o in ("raised", True) for o in outcomes), outcomes


def test_callers_in_several_threads_each_get_every_task_once(monkeypatch):
    """dask calls fastae from several threads at once: one caller hires the crew, the others run alone, and
    every caller's tasks are each taken once."""
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    failures = []

    def caller(i):
        for n_tasks in (5, 33, 200):
            seen = np.zeros(n_tasks, np.int64)
            run_pulled(lambda queue, n=n_tasks, s=seen: _pull(queue, n, s, 2000), n_tasks, threads=2)
            if not (seen == 1).all():
                failures.append((i, n_tasks))
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
