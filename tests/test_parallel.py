"""favorkern._parallel: the pool drops the queued blocks of a call that is left."""

import signal
import threading
import time

import numpy as np
import pytest

from favorkern import _parallel
from favorkern._parallel import ENV_THREADS, check_cancelled, run_row_blocks, run_tasks


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setenv(ENV_THREADS, "2")
    monkeypatch.setattr(_parallel, "_cpu_count", lambda: 2)


def _slow_tasks(started, n=60, first=None):
    def task(i):
        started.append(i)
        time.sleep(0.02)
        return i

    tasks = [lambda i=i: task(i) for i in range(n)]
    if first is not None:
        tasks[0] = first
    return tasks


def _next_call_seconds():
    """Time of a trivial call on the shared pool: long while it still runs old blocks."""
    begin = time.monotonic()
    assert run_tasks([lambda i=i: i for i in range(4)], 2) == [0, 1, 2, 3]
    return time.monotonic() - begin


def _settled(started):
    """The number of tasks that ever started, once the pool is idle again."""
    time.sleep(0.3)
    return len(started)


def test_an_error_in_one_task_drops_the_queued_tasks(two_threads):
    started = []

    def fails():
        time.sleep(0.05)
        raise RuntimeError("one task fails")

    with pytest.raises(RuntimeError, match="one task fails"):
        run_tasks(_slow_tasks(started, first=fails), 2)
    # each worker finishes at most the task it runs; 59 queued before the fix
    assert _settled(started) <= 8


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX signals")
def test_ctrl_c_in_the_waiting_thread_drops_the_queued_tasks(two_threads):
    assert threading.current_thread() is threading.main_thread()
    started = []
    main = threading.main_thread().ident
    # a real SIGINT to the main thread, as Ctrl-C: it interrupts the wait on the futures
    threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGINT)).start()
    begin = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_tasks(_slow_tasks(started, n=200), 2)
    assert time.monotonic() - begin < 2.0  # 200 x 20 ms / 2 workers = 2 s if not dropped
    count = _settled(started)
    assert count < 60
    assert _next_call_seconds() < 1.0


def test_row_blocks_of_an_abandoned_call_are_dropped(two_threads):
    seen = []

    def block(start, stop):
        seen.append(start)
        if start == 0:
            raise ValueError("the first block fails")
        time.sleep(0.01)

    with pytest.raises(ValueError, match="the first block fails"):
        run_row_blocks(1 << 14, 1 << 10, 8, block, rows_per_block=16)
    time.sleep(1.0)
    assert len(seen) < 40  # the second worker's range of 512 blocks takes 5 s


def test_long_tasks_stop_at_their_next_check(two_threads):
    progress = []

    def long_task():
        for step in range(1000):
            check_cancelled()
            progress.append(step)
            time.sleep(0.005)

    def fails():
        time.sleep(0.05)
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        run_tasks([fails, long_task], 2)
    assert _next_call_seconds() < 1.0  # the long task alone: 5 s
    assert _settled(progress) < 200


def test_results_and_nested_calls_are_unchanged(two_threads):
    assert run_tasks([lambda i=i: i * i for i in range(7)], 2) == [i * i for i in range(7)]
    out = np.zeros(1000)

    def block(start, stop):
        out[start:stop] = np.arange(start, stop)

    run_row_blocks(1000, 1 << 10, 8, block, rows_per_block=16)
    np.testing.assert_array_equal(out, np.arange(1000))
    check_cancelled()  # outside the pool: a no-op
