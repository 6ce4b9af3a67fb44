"""Parity with Prefect 3 for states: constructors, result(), str(), and the aggregate
state a flow or task takes when it *returns* states (``states.return_value_to_state``).

References (PrefectHQ/prefect): src/prefect/states.py (``_get_state_result``,
``get_state_exception``, ``return_value_to_state``, ``StateGroup``),
src/prefect/client/schemas/objects.py (``State.__str__``), src/prefect/flow_engine.py
(``FlowRunEngine.result``, ``begin_run``), src/prefect/task_engine.py (``handle_success``),
tests/test_states.py, tests/test_tasks.py (TestTaskStates, TestTaskTimeouts,
TestSubflowWaitForTasks). Every case below was run on Prefect 3.9.1.
"""

from __future__ import annotations

import pytest

import nbflow.runtime
from nbflow import allow_failure, flow, quote, task
from nbflow.exceptions import (
    CancelledRun,
    CrashedRun,
    FailedRun,
    MissingResult,
    ParameterBindError,
    PausedRun,
    ParameterTypeError,
    UnfinishedRun,
)
from nbflow.runs import last_flow_run
from nbflow.states import (
    Cancelled,
    Completed,
    Crashed,
    Failed,
    Paused,
    Pending,
    Running,
    State,
    StateType,
)

pytestmark = [pytest.mark.parity, pytest.mark.timeout(30)]


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


@pytest.mark.parametrize("state", [Completed(), Completed(data=None), Completed(message="m")])
def test_result_of_a_hand_made_completed_state_without_data_raises_missing_result(state):
    # states.py _get_state_result: data None on a state that is not a failure -> MissingResult.
    with pytest.raises(MissingResult, match="State data is missing"):
        state.result()


def test_a_run_that_returned_none_or_a_hand_made_completed_state_has_result_none():
    @task
    def nothing():
        return None

    @task
    def made():
        return Completed()

    @flow
    def f():
        returned = made()  # an inline call hands back the returned state, now the run's own
        return nothing(return_state=True).result(), made(return_state=True).result(), returned.result()

    assert f() == (None, None, None)


def test_result_of_a_paused_state_raises_paused_run_even_without_raising():
    state = Paused()
    for raise_on_failure in (True, False):
        with pytest.raises(PausedRun, match="^Run is paused, its result is not available.$") as info:
            state.result(raise_on_failure=raise_on_failure)
        assert info.value.state is state


@pytest.mark.parametrize(
    "state, text",
    [
        (Failed(message="bad"), "Failed(message='bad', type=FAILED, result=None)"),
        (Failed(data=ValueError("v")), "Failed(message=None, type=FAILED, result=ValueError('v'))"),
        (Pending(name="NotReady"), "NotReady(message=None, type=PENDING, result=None)"),
    ],
)
def test_repr_always_shows_the_result(state, text):
    assert repr(state) == text


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


# -- more of State.result() ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, error, message",
    [(Failed, FailedRun, "Run failed."), (Crashed, CrashedRun, "Run crashed."), (Cancelled, CancelledRun, "Run cancelled.")],
)
def test_a_state_with_no_data_and_no_message_raises_the_default_wrapper(make, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        make().result()
    assert isinstance(make().result(raise_on_failure=False), error)


def test_crashed_state_with_string_data_raises_crashed_run():
    with pytest.raises(CrashedRun, match="^x$"):
        Crashed(data="x").result()


def test_failed_state_with_data_that_is_no_exception_raises_type_error():
    with pytest.raises(TypeError, match="Unexpected result for failed state: 5 —— int cannot be resolved"):
        Failed(data=5).result()
    assert Failed(data=5).result(raise_on_failure=False) == 5


def test_failed_state_holding_only_completed_states_raises_value_error():
    with pytest.raises(ValueError, match="iterable of states but none were failed"):
        Failed(data=[Completed(data="ok")]).result()


def test_str_of_a_state_shows_the_type_when_the_name_differs():
    assert str(Failed(message="bad")) == "Failed('bad')"
    assert str(Pending(name="NotReady")) == "NotReady(type=PENDING)"
    assert str(Cancelled(message="x")) == "Cancelled('x')"
    assert str(Completed(data=1)) == "Completed()"


# -- more of the state a flow takes from what it returns ---------------------------------------------
def test_flow_returning_cancelled_and_failed_states_is_cancelled():
    @flow
    def f():
        return [Completed(), Cancelled(message="stop"), Failed(message="x")]

    state = f(return_state=True)
    assert state.is_cancelled()
    assert state.message == "1/3 states cancelled."
    with pytest.raises(CancelledRun, match="^stop$"):
        state.result()


def test_flow_returning_crashed_states_counts_them_as_failed():
    @flow
    def f():
        return [Completed(), Crashed()]

    state = f(return_state=True)
    assert state.is_failed()
    assert state.message == "1/2 states failed."
    with pytest.raises(CrashedRun, match="^Run crashed.$"):
        state.result()


def test_flow_returning_a_pending_state_is_failed_as_not_final():
    @flow
    def f():
        return [Completed(), Pending()]

    state = f(return_state=True)
    assert state.is_failed()
    assert state.message == "1/2 states are not final."
    with pytest.raises(ValueError, match="none were failed"):
        state.result()


def test_flow_returning_a_paused_state_is_paused():
    @flow
    def f():
        return [Completed(), Paused()]

    state = f(return_state=True)
    assert state.is_paused()
    assert state.message == "1/2 states paused."


def test_flow_returning_a_tuple_mixing_a_failed_state_and_a_value_is_completed():
    failed = Failed(message="x")

    @flow
    def f():
        return (failed, 1)

    state = f(return_state=True)
    assert state.is_completed()
    assert state.message is None
    assert state.result() == (failed, 1)
    assert f() == (failed, 1)


def test_flow_returning_a_failed_future_next_to_a_value_is_completed():
    @flow
    def f():
        return (boom.submit(), 1)

    state = f(return_state=True)
    assert state.is_completed()
    returned, value = state.result()
    assert returned.is_failed() and value == 1


def test_flow_returning_a_dict_of_states_is_completed():
    @flow
    def f():
        return {"a": Failed()}

    assert f(return_state=True).is_completed()


def test_flow_returning_an_empty_list_is_completed_with_it():
    @flow
    def f():
        return []

    state = f(return_state=True)
    assert state.is_completed() and state.message is None
    assert f() == []


def test_flow_returning_a_failed_task_state_keeps_it_as_its_result():
    @flow
    def f():
        return boom(return_state=True)

    state = f(return_state=True)
    assert state.is_failed()
    assert state.message == "1/1 states failed."
    inner = state.result(raise_on_failure=False)
    assert isinstance(inner, State) and inner.is_failed()
    with pytest.raises(ValueError, match="Fail task!"):
        f()


def test_flow_returning_a_completed_task_state_returns_that_state():
    @flow
    def f():
        return ok(return_state=True)

    state = f(return_state=True)
    assert state.message == "All states completed."
    returned = f()
    assert isinstance(returned, State) and returned.result() == 1


def test_flow_call_returns_the_returned_states_even_when_one_failed():
    # FlowRunEngine.result: a returned value that is not a State is handed back as is.
    @flow
    def f():
        a = boom.submit()
        return a, downstream.submit(a), ok.submit()

    a, b, c = f()
    assert a.is_failed() and b.name == "NotReady" and c.result() == 1


def test_flow_returning_a_hand_made_failed_state_takes_it_and_raises():
    @flow
    def f():
        return Failed(message="hand")

    state = f(return_state=True)
    assert state.is_failed() and state.message == "hand"
    with pytest.raises(FailedRun, match="^hand$"):
        f()


def test_flow_returning_a_hand_made_completed_state_gives_its_data():
    @flow
    def f():
        return Completed(data=5)

    assert f() == 5


def test_flow_returning_a_subflow_state_aggregates_it():
    @flow
    def child():
        return 2

    @flow
    def parent():
        return child(return_state=True)

    state = parent(return_state=True)
    assert state.is_completed()
    assert state.message == "All states completed."
    assert state.result().result() == 2


# -- tasks returning states ------------------------------------------------------------------
def test_task_returning_cancelled_states_is_cancelled():
    @task
    def t():
        return [Completed(), Cancelled()]

    @flow
    def f():
        state = t(return_state=True)
        with pytest.raises(CancelledRun, match="^Run cancelled.$"):
            t.submit().result()
        return state, t.submit().result(raise_on_failure=False)

    state, returned = f()
    assert state.is_cancelled() and state.message == "1/2 states cancelled."
    assert [s.type for s in returned] == [StateType.COMPLETED, StateType.CANCELLED]


def test_task_returning_a_tuple_mixing_a_failed_state_and_a_value_is_completed():
    @task
    def t():
        return (Failed(message="x"), 1)

    state = t(return_state=True)
    assert state.is_completed()
    assert state.result()[1] == 1


def test_task_returning_a_task_state_aggregates_it():
    @task
    def t():
        return ok(return_state=True)

    state = t(return_state=True)
    assert state.message == "All states completed."
    assert state.result().result() == 1


def test_task_returning_a_hand_made_failed_state_raises_type_error_for_data_that_is_no_exception():
    @task
    def t():
        return State(type=StateType.FAILED, message="Test returned state", data=True)

    @flow
    def f():
        with pytest.raises(TypeError, match="bool cannot be resolved into an exception"):
            t.submit().result()
        return t.submit().result(raise_on_failure=False)

    assert f() is True


def test_task_returning_a_failed_state_is_retried():
    attempts = []

    @task(retries=2)
    def t():
        attempts.append(1)
        return Failed(message=f"attempt {len(attempts)}")

    state = t(return_state=True)
    assert state.is_failed() and state.message == "attempt 3"
    assert len(attempts) == 3


def test_task_returning_a_generator_has_its_items_as_a_list():
    @task
    def t():
        return (i for i in range(3))

    assert t(return_state=True).result() == [0, 1, 2]


# -- subflows: wait_for ----------------------------------------------------------------------
@flow
def child(y):
    return y


def test_subflow_waiting_for_a_failed_state_is_not_ready():
    @flow
    def parent():
        return child(1, wait_for=[Failed()], return_state=True)

    state = parent(return_state=True).result(raise_on_failure=False)
    assert state.is_pending() and state.name == "NotReady"


@pytest.mark.parametrize("make", [Cancelled, Crashed])
def test_subflow_allow_failure_does_not_let_cancelled_or_crashed_upstreams_through(make):
    @flow
    def parent():
        return child(1, wait_for=[allow_failure(make())], return_state=True)

    state = parent(return_state=True).result(raise_on_failure=False)
    assert state.name == "NotReady"


@pytest.mark.parametrize(
    "wait_for",
    [
        lambda: [allow_failure(Failed())],
        lambda: [[allow_failure(boom.submit())]],
        lambda: [allow_failure([boom.submit()])],
    ],
    ids=["failed-state", "nested-in-a-list", "around-a-list"],
)
def test_subflow_wait_for_allow_failure_forms_run(wait_for):
    @flow
    def parent():
        return child(1, wait_for=wait_for(), return_state=True)

    assert parent(return_state=True).result(raise_on_failure=False).result() == 1


def test_subflow_not_ready_call_raises_unfinished_run_and_its_parent_fails():
    @flow
    def parent():
        bad = boom.submit()
        with pytest.raises(UnfinishedRun, match="Run is in PENDING state"):
            child(2, wait_for=[bad])
        return child(2, wait_for=[bad], return_state=True)

    state = parent(return_state=True)
    assert state.is_failed()
    assert state.message == "1/1 states are not final."
    with pytest.raises(ValueError, match="Expected failed or crashed state got NotReady"):
        parent()


# -- runtime.flow_run ------------------------------------------------------------------------
def test_runtime_root_flow_run_id_and_version_reach_tasks():
    @task
    def read():
        run = nbflow.runtime.flow_run
        return run.flow_version, run.root_flow_run_id, run.parent_flow_run_id

    @flow(version="v2")
    def inner():
        return read()

    @flow
    def outer():
        return nbflow.runtime.flow_run.id, nbflow.runtime.flow_run.root_flow_run_id, inner()

    outer_id, own_root, (version, root, parent) = outer()
    assert version == "v2"
    assert isinstance(root, str) and root == own_root == outer_id == parent


def test_runtime_flow_run_fields_outside_a_run_are_none():
    assert nbflow.runtime.flow_run.flow_version is None
    assert nbflow.runtime.flow_run.root_flow_run_id is None
    assert nbflow.runtime.flow_run.get_root_flow_run_id() is None


# -- invalid parameters ----------------------------------------------------------------------
def test_invalid_flow_parameters_with_return_state_give_a_failed_state():
    calls = []

    def hook(fl, flow_run, state):
        calls.append(state.name)

    @flow(on_failure=[hook], on_running=[hook], retries=2)
    def typed(x: int):
        return x

    state = typed("not an int", return_state=True)
    assert state.is_failed()
    assert state.message.startswith(
        "Validation of flow parameters failed with error: ParameterTypeError: "
    )
    with pytest.raises(ParameterTypeError):
        state.result()
    assert isinstance(state.result(raise_on_failure=False), ParameterTypeError)
    with pytest.raises(ParameterTypeError):
        typed("not an int")
    assert calls == ["Failed", "Failed"]  # on_failure each time; never running, never retried
    run = last_flow_run()
    assert run.state.is_failed() and run.parameters == {"x": "not an int"}
    assert run.run_count == 0


def test_unbindable_flow_arguments_raise_even_with_return_state():
    @flow
    def typed(x: int):
        return x

    with pytest.raises(ParameterBindError):
        typed(1, 2, return_state=True)


# -- State.id and state_details (Prefect 3.9.1: each state has its own UUID; a run's states name it) ----
def test_every_state_has_its_own_stable_uuid():
    import uuid

    first, second = Completed(), Completed()
    assert isinstance(first.id, uuid.UUID) and first.id == first.id
    assert first.id != second.id


def test_state_details_name_the_task_run_and_its_flow_run():
    @task
    def double(x):
        return 2 * x

    @flow
    def pipeline():
        future = double.submit(2)
        future.wait()
        assert future.state.state_details.task_run_id == future.task_run_id
        return double(1, return_state=True), nbflow.runtime.flow_run.id

    task_state, flow_run_id = pipeline()
    details = task_state.state_details
    assert str(details.flow_run_id) == flow_run_id  # runtime ids are strings, as in Prefect
    assert details.task_run_id is not None and details.untrackable_result is True
    assert details is task_state.state_details  # one object, as a field of Prefect's State
    assert details.cache_key is None and details.child_flow_run_id is None


def test_state_details_of_a_flow_run_and_of_a_state_made_by_hand():
    @flow
    def pipeline():
        return nbflow.runtime.flow_run.id

    state = pipeline(return_state=True)
    assert str(state.state_details.flow_run_id) == state.result()
    assert state.state_details.task_run_id is None
    made = Completed(data=1).state_details
    assert made.flow_run_id is None and made.task_run_id is None and made.untrackable_result is False
    assert "flow_run_id=None task_run_id=None" in str(made)


def test_state_details_of_a_task_called_outside_a_flow():
    @task
    def one():
        return 1

    details = one(return_state=True).state_details
    assert details.task_run_id is not None and details.flow_run_id is None


def test_a_state_type_given_as_its_value_string_is_taken_as_the_type():
    state = State(type="FAILED")
    assert state.type is StateType.FAILED and state.name == "Failed"
    with pytest.raises(ValueError):
        State(type="NOT_A_TYPE")


def test_submitting_and_infrastructure_pending_are_pending_states():
    from nbflow.states import InfrastructurePending, Submitting

    for make, name in ((Submitting, "Submitting"), (InfrastructurePending, "InfrastructurePending")):
        state = make(message="hi")
        assert (state.name, state.type, state.is_pending()) == (name, StateType.PENDING, True)
        assert repr(state) == f"{name}(message='hi', type=PENDING, result=None)"
        assert str(state) == f"{name}('hi', type=PENDING)"


def test_scheduled_states_say_when_they_are_due():
    import datetime

    from nbflow.states import AwaitingRetry, Late, Pending, Scheduled

    before = datetime.datetime.now(datetime.timezone.utc)
    for make in (Scheduled, AwaitingRetry, Late):
        assert before <= make().state_details.scheduled_time <= datetime.datetime.now(datetime.timezone.utc)
    due = before + datetime.timedelta(hours=1)
    assert Scheduled(scheduled_time=due).state_details.scheduled_time == due
    assert Pending().state_details.scheduled_time is None


def test_model_copy_and_fresh_copy_as_prefects():
    from nbflow.states import Completed

    state = Completed(data=1, message="m")
    copied = state.model_copy()
    assert (copied.name, copied.message, copied.data, copied is state) == ("Completed", "m", 1, False)
    assert state.model_copy(update={"message": "new"}).message == "new"
    fresh = state.fresh_copy()
    assert (fresh.name, fresh.message, fresh.data, fresh.type) == ("Completed", "m", 1, StateType.COMPLETED)
    assert fresh.id != state.id


def test_exception_to_states_and_format_exception_in_prefects_words():
    import asyncio

    from nbflow import states as S
    from nbflow.exceptions import FailedRun, TerminationSignal

    async def made():
        failed = await S.exception_to_failed_state(ValueError("bad"))
        prefixed = await S.exception_to_failed_state(ValueError("bad"), message="Prefix")
        crashed = [await S.exception_to_crashed_state(e)
                   for e in (KeyboardInterrupt(), SystemExit(), ValueError("vv"), TerminationSignal(15))]
        return failed, prefixed, crashed

    failed, prefixed, crashed = asyncio.run(made())
    assert (failed.name, failed.message, failed.state_details.retriable) == ("Failed", "ValueError: bad", False)
    assert prefixed.message == "Prefix ValueError: bad"
    assert [c.message for c in crashed] == [
        "Execution was aborted by an interrupt signal.",
        "Execution was aborted by Python system exit call.",
        "Execution was interrupted by an unexpected exception: ValueError: vv",
        "Execution was aborted by a termination signal.",
    ]
    assert S.format_exception(FailedRun("x")) == "FailedRun: x"


def test_exceptions_prefect_code_catches_or_builds():
    from nbflow import exceptions as E

    assert E.ParameterBindError.__mro__[1:3] == (TypeError, E.PrefectException)
    assert str(E.ObjectNotFound(http_exc=None, help_message="hm")) == "hm"
    for name in ("UnspecifiedFlowError", "ScriptError", "ObjectAlreadyExists", "MissingProfileError",
                 "NotPausedError", "FlowPauseTimeout", "FlowRunWaitTimeout", "InfrastructureError"):
        assert issubclass(getattr(E, name), E.PrefectException)
    assert str(E.ScriptError(ValueError("v"), "a.py")) == "Script at 'a.py' encountered an exception: ValueError('v')"

    def fn(a, b=1):
        return a

    error = E.ParameterBindError.from_bind_failure(fn, TypeError("missing a required argument: 'a'"), (), {})
    assert str(error) == ("Error binding parameters for function 'fn': missing a required argument: 'a'.\n"
                          "Function 'fn' has signature 'a, b=1' but received args: () and kwargs: [].")
    import pydantic

    try:
        pydantic.TypeAdapter(int).validate_python("x")
    except pydantic.ValidationError as exc:
        assert str(E.ParameterTypeError.from_validation_error(exc)).startswith(
            "Flow run received invalid parameters:\n - : Input should be a valid integer")
    try:
        raise ValueError("tb")
    except ValueError as exc:
        assert E.exception_traceback(exc).endswith("ValueError: tb\n")
