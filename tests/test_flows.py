"""Flows: calling, returned futures, subflows, retries, timeouts, hooks, options, parameters,
unresolved futures at exit, and KeyboardInterrupt."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings

import pytest

import nbflow
import nbflow.runtime
from nbflow import flow, task
from nbflow.exceptions import FlowRunTimeoutError, ParameterTypeError, UnfinishedTaskRunsWarning
from nbflow.runs import last_flow_run
from nbflow.states import State, StateType
from nbflow.task_runners import ThreadPoolTaskRunner

SAFETY = 10.0


class TaskError(Exception):
    pass


@task
def ident(x):
    return x


@task
def fail(msg="task failed"):
    raise TaskError(msg)


# -- calling ---------------------------------------------------------------------------------
def test_flow_call_runs_body_in_callers_thread_and_returns_value():
    @flow
    def f(x):
        return threading.get_ident(), x * 2

    tid, value = f(21)
    assert tid == threading.get_ident() and value == 42


def test_flow_return_state():
    @flow
    def f():
        return 3

    state = f(return_state=True)
    assert isinstance(state, State) and state.is_completed() and state.result() == 3

    @flow
    def g():
        raise TaskError("body")

    failed = g(return_state=True)
    assert failed.is_failed()
    assert isinstance(failed.result(raise_on_failure=False), TaskError)


def test_flow_body_exception_propagates():
    @flow
    def f():
        raise TaskError("from body")

    with pytest.raises(TaskError, match="from body"):
        f()
    assert last_flow_run().state.is_failed()


def test_default_flow_name_replaces_underscores():
    @flow
    def my_nice_flow():
        return nbflow.runtime.flow_run.flow_name

    assert my_nice_flow.name == "my-nice-flow"
    assert my_nice_flow() == "my-nice-flow"


def test_failed_task_never_read_does_not_fail_the_flow():
    @flow
    def f():
        fail.submit().wait()
        return "fine"

    assert f() == "fine"
    assert last_flow_run().state.is_completed()


# -- returning futures ---------------------------------------------------------------------
def test_flow_returning_a_future_returns_its_state():
    @flow
    def f():
        return ident.submit(5)

    out = f()
    assert isinstance(out, State)
    assert out.is_completed() and out.result() == 5


def test_flow_returning_list_of_futures_returns_list_of_states():
    @flow
    def f():
        return [ident.submit(1)]

    out = f()
    assert isinstance(out, list) and len(out) == 1
    assert isinstance(out[0], State) and out[0].result() == 1


def test_flow_returning_map_returns_plain_list_of_states():
    @flow
    def f():
        return ident.map([1, 2, 3])

    out = f()
    assert type(out) is list
    assert all(isinstance(s, State) for s in out)
    assert [s.result() for s in out] == [1, 2, 3]


def test_flow_returning_failed_future_raises_task_exception():
    @flow
    def f():
        return fail.submit("returned failure")

    with pytest.raises(TaskError, match="returned failure"):
        f()
    assert last_flow_run().state.is_failed()


def test_flow_returning_mix_of_completed_and_failed_is_failed():
    @flow
    def f():
        futures = [ident.submit(1), fail.submit()]
        nbflow.wait(futures)
        return futures

    state = f(return_state=True)
    assert state.is_failed()
    assert state.message == "1/2 states failed."


# -- subflows -------------------------------------------------------------------------------------
def test_subflow_has_own_flow_run_and_runner():
    runners = {}

    @flow(flow_run_name="child-run")
    def child():
        runners["child"] = last_flow_run_of_here()
        return ident.submit(1).result()

    def last_flow_run_of_here():
        from nbflow.context import current_flow_run

        return current_flow_run()

    @flow(flow_run_name="parent-run")
    def parent():
        runners["parent"] = last_flow_run_of_here()
        return child() + 1

    assert parent() == 2
    p, c = runners["parent"], runners["child"]
    assert c is not p and c.parent is p and c in p.subflow_runs
    assert c.name == "child-run" and p.name == "parent-run"
    assert c.task_runner is not p.task_runner
    assert [r.task.name for r in c.task_runs] == ["ident"]
    assert p.task_runs == []


def test_subflow_exception_propagates_and_can_be_caught():
    @flow
    def child():
        raise TaskError("child failed")

    @flow
    def parent():
        try:
            child()
        except TaskError as exc:
            return f"caught: {exc}"

    assert parent() == "caught: child failed"
    assert last_flow_run().state.is_completed()


def test_subflow_with_single_worker_runner_uses_one_thread():
    threads = set()
    lock = threading.Lock()

    @task
    def where(i):
        with lock:
            threads.add(threading.current_thread().name)
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def child():
        return where.map(range(8)).result()

    @flow
    def parent():
        return child()

    assert parent() == list(range(8))
    assert len(threads) == 1


def test_flow_called_from_inside_a_task():
    @flow
    def inner(x):
        return ident.submit(x).result() + 1

    @task
    def runs_a_flow(x):
        return inner(x)

    @flow
    def outer():
        return runs_a_flow.submit(1).result(), runs_a_flow(10)

    assert outer() == (2, 11)


# -- retries, timeouts ---------------------------------------------------------------------
def test_flow_retries_rerun_the_whole_body():
    counts = []

    @flow(retries=2)
    def f():
        counts.append(nbflow.runtime.flow_run.run_count)
        if len(counts) < 3:
            raise TaskError("again")
        return "done"

    assert f() == "done"
    assert counts == [1, 2, 3]
    assert last_flow_run().run_count == 3


def test_flow_retries_exhausted_raise_last_error():
    counts = []

    @flow(retries=1)
    def f():
        counts.append(1)
        raise TaskError(f"attempt {len(counts)}")

    with pytest.raises(TaskError, match="attempt 2"):
        f()


@pytest.mark.timeout(20, method="thread")
def test_flow_timeout_interrupts_sleep_in_main_thread():
    @flow(timeout_seconds=0.1)
    def f():
        time.sleep(5)

    t0 = time.monotonic()
    with pytest.raises(FlowRunTimeoutError) as info:
        f()
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - t0 < 3
    assert last_flow_run().state.name == "TimedOut"


# -- hooks ----------------------------------------------------------------------------------------
def _recorder(calls, kind):
    def hook(fl, run, state):
        calls.append((kind, fl.name, run.name, state.type))

    return hook


def test_flow_hooks_completion_failure_running():
    calls = []
    hooks = dict(
        on_completion=[_recorder(calls, "completion")],
        on_failure=[_recorder(calls, "failure")],
        on_running=[_recorder(calls, "running")],
    )

    @flow(flow_run_name="ok-run", **hooks)
    def ok():
        return 1

    @flow(flow_run_name="bad-run", **hooks)
    def bad():
        raise TaskError()

    ok()
    with pytest.raises(TaskError):
        bad()
    assert calls == [
        ("running", "ok", "ok-run", StateType.RUNNING),
        ("completion", "ok", "ok-run", StateType.COMPLETED),
        ("running", "bad", "bad-run", StateType.RUNNING),
        ("failure", "bad", "bad-run", StateType.FAILED),
    ]


def test_flow_on_cancellation_hook_on_keyboard_interrupt():
    calls = []

    @flow(on_cancellation=[_recorder(calls, "cancel")], on_failure=[_recorder(calls, "failure")])
    def f():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        f()
    assert [c[0] for c in calls] == ["cancel"]
    assert last_flow_run().state.is_cancelled()


def test_flow_on_crashed_hook():
    calls = []

    @flow(on_crashed=[_recorder(calls, "crashed")])
    def f():
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        f()
    assert [c[0] for c in calls] == ["crashed"]
    assert last_flow_run().state.is_crashed()


def test_flow_hook_that_raises_is_ignored():
    def bad(fl, run, state):
        raise RuntimeError("hook")

    @flow(on_completion=[bad])
    def f():
        return "v"

    assert f() == "v"


# -- options ------------------------------------------------------------------------------------
def test_flow_with_options_returns_new_flow():
    @flow(retries=0)
    def f():
        return nbflow.runtime.flow_run.name, last_flow_run().task_runner

    g = f.with_options(
        name="renamed",
        flow_run_name="fixed-name",
        retries=2,
        task_runner=ThreadPoolTaskRunner(max_workers=3),
        timeout_seconds=30,
        log_prints=True,
    )
    assert g is not f
    assert g.name == "renamed" and g.retries == 2 and g.timeout_seconds == 30 and g.log_prints
    assert f.name == "f" and f.retries == 0 and f.log_prints is None
    name, runner = g()
    assert name == "fixed-name"
    assert isinstance(runner, ThreadPoolTaskRunner) and runner.max_workers == 3


def test_flow_run_name_template_and_callable():
    @flow(flow_run_name="run-for-{who}")
    def templated(who):
        return nbflow.runtime.flow_run.name

    def namer():
        return f"called-{nbflow.runtime.flow_run.parameters['who']}"

    @flow(flow_run_name=namer)
    def called(who):
        return nbflow.runtime.flow_run.name

    assert templated("ann") == "run-for-ann"
    assert called("bob") == "called-bob"


def test_runtime_flow_run_attributes_inside_flow():
    @flow(flow_run_name="rt-{a}")
    def my_flow(a, b=2):
        fr = nbflow.runtime.flow_run
        return fr.name, fr.flow_name, fr.parameters, fr.run_count, fr.id

    name, flow_name, params, run_count, fid = my_flow(1)
    assert name == "rt-1" and flow_name == "my-flow"
    assert params == {"a": 1, "b": 2} and run_count == 1
    assert fid == str(last_flow_run().id)


def test_task_runner_class_is_accepted_and_non_runner_rejected():
    @flow(task_runner=ThreadPoolTaskRunner)
    def f():
        return ident.submit(1).result()

    assert f() == 1
    with pytest.raises(TypeError):
        flow(task_runner="threads")(lambda: None)


# -- parameters ---------------------------------------------------------------------------------
def test_flow_parameters_are_coerced_by_pydantic():
    @flow
    def f(x: int, items: list[int]):
        return x, items

    assert f("5", ["1", 2]) == (5, [1, 2])


def test_validate_parameters_false_passes_values_untouched():
    @flow(validate_parameters=False)
    def f(x: int):
        return x

    assert f("5") == "5"


def test_invalid_flow_parameters_raise_parameter_type_error_naming_flow_and_fix():
    @flow
    def typed_flow(x: int):
        return x

    with pytest.raises(ParameterTypeError) as info:
        typed_flow("not a number")
    message = str(info.value)
    assert "typed-flow" in message and "x" in message
    assert "validate_parameters=False" in message
    assert not isinstance(info.value, TypeError)  # as in Prefect 3.9.1


def test_flow_bad_arguments_raise_type_error():
    @flow
    def f(x):
        return x

    with pytest.raises(TypeError):
        f(1, 2)


# -- unresolved futures at exit (nbflow promise, semantics 4.1) ----------------------------------
@pytest.mark.timeout(20)
def test_unresolved_futures_are_waited_for_and_named_in_a_warning(gate, open_gate_on_wait):
    finished = []

    @task
    def slowish(i):
        gate.wait()
        finished.append(i)
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        futs = [slowish.submit(i) for i in range(3)]
        open_gate_on_wait(slowish)  # the runs are unfinished when the body returns
        return [fu.task_run.name for fu in futs]

    with pytest.warns(UnfinishedTaskRunsWarning) as record:
        names = f()
    fr = last_flow_run()
    # every run ran to completion (Prefect would cancel the queued ones; nbflow waits)
    assert sorted(finished) == [0, 1, 2]
    assert all(r.state.is_completed() for r in fr.task_runs)
    message = str(record[0].message)
    assert all(n in message for n in names), message
    assert fr.name in message


@pytest.mark.timeout(20)
def test_unresolved_future_warning_names_exactly_the_unfinished_runs(gate, open_gate_on_wait):
    @task
    def blocked():
        gate.wait()
        return "late"

    @flow
    def f():
        waited = ident.submit(0)
        waited.wait()
        pending = blocked.submit()
        open_gate_on_wait(blocked)
        return waited.task_run.name, pending.task_run.name

    with pytest.warns(UnfinishedTaskRunsWarning) as record:
        waited_name, pending_name = f()
    message = str(record[0].message)
    assert pending_name in message
    assert waited_name not in message
    fr = last_flow_run()
    assert all(r.state.is_completed() for r in fr.task_runs)


@pytest.mark.timeout(20)
def test_returned_futures_count_as_resolved_no_warning(gate, open_gate_on_wait):
    """Prefect's docs: returning terminal futures from the flow is one way to resolve them."""

    @task
    def blocked(i):
        gate.wait()
        return "late"

    @flow
    def f():
        futures = blocked.map([1, 2])
        open_gate_on_wait(blocked)
        return futures

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnfinishedTaskRunsWarning)
        states = f()
    assert [s.result() for s in states] == ["late", "late"]


def test_no_warning_when_everything_was_resolved():
    @flow
    def f():
        a = ident.submit(1)
        b = ident.submit(a)  # a is resolved by b's dependency
        return b.result()

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnfinishedTaskRunsWarning)
        assert f() == 1


# -- KeyboardInterrupt ---------------------------------------------------------------------------
@pytest.mark.timeout(20)
def test_keyboard_interrupt_in_body_cancels_pending_keeps_completed_and_reraises(gate):
    started = threading.Event()
    ran = []

    @task
    def quick():
        return "kept"

    @task
    def long_one():
        started.set()
        gate.wait()
        return "long"

    @task
    def queued(i):
        ran.append(i)

    out = {}

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        done = quick.submit()
        done.wait()
        running = long_one.submit()
        assert started.wait(SAFETY)
        rest = [queued.submit(i) for i in range(3)]
        out.update(done=done, running=running, rest=rest)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        f()
    gate.open()
    assert out["done"].state.is_completed() and out["done"].result() == "kept"
    for fut in out["rest"]:
        assert fut.state.is_cancelled(), fut.state
    assert ran == []
    fr = last_flow_run()
    assert fr.state.is_cancelled()
    out["running"].wait(SAFETY)
    # nbflow (flows.py): an interrupt also cancels what is running, at its next bytecode
    assert out["running"].state.is_cancelled(), out["running"].state


@pytest.mark.timeout(20)
def test_sigint_while_flow_waits_on_a_map_cancels_queued_runs(gate):
    started = threading.Event()

    @task
    def work(i):
        if i == 0:
            started.set()
        gate.wait()
        return i

    def interrupter():
        if started.wait(SAFETY):
            os.kill(os.getpid(), signal.SIGINT)

    out = {}

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        futures = work.map(range(5))
        out["futures"] = futures
        threading.Thread(target=interrupter, daemon=True).start()
        return futures.result()

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        f()
    assert time.monotonic() - t0 < 5
    gate.open()
    futures = out["futures"]
    assert all(fu.state.is_cancelled() for fu in futures[1:]), [fu.state for fu in futures]
    assert last_flow_run().state.is_cancelled()


@pytest.mark.timeout(20)
def test_keyboard_interrupt_from_inline_task_cancels_flow_and_reraises():
    @task
    def interrupted():
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C while the task runs inline in the main thread
        time.sleep(10)

    @flow
    def f():
        ident.submit(1).wait()
        interrupted()
        return "not reached"

    with pytest.raises(KeyboardInterrupt):
        f()
    fr = last_flow_run()
    assert fr.state.is_cancelled()
    assert fr.task_runs[0].state.is_completed()
    assert fr.task_runs[1].state.is_final()


@pytest.mark.timeout(20)
def test_failed_body_lets_started_runs_finish_and_cancels_queued_ones(gate, open_gate_on_wait):
    started = threading.Event()
    out = {}

    @task
    def long_one():
        started.set()
        gate.wait()
        return "finished"

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        running = long_one.submit()
        assert started.wait(SAFETY)
        queued = [ident.submit(i) for i in range(3)]
        out.update(running=running, queued=queued)
        open_gate_on_wait(long_one)
        raise TaskError("body failed")

    with pytest.raises(TaskError):
        f()
    assert out["running"].state.is_completed() and out["running"].result() == "finished"
    assert all(q.state.is_cancelled() for q in out["queued"])


@pytest.mark.timeout(20, method="thread")
def test_flow_timeout_while_waiting_on_a_task(gate):
    out = {}

    @task
    def blocked():
        gate.wait()
        return 1

    @flow(timeout_seconds=0.1)
    def f():
        fut = blocked.submit()
        out["fut"] = fut
        return fut.result()

    t0 = time.monotonic()
    with pytest.raises(FlowRunTimeoutError):
        f()
    assert time.monotonic() - t0 < 3
    gate.open()
    out["fut"].wait(SAFETY)
    assert out["fut"].state.is_final()


def test_subflow_return_state():
    @flow
    def child():
        raise TaskError("child")

    @flow
    def parent():
        state = child(return_state=True)
        return state.is_failed(), type(state.result(raise_on_failure=False)).__name__

    assert parent() == (True, "TaskError")


@pytest.mark.timeout(20)
def test_flow_timeout_outside_the_main_thread():
    @flow(timeout_seconds=0.1)
    def spin():
        end = time.monotonic() + 5
        while time.monotonic() < end:
            pass

    out = {}

    def call():
        try:
            spin()
        except BaseException as exc:  # checked below
            out["exc"] = exc

    t0 = time.monotonic()
    thread = threading.Thread(target=call)
    thread.start()
    thread.join(SAFETY)
    assert isinstance(out.get("exc"), FlowRunTimeoutError)
    assert time.monotonic() - t0 < 4


@pytest.mark.timeout(20)
def test_async_flow_timeout():
    import asyncio

    @flow(timeout_seconds=0.1)
    async def sleepy():
        await asyncio.sleep(5)

    out = {}

    def call():
        try:
            asyncio.run(sleepy())
        except BaseException as exc:  # checked below
            out["exc"] = exc

    t0 = time.monotonic()
    thread = threading.Thread(target=call)
    thread.start()
    thread.join(SAFETY)
    assert isinstance(out.get("exc"), FlowRunTimeoutError)
    assert time.monotonic() - t0 < 4
