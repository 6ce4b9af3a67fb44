"""Calling, submitting and binding: semantics checklist "Calling, submitting, mapping" (non-map part)."""

from __future__ import annotations

import contextvars
import threading

import pytest

import nbflow
from nbflow import flow, task
from nbflow.exceptions import ParameterBindError, ReservedArgumentError
from nbflow.futures import PrefectFuture
from nbflow.runs import last_flow_run
from nbflow.states import State, StateType

SAFETY = 10.0


@task
def add(x, y=1):
    return x + y


@task
def boom(msg="boom"):
    raise ValueError(msg)


# -- inline calls ---------------------------------------------------------------------
def test_inline_call_outside_flow_returns_value():
    assert add(1, 2) == 3


def test_inline_call_outside_flow_raises_task_exception():
    with pytest.raises(ValueError, match="^nope$"):
        boom("nope")


def test_inline_call_runs_in_callers_thread_inside_flow():
    seen = {}

    @task
    def where():
        seen["thread"] = threading.get_ident()
        return 7

    @flow
    def f():
        return where()

    assert f() == 7
    assert seen["thread"] == threading.get_ident()


def test_inline_call_inside_flow_raises_and_is_catchable():
    @flow
    def f():
        try:
            boom("inner")
        except ValueError as exc:
            return f"caught {exc}"

    assert f() == "caught inner"


def test_task_fn_is_the_undecorated_function():
    def plain(x):
        return x * 2

    t = task(plain)
    assert t.fn is plain
    assert t.fn(4) == 8
    # calling .fn records no task run
    @flow
    def f():
        return t.fn(3)

    assert f() == 6
    assert last_flow_run().task_runs == []


def test_inline_return_state_returns_state_and_never_raises():
    state = boom(return_state=True)
    assert isinstance(state, State)
    assert state.is_failed()
    assert isinstance(state.result(raise_on_failure=False), ValueError)

    ok = add(1, return_state=True)
    assert ok.is_completed() and ok.result() == 2


def test_inline_return_state_in_flow_body_does_not_raise():
    seen = {}

    @flow
    def f():
        seen["state"] = boom(return_state=True)
        return "ok"

    assert f() == "ok"
    assert seen["state"].is_failed()


# -- submit -----------------------------------------------------------------------------
def test_submit_returns_future_at_once(gate):
    started = threading.Event()

    @task
    def slow():
        started.set()
        gate.wait()
        return "done"

    @flow
    def f():
        fut = slow.submit()
        assert isinstance(fut, PrefectFuture)
        # the task has not been allowed to finish: submit did not wait for it
        assert not fut.state.is_final()
        gate.open()
        return fut.result()

    assert f() == "done"


def test_submit_outside_flow_raises_runtime_error():
    with pytest.raises(RuntimeError) as info:
        add.submit(1)
    message = str(info.value)
    assert "@flow" in message and "%%flow" in message


def test_map_outside_flow_raises_runtime_error():
    with pytest.raises(RuntimeError) as info:
        add.map([1, 2])
    message = str(info.value)
    assert "@flow" in message and "%%flow" in message


def test_submit_return_state_waits_and_returns_state():
    seen = {}

    @flow
    def f():
        seen["good"] = add.submit(1, return_state=True)
        seen["bad"] = boom.submit(return_state=True)

    f()
    good, bad = seen["good"], seen["bad"]
    assert isinstance(good, State) and good.is_completed() and good.result() == 2
    assert isinstance(bad, State) and bad.is_failed()


def test_map_return_state_returns_list_of_states():
    @flow
    def f():
        return add.map([1, 2, 3], return_state=True)

    states = f()
    assert isinstance(states, list)
    assert [s.result() for s in states] == [2, 3, 4]
    assert all(isinstance(s, State) and s.type is StateType.COMPLETED for s in states)


# -- argument binding -------------------------------------------------------------------
def test_bad_arguments_raise_parameter_bind_error_at_call_time():
    calls = []

    @task
    def t(x):
        calls.append(x)

    with pytest.raises(ParameterBindError) as info:
        t(1, 2)
    assert isinstance(info.value, TypeError)
    with pytest.raises(ParameterBindError):
        t(y=1)
    with pytest.raises(ParameterBindError):
        t()
    assert calls == []


def test_bad_arguments_raise_at_submit_and_map_time_before_anything_runs():
    calls = []

    @task
    def t(x):
        calls.append(x)

    @flow
    def f():
        with pytest.raises(ParameterBindError):
            t.submit(1, 2)
        with pytest.raises(ParameterBindError):
            t.submit(z=3)
        with pytest.raises(ParameterBindError):
            t.map([1, 2], [3, 4])
        return len(last_flow_run().task_runs)

    assert f() == 0
    assert calls == []


@pytest.mark.parametrize("reserved", ["wait_for", "return_state"])
def test_reserved_parameter_name_raises_at_decoration(reserved):
    ns: dict = {}
    exec(f"def fn(x, {reserved}=None):\n    return x", ns)
    with pytest.raises(ReservedArgumentError) as info:
        task(ns["fn"])
    assert isinstance(info.value, TypeError)
    assert reserved in str(info.value)


def test_task_of_plain_function_is_named_after_it():
    def count_words(text):
        return len(text.split())

    t = task(count_words)
    assert t.name == "count_words"

    @flow
    def f():
        return task(count_words).map(["a b", "c"]).result()

    assert f() == [2, 1]
    assert {r.task.name for r in last_flow_run().task_runs} == {"count_words"}


def test_default_names():
    @task
    def my_task():
        pass

    @flow
    def my_flow():
        pass

    assert my_task.name == "my_task"
    assert my_flow.name == "my-flow"


def test_submit_and_map_inside_a_task_use_the_flows_runner():
    @task
    def leaf(x):
        return threading.current_thread().name, x

    @task
    def parent():
        one = leaf.submit(1).result()
        many = leaf.map([2, 3]).result()
        return [one, *many]

    @flow
    def f():
        return parent()

    out = f()
    assert [x for _, x in out] == [1, 2, 3]
    assert all(name.startswith("nbflow-worker") for name, _ in out)
    fr = last_flow_run()
    assert sorted(r.task.name for r in fr.task_runs) == ["leaf", "leaf", "leaf", "parent"]


def test_submit_inside_submitted_task_records_runs_in_the_same_flow_run():
    @task
    def leaf(x):
        return x

    @task
    def parent():
        return leaf.map([1, 2]).result()

    @flow
    def f():
        return parent.submit().result()

    assert f() == [1, 2]
    fr = last_flow_run()
    assert len(fr.task_runs) == 3
    assert all(r.flow_run is fr for r in fr.task_runs)


def test_keyword_and_default_arguments_reach_the_task():
    @task
    def t(a, b=2, *, c=3):
        return a, b, c

    @flow
    def f():
        return t(1), t.submit(1, c=9).result(), t.submit(a=0, b=0).result()

    assert f() == ((1, 2, 3), (1, 2, 9), (0, 0, 3))


def test_var_args_and_kwargs_tasks():
    @task
    def t(*args, **kwargs):
        return args, kwargs

    @flow
    def f():
        return t(1, 2, k=3), t.submit(4, z=5).result()

    assert f() == (((1, 2), {"k": 3}), ((4,), {"z": 5}))


def test_nbflow_exports_prefect_names():
    for name in ["flow", "task", "unmapped", "allow_failure", "quote", "tags", "get_run_logger",
                 "wait", "as_completed", "PrefectFuture", "PrefectFutureList", "State"]:
        assert hasattr(nbflow, name), name
    from nbflow.futures import as_completed, wait  # noqa: F401  (Prefect's import path)
    from nbflow.task_runners import ThreadPoolTaskRunner  # noqa: F401
    from nbflow.states import Completed, Failed  # noqa: F401


def test_task_defined_as_a_method():
    class Greeter:
        def __init__(self, greeting):
            self.greeting = greeting

        @task
        def greet(self, name):
            return f"{self.greeting} {name}"

    g = Greeter("hi")

    @flow
    def f():
        return g.greet("ann"), g.greet.submit("bob").result()

    assert f() == ("hi ann", "hi bob")


_user_var: "contextvars.ContextVar[str]" = contextvars.ContextVar("nbflow_test_user_var", default="unset")


def test_context_is_copied_into_worker_threads():
    """Prefect's ThreadPoolTaskRunner.submit runs each task in copy_context(): context
    variables set where the task was submitted are visible inside it."""

    @task
    def read_var():
        return _user_var.get()

    @flow
    def f():
        _user_var.set("set in the flow")
        return read_var.submit().result(), read_var()

    submitted, inline = f()
    assert inline == "set in the flow"
    assert submitted == "set in the flow"


def test_tags_active_at_submit_reach_runs_the_task_submits():
    """The tags context is copied into the worker with the rest of the context (Prefect's
    tests: a task submitted inside ``with tags(...)`` sees those tags as current)."""
    import nbflow.runtime

    @task
    def leaf():
        return sorted(nbflow.runtime.task_run.tags)

    @task
    def parent():
        return leaf.submit().result()

    @flow
    def f():
        with nbflow.tags("ctx"):
            return parent.submit().result()

    assert f() == ["ctx"]
