"""Faults that lose nothing: a task's own BaseException, blocking code past its deadline or a cancel,
retries after the flow ended, and deeply nested subflows.

Workloads that block in C are ``time.sleep(10)`` or a gate (``threading.Event.wait``): code
that a deadline raised into a thread cannot interrupt. Outcomes never depend on timing
other than "well before 10 s".
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest

import nbflow.runtime
from nbflow import flow, task
from nbflow.exceptions import CancelledRun, CrashedRun, FlowRunTimeoutError, KernelInterrupt, TaskRunTimeoutError
from nbflow.flows import cancel_flow_run
from nbflow.runs import flow_runs, last_flow_run
from nbflow.task_runners import ThreadPoolTaskRunner
from nbflow.timeouts import interrupt_thread

SAFETY = 10.0
WELL_BEFORE_10_S = 5.0


class Boom(BaseException):
    pass


@task
def ident(x):
    return x


class LogSeen(logging.Handler):
    """Sets ``seen`` once a record whose message contains ``text`` is logged (no polling)."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.seen = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.text in message:
            self.messages.append(message)
            self.seen.set()


@pytest.fixture
def engine_log():
    """``engine_log(text)``: a LogSeen on nbflow's engine logger for the test's duration."""
    logger = logging.getLogger("nbflow.engine")
    handlers = []

    def watch(text: str) -> LogSeen:
        handler = LogSeen(text)
        logger.addHandler(handler)
        handlers.append(handler)
        return handler

    yield watch
    for handler in handlers:
        logger.removeHandler(handler)


# -- a task's own BaseException is that task's failure (fault 2) -------------------------------
@pytest.mark.parametrize(
    "exc", [SystemExit(2), KeyboardInterrupt("mine"), Boom("custom")], ids=["SystemExit", "KeyboardInterrupt", "custom"]
)
def test_a_base_exception_in_a_task_crashes_only_that_run(exc, gate):
    @task
    def raises():
        raise exc

    @task
    def sibling():
        gate.wait()  # still running when its sibling crashes
        return "sibling done"

    out = {}

    @flow
    def f():
        running = sibling.submit()
        crashed = raises.submit()
        crashed.wait()
        out["state"] = crashed.state
        with pytest.raises(CrashedRun) as info:
            crashed.result()
        out["error"] = info.value
        gate.open()
        return running.result()

    assert f() == "sibling done"
    assert last_flow_run().state.is_completed()  # the flow was not cancelled
    state, error = out["state"], out["error"]
    assert state.is_crashed()
    assert error.__cause__ is exc
    assert repr(exc) in str(error) and "raises-" in str(error)  # names the run and the original
    assert isinstance(state.result(raise_on_failure=False), CrashedRun)


def test_reading_a_crashed_run_fails_the_flow_with_crashed_run_never_system_exit():
    @task
    def exits():
        raise SystemExit(3)

    @flow
    def f():
        return exits.submit().result()

    with pytest.raises(CrashedRun) as info:
        f()
    assert isinstance(info.value.__cause__, SystemExit)
    assert last_flow_run().state.is_failed()


def test_a_keyboard_interrupt_raised_by_an_inline_task_does_not_cancel_its_flow():
    @task
    def interrupts():
        raise KeyboardInterrupt

    @flow
    def f():
        try:
            interrupts()
        except CrashedRun as error:
            return type(error.__cause__).__name__

    assert f() == "KeyboardInterrupt"
    fr = last_flow_run()
    assert fr.state.is_completed() and fr.task_runs[0].state.is_crashed()


def test_an_inline_call_outside_a_flow_raises_crashed_run_for_system_exit():
    @task
    def exits():
        raise SystemExit(1)

    with pytest.raises(CrashedRun):
        exits()
    assert exits(return_state=True).is_crashed()


@pytest.mark.timeout(20)
def test_sigint_is_a_real_interrupt_inside_and_a_plain_keyboard_interrupt_outside():
    seen = []

    @flow
    def f():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
        except KeyboardInterrupt as interrupt:
            seen.append(type(interrupt))
            raise

    with pytest.raises(KeyboardInterrupt) as info:
        f()
    assert seen == [KernelInterrupt]  # what the flow's code sees
    assert type(info.value) is KeyboardInterrupt  # what leaves the outermost call
    assert last_flow_run().state.is_cancelled()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


@pytest.mark.timeout(20)
def test_sigint_during_an_inline_task_outside_a_flow_is_an_interrupt_not_a_crash():
    @task
    def waits():
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C while the task runs
        time.sleep(10)

    with pytest.raises(KeyboardInterrupt) as info:
        waits()
    assert type(info.value) is KeyboardInterrupt


def test_a_sigint_handler_someone_else_installed_is_left_alone():
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGINT, mine)
    try:
        @flow
        def f():
            return signal.getsignal(signal.SIGINT)

        assert f() is mine
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.timeout(20)
def test_a_kernel_interrupt_into_a_flow_thread_with_cancel_flow_run_cancels_it(gate):
    # What the notebook view's Cancel does to a %%flow cell running in its thread.
    started = threading.Event()

    @task
    def blocked():
        started.set()
        gate.wait()  # blocked in C: only abandoning it ends the run

    out = {}

    @flow
    def f():
        out["run"] = nbflow.runs.last_flow_run()
        blocked.submit().wait()
        while True:  # Python code: the interrupt lands here
            pass

    def body():
        try:
            f()
        except BaseException as exc:
            out["raised"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    assert started.wait(SAFETY)
    cancel_flow_run(out["run"], "cancelled from the view")
    interrupt_thread(thread.ident, KernelInterrupt)
    thread.join(SAFETY)
    assert not thread.is_alive()
    assert type(out["raised"]) is KeyboardInterrupt
    fr = out["run"]
    assert fr.state.is_cancelled()
    assert fr.task_runs[0].state.is_cancelled()


# -- timeouts end runs on time, even when the code blocks (fault 3) ------------------------------
@pytest.mark.timeout(30)
def test_a_task_blocked_in_sleep_ends_timed_out_on_time_and_its_future_resolves():
    @task(timeout_seconds=0.5)
    def sleeps():
        time.sleep(10)
        return "late"

    out = {}

    @flow
    def f():
        begin = time.monotonic()
        future = sleeps.submit()
        future.wait()
        out["elapsed"] = time.monotonic() - begin
        out["state"] = future.state
        with pytest.raises(TaskRunTimeoutError):
            future.result()

    f()
    assert out["state"].name == "TimedOut"
    assert out["elapsed"] < WELL_BEFORE_10_S


@pytest.mark.timeout(30)
@pytest.mark.parametrize("in_flow", [True, False], ids=["in a flow", "outside a flow"])
def test_an_inline_call_blocked_in_c_off_the_main_thread_ends_timed_out_on_time(gate, in_flow):
    # A flow run in a worker thread, or a %%flow cell's thread: no SIGALRM there.
    @task(timeout_seconds=0.3, retries=1)
    def stuck():
        gate.wait()  # blocked in C until the test opens the gate
        return "late"

    @flow
    def f():
        return {"state": stuck(return_state=True)}  # a dict: the flow does not take the state as its own

    out = {}

    def body():
        state = f()["state"] if in_flow else stuck(return_state=True)
        out.update(state=state, gate_was_open=gate.is_open())

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(SAFETY)
    assert out["gate_was_open"] is False  # it returned while its call was still blocked
    assert out["state"].name == "TimedOut"
    assert isinstance(out["state"].result(raise_on_failure=False), TaskRunTimeoutError)


@pytest.mark.timeout(30)
def test_an_inline_call_with_a_timeout_off_the_main_thread_keeps_its_context_and_result():
    @task(timeout_seconds=5)
    def quick(x):
        return x + 1, nbflow.runtime.task_run.name, nbflow.runtime.flow_run.name

    @flow(flow_run_name="outer")
    def f():
        return quick(1)

    out = {}
    thread = threading.Thread(target=lambda: out.update(value=f()))
    thread.start()
    thread.join(SAFETY)
    value, run_name, flow_name = out["value"]
    assert value == 2 and run_name.startswith("quick-") and flow_name == "outer"


@pytest.mark.timeout(30)
def test_with_one_worker_the_next_run_starts_while_the_stuck_one_still_sleeps(counter):
    timed_out = threading.Event()

    @task(timeout_seconds=0.5, on_failure=[lambda t, r, s: timed_out.set()])
    def stuck():
        time.sleep(10)

    @task
    def quick(i):
        assert timed_out.wait(SAFETY)  # the stuck run ends first, not after what queued behind it
        counter.enter()
        try:
            return i
        finally:
            counter.leave()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        first = stuck.submit()
        rest = quick.map(range(6))  # queued behind the stuck run
        values = rest.result()
        return first.state.name, values

    begin = time.monotonic()
    name, values = f()
    assert name == "TimedOut" and values == list(range(6))
    assert time.monotonic() - begin < WELL_BEFORE_10_S  # did not wait for the sleep
    assert counter.peak == 1  # the replacement thread keeps max_workers=1


@pytest.mark.timeout(30)
def test_a_late_result_is_discarded_no_hooks_no_cache_no_overwrite(gate, engine_log, tmp_path):
    calls = []
    discarded = engine_log("discarded")

    @task(
        timeout_seconds=0.3,
        cache_key_fn=lambda ctx, params: "one-key",
        on_completion=[lambda t, r, s: calls.append(("completion", s.name))],
        on_failure=[lambda t, r, s: calls.append(("failure", s.name))],
    )
    def swallows():
        calls.append("ran")
        try:
            gate.wait()  # blocked in C past the deadline
        except BaseException:
            pass  # swallows the deadline, then returns as if on time
        return "late"

    out = {}

    @flow
    def f():
        future = swallows.submit()
        future.wait()
        out["future"] = future

    f()
    future = out["future"]
    assert future.state.name == "TimedOut"
    gate.open()  # the stuck call now returns "late"
    assert discarded.seen.wait(SAFETY)
    run = future.task_run
    assert [s.name for s in run.states] == ["Pending", "Running", "TimedOut"]
    assert calls == ["ran", ("failure", "TimedOut")]
    assert repr(run.name) in discarded.messages[0]

    @flow
    def again():
        out["again"] = swallows.submit(return_state=True)

    again()  # the gate is open now: this run completes in time
    assert out["again"].name == "Completed"  # not "Cached": nothing was stored from the late value
    assert calls.count("ran") == 2


@pytest.mark.timeout(30)
def test_a_retry_after_a_stuck_timeout_runs_in_another_thread():
    threads = []

    @task(timeout_seconds=0.3, retries=1)
    def first_sticks():
        threads.append(threading.get_ident())
        if nbflow.runtime.task_run.run_count == 1:
            time.sleep(10)
        return nbflow.runtime.task_run.run_count

    @flow
    def f():
        future = first_sticks.submit()
        return future.result(), [s.name for s in future.task_run.states]

    begin = time.monotonic()
    attempts, states = f()
    assert attempts == 2
    assert states == ["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]
    assert len(set(threads)) == 2
    assert time.monotonic() - begin < WELL_BEFORE_10_S


@pytest.mark.parametrize("where", ["worker", "inline in the main thread"])
def test_code_that_swallows_its_deadline_never_ends_completed(where):
    @task(timeout_seconds=0.05)
    def swallows():
        while True:
            try:
                while True:
                    pass
            except BaseException:
                return "swallowed"

    out = {}

    @flow
    def f():
        out["state"] = swallows.submit(return_state=True) if where == "worker" else swallows(return_state=True)

    f()
    state = out["state"]
    assert state.name == "TimedOut"
    assert isinstance(state.result(raise_on_failure=False), TaskRunTimeoutError)


@pytest.mark.timeout(30)
def test_a_flow_timeout_off_the_main_thread_ends_the_flow_and_cancels_its_runs():
    @task
    def sleeps():
        time.sleep(10)

    out = {}

    @flow(timeout_seconds=0.5)
    def f():
        out["run"] = last_flow_run()
        sleeps.submit().result()

    def body():
        begin = time.monotonic()
        try:
            f()
        except BaseException as exc:
            out["raised"] = exc
        out["elapsed"] = time.monotonic() - begin

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(SAFETY)
    assert isinstance(out["raised"], FlowRunTimeoutError)
    assert out["elapsed"] < WELL_BEFORE_10_S
    fr = out["run"]
    assert fr.state.name == "TimedOut"
    assert [r.state.name for r in fr.task_runs] == ["Cancelled"]


@pytest.mark.timeout(30)
def test_a_flow_body_in_a_thread_that_swallows_its_deadline_ends_timed_out():
    @flow(timeout_seconds=0.05)
    def f():
        try:
            while True:
                pass
        except BaseException:
            return "swallowed"

    out = {}
    thread = threading.Thread(target=lambda: out.update(state=f(return_state=True)))
    thread.start()
    thread.join(SAFETY)
    assert out["state"].name == "TimedOut"


# -- cancel stops runs blocked in C, and a retry never starts after its flow ended (fault 4) ----------
@pytest.mark.timeout(30)
def test_cancel_flow_run_ends_a_run_blocked_in_c_and_the_flow_cancelled(gate):
    started = threading.Event()

    @task
    def blocked():
        started.set()
        gate.wait()

    @flow
    def f():
        future = blocked.submit()
        assert started.wait(SAFETY)
        cancel_flow_run(last_flow_run(), "stop")
        future.wait()
        return future.state.name

    begin = time.monotonic()
    with pytest.raises(CancelledRun):
        f()
    assert time.monotonic() - begin < WELL_BEFORE_10_S  # not when the gate's safety timeout ends the wait
    fr = last_flow_run()
    assert fr.state.is_cancelled()
    assert fr.task_runs[0].state.is_cancelled()


def test_cancel_flow_run_from_the_flows_code_ends_it_cancelled_not_completed():
    hooks = []

    @flow(on_cancellation=[lambda fl, run, state: hooks.append(state.name)])
    def f():
        ident.submit(1).result()
        cancel_flow_run(last_flow_run(), "no longer needed")
        return "body finished"

    with pytest.raises(CancelledRun, match="no longer needed"):
        f()
    assert last_flow_run().state.is_cancelled()
    assert hooks == ["Cancelled"]


@pytest.mark.timeout(30)
def test_a_run_waiting_to_retry_is_cancelled_with_its_flow_and_never_retries(events):
    attempts = []
    awaiting = threading.Event()
    handle = nbflow.runs.subscribe(lambda e: awaiting.set() if e.state.name == "AwaitingRetry" else None)

    @task(retries=1, retry_delay_seconds=10)
    def fails():
        attempts.append(1)
        raise ValueError("first attempt")

    @flow
    def f():
        future = fails.submit()
        assert awaiting.wait(SAFETY)
        cancel_flow_run(last_flow_run(), "stop retrying")
        future.wait()
        return future

    begin = time.monotonic()
    try:
        with pytest.raises(CancelledRun):
            f()
    finally:
        handle.unsubscribe()
    run = last_flow_run().task_runs[0]
    assert attempts == [1]
    assert events.state_names(run) == ["Pending", "Running", "AwaitingRetry", "Cancelled"]
    assert "was not retried" in run.state.message
    assert time.monotonic() - begin < WELL_BEFORE_10_S  # the wait was cut short


@pytest.mark.timeout(30)
def test_a_run_waiting_to_retry_when_its_flow_times_out_never_retries():
    attempts = []

    @task(retries=1, retry_delay_seconds=10)
    def fails():
        attempts.append(1)
        raise ValueError("first attempt")

    @flow(timeout_seconds=0.5)
    def f():
        fails.submit().wait()

    begin = time.monotonic()
    with pytest.raises(FlowRunTimeoutError):
        f()
    assert attempts == [1]
    assert last_flow_run().task_runs[0].state.is_cancelled()
    assert time.monotonic() - begin < WELL_BEFORE_10_S


# -- deeply nested subflows (fault 6) --------------------------------------------------------------
def _pad(frames: int, fn, *args):
    """Call ``fn(*args)`` under ``frames`` more frames: the RecursionError lands elsewhere in nbflow."""
    return fn(*args) if frames == 0 else _pad(frames - 1, fn, *args)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("body", ["subflow only", "inline task", "submitted task"])
def test_a_recursion_error_from_nested_subflows_leaves_no_run_pending_or_running(body, events):
    nbflow.settings.current.max_flow_runs = 1_000_000  # keep every record (restored after the test)
    for frames in range(30):
        before = len(flow_runs())

        @flow
        def deep(n):
            if body == "inline task":
                ident(n)
            elif body == "submitted task":
                ident.submit(n).result()
            return _pad(frames, deep, n + 1)

        raised = []
        thread = threading.Thread(target=lambda: raised.append(pytest.raises(RecursionError, deep, 0)))
        thread.start()
        thread.join(SAFETY)
        assert not thread.is_alive(), f"a flow waits for a run nobody ends (padding {frames})"
        assert raised, frames  # the RecursionError reached the caller
        runs = flow_runs()[before:]
        assert len(runs) > 10
        assert {r.state.name for r in runs} <= {"Crashed", "Failed"}, frames
        assert all(t.state.is_final() for r in runs for t in r.task_runs), frames
