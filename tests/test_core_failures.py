"""Upstream failure, wait_for, allow_failure, retries, timeouts and task hooks."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from nbflow import allow_failure, flow, task
from nbflow.exceptions import CrashedRun, TaskRunTimeoutError, UnfinishedRun
from nbflow.states import Failed, StateType
from nbflow.runs import last_flow_run

SAFETY = 10.0


class UpstreamError(Exception):
    pass


@task
def fail_task(msg="upstream broke"):
    raise UpstreamError(msg)


@task
def ident(x):
    return x


# -- NotReady ---------------------------------------------------------------------------------
def test_downstream_of_failure_never_runs_and_is_pending_not_ready():
    ran = []

    @task
    def downstream(x):
        ran.append(x)

    out = {}

    @flow
    def f():
        a = fail_task.submit()
        b = downstream.submit(a)
        b.wait()
        out["state"] = b.state
        out["b"] = b

    f()
    state = out["state"]
    assert ran == []
    assert state.type is StateType.PENDING and state.name == "NotReady"
    assert not state.is_failed() and not state.is_final()


def test_not_ready_result_raises_unfinished_run_even_without_raise_on_failure():
    @flow
    def f():
        b = ident.submit(fail_task.submit())
        with pytest.raises(UnfinishedRun) as one:
            b.result()
        with pytest.raises(UnfinishedRun) as two:
            b.result(raise_on_failure=False)
        return str(one.value), str(two.value)

    one, two = f()
    assert "Run is in PENDING state, its result is not available." in one
    assert "PENDING" in two


def test_unfinished_run_message_names_failed_upstream_task_and_error():
    """nbflow promise (semantics 4.4): the NotReady message names the upstream and its error."""

    @flow
    def f():
        a = fail_task.submit("disk on fire")
        b = ident.submit(a)
        with pytest.raises(UnfinishedRun) as info:
            b.result()
        return str(info.value), a.task_run.name

    message, upstream_name = f()
    assert upstream_name in message
    assert "fail_task" in message
    assert "UpstreamError" in message and "disk on fire" in message


def test_unfinished_run_message_names_root_cause_down_a_chain():
    @flow
    def f():
        a = fail_task.submit("root cause")
        b = ident.submit(a)
        c = ident.submit(b)
        with pytest.raises(UnfinishedRun) as info:
            c.result()
        return str(info.value), b.state.name, c.state.name

    message, b_name, c_name = f()
    assert b_name == c_name == "NotReady"
    assert "root cause" in message and "fail_task" in message and message.count("fail_task") == 1


def test_block_propagates_down_a_chain():
    ran = []

    @task
    def record(x):
        ran.append(x)
        return x

    out = {}

    @flow
    def f():
        a = fail_task.submit()
        b = record.submit(a)
        c = record.submit(b)
        c.wait()
        out.update(b=b.state, c=c.state)

    f()
    assert ran == []
    assert out["b"].name == "NotReady" and out["c"].name == "NotReady"


def test_inline_call_with_failed_upstream_returns_none_and_records_not_ready():
    # Prefect 3.9.1: the inline call of a task whose upstream failed gives None (its run is NotReady).
    @flow
    def f():
        a = fail_task.submit()
        return ident(a), ident(a, return_state=True).name

    assert f() == (None, "NotReady")
    assert [r.state.name for r in last_flow_run().task_runs][1:] == ["NotReady", "NotReady"]


# -- allow_failure --------------------------------------------------------------------------------
def test_allow_failure_argument_receives_the_exception_instance():
    @task
    def take(x):
        return x

    @flow
    def f():
        a = fail_task.submit("the error")
        return take.submit(allow_failure(a)).result()

    exc = f()
    assert isinstance(exc, UpstreamError) and str(exc) == "the error"


def test_allow_failure_of_not_ready_future_gives_none():
    @task
    def take(x):
        return ("ran", x)

    @flow
    def f():
        a = fail_task.submit()
        b = ident.submit(a)  # NotReady
        return take.submit(allow_failure(b)).result()

    assert f() == ("ran", None)


def test_allow_failure_inline_call():
    @task
    def take(x):
        return x

    @flow
    def f():
        return take(allow_failure(fail_task.submit("inline")))

    assert str(f()) == "inline"


def test_wait_for_failed_is_not_ready_and_allow_failure_runs():
    ran = []

    @task
    def after():
        ran.append(1)
        return "ran"

    out = {}

    @flow
    def f():
        a = fail_task.submit()
        blocked = after.submit(wait_for=[a])
        allowed = after.submit(wait_for=[allow_failure(a)])
        blocked.wait()
        out["blocked"] = blocked.state
        out["allowed"] = allowed.result()

    f()
    assert out["blocked"].name == "NotReady"
    assert out["allowed"] == "ran" and ran == [1]


@pytest.mark.timeout(20)
def test_wait_for_orders_submit_map_and_inline(gate):
    order = []
    lock = threading.Lock()

    @task
    def first():
        gate.wait()
        with lock:
            order.append("first")

    @task
    def later(tag):
        with lock:
            order.append(tag)

    @flow
    def f():
        a = first.submit()
        s = later.submit("submit", wait_for=[a])
        m = later.map(["map1", "map2"], wait_for=[a])
        threading.Timer(0, gate.open).start()  # inline call below blocks this thread
        later("inline", wait_for=[a])
        s.wait()
        m.wait()

    f()
    assert order[0] == "first"
    assert sorted(order[1:]) == ["inline", "map1", "map2", "submit"]


def test_wait_for_single_inline_dependency_upstream_recorded():
    @flow
    def f():
        a = ident.submit(1)
        b = ident.submit(2, wait_for=[a])
        b.wait()
        return b.task_run.upstream == (a.task_run,)

    assert f() is True


# -- retries ------------------------------------------------------------------------------------
def test_retries_rerun_with_run_count_and_same_id():
    seen = []

    @task(retries=2)
    def flaky():
        import nbflow.runtime as rt

        seen.append((rt.task_run.run_count, rt.task_run.id))
        if len(seen) < 3:
            raise RuntimeError("again")
        return "ok"

    @flow
    def f():
        fut = flaky.submit()
        return fut.result(), [s.name for s in fut.task_run.states]

    result, names = f()
    assert result == "ok"
    assert [c for c, _ in seen] == [1, 2, 3]
    assert len({i for _, i in seen}) == 1
    assert names.count("AwaitingRetry") == 2 and names.count("Retrying") == 2
    assert names[-1] == "Completed"


def test_retries_on_inline_calls_and_outside_flows():
    attempts = []

    @task(retries=1)
    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first")
        return len(attempts)

    assert flaky() == 2


def test_exhausted_retries_fail_with_last_exception():
    attempts = []

    @task(retries=2)
    def always():
        attempts.append(1)
        raise RuntimeError(f"attempt {len(attempts)}")

    @flow
    def f():
        fut = always.submit()
        with pytest.raises(RuntimeError, match="attempt 3"):
            fut.result()
        return fut.task_run.run_count

    assert f() == 3


def test_task_returning_failed_state_is_retried():
    attempts = []

    @task(retries=1)
    def returns_failed():
        attempts.append(1)
        if len(attempts) == 1:
            return Failed(message="soft failure")
        return "fine"

    @flow
    def f():
        return returns_failed.submit().result()

    assert f() == "fine"
    assert len(attempts) == 2


def test_retry_condition_fn_can_veto_a_retry():
    attempts = []
    calls = []

    def only_runtime_errors(task, task_run, state):
        calls.append((task.name, task_run.run_count, state.is_failed()))
        return not isinstance(state.result(raise_on_failure=False), KeyError)

    @task(retries=3, retry_condition_fn=only_runtime_errors)
    def t():
        attempts.append(1)
        raise KeyError("no retry for me")

    with pytest.raises(KeyError):
        t()
    assert len(attempts) == 1
    assert calls == [("t", 1, True)]


def test_retry_delay_list_one_per_retry():
    @task(retries=2, retry_delay_seconds=[0.02, 0.05])
    def always():
        raise RuntimeError("x")

    state = always(return_state=True)
    assert state.is_failed()


def test_retry_delays_are_applied_in_order():
    stamps = []

    @task(retries=3, retry_delay_seconds=[0.02, 0.05])
    def always():
        stamps.append(time.monotonic())
        raise RuntimeError("x")

    always(return_state=True)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert len(gaps) == 3
    assert gaps[0] >= 0.02 and gaps[1] >= 0.05 and gaps[2] >= 0.05  # the last delay repeats


def test_retry_delay_callable_gets_retries():
    got = []

    def delays(retries):
        got.append(retries)
        return [0.0] * retries

    @task(retries=2, retry_delay_seconds=delays)
    def always():
        raise RuntimeError("x")

    always(return_state=True)
    assert got and all(r == 2 for r in got)


def test_more_than_50_retry_delays_is_rejected():
    with pytest.raises(ValueError):

        @task(retries=51, retry_delay_seconds=[0.0] * 51)
        def t():
            pass


def test_negative_retry_jitter_factor_is_rejected():
    with pytest.raises(ValueError):

        @task(retries=1, retry_jitter_factor=-1)
        def t():
            pass


# -- timeouts -------------------------------------------------------------------------------------
@pytest.mark.timeout(20)
def test_timeout_in_worker_thread_fails_timed_out():
    @task(timeout_seconds=0.05)
    def slow():
        time.sleep(0.3)  # workload, not synchronisation
        return "late"

    @flow
    def f():
        fut = slow.submit()
        fut.wait()
        with pytest.raises(TaskRunTimeoutError) as info:
            fut.result()
        out["r"] = fut.state, info.value

    out = {}
    f()
    state, exc = out["r"]
    assert state.is_failed() and state.name == "TimedOut"
    assert isinstance(exc, TimeoutError)


@pytest.mark.timeout(20)
def test_timeout_of_busy_python_loop_in_worker_is_enforced():
    @task(timeout_seconds=0.05)
    def spin():
        end = time.monotonic() + 5
        while time.monotonic() < end:
            pass
        return "late"

    @flow
    def f():
        t0 = time.monotonic()
        state = spin.submit(return_state=True)
        out["r"] = state, time.monotonic() - t0

    out = {}
    f()
    state, elapsed = out["r"]
    assert state.name == "TimedOut"
    assert elapsed < 4  # interrupted, not run to its end


@pytest.mark.timeout(20, method="thread")
def test_inline_timeout_in_main_thread_interrupts_sleep():
    @task(timeout_seconds=0.1)
    def sleepy():
        time.sleep(5)

    t0 = time.monotonic()
    with pytest.raises(TaskRunTimeoutError):
        sleepy()
    assert time.monotonic() - t0 < 3


@pytest.mark.timeout(20)
def test_async_task_cancelled_at_deadline():
    @task(timeout_seconds=0.05)
    async def sleepy():
        await asyncio.sleep(5)

    @flow
    def f():
        t0 = time.monotonic()
        state = sleepy.submit(return_state=True)
        out["r"] = state, time.monotonic() - t0

    out = {}
    f()
    state, elapsed = out["r"]
    assert state.name == "TimedOut"
    assert isinstance(state.result(raise_on_failure=False), TaskRunTimeoutError)
    assert elapsed < 3


@pytest.mark.timeout(20)
def test_timeouts_are_retried():
    attempts = []

    @task(timeout_seconds=0.05, retries=1)
    def slow_then_fast():
        attempts.append(1)
        if len(attempts) == 1:
            time.sleep(0.3)
        return "ok"

    @flow
    def f():
        return slow_then_fast.submit().result()

    assert f() == "ok"
    assert len(attempts) == 2


# -- hooks --------------------------------------------------------------------------------------
def test_task_hooks_are_called_with_task_run_and_state():
    calls = []

    def hook(kind):
        return lambda t, run, state: calls.append((kind, t.name, run.name, state.name))

    @task(
        task_run_name="named-{x}",
        on_completion=[hook("completion")],
        on_failure=[hook("failure")],
        on_running=[hook("running")],
    )
    def t(x):
        if x < 0:
            raise ValueError("neg")
        return x

    @flow
    def f():
        t.submit(1).wait()
        t.submit(-1).wait()

    f()
    assert ("running", "t", "named-1", "Running") in calls
    assert ("completion", "t", "named-1", "Completed") in calls
    assert ("failure", "t", "named--1", "Failed") in calls
    assert ("completion", "t", "named--1", "Failed") not in calls


def test_on_failure_not_called_for_an_attempt_that_is_retried():
    calls = []
    attempts = []

    @task(retries=1, on_failure=[lambda t, r, s: calls.append(r.run_count)])
    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first")
        return 1

    assert flaky() == 1
    assert calls == []

    @task(retries=1, on_failure=[lambda t, r, s: calls.append(r.run_count)])
    def always():
        raise RuntimeError("always")

    always(return_state=True)
    assert calls == [2]


def test_hook_that_raises_is_logged_and_ignored(caplog):
    def bad_hook(t, run, state):
        raise RuntimeError("hook broke")

    @task(on_completion=[bad_hook])
    def t():
        return "value"

    def bad_flow_hook(f, run, state):
        raise RuntimeError("flow hook broke")

    @flow(on_completion=[bad_flow_hook])
    def f():
        return t()

    with caplog.at_level(logging.ERROR):
        assert t() == "value"
        assert f() == "value"
    # Prefect's words, on the run's logger, with the hook's traceback
    found = [(r.name, r.getMessage(), str(r.exc_info[1])) for r in caplog.records if "hook" in r.getMessage()]
    assert found == [
        ("nbflow.task_runs", "An error was encountered while running hook 'bad_hook'", "hook broke"),
        ("nbflow.task_runs", "An error was encountered while running hook 'bad_hook'", "hook broke"),
        ("nbflow.flow_runs", "An error was encountered while running hook 'bad_flow_hook'", "flow hook broke"),
    ]


def test_hook_decorator_form():
    calls = []

    @task
    def t():
        return 1

    @t.on_completion
    def done(task_, run, state):
        calls.append(state.name)

    t()
    assert calls == ["Completed"]


@pytest.mark.parametrize("option", ["on_completion", "on_failure", "on_running"])
def test_hooks_must_be_a_list_of_callables(option):
    with pytest.raises(TypeError):
        task(lambda: None, **{option: lambda t, r, s: None})
    with pytest.raises(TypeError):
        task(lambda: None, **{option: ["not callable"]})


def test_task_raising_system_exit_in_worker_is_crashed():
    out = {}

    @task
    def exits():
        raise SystemExit(2)

    @flow
    def f():
        fut = exits.submit()
        fut.wait()
        out["state"] = fut.state
        return "flow goes on"

    assert f() == "flow goes on"
    assert out["state"].is_crashed()
    error = out["state"].result(raise_on_failure=False)
    assert isinstance(error, CrashedRun) and isinstance(error.__cause__, SystemExit)  # nbflow: never a SystemExit


def test_future_list_result_with_not_ready_element_raises_unfinished_run():
    @flow
    def f():
        a = fail_task.submit()
        futures = ident.map([a, 1])
        with pytest.raises(UnfinishedRun):
            futures.result(raise_on_failure=False)
        with pytest.raises(UnfinishedRun):
            futures.result()

    f()


def test_failed_state_names_and_messages():
    out = {}

    @flow
    def f():
        fut = fail_task.submit("why")
        fut.wait()
        out["state"] = fut.state

    f()
    state = out["state"]
    assert state.name == "Failed" and state.type is StateType.FAILED
    assert "UpstreamError" in state.message and "why" in state.message


def test_an_async_retry_condition_is_awaited_and_a_raising_one_stops_retries(caplog):
    calls = []

    async def never(task, run, state):
        return False

    def broken(task, run, state):
        raise RuntimeError("condition broke")

    @task(retries=3, retry_condition_fn=never)
    def a():
        calls.append("a")
        raise ValueError("x")

    @task(retries=3, retry_condition_fn=broken)
    def b():
        calls.append("b")
        raise ValueError("x")

    @flow
    def f():
        return a(return_state=True).name, b(return_state=True).name

    with caplog.at_level(logging.ERROR):
        assert f() == ("Failed", "Failed")
    assert calls == ["a", "b"]
    (record,) = [r for r in caplog.records if "retry_condition_fn" in r.getMessage()]
    assert record.name == "nbflow.task_runs" and "for task 'b'" in record.getMessage()
    assert str(record.exc_info[1]) == "condition broke"
