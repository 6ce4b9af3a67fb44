"""nbflow's own state behaviour: reprs, what states carry across pickling, the helpers of
``nbflow.states``, and the messages nbflow gives where Prefect's say less.

Prefect-parity cases live beside it, in tests/test_states_parity.py.
"""

from __future__ import annotations

import asyncio
import logging
import pickle

import pytest

from nbflow import allow_failure, flow, quote, task
from nbflow.exceptions import FailedRun, ParameterTypeError, UnfinishedRun
from nbflow.states import (
    Completed,
    Failed,
    NotReady,
    get_state_exception,
    is_state_iterable,
    raise_state_exception,
    return_value_to_state,
)

pytestmark = pytest.mark.timeout(30)


@task
def boom():
    raise ValueError("Fail task!")


@task
def ok():
    return 1


@flow
def child(y):
    return y


# -- repr ------------------------------------------------------------------------------------
def test_repr_shortens_long_results():
    text = repr(Completed(data="x" * 200))
    assert text.endswith("...)") and len(text) < 140


# -- what a state carries ----------------------------------------------------------------------
def test_pickling_keeps_the_run_and_what_it_returned():
    @flow
    def f():
        return [ok.submit()]

    state = pickle.loads(pickle.dumps(f(return_state=True)))
    assert state.run_id is not None
    assert state._returned  # a flow call hands back the returned list as is
    assert state.message == "All states completed."


def test_with_data_keeps_the_run_and_what_it_returned():
    state = return_value_to_state((Failed(), 1))
    state.mark_run(7)
    copy = state.with_data("other")
    assert copy.run_id == 7 and copy._returned and copy.data == "other"


def test_a_copy_of_a_run_state_keeps_its_result_none():
    state = ok.with_options(name="nothing")(return_state=True).copy(data=None, message="copied")
    assert state.result() is None and state.message == "copied"


def test_a_flow_call_marks_its_final_state_as_a_run_state():
    state = child(1, return_state=True)
    assert state.run_id is not None


# -- helpers --------------------------------------------------------------------------------------
def test_return_value_to_state_takes_a_hand_made_state_as_it_is():
    made = Failed(message="mine")
    assert return_value_to_state(made) is made


def test_return_value_to_state_aggregates_run_states_and_keeps_the_value():
    state = ok(return_state=True)
    aggregate = return_value_to_state(state)
    assert aggregate.is_completed() and aggregate.data is state
    assert aggregate.message == "All states completed."


def test_return_value_to_state_does_not_look_inside_quote_or_dicts():
    failed = Failed()
    assert return_value_to_state(quote(failed)).is_completed()
    assert return_value_to_state({"a": failed}).is_completed()
    assert return_value_to_state([]).is_completed()


def test_is_state_iterable():
    assert is_state_iterable([Completed()]) and is_state_iterable((Failed(),))
    assert is_state_iterable({Completed()})
    assert not is_state_iterable([]) and not is_state_iterable([Completed(), 1])
    assert not is_state_iterable(quote([Completed()])) and not is_state_iterable({"a": Completed()})


def test_get_state_exception_of_a_state_that_did_not_fail_raises_value_error():
    with pytest.raises(ValueError, match="Expected failed or crashed state got Completed"):
        get_state_exception(Completed())


def test_raise_state_exception_raises_only_for_failures():
    raise_state_exception(Completed())
    raise_state_exception(NotReady())
    with pytest.raises(FailedRun, match="^bad$"):
        raise_state_exception(Failed(message="bad"))


def test_result_of_a_not_ready_state_says_why():
    with pytest.raises(UnfinishedRun, match="Run is in PENDING state.*upstream boom failed"):
        NotReady(message="upstream boom failed").result()


# -- subflows: what nbflow says when a subflow cannot start --------------------------------------
def test_a_subflow_blocked_by_a_failed_task_names_it_and_its_error():
    @flow
    def parent():
        return child(2, wait_for=[boom.submit()], return_state=True)

    state = parent(return_state=True).result(raise_on_failure=False)
    assert state.name == "NotReady"
    assert "boom" in state.message and "ValueError('Fail task!')" in state.message


def test_a_subflow_blocked_by_a_failed_state_names_the_state():
    @flow
    def parent():
        return child(2, wait_for=[allow_failure(Completed()), Failed(message="gone")], return_state=True)

    state = parent(return_state=True).result(raise_on_failure=False)
    assert state.message == "Upstream state Failed('gone') did not reach a 'COMPLETED' state."


def test_a_subflow_waits_for_its_upstream_before_running(gate, open_gate_on_wait):
    order = []

    @task
    def slow():
        gate.wait()  # opens only once the subflow call blocks on this run
        order.append("upstream")

    @flow
    def inner():
        order.append("subflow")

    @flow
    def parent():
        inner(wait_for=[slow.submit()])

    open_gate_on_wait(slow)
    parent()
    assert order == ["upstream", "subflow"]


def test_a_blocked_async_subflow_is_not_ready():
    @flow
    async def inner():
        return 1

    @flow
    async def parent():
        return await inner(wait_for=[boom.submit()], return_state=True)

    state = asyncio.run(parent(return_state=True)).result(raise_on_failure=False)
    assert state.name == "NotReady"


# -- invalid parameters ------------------------------------------------------------------------
def test_invalid_parameters_are_logged_naming_the_run(caplog):
    @flow
    def typed(x: int):
        return x

    with caplog.at_level(logging.ERROR, logger="nbflow.flow_runs"):
        state = typed("no", return_state=True)
    assert any("Validation of flow parameters failed" in r.getMessage() for r in caplog.records)
    assert "'typed'" in state.message  # nbflow's ParameterTypeError names the flow


def test_invalid_parameters_of_an_async_flow_give_a_failed_state():
    @flow
    async def typed(x: int):
        return x

    state = asyncio.run(typed("no", return_state=True))
    assert state.is_failed()
    with pytest.raises(ParameterTypeError):
        asyncio.run(typed("no"))


def test_valid_parameters_are_coerced_for_the_run():
    @flow
    def typed(x: int):
        return x

    assert typed("5") == 5
