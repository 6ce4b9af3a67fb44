"""Parity with Prefect 3 for states: constructors, result(), str(), and the aggregate
state a flow or task takes when it *returns* states (``states.return_value_to_state``).

References (PrefectHQ/prefect): src/prefect/states.py (``_get_state_result``,
``get_state_exception``, ``return_value_to_state``, ``StateGroup``),
src/prefect/client/schemas/objects.py (``State.__str__``), tests/test_states.py,
tests/test_tasks.py (TestTaskStates, TestTaskTimeouts).
"""

from __future__ import annotations

import pytest

from nbflow import flow, quote, task
from nbflow.exceptions import FailedRun, UnfinishedRun
from nbflow.states import (
    Cancelled,
    Completed,
    Crashed,
    Failed,
    Pending,
    Running,
    State,
    StateType,
)

pytestmark = pytest.mark.timeout(30)


# -- State.result() on hand-made states --------------------------------------------------
@pytest.mark.parametrize("make", [Failed, Crashed, Cancelled])
def test_result_raises_the_exception_held_in_data(make):
    with pytest.raises(ValueError, match="Test"):
        make(data=ValueError("Test")).result()


def test_failed_state_with_string_data_raises_failed_run_with_that_string():
    # get_state_exception: a str result becomes the wrapper's message.
    with pytest.raises(FailedRun, match="^boom$"):
        Failed(data="boom").result()


def test_failed_state_with_message_and_no_data_raises_failed_run_with_the_message():
    with pytest.raises(FailedRun, match="^foo$"):
        Failed(message="foo").result()


def test_failed_state_holding_a_failed_state_raises_the_inner_exception():
    with pytest.raises(ValueError, match="inner"):
        Failed(data=Failed(data=ValueError("inner"))).result()


def test_failed_state_holding_states_raises_the_first_failure():
    inner = [
        Completed(data="ok"),
        Failed(data=ValueError("first")),
        Failed(data=ValueError("second")),
    ]
    with pytest.raises(ValueError, match="first"):
        Failed(data=inner).result()


def test_result_without_raising_returns_the_data_of_a_failed_state():
    # TestTaskStates.test_final_task_state_respects_returned_state: data=True comes back.
    state = State(type=StateType.FAILED, message="Test returned state", data=True)
    assert state.result(raise_on_failure=False) is True


def test_result_of_non_final_states_raises_unfinished_run():
    for state in (Pending(), Running()):
        with pytest.raises(UnfinishedRun, match=f"Run is in {state.type.value} state"):
            state.result(raise_on_failure=False)


# -- str() ------------------------------------------------------------------------------------
def test_str_of_a_state_is_the_short_logging_form():
    # objects.py State.__str__: message repr if any, type only when the name differs from it.
    assert str(Completed()) == "Completed()"
    assert str(Completed(message="hi")) == "Completed('hi')"
    assert str(Failed(message="bad", name="TimedOut")) == "TimedOut('bad', type=FAILED)"


def test_repr_of_a_state_shows_message_type_and_result():
    assert repr(Completed(message="hi", data=1)) == "Completed(message='hi', type=COMPLETED, result=1)"


# -- the state a flow takes from returned states -------------------------------------------------
@task
def ok():
    return 1


@task
def boom():
    raise ValueError("Fail task!")


@task
def downstream(x):
    return x


def test_flow_returning_only_completed_futures_has_message_all_states_completed():
    @flow
    def f():
        return [ok.submit(), ok.submit()]

    state = f(return_state=True)
    assert state.is_completed()
    assert state.message == "All states completed."


def test_flow_failure_count_counts_failed_states_not_pending_ones():
    # A NotReady (PENDING) downstream is not counted as failed: "1/3 states failed."
    @flow
    def f():
        a = boom.submit()
        b = downstream.submit(a)
        c = ok.submit()
        return a, b, c

    state = f(return_state=True)
    assert state.is_failed()
    assert state.message == "1/3 states failed."


def test_flow_returning_failed_futures_result_without_raising_gives_the_states():
    # TestTaskTimeouts: ``timed_out, _, _ = flow_state.result(raise_on_failure=False)``
    @flow
    def f():
        a = boom.submit()
        b = downstream.submit(a)
        c = ok.submit()
        return a, b, c

    state = f(return_state=True)
    a, b, c = state.result(raise_on_failure=False)
    assert a.is_failed()
    assert b.is_pending() and b.name == "NotReady"
    assert c.is_completed() and c.result() == 1
    with pytest.raises(ValueError, match="Fail task!"):
        state.result()


def test_flow_returning_a_cancelled_state_among_others_is_cancelled():
    @flow
    def f():
        return [Completed(), Cancelled(message="stop")]

    state = f(return_state=True)
    assert state.type is StateType.CANCELLED
    assert state.message == "1/2 states cancelled."


def test_flow_returning_hand_made_states_aggregates_them():
    @flow
    def f():
        return [Completed(message="hi"), Failed(message="bye"), Failed(message="err")]

    state = f(return_state=True)
    assert state.is_failed()
    assert state.message == "2/3 states failed."


def test_flow_returning_a_quoted_state_returns_the_quote():
    # tests/test_states.py test_quoted_state_does_not_raise_state_exception
    @flow
    def f():
        return quote(Failed())

    value = f()
    assert isinstance(value, quote)
    assert isinstance(value.unquote(), State)


def test_flow_returning_a_quoted_task_state_keeps_it():
    # TestTaskStates.test_final_state_reflects_exceptions_during_run
    @flow
    def f():
        return quote(boom(return_state=True))

    state = f().unquote()
    assert state.is_failed()
    assert isinstance(state.result(raise_on_failure=False), ValueError)


def test_task_returning_states_with_a_failure_is_failed():
    # return_value_to_state is used for task return values too: a list of states is aggregated.
    @task
    def returns_states():
        return [Completed(message="hi"), Failed(message="bye")]

    state = returns_states(return_state=True)
    assert state.is_failed()
    assert state.message == "1/2 states failed."


def test_task_returning_a_hand_made_failed_state_takes_it():
    @task
    def t():
        return State(type=StateType.FAILED, message="Test returned state", data=True)

    state = t(return_state=True)
    assert state.is_failed()
    assert state.message == "Test returned state"
    assert state.result(raise_on_failure=False) is True
