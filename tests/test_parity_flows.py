"""Parity with Prefect 3 for flows: subflow ``wait_for``, reserved arguments, hook
decorators, runtime attributes.

References (PrefectHQ/prefect): tests/test_tasks.py (TestSubflowWaitForTasks),
src/prefect/flows.py (``Flow.on_completion`` etc., ``raise_for_reserved_arguments``),
src/prefect/runtime/flow_run.py.
"""

from __future__ import annotations

import pytest

import nbflow.runtime
from nbflow import allow_failure, flow, task
from nbflow.exceptions import ReservedArgumentError

pytestmark = pytest.mark.timeout(30)


@task
def boom():
    raise ValueError("Fail task!")


@flow
def child(y):
    return y


def test_subflow_waiting_for_a_failed_task_is_not_ready():
    @flow
    def parent():
        bad = boom.submit()
        return child(2, wait_for=[bad], return_state=True)

    state = parent(return_state=True).result(raise_on_failure=False)
    assert state.is_pending()
    assert state.name == "NotReady"


def test_subflow_wait_for_allow_failure_runs():
    @flow
    def parent():
        bad = boom.submit()
        return child(2, wait_for=[allow_failure(bad)], return_state=True)

    state = parent(return_state=True).result(raise_on_failure=False)
    assert state.result() == 2


def test_subflow_wait_for_a_plain_value():
    # TestSubflowWaitForTasks.test_downstream_runs_if_upstream_succeeds: wait_for=[f] where f
    # is the *value* another subflow returned.
    @flow
    def parent():
        f = child(1)
        return child(2, wait_for=[f])

    assert parent() == 2


@pytest.mark.parametrize("name", ["wait_for", "return_state"])
def test_reserved_argument_in_a_flow_is_rejected(name):
    with pytest.raises(ReservedArgumentError, match=f"'{name}' is a reserved argument name"):
        exec(f"def f({name}): pass", ns := {})
        flow(ns["f"])


def test_flow_hook_decorators():
    calls = []

    @flow
    def ok_flow():
        return 1

    @ok_flow.on_running
    def running(fl, flow_run, state):
        calls.append(("running", state.name))

    @ok_flow.on_completion
    def completed(fl, flow_run, state):
        calls.append(("completed", state.name))

    @flow
    def bad_flow():
        raise ValueError("x")

    @bad_flow.on_failure
    def failed(fl, flow_run, state):
        calls.append(("failed", state.name))

    assert ok_flow() == 1
    with pytest.raises(ValueError):
        bad_flow()
    assert calls == [("running", "Running"), ("completed", "Completed"), ("failed", "Failed")]
    assert hasattr(ok_flow, "on_cancellation") and hasattr(ok_flow, "on_crashed")


def test_async_flow_hooks_are_awaited():
    calls = []

    async def hook(fl, flow_run, state):
        calls.append(state.name)

    @flow(on_completion=[hook])
    def f():
        return 1

    f()
    assert calls == ["Completed"]


def test_flow_hook_messages_match_prefect():
    with pytest.raises(TypeError, match="Expected iterable for 'on_failure'; got function instead"):
        flow(on_failure=lambda *_: None)(lambda: None)
    with pytest.raises(TypeError, match="Expected callables in 'on_failure'; got str instead"):
        flow(on_failure=["test"])(lambda: None)


def test_runtime_flow_run_version_and_root():
    @flow(version="v2")
    def inner():
        return nbflow.runtime.flow_run.flow_version, nbflow.runtime.flow_run.root_flow_run_id

    @flow
    def outer():
        return nbflow.runtime.flow_run.id, inner()

    outer_id, (version, root) = outer()
    assert version == "v2"
    assert root == outer_id


def test_flow_options_are_attributes():
    @flow(persist_result=True, result_serializer="json", cache_result_in_memory=False)
    def f():
        pass

    assert f.persist_result is True
    assert f.result_serializer == "json"
    assert f.cache_result_in_memory is False
    assert f.with_options(persist_result=False).persist_result is False
