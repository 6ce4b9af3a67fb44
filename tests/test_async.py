"""Async tasks and flows; sync flows while an event loop runs (Jupyter); run_coroutine."""

from __future__ import annotations

import asyncio
import inspect
import threading

import pytest

import nbflow.runtime
from nbflow import flow, task
from nbflow.engine import run_coroutine
from nbflow.runs import last_flow_run

SAFETY = 10.0


def arun(coro):
    """``asyncio.run(coro)`` in a fresh thread: a loop left running in this thread by other
    tests (or a host like Jupyter) cannot leak in; the coroutine still runs inside a running loop."""
    out: dict = {}

    def target():
        try:
            out["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller
            out["error"] = exc

    thread = threading.Thread(target=target, name="test-asyncio-run")
    thread.start()
    thread.join(SAFETY * 2)
    assert not thread.is_alive(), "coroutine did not finish (safety timeout)"
    if "error" in out:
        raise out["error"]
    return out["value"]


@task
async def async_double(x):
    await asyncio.sleep(0)
    return 2 * x


@task
async def async_fail():
    await asyncio.sleep(0)
    raise ValueError("async boom")


@task
def sync_inc(x):
    return x + 1


def test_async_tasks_submit_and_map_from_sync_flow():
    @flow
    def f():
        one = async_double.submit(1).result()
        many = async_double.map([1, 2, 3]).result()
        chained = sync_inc.submit(async_double.submit(5)).result()
        return one, many, chained

    assert f() == (2, [2, 4, 6], 11)


def test_async_task_failure_from_sync_flow():
    @flow
    def f():
        with pytest.raises(ValueError, match="async boom"):
            async_fail.submit().result()
        return "handled"

    assert f() == "handled"


def test_async_tasks_submit_and_map_from_async_flow():
    @flow
    async def f():
        fut = async_double.submit(1)
        futures = async_double.map([1, 2])
        return fut.result(), futures.result()  # .result() is sync

    assert arun(f()) == (2, [2, 4])


def test_await_async_task_inside_async_flow_runs_in_flows_loop():
    loops = {}

    @task
    async def where():
        loops["task"] = asyncio.get_running_loop()
        return nbflow.runtime.task_run.task_name

    @flow
    async def f():
        loops["flow"] = asyncio.get_running_loop()
        return await where()

    assert arun(f()) == "where"
    assert loops["task"] is loops["flow"]


@pytest.mark.timeout(20)
def test_gather_of_awaited_tasks_runs_them_concurrently():
    @task
    async def ping_pong(me, other_events, my_event):
        my_event.set()
        await asyncio.wait_for(other_events.wait(), SAFETY)  # needs the other task to run meanwhile
        return me

    @flow
    async def f():
        a, b = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(ping_pong("a", b, a), ping_pong("b", a, b))

    assert arun(f()) == ["a", "b"]


def test_async_task_called_inline_from_sync_flow_returns_coroutine():
    @flow
    def f():
        coro = async_double(4)
        assert inspect.iscoroutine(coro)
        return run_coroutine(coro)

    assert f() == 8


def test_async_flow_call_returns_coroutine_and_records_run():
    @flow
    async def af(x):
        return await async_double(x)

    coro = af(3)
    assert inspect.iscoroutine(coro)
    assert arun(coro) == 6
    assert last_flow_run().state.is_completed()


def test_async_flow_failure_raises_on_await():
    @flow
    async def af():
        await async_fail()

    with pytest.raises(ValueError, match="async boom"):
        arun(af())


def test_sync_flow_called_while_an_event_loop_is_running():
    @flow
    def sync_flow(x):
        return sync_inc.submit(x).result() + async_double.submit(x).result() + sync_inc(x)

    async def notebook_cell():
        return sync_flow(1)

    assert arun(notebook_cell()) == 2 + 2 + 2


def test_sync_flow_with_inline_async_task_while_loop_runs():
    @flow
    def sync_flow():
        return run_coroutine(async_double(21))

    async def notebook_cell():
        return sync_flow()

    assert arun(notebook_cell()) == 42


def test_async_flow_awaited_in_running_loop():
    @flow
    async def af():
        return await async_double(2)

    async def notebook_cell():
        return await af()

    assert arun(notebook_cell()) == 4


def test_run_coroutine_outside_and_inside_running_loop():
    async def value():
        await asyncio.sleep(0)
        return "v"

    assert run_coroutine(value()) == "v"

    async def in_loop():
        return run_coroutine(value())

    assert arun(in_loop()) == "v"


def test_async_task_retries():
    attempts = []

    @task(retries=2)
    async def flaky():
        attempts.append(nbflow.runtime.task_run.run_count)
        if len(attempts) < 3:
            raise RuntimeError("again")
        return "ok"

    @flow
    async def af():
        return await flaky()

    assert arun(af()) == "ok"
    assert attempts == [1, 2, 3]


def test_async_subflow_in_async_flow():
    @flow
    async def child(x):
        return await async_double(x)

    @flow
    async def parent():
        return await child(5) + 1

    assert arun(parent()) == 11
    fr = last_flow_run()
    assert len(fr.subflow_runs) == 1


def test_async_task_runtime_context():
    @task(task_run_name="async-{x}")
    async def named(x):
        return nbflow.runtime.task_run.name

    @flow
    def f():
        return named.submit(1).result()

    assert f() == "async-1"


# -- the one guarded path, on the event loop ---------------------------------------------
import dataclasses  # noqa: E402


@dataclasses.dataclass
class Positive:
    value: object

    def __post_init__(self) -> None:
        if isinstance(self.value, int) and self.value < 0:
            raise ValueError("Positive needs a value >= 0")


@task
def minus_one() -> int:
    return -1


@task
async def async_take(p: Positive) -> object:
    return p.value


def test_async_task_whose_argument_fails_to_resolve_ends_failed_and_the_flow_goes_on():
    # Rebuilding the dataclass with the resolved value raises: the run must end, not stay Pending.
    @flow(timeout_seconds=SAFETY)
    async def f():
        state = await async_take(Positive(minus_one.submit()), return_state=True)
        return state.name, await state.result(raise_on_failure=False)

    name, error = arun(f())
    assert name == "Failed" and isinstance(error, ValueError)
    run = last_flow_run()
    assert run.state.is_completed()
    assert [r.state.name for r in run.task_runs] == ["Completed", "Failed"]


def test_sync_task_whose_argument_fails_to_resolve_ends_failed_too():
    @task
    def sync_take(p: Positive) -> object:
        return p.value

    @flow(timeout_seconds=SAFETY)
    def f():
        state = sync_take(Positive(minus_one.submit()), return_state=True)
        return state.name, state.message

    name, message = f()
    assert name == "Failed" and "Positive needs a value" in message


def test_awaiting_an_upstream_run_does_not_block_the_event_loop():
    # The upstream task waits for an event only another coroutine on the flow's loop sets:
    # if awaiting the upstream blocked the loop, the flow would never finish.
    release = threading.Event()

    @task
    def upstream() -> int:
        assert release.wait(SAFETY)
        return 20

    @flow
    async def f():
        future = upstream.submit()

        async def opener() -> None:
            await asyncio.sleep(0)
            release.set()

        value, _ = await asyncio.gather(async_double(future), opener())
        return value

    assert arun(f()) == 40


def test_async_hooks_are_awaited_on_the_flows_loop():
    loops = []

    async def hook(task, run, state) -> None:
        loops.append(asyncio.get_running_loop())

    @task(on_completion=[hook])
    async def hooked() -> int:
        return 1

    @flow
    async def f():
        await hooked()
        return asyncio.get_running_loop()

    flow_loop = arun(f())
    assert loops == [flow_loop]


def test_state_result_is_awaited_in_async_code_as_in_prefect():
    """Prefect 3.9.1 dispatches State.result(): a coroutine in an async task or flow (whatever
    task the state is of) and in a coroutine outside runs; the value in sync code. A future's
    ``.result()`` is always the value."""
    kinds = []

    @task
    async def five() -> int:
        return 5

    @task
    def six() -> int:
        return 6

    @flow
    async def af():
        state = await five(return_state=True)
        pending = state.result()
        kinds.append(inspect.iscoroutine(pending))
        value = await pending
        other = six(return_state=True).result()
        kinds.append(inspect.iscoroutine(other))
        value += await other
        kinds.append(five.submit().result())
        kinds.append(state.result(_sync=True))
        return value

    @flow
    def sf():
        kinds.append(six(return_state=True).result())
        return 2

    async def main():
        state = await af(return_state=True)
        awaited = state.result()
        kinds.append(inspect.iscoroutine(awaited))
        return await awaited, await sf(return_state=True).result()

    assert arun(main()) == (11, 2)
    assert kinds == [True, True, 5, 5, True, 6]
    assert sf(return_state=True).result() == 2


def test_state_exception_helpers_are_awaited_in_async_code_as_in_prefect():
    from nbflow import states as S

    failed = S.Failed(message="g")

    async def main():
        pending = S.get_state_exception(failed)
        assert inspect.iscoroutine(pending)
        error = await pending
        raising = S.raise_state_exception(failed)
        assert inspect.iscoroutine(raising)
        with pytest.raises(type(error), match="g"):
            await raising
        assert await S.aget_state_exception(failed) is not None
        return str(error)

    assert arun(main()) == "g"
    assert str(S.get_state_exception(failed)) == "g"  # sync code: the exception itself
    with pytest.raises(Exception, match="g"):
        S.raise_state_exception(failed)
