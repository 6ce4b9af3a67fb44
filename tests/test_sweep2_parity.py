"""Parity with Prefect 3.9.1, second sweep: flow parameters, flow retries and hooks, inline
calls blocked by an upstream, states helpers, run loggers, runtime fields, exception names.

Each case was run on Prefect 3.9.1 (PrefectHQ/prefect ``src/prefect/flows.py``
``Flow.validate_parameters``, ``flow_engine.py`` ``call_hooks``, ``task_engine.py``
``SyncTaskRunEngine.result``, ``states.py`` ``StateGroup``, ``runtime/flow_run.py``).
"""

from __future__ import annotations

import datetime
import logging
import threading

import pytest

import nbflow.runtime
from nbflow import allow_failure, flow, get_run_logger, task
from nbflow import exceptions as E
from nbflow import states as S

pytestmark = [pytest.mark.parity, pytest.mark.timeout(30)]


@task
def ident(x):
    return x


@task
def boom():
    raise ValueError("boom")


# -- Flow.validate_parameters ----------------------------------------------------------------
@flow
def typed(x: int, y: str = "a", z: list[int] | None = None):
    return x


def test_validate_parameters_fills_in_defaults_and_coerces():
    assert typed.validate_parameters({"x": "5", "y": "b"}) == {"x": 5, "y": "b", "z": None}
    assert typed.validate_parameters({"x": 1, "z": ["1", 2]}) == {"x": 1, "y": "a", "z": [1, 2]}


def test_validate_parameters_rejects_an_unknown_name_with_signature_mismatch_error():
    with pytest.raises(E.SignatureMismatchError) as info:
        typed.validate_parameters({"x": 1, "q": 2})
    assert str(info.value) == "Function expects parameters ['x', 'y', 'z'] but was provided with parameters ['x', 'q']"
    assert isinstance(info.value, TypeError)


def test_validate_parameters_reports_a_missing_required_parameter():
    with pytest.raises(E.ParameterTypeError, match="Flow run received invalid parameters:\n - x: Field required"):
        typed.validate_parameters({})


def test_parameters_beside_var_args_and_kwargs_are_coerced_but_not_their_items():
    @flow
    def f(x: int, *args: int, **kwargs: float):
        return x, args, kwargs

    @flow
    def g(x: int, **kwargs):
        return x, kwargs

    assert f("1", "2", 3, k="4") == (1, ("2", 3), {"k": "4"})  # Prefect 3.9.1 checks neither *args nor **kwargs
    assert g("1", a=2) == (1, {"a": 2})
    # the run records parameters in the signature's order, *args as a list
    assert f.validate_parameters({"kwargs": {}, "x": "1", "args": ("2",)}) == {"x": 1, "args": ["2"], "kwargs": {}}
    recorded = []

    @flow(validate_parameters=False, on_completion=[lambda fl, run, state: recorded.append(run.parameters)])
    def h(a, *args, b=2):
        return nbflow.runtime.flow_run.parameters, args

    assert h(1, 2, 3) == ({"a": 1, "args": [2, 3], "b": 2}, (2, 3))
    assert recorded == [{"a": 1, "args": [2, 3], "b": 2}]
    assert h.validate_parameters({"a": "x"}) == {"a": "x", "args": [], "b": 2}  # validates whatever the option


# -- flow retries and hooks ------------------------------------------------------------------
def test_each_flow_attempt_enters_running_not_retrying():
    seen = []

    @flow(retries=2, on_running=[lambda fl, fr, state: seen.append(state.name)])
    def f():
        if nbflow.runtime.flow_run.run_count < 3:
            raise ValueError("again")
        return nbflow.runtime.flow_run.run_count

    state = f(return_state=True)
    assert state.result() == 3
    assert seen == ["Running", "Running", "Running"]


def test_on_cancellation_is_not_called_for_a_body_that_returns_a_cancelled_state():
    calls = []

    @flow(on_cancellation=[lambda fl, fr, state: calls.append(state.name)])
    def f():
        return S.Cancelled()

    assert f(return_state=True).is_cancelled()
    assert calls == []


# -- states --------------------------------------------------------------------------------
def test_state_type_shows_as_prefects_enum_member():
    t = S.StateType.FAILED
    assert str(t) == repr(t) == f"{t}" == "%s" % t == "StateType.FAILED"
    assert t == "FAILED" and t.value == "FAILED" and S.StateType("FAILED") is t


@pytest.mark.parametrize(
    "make, kind, name",
    [(S.Suspended, S.StateType.PAUSED, "Suspended"), (S.AwaitingConcurrencySlot, S.StateType.SCHEDULED, "AwaitingConcurrencySlot")],
)
def test_more_state_constructors(make, kind, name):
    state = make()
    assert (state.type, state.name) == (kind, name)


def test_state_group_counts():
    group = S.StateGroup([S.Completed(), S.Failed(), S.Crashed()])
    assert group.fail_count == 2
    assert not group.all_completed() and group.any_failed() and group.all_final()
    assert not group.any_cancelled() and not group.any_paused()
    assert group.counts_message() == "total=3, 'COMPLETED'=1, 'FAILED'=1, 'CRASHED'=1"


# -- run loggers ---------------------------------------------------------------------------
def test_task_run_logger_extra_names_its_flow_run_too():
    @task(task_run_name="tr-{x}")
    def mytask(x):
        return dict(get_run_logger().extra)

    @flow(flow_run_name="fr")
    def myflow():
        return mytask(1), nbflow.runtime.flow_run.id

    extra, flow_run_id = myflow()
    assert sorted(extra) == ["flow_name", "flow_run_id", "flow_run_name", "task_name", "task_run_id", "task_run_name"]
    assert (extra["flow_name"], extra["flow_run_name"], extra["flow_run_id"]) == ("myflow", "fr", flow_run_id)


def test_get_run_logger_takes_a_run_as_its_context():
    @flow(flow_run_name="named")
    def f():
        from nbflow.context import current_flow_run

        return get_run_logger(current_flow_run(), custom=1).extra

    extra = f()
    assert extra["flow_run_name"] == "named" and extra["custom"] == 1


def test_get_run_logger_records_carry_the_run_fields(caplog):
    @flow(flow_run_name="fr")
    def myflow():
        get_run_logger().warning("in flow")

    with caplog.at_level(logging.INFO):
        myflow()
    [record] = [r for r in caplog.records if r.getMessage() == "in flow"]
    assert (record.flow_run_name, record.flow_name) == ("fr", "myflow")


# -- runtime ---------------------------------------------------------------------------------
def test_runtime_server_fields_are_empty_and_scheduled_start_time_is_when_the_run_started():
    @flow
    def f():
        fr = nbflow.runtime.flow_run
        return fr.scheduled_start_time, fr.parent_deployment_id, fr.job_variables, fr.api_url, fr.ui_url, ident(1)

    before = datetime.datetime.now(datetime.timezone.utc)
    start, deployment, job_variables, api_url, ui_url, one = f()
    assert before <= start <= datetime.datetime.now(datetime.timezone.utc)
    assert [deployment, api_url, ui_url] == [None] * 3 and job_variables == {} and one == 1
    assert nbflow.runtime.flow_run.job_variables is None  # outside a run
    assert nbflow.runtime.flow_run.get_scheduled_start_time().tzinfo is not None  # now, outside a run
    assert nbflow.runtime.task_run.api_url is None and nbflow.runtime.task_run.ui_url is None


# -- exception names users import -------------------------------------------------------------
@pytest.mark.parametrize(
    "name, bases",
    [
        ("SignatureMismatchError", (E.PrefectException, TypeError)),
        ("UpstreamTaskError", (E.PrefectException,)),
        ("HashError", (E.PrefectException,)),
        ("ConfigurationError", (E.PrefectException,)),
        ("MissingFlowError", (E.PrefectException,)),
        ("ObjectNotFound", (E.PrefectException,)),
        ("PrefectImportError", (ImportError,)),
        ("PrefectSignal", (BaseException,)),
        ("Abort", (BaseException,)),
        ("Pause", (BaseException,)),
        ("ExternalSignal", (BaseException,)),
        ("TerminationSignal", (BaseException,)),
    ],
)
def test_exception_names_prefect_users_import(name, bases):
    cls = getattr(E, name)
    assert issubclass(cls, bases)
    if issubclass(cls, (E.PrefectSignal, E.ExternalSignal)):
        assert not issubclass(cls, Exception)  # never caught by an ``except Exception``


def test_termination_signal_and_pause_carry_their_detail():
    assert E.TerminationSignal(15).signal == 15
    state = S.Paused()
    assert E.Pause("paused", state=state).state is state


# -- state messages --------------------------------------------------------------------------
def test_failed_state_messages_are_prefects_words():
    @flow
    def child():
        raise KeyError("k")

    @flow
    def parent():
        return boom(return_state=True).message, boom.submit(return_state=True).message, child(return_state=True).message

    assert parent() == (
        "Task run encountered an exception ValueError: boom",
        "Task run encountered an exception ValueError: boom",
        "Flow run encountered an exception: KeyError: 'k'",
    )
    assert boom(return_state=True).message == "Task run encountered an exception ValueError: boom"


# -- futures ---------------------------------------------------------------------------------
def test_a_done_callback_that_raises_is_logged_and_the_run_and_other_callbacks_go_on(caplog, gate):
    seen = []

    def raises(future):
        raise RuntimeError("callback")

    @task
    def held(x):
        assert gate.wait()
        return x

    @flow
    def f():
        done = ident.submit(1)
        done.wait()
        done.add_done_callback(raises)  # called at once, in this thread
        later = held.submit(2)
        later.add_done_callback(raises)  # called in the thread that ends the run
        later.add_done_callback(lambda future: (seen.append(future.result()), called.set()))
        gate.open()
        return done.result(), later.result(), ident.submit(later).result()

    called = threading.Event()  # callbacks run after waiters wake: the last one says it ran
    with caplog.at_level(logging.ERROR, logger="nbflow.futures"):
        assert f() == (1, 2, 2)
        assert called.wait(10)
    assert seen == [2]
    assert [r.exc_info[0] for r in caplog.records if "Done callback" in r.getMessage()] == [RuntimeError, RuntimeError]


def test_task_input_hash_needs_a_context():
    from nbflow.tasks import task_input_hash

    with pytest.raises(AttributeError):
        task_input_hash(None, {"a": 1})


def test_hooks_read_the_runs_state_name_and_type():
    seen = []

    @flow(on_completion=[lambda fl, fr, state: seen.append((fr.state_name, fr.state_type))])
    def f():
        return 1

    f()
    assert seen == [("Completed", S.StateType.COMPLETED)]


# -- subflow arguments -----------------------------------------------------------------------
def test_futures_and_states_given_to_a_subflow_are_resolved_to_their_values():
    @flow
    def child(x: int, y, z):
        return x, y, z

    @flow
    def parent():
        return child(ident.submit("5"), ident(3, return_state=True), [ident.submit(1), {"k": ident.submit(2)}])

    assert parent() == (5, 3, [1, {"k": 2}])


def test_a_subflow_given_a_failed_future_is_not_ready_unless_failure_is_allowed():
    from nbflow import allow_failure

    ran = []

    @flow
    def child(x):
        ran.append(x)
        return x

    @flow
    def parent():
        blocked = child(boom.submit(), return_state=True)
        allowed = child(allow_failure(boom.submit()))
        return blocked, allowed

    blocked, allowed = parent()
    assert (blocked.type, blocked.name) == (S.StateType.PENDING, "NotReady")
    assert "did not reach a 'COMPLETED' state (Failed: ValueError('boom'))" in blocked.message
    assert isinstance(allowed, ValueError) and len(ran) == 1


def test_a_task_hook_reads_the_runs_final_state_and_its_history_keeps_it_once():
    seen = []

    def hook(tk, task_run, state):
        seen.append((task_run.state is state, task_run.state_name))

    @task(on_completion=[hook], on_failure=[hook], retries=1)
    def t(x):
        if x:
            raise ValueError("x")
        return x

    @flow
    def f():
        t(0)
        failed = t.submit(1)
        failed.wait()
        return [s.name for s in failed.task_run.states]

    assert f() == ["Pending", "Running", "AwaitingRetry", "Retrying", "Failed"]
    assert seen == [(True, "Completed"), (True, "Failed")]


# -- caching ---------------------------------------------------------------------------------
@pytest.mark.parametrize("key", [123, ["a"]])
def test_a_cache_key_fn_returning_no_string_fails_the_run_without_running_it(key):
    ran = []

    @task(cache_key_fn=lambda ctx, parameters: key)
    def t(x):
        ran.append(x)
        return x

    @flow
    def f():
        return t(1, return_state=True), t.submit(2, return_state=True)

    for state in f():
        assert state.is_failed()
        assert isinstance(state.result(raise_on_failure=False), E.InvalidCacheKey)
        assert state.message.startswith("Task run encountered an exception InvalidCacheKey: cache_key_fn")
    assert ran == []


def test_runtime_task_run_inside_a_subflow_called_from_a_task_is_that_task_run():
    seen = []

    @task
    def inner():
        return nbflow.runtime.task_run.task_name

    @flow
    def child():
        seen.append((nbflow.runtime.task_run.task_name, nbflow.runtime.flow_run.flow_name, inner()))

    @task
    def calls_a_flow():
        child()
        return nbflow.runtime.task_run.id

    @flow
    def parent():
        child()  # called from the flow's own code: no task run
        return calls_a_flow()

    task_run_id = parent()
    assert seen == [(None, "child", "inner"), ("calls_a_flow", "child", "inner")]
    assert task_run_id is not None and nbflow.runtime.task_run.task_name is None


def test_counts_message_names_the_states_not_final_after_the_total():
    from nbflow.states import Completed, Pending, StateGroup

    group = StateGroup([Completed(), Pending()])
    assert group.counts_message() == "total=2, not_final=1, 'COMPLETED'=1, 'PENDING'=1"


def test_resolve_futures_to_results_keeps_the_shape_and_refuses_a_failure():
    from nbflow import flow, task
    from nbflow.futures import resolve_futures_to_results

    @task
    def inc(x):
        return x + 1

    @task
    def boom():
        raise ValueError("no")

    @flow
    def pipeline():
        shaped = resolve_futures_to_results({"a": [inc.submit(1)], "b": (inc.submit(2),), "c": 7})
        try:
            resolve_futures_to_results([boom.submit()])
        except Exception as exc:  # noqa: BLE001 - Prefect raises a plain Exception
            return shaped, str(exc)

    assert pipeline() == ({"a": [2], "b": (3,), "c": 7}, "At least one result did not complete successfully")


# -- wait_for= one future, not a list ----------------------------------------------------------
def test_wait_for_takes_one_future_or_one_annotation_alone():
    """Prefect 3.9.1 wraps a lone ``wait_for=`` value in a list for submit, map and inline calls."""
    order = []

    @task
    def step(x):
        order.append(x)
        return x

    @flow
    def f():
        first = step.submit(1)
        out = [step.submit(2, wait_for=first).result()]
        out.append(step.map([3], wait_for=first).result())
        out.append(step(4, wait_for=first))
        failed = boom.submit()
        out.append(step.submit(5, wait_for=allow_failure(failed)).result())
        state = step(6, wait_for=failed, return_state=True)
        out.append(state.name)
        return out

    assert f() == [2, [3], 4, 5, "NotReady"]
    assert order[0] == 1 and 6 not in order


def test_a_flows_on_running_hook_sees_the_attempts_before_its_own_and_the_body_counts_it():
    hook_counts, body_counts = [], []

    @flow(retries=1, on_running=[lambda fl, run, state: hook_counts.append(run.run_count)])
    def f():
        body_counts.append(nbflow.runtime.flow_run.run_count)
        if len(body_counts) == 1:
            raise ValueError("first attempt fails")
        return 1

    assert f() == 1
    assert hook_counts == [0, 1] and body_counts == [1, 2]  # Prefect 3.9.1; a task's hook sees 1, 2
