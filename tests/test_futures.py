"""Futures, wait, as_completed and argument resolution: semantics checklist "Futures"."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from typing import Any

import pydantic
import pytest

import nbflow.runtime
from nbflow import as_completed, flow, opaque, quote, task, wait
from nbflow.futures import DoneAndNotDoneFutures, PrefectFuture, PrefectFutureList
from nbflow.states import State

SAFETY = 10.0


class CustomError(Exception):
    pass


@task
def ident(x):
    return x


@task
def fail(msg="failed"):
    raise CustomError(msg)


def test_result_reraises_the_tasks_own_exception():
    @flow
    def f():
        fut = fail.submit("exact message")
        with pytest.raises(CustomError) as info:
            fut.result()
        return str(info.value)

    assert f() == "exact message"


def test_result_raise_on_failure_false_returns_the_exception_instance():
    @flow
    def f():
        return fail.submit("m").result(raise_on_failure=False)

    exc = f()
    assert isinstance(exc, CustomError) and str(exc) == "m"


@pytest.mark.timeout(20)
def test_result_timeout_raises_timeout_error_and_run_continues(gate):
    @task
    def slow():
        gate.wait()
        return "late"

    @flow
    def f():
        fut = slow.submit()
        with pytest.raises(TimeoutError):
            fut.result(timeout=0.05)
        assert not fut.state.is_final()
        gate.open()
        return fut.result()

    assert f() == "late"


@pytest.mark.timeout(20)
def test_future_wait_timeout_returns_none_and_never_raises(gate):
    @task
    def slow():
        gate.wait()

    @task
    def bad():
        raise CustomError()

    @flow
    def f():
        fut = slow.submit()
        assert fut.wait(timeout=0.05) is None
        gate.open()
        assert fut.wait() is None
        b = bad.submit()
        assert b.wait() is None
        assert b.state.is_failed()

    f()


@pytest.mark.timeout(20)
def test_future_state_goes_pending_running_completed(gate):
    started = threading.Event()

    @task
    def slow():
        started.set()
        gate.wait()
        return 1

    @flow
    def f():
        fut = slow.submit()
        assert started.wait(SAFETY)
        assert fut.state.is_running() and not fut.state.is_final()
        gate.open()
        fut.wait()
        assert fut.state.is_completed() and fut.state.is_final()
        return [s.name for s in fut.task_run.states]

    assert f() == ["Pending", "Running", "Completed"]


def test_is_final_only_for_terminal_states():
    from nbflow import states as S

    assert all(s().is_final() for s in (S.Completed, S.Failed, S.Cancelled, S.Crashed))
    assert not any(s().is_final() for s in (S.Pending, S.Running, S.Scheduled, S.NotReady, S.Paused))


@pytest.mark.timeout(20)
def test_add_done_callback_called_once_when_run_ends(gate):
    calls = []
    done = threading.Event()

    @task
    def slow():
        gate.wait()
        return 5

    @flow
    def f():
        fut = slow.submit()

        def cb(future):
            calls.append(future)
            done.set()

        fut.add_done_callback(cb)
        assert calls == []
        gate.open()
        fut.wait()
        assert done.wait(SAFETY)

    f()
    assert len(calls) == 1 and isinstance(calls[0], PrefectFuture)
    assert calls[0].result() == 5


def test_add_done_callback_on_finished_future_is_called_at_once():
    calls = []

    @flow
    def f():
        fut = ident.submit(1)
        fut.wait()
        fut.add_done_callback(calls.append)
        assert calls == [fut]

    f()


def test_task_run_id_is_uuid_equal_to_runtime_id():
    @task
    def whoami():
        return nbflow.runtime.task_run.id

    @flow
    def f():
        fut = whoami.submit()
        return fut.task_run_id, fut.result()

    fid, inside = f()
    assert isinstance(fid, uuid.UUID)
    assert isinstance(inside, str)
    assert str(fid) == inside


# -- wait ------------------------------------------------------------------------------------
@pytest.mark.timeout(20)
def test_wait_returns_done_and_not_done_and_never_raises_on_timeout(gate):
    @task
    def slow():
        gate.wait()

    @flow
    def f():
        quick = ident.submit(1)
        quick.wait()
        s = slow.submit()
        result = wait([quick, s], timeout=0.05)
        assert isinstance(result, DoneAndNotDoneFutures) and isinstance(result, tuple)
        assert result.done == {quick} and result.not_done == {s}
        assert isinstance(result.done, set)
        gate.open()
        done, not_done = wait([quick, s])
        assert done == {quick, s} and not_done == set()

    f()


def test_wait_deduplicates():
    @flow
    def f():
        fut = ident.submit(1)
        done, not_done = wait([fut, fut, fut])
        assert len(done) == 1 and not not_done

    f()


def test_wait_does_not_raise_on_failures():
    @flow
    def f():
        done, not_done = wait([fail.submit(), ident.submit(1)])
        assert len(done) == 2 and not not_done

    f()


# -- as_completed ------------------------------------------------------------------------------
@pytest.mark.timeout(20)
def test_as_completed_yields_each_distinct_future_once_in_completion_order():
    gates = [threading.Event() for _ in range(3)]

    @task
    def wait_for_gate(i):
        assert gates[i].wait(SAFETY)
        return i

    @flow
    def f():
        futs = [wait_for_gate.submit(i) for i in range(3)]
        order = []
        # open the gates in the order 2, 0, 1; each next gate after the previous run finished
        gates[2].set()
        for fut in as_completed(futs + [futs[0]]):
            order.append(fut.result())
            if len(order) == 1:
                gates[0].set()
            elif len(order) == 2:
                gates[1].set()
        return order

    assert f() == [2, 0, 1]


@pytest.mark.timeout(20)
def test_as_completed_timeout_raises_timeout_error_after_yielding_finished(gate):
    @task
    def slow():
        gate.wait()

    @flow
    def f():
        quick = ident.submit(1)
        quick.wait()
        s = slow.submit()
        got = []
        with pytest.raises(TimeoutError):
            for fut in as_completed([quick, s], timeout=0.05):
                got.append(fut)
        assert got == [quick]
        gate.open()

    f()


def test_as_completed_of_nothing_yields_nothing():
    assert list(as_completed([])) == []


# -- PrefectFutureList --------------------------------------------------------------------------
def test_future_list_result_in_list_order():
    @flow
    def f():
        return ident.map([3, 1, 2]).result()

    assert f() == [3, 1, 2]


@pytest.mark.timeout(20)
def test_future_list_result_raises_first_failure_to_happen(gate):
    @task
    def element(i):
        if i == 0:
            gate.wait()  # still running when element 1 fails
            return 0
        raise CustomError(f"element {i}")

    @flow
    def f():
        futures = element.map([0, 1])
        with pytest.raises(CustomError, match="element 1"):
            futures.result()
        assert not futures[0].state.is_final()
        gate.open()
        futures.wait()

    f()


def test_future_list_result_raise_on_failure_false_puts_exceptions_in_place():
    @task
    def element(i):
        if i == 1:
            raise CustomError("one")
        return i

    @flow
    def f():
        return element.map([0, 1, 2]).result(raise_on_failure=False)

    out = f()
    assert out[0] == 0 and out[2] == 2 and isinstance(out[1], CustomError)


@pytest.mark.timeout(20)
def test_future_list_result_timeout_and_wait(gate):
    @task
    def slow(i):
        gate.wait()
        return i

    @flow
    def f():
        futures = slow.map([1, 2])
        with pytest.raises(TimeoutError):
            futures.result(timeout=0.05)
        assert futures.wait(timeout=0.01) is None
        gate.open()
        assert futures.wait() is None
        return futures.result()

    assert f() == [1, 2]


def test_negative_timeouts_raise_value_error():
    @flow
    def f():
        futures = ident.map([1])
        futures.wait()
        with pytest.raises(ValueError):
            wait(futures, timeout=-1)
        with pytest.raises(ValueError):
            list(as_completed(futures, timeout=-1))
        with pytest.raises(ValueError):
            futures.result(timeout=-1)

    f()


# -- futures passed as arguments ---------------------------------------------------------------
@dataclasses.dataclass
class Box:
    value: Any
    other: Any = None


class Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
    value: Any
    items: list = []


def _contains_future(value: Any) -> bool:
    if isinstance(value, PrefectFuture):
        return True
    if isinstance(value, dict):
        return any(_contains_future(k) or _contains_future(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_contains_future(v) for v in value)
    if dataclasses.is_dataclass(value):
        return any(_contains_future(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, pydantic.BaseModel):
        return any(_contains_future(getattr(value, n)) for n in type(value).model_fields)
    return False


@pytest.mark.parametrize("how", ["submit", "map", "inline"])
def test_futures_at_any_depth_are_resolved(how):
    seen = {}

    @task
    def take(x):
        seen.setdefault("args", []).append(x)
        return _contains_future(x)

    @flow
    def f():
        a, b, c = ident.submit(1), ident.submit("k"), ident.submit(3)
        nested = {
            "list": [a, [b]],
            "tuple": (a, (c,)),
            "set": {a, c},
            b: "key",  # a future as a dict key
            "dc": Box(a, Box(c)),
            "model": Model(value=a, items=[c]),
        }
        if how == "submit":
            return take.submit(nested).result()
        if how == "map":
            return take.map([nested]).result()[0]
        return take(nested)

    assert f() is False
    arg = seen["args"][0]
    assert arg["list"] == [1, ["k"]]
    assert arg["tuple"] == (1, (3,))
    assert arg["set"] == {1, 3}
    assert arg["k"] == "key"
    assert arg["dc"] == Box(1, Box(3))
    assert arg["model"].value == 1 and arg["model"].items == [3]


def test_states_passed_as_arguments_are_resolved_to_their_results():
    @flow
    def f():
        state = ident.submit(41, return_state=True)
        assert isinstance(state, State)
        return ident.submit([state]).result(), ident([state])

    assert f() == ([41], [41])


def test_quote_passes_futures_untouched():
    @task
    def take(x):
        return x

    @flow
    def f():
        fut = ident.submit(1)
        got = take.submit(quote([fut])).result()
        assert got[0] is fut
        return isinstance(got[0], PrefectFuture)

    assert f() is True


def test_opaque_resolves_top_level_future_without_traversal():
    @task
    def make():
        return ["payload"]

    @task
    def take(x):
        return x

    @flow
    def f():
        return take.submit(opaque(make.submit())).result()

    assert f() == ["payload"]


@pytest.mark.timeout(20)
def test_task_depending_on_itself_raises_value_error(gate):
    @task
    def blocker():
        gate.wait()

    @task
    def take(x):
        return x

    @flow
    def f():
        box: list = []
        g = blocker.submit()
        fut = take.submit(box, wait_for=[g])
        box.append(fut)  # now the run's own argument holds its own future
        gate.open()
        with pytest.raises(ValueError, match="depending on itself"):
            fut.result()

    f()


def test_future_list_type():
    @flow
    def f():
        futures = ident.map([1])
        futures.wait()
        return type(futures)

    assert f() is PrefectFutureList


def test_resolve_helpers_leave_quoted_futures_alone_as_prefects():
    from nbflow import quote
    from nbflow.futures import resolve_futures_to_results, resolve_futures_to_states

    @task
    def one():
        return 1

    @task
    def bad():
        raise ValueError("b")

    @flow
    def f():
        a = one.submit()
        results = resolve_futures_to_results([quote([a]), a])
        states = resolve_futures_to_states({"q": quote(a), "x": a})
        failed = bad.submit()
        untouched = resolve_futures_to_results([quote(failed)])  # not waited for: no error
        failed.wait()
        return results[0].unquote()[0] is a, results[1], states["q"].unquote() is a, states["x"].name, untouched[0].unquote() is failed

    assert f() == (True, 1, True, "Completed", True)
