"""Parity with Prefect 3.9.1 for the helpers Prefect code imports beside flows and tasks:
``prefect.context`` (``get_run_context``, ``FlowRunContext``, ``TaskRunContext``, ``TagsContext``),
``prefect.logging`` (``get_logger``, ``disable_run_logger``), ``prefect.tasks.exponential_backoff``,
``prefect.utilities.annotations`` and ``prefect.testing.utilities.prefect_test_harness``.

Each case was run on Prefect 3.9.1 (``src/prefect/context.py``, ``logging/loggers.py``,
``tasks.py``, ``testing/utilities.py``).
"""

from __future__ import annotations

import logging

import pytest

import nbflow
from nbflow import flow, get_run_logger, history, tags, task, task_runners
from nbflow.context import EngineContext, FlowRunContext, TagsContext, TaskRunContext, get_run_context
from nbflow.exceptions import MissingContextError
from nbflow.logging import disable_run_logger, get_logger
from nbflow.tasks import exponential_backoff
from nbflow.testing.utilities import prefect_test_harness

pytestmark = [pytest.mark.parity, pytest.mark.timeout(30)]


def test_outside_a_run_there_is_no_run_context():
    with pytest.raises(MissingContextError, match="No run context available. You are not in a flow or task run context."):
        get_run_context()
    assert FlowRunContext.get() is None and TaskRunContext.get() is None
    assert TagsContext.get().current_tags == set()


def test_a_flow_and_its_tasks_read_their_contexts():
    seen = {}

    @task(retries=1)
    def t(x):
        ctx = get_run_context()
        outer = FlowRunContext.get()
        seen.setdefault("tasks", []).append((
            type(ctx).__name__, ctx.task.name, ctx.task_run.name, ctx.task_run.run_count, ctx.parameters,
            ctx.task_run.flow_run_id == outer.flow_run.id, sorted(TagsContext.get().current_tags), type(outer).__name__,
        ))
        return x

    @flow
    def f(a=1):
        ctx = get_run_context()
        seen["flow"] = (type(ctx).__name__, ctx.flow.name, ctx.parameters, type(ctx.task_runner).__name__,
                        ctx.flow_run.run_count, TaskRunContext.get(), ctx.log_prints, ctx.start_time is not None)
        with tags("x", "y"):
            seen["tags"] = TagsContext.get().current_tags
            t.submit(1).result()
        t(2)

    f()
    assert FlowRunContext is EngineContext
    assert seen["flow"] == ("EngineContext", "f", {"a": 1}, "ThreadPoolTaskRunner", 1, None, False, True)
    assert seen["tags"] == {"x", "y"} and type(seen["tags"]) is set
    (first, second) = seen["tasks"]
    assert first[:2] == ("TaskRunContext", "t") and first[2].startswith("t-")
    assert first[3:] == (1, {"x": 1}, True, ["x", "y"], "EngineContext")
    assert second[4:7] == ({"x": 2}, True, [])


def test_a_subflow_called_from_a_task_has_its_own_flow_context():
    seen = []

    @flow
    def sub():
        seen.append((type(get_run_context()).__name__, get_run_context().flow.name, TaskRunContext.get().task.name))

    @task
    def calls_sub():
        seen.append(type(get_run_context()).__name__)
        sub()

    @flow
    def parent():
        calls_sub()

    parent()
    assert seen == ["TaskRunContext", ("EngineContext", "sub", "calls_sub")]


def test_get_run_logger_takes_a_run_context():
    @task
    def t():
        return get_run_logger(get_run_context()).name

    @flow
    def f():
        return get_run_logger(FlowRunContext.get()).name, t()

    assert f() == ("nbflow.flow_runs", "nbflow.task_runs")


def test_get_logger_names_children_of_the_package_logger():
    assert get_logger().name == "nbflow"
    assert get_logger("x").name == "nbflow.x"
    assert get_logger("nbflow.y").name == "nbflow.y"


def test_disable_run_logger_lets_a_tasks_fn_log_outside_a_run_and_restores_the_loggers():
    @task
    def t():
        get_run_logger().info("hi")
        return 1

    with pytest.raises(MissingContextError):
        t.fn()
    with disable_run_logger():
        assert t.fn() == 1
        assert logging.getLogger("nbflow.task_runs").disabled
    assert not logging.getLogger("nbflow.task_runs").disabled
    assert not logging.getLogger("nbflow.flow_runs").disabled


def test_exponential_backoff_doubles_from_its_factor_up_to_fifty_delays():
    assert exponential_backoff(2)(4) == [2, 4, 8, 16]
    assert exponential_backoff(0.5)(0) == []
    assert len(exponential_backoff(1)(80)) == 50

    attempts = []

    @task(retries=2, retry_delay_seconds=exponential_backoff(0))
    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise ValueError("again")
        return "ok"

    assert flaky.retry_delay_seconds == [0, 0]

    @flow
    def f():
        return flaky()

    assert f() == "ok" and len(attempts) == 3


def test_utilities_annotations_are_the_package_annotations():
    from nbflow.utilities import annotations

    assert annotations.unmapped is nbflow.unmapped and annotations.allow_failure is nbflow.allow_failure
    assert annotations.quote is nbflow.quote and annotations.opaque is nbflow.opaque
    assert isinstance(nbflow.unmapped(1), annotations.BaseAnnotation)
    assert nbflow.task(lambda: 1, retries=3).with_options(retries=annotations.NotSet).retries == 3


def test_the_test_harness_runs_flows_against_a_temporary_home_and_removes_it():
    before = nbflow.settings.current.home

    @task(persist_result=True)
    def t():
        return 1

    @flow
    def f():
        return t()

    with prefect_test_harness() as home:
        assert nbflow.settings.current.home == home != before
        assert f() == 1
        assert [r.flow_name for r in history.flow_runs()] == ["f"]
        assert (home / "history.sqlite").exists()
    assert nbflow.settings.current.home == before
    assert not home.exists()


def test_cache_key_fn_receives_a_task_run_context():
    seen = []

    def key(context, parameters):
        seen.append((type(context).__name__, context.task.name, context.task_run.name.startswith("keyed-"), context.parameters))
        return "k"

    @task(cache_key_fn=key)
    def keyed(x):
        return x

    @flow
    def f():
        return keyed(1)

    assert f() == 1
    assert seen == [("TaskRunContext", "keyed", True, {"x": 1})]


def test_tags_yields_a_set_of_every_tag_in_force():
    with tags("a") as outer:
        with tags("b") as inner:
            assert type(inner) is set and inner == {"a", "b"}
        assert outer == {"a"}


def test_runtime_fields_are_read_from_the_environment_as_their_type(monkeypatch):
    import nbflow.runtime

    monkeypatch.setenv("NBFLOW__RUNTIME__FLOW_RUN__NAME", "env-name")
    monkeypatch.setenv("NBFLOW__RUNTIME__TASK_RUN__RUN_COUNT", "3")
    monkeypatch.setenv("NBFLOW__RUNTIME__FLOW_RUN__NOT_A_FIELD", "raw")
    assert nbflow.runtime.flow_run.name == "env-name" and nbflow.runtime.task_run.run_count == 3
    assert nbflow.runtime.flow_run.not_a_field == "raw"

    @flow
    def f():
        return nbflow.runtime.flow_run.name

    assert f() == "env-name"  # as in Prefect: the environment wins inside a run too
    monkeypatch.setenv("NBFLOW__RUNTIME__FLOW_RUN__PARAMETERS", "{}")
    with pytest.raises(ValueError, match="cannot be mocked using an environment variable"):
        nbflow.runtime.flow_run.parameters


def test_runtime_deployment_is_empty_and_names_the_flow_run():
    from nbflow.runtime import deployment

    assert (deployment.id, deployment.flow_run_id, deployment.parameters, deployment.name, deployment.version) == (
        None, None, {}, None, None)

    @flow
    def f():
        return deployment.id, deployment.flow_run_id, deployment.parameters, nbflow.runtime.flow_run.id

    dep_id, run_id, parameters, flow_run_id = f()
    assert dep_id is None and parameters == {} and run_id == flow_run_id


def test_a_flow_run_context_has_its_flows_id_and_its_logger_a_deployment_name(caplog):
    @flow
    def f():
        get_run_logger().info("hello")
        return get_run_context().flow_run.flow_id

    first, second = f(), f()
    assert first == second and first.version == 5  # one per flow name
    record = [r for r in caplog.records if r.getMessage() == "hello"][0]
    assert record.deployment_name is None and record.flow_name == "f"


def test_task_runners_compare_by_kind_and_workers_and_list_the_lazy_ones():
    runner = task_runners.ThreadPoolTaskRunner(max_workers=2)
    assert runner == task_runners.ThreadPoolTaskRunner(max_workers=2) == runner.duplicate()
    assert runner != task_runners.ThreadPoolTaskRunner(max_workers=3)
    assert runner != task_runners.ProcessPoolTaskRunner(max_workers=2)
    assert len({runner, runner.duplicate()}) == 1
    assert {"ProcessPoolTaskRunner", "DaskTaskRunner", "RayTaskRunner"} <= set(dir(task_runners))


def test_map_takes_deferred_false_and_refuses_deferred_true():
    @task
    def inc(x):
        return x + 1

    @flow
    def f():
        return inc.map([1, 2], deferred=False).result()

    assert f() == [2, 3]

    @flow
    def g():
        inc.map([1], deferred=True)

    with pytest.raises(ValueError, match="deferred=True"):
        g()


def test_hooks_can_be_annotated_with_prefects_client_schema_names():
    from nbflow.client.schemas import objects
    from nbflow.client.schemas.objects import FlowRun, State, StateType, TaskRun

    seen = []

    def on_done(tk, run: TaskRun, state: State) -> None:
        seen.append((isinstance(run, TaskRun), isinstance(state, State), state.type is StateType.COMPLETED))

    def on_flow(fl, run: FlowRun, state: State) -> None:
        seen.append(isinstance(run, FlowRun))

    @task(on_completion=[on_done])
    def t():
        return 1

    @flow(on_completion=[on_flow])
    def f():
        return t()

    assert f() == 1 and seen == [(True, True, True), True]
    assert isinstance(f, objects.Flow)


def test_a_failure_from_an_exception_is_not_retriable_a_completion_leaves_it_unset():
    # Prefect 3.9.1 (exception_to_failed_state): state_details.retriable is False on the Failed state
    # of a task's or flow's exception, with or without retries; other states leave it None.
    @task(retries=1)
    def boom():
        raise ValueError("x")

    @task
    def fine():
        return 1

    @flow
    def body():
        return boom(return_state=True), fine(return_state=True)

    failed, completed = body()
    assert failed.state_details.retriable is False
    assert failed.state_details.task_run_id is not None  # the run's ids are still filled in
    assert completed.state_details.retriable is None

    @flow
    def fails():
        raise ValueError("y")

    assert fails(return_state=True).state_details.retriable is False


def test_a_runner_submits_only_once_entered_and_is_entered_once():
    # Prefect 3.9.1: "Task runner is not started" before __enter__, "This task runner is already started" twice.
    @task
    def one():
        return 1

    runner = task_runners.ThreadPoolTaskRunner()
    with pytest.raises(RuntimeError, match="^Task runner is not started.*with runner:"):
        runner.submit(one, {})
    with pytest.raises(RuntimeError, match="^Task runner is not started"):
        runner.map(one, {})
    with runner:
        assert runner.submit(one, {}).result() == 1
        with pytest.raises(RuntimeError, match="^This task runner is already started"):
            runner.__enter__()
    with pytest.raises(RuntimeError, match="not started"):  # exited: stopped again
        runner.submit(one, {})


def test_a_future_list_is_an_iterator_by_its_bases_as_prefects():
    import collections.abc

    @task
    def double(x):
        return 2 * x

    @flow
    def body():
        futures = double.map([1, 2])
        return isinstance(futures, collections.abc.Iterator), isinstance(futures, list), futures.result()

    assert body() == (True, True, [2, 4])
