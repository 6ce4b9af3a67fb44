"""nbflow.timeouts: deadlines for sync code in the main thread and in worker threads."""

from __future__ import annotations

import threading

import pytest

from nbflow.timeouts import DeadlineExceeded, absorb_pending, deadline, interrupt_thread


def test_a_deadline_interrupts_a_busy_loop_in_a_worker_thread():
    outcome = []

    def worker() -> None:
        try:
            with deadline(0.01):
                while True:
                    pass
        except DeadlineExceeded:
            outcome.append("interrupted")

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert outcome == ["interrupted"]


def test_after_a_deadline_fired_into_a_blocked_thread_the_interpreter_is_not_left_slowed():
    # Regression: clearing a late interrupt with PyThreadState_SetAsyncExc(NULL) left CPython's
    # eval breaker set for good; code run under a profiler afterwards then crawled (a "hang").
    import sys
    import time

    from nbflow import flow, task

    @task(timeout_seconds=0.01)
    def sleeper() -> None:
        time.sleep(0.2)  # blocked in C when the deadline fires: the workload, not a synchronisation

    @flow
    def f() -> str:
        future = sleeper.submit()
        future.wait()
        return future.state.name

    assert f() == "TimedOut"
    calls = 0

    def profile(frame, event, arg) -> None:
        nonlocal calls
        calls += 1

    sys.setprofile(profile)
    try:
        total = sum(i for i in range(10_000))
    finally:
        sys.setprofile(None)
    assert total == 49_995_000 and calls > 0


def test_absorbing_with_nothing_pending_does_nothing():
    absorb_pending(DeadlineExceeded)


def test_a_block_that_ends_before_its_deadline_is_never_interrupted():
    with deadline(10):
        value = sum(range(100))
    assert value == 4950


def test_no_deadline_means_no_timer():
    with deadline(None):
        pass


@pytest.mark.parametrize("where", ["main", "worker"])
def test_deadline_raises_deadline_exceeded_in_a_python_loop(where):
    result = []

    def body() -> None:
        try:
            with deadline(0.01):
                while True:
                    pass
        except DeadlineExceeded:
            result.append(True)

    if where == "main":
        body()
    else:
        thread = threading.Thread(target=body)
        thread.start()
        thread.join(10)
    assert result == [True]
