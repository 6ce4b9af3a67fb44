"""nbflow.timeouts: deadlines and interrupts in the main thread and worker threads; calls that do not react."""

from __future__ import annotations

import signal
import threading

import pytest

from nbflow import flow, task, timeouts
from nbflow.exceptions import KernelInterrupt
from nbflow.timeouts import (
    DeadlineExceeded,
    Watch,
    absorb_pending,
    deadline,
    mark_real_interrupts,
    restore_interrupts,
    settle,
)


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


# -- interrupts, abandonment, real interrupts -----------------------------------------------------
class Abandoning(Watch):
    """A watch that records being abandoned."""

    __slots__ = ("gave_up",)
    abandonable = True

    def __init__(self) -> None:
        super().__init__()
        self.gave_up = threading.Event()

    def abandoned(self, exc) -> None:
        self.gave_up.set()


def _watched(body, out: dict, ready: threading.Event) -> None:
    """Run ``body()`` under a watch the way the engine does; note how it ended."""
    watch = out["watch"] = Abandoning()
    ready.set()
    try:
        try:
            out["value"] = body()
        finally:
            watch.claims.append(True)
    except BaseException as exc:
        out["raised"] = exc
    out["landed"] = settle(watch)
    out["in_time"] = watch.claims[0]


@pytest.fixture
def quick_abandon(monkeypatch):
    monkeypatch.setattr(timeouts, "ABANDON_AFTER", 0.01)


def test_a_call_blocked_in_c_is_abandoned_and_its_late_interrupt_is_dropped(gate, quick_abandon):
    out, ready = {}, threading.Event()
    thread = threading.Thread(target=_watched, args=(lambda: gate.wait() and "late", out, ready))
    thread.start()
    assert ready.wait(10)
    assert out["watch"].interrupt(DeadlineExceeded)
    assert out["watch"].gave_up.wait(10)  # blocked in C: it did not react
    gate.open()
    thread.join(10)
    assert out["in_time"] is False  # someone else ended it first
    assert "raised" in out or out.get("value") == "late"  # whichever: nothing escaped the watch


def test_a_call_that_reacts_is_not_abandoned(gate, quick_abandon):
    out, ready = {}, threading.Event()

    def spin() -> None:
        while True:
            pass

    thread = threading.Thread(target=_watched, args=(spin, out, ready))
    thread.start()
    assert ready.wait(10)
    out["watch"].interrupt(DeadlineExceeded)
    thread.join(10)
    assert isinstance(out["raised"], DeadlineExceeded) and out["in_time"] is True
    # A later abandonment deadline, reached only after the first one's: the first did nothing.
    sentinel_out, sentinel_ready = {}, threading.Event()
    sentinel = threading.Thread(target=_watched, args=(gate.wait, sentinel_out, sentinel_ready))
    sentinel.start()
    assert sentinel_ready.wait(10)
    sentinel_out["watch"].interrupt(DeadlineExceeded)
    assert sentinel_out["watch"].gave_up.wait(10)
    assert not out["watch"].gave_up.is_set()
    gate.open()
    sentinel.join(10)


def test_interrupting_a_call_that_has_ended_raises_nothing():
    watch = Watch()
    watch.claims.append(True)
    assert watch.interrupt(DeadlineExceeded) is False
    assert watch.raised == ()
    total = sum(range(1000))  # nothing is pending in this thread
    assert total == 499500


@pytest.mark.parametrize("where", ["main", "worker"])
def test_a_block_that_swallows_its_deadline_still_raises_it(where):
    outcome = []

    def body() -> None:
        try:
            with deadline(0.01):
                try:
                    while True:
                        pass
                except DeadlineExceeded:
                    pass  # swallowed: the block then ends as if on time
            outcome.append("completed")
        except DeadlineExceeded:
            outcome.append("timed out")

    if where == "main":
        body()
    else:
        thread = threading.Thread(target=body)
        thread.start()
        thread.join(10)
    assert outcome == ["timed out"]


def test_sigint_raises_kernel_interrupt_only_while_marked_and_only_over_the_default():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    installed = mark_real_interrupts()
    try:
        assert installed and mark_real_interrupts() is False  # nested: left to the outer one
        with pytest.raises(KernelInterrupt):
            signal.raise_signal(signal.SIGINT)
            for _ in range(1000):  # the handler runs at the next bytecode check
                pass
    finally:
        restore_interrupts(installed)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt) as info:
        signal.raise_signal(signal.SIGINT)
        for _ in range(1000):
            pass
    assert type(info.value) is KeyboardInterrupt


def test_no_sigint_handler_is_installed_off_the_main_thread():
    result = []
    thread = threading.Thread(target=lambda: result.append(mark_real_interrupts()))
    thread.start()
    thread.join(10)
    assert result == [False]


def test_a_deadline_in_the_main_thread_sets_an_earlier_alarm_aside_and_then_back():
    """An alarm already set (an outer deadline, pytest-timeout's) does not keep a sooner deadline
    from interrupting a blocking call in the main thread; it is set again for what is left of it."""
    from nbflow import flow, task

    fired = []

    def on_alarm(*_):
        fired.append(True)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 120)
    try:
        @task(timeout_seconds=0.1)
        def blocked():
            signal.pause()  # blocks until a signal: the deadline's, or (if it were lost) the outer alarm

        @flow
        def pipeline():
            return blocked(return_state=True).name

        assert pipeline() == "TimedOut"
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 90 < left <= 120 and not fired
        assert signal.getsignal(signal.SIGALRM) is on_alarm  # the test's own handler is back
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_timeout_error_raised_by_the_code_times_the_run_out_as_in_prefect():
    attempts = []

    @task(retries=1)
    def plain():
        attempts.append(1)
        raise TimeoutError("plain timeout")

    @flow
    def calls_it():
        plain()

    state = plain(return_state=True)
    assert (state.name, state.type.value, state.message) == (
        "TimedOut", "FAILED", "Task run failed due to timeout: TimeoutError('plain timeout')")
    assert len(attempts) == 2  # a TimedOut run is retried like any failure
    state = calls_it(return_state=True)
    assert (state.name, state.message) == ("TimedOut", "Flow run failed due to timeout: TimeoutError('plain timeout')")
    with pytest.raises(TimeoutError, match="plain timeout"):
        state.result()
