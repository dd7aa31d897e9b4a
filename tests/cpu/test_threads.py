"""The CPU backend's threads: every chunk exactly once, in pieces of at least the asked size, whatever
the thread count, and a slow thread taking fewer pieces than a fast one."""
import threading
import time

from fastae.cpu._threads import run_chunks


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
