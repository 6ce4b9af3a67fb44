"""The semantics every task runner shares: one set of tests, run on each runner.

The ``runner`` fixture is parametrised over the thread pool, the process pool,
Dask and Ray (the last two on the session's clusters, see ``conftest.py``): it
makes fresh runners of one kind for ``@flow(task_runner=runner())``, and
``runner.remote`` says whether runs leave this process. Tests marked
``remote_only`` check what only runners that ship runs elsewhere do (pickling,
imports on the workers) and run on those alone. What one runner adds is tested
in its own file (``test_thread_runner.py``, ``test_process_runner.py``,
``test_cluster_runners.py``).

Tasks are defined inside the tests, and this module is pickled by value, so
workers need nothing of it installed: the same path a notebook's or
``__main__``'s tasks take. (pytest collects this file through
``python_files`` in ``pyproject.toml``.)
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
import types
from typing import Callable

import cloudpickle
import pytest

import nbflow.runs
import nbflow.runtime
from nbflow import allow_failure, as_completed, flow, task, unmapped, wait
from nbflow.context import current_flow_run
from nbflow.exceptions import SerializationError, TaskRunTimeoutError, UnfinishedRun
from nbflow.flows import cancel_flow_run
from nbflow.futures import PrefectFuture
from nbflow.task_runners import DaskTaskRunner, ProcessPoolTaskRunner, RayTaskRunner, ThreadPoolTaskRunner

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SAFETY = 30.0  # a correct runner never gets near it; a broken one fails instead of hanging

RUNNERS = ("thread", "process", "dask", "ray")
REMOTE = RUNNERS[1:]

remote_only = pytest.mark.remote_only  # a check of what only runs in other processes do


class Runners:
    """Makes fresh runners of one kind (each flow run needs its own)."""

    def __init__(self, kind: str, make: Callable[[], object]) -> None:
        self.kind = kind
        self.remote = kind != "thread"
        self._make = make

    def __call__(self):
        return self._make()

    def __repr__(self) -> str:
        return f"<{self.kind} runners>"


def pytest_generate_tests(metafunc):
    if "runner" in metafunc.fixturenames:
        kinds = REMOTE if metafunc.definition.get_closest_marker("remote_only") else RUNNERS
        metafunc.parametrize("runner", kinds, indirect=True)


@pytest.fixture
def runner(request) -> Runners:
    kind = request.param
    if kind == "thread":
        return Runners(kind, lambda: ThreadPoolTaskRunner(max_workers=2))
    if kind == "process":
        return Runners(kind, lambda: ProcessPoolTaskRunner(max_workers=2))
    if kind == "dask":
        address = request.getfixturevalue("dask_cluster").scheduler_address
        return Runners(kind, lambda: DaskTaskRunner(address=address))
    request.getfixturevalue("ray_session")  # initialised here: the runner uses it and leaves it running
    return Runners(kind, RayTaskRunner)


def wait_for_file(path: str, timeout: float = SAFETY) -> None:
    """Block (in a worker) until ``path`` exists: the test's way to release a task."""
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


@dataclasses.dataclass
class Box:
    item: object


# -- submitting, futures, data between tasks --------------------------------------------------
def test_submit_returns_a_future_with_the_value_and_the_run_id(runner):
    @task
    def ident():
        return nbflow.runtime.task_run.id, os.getpid()

    @flow(task_runner=runner())
    def f():
        future = ident.submit()
        assert isinstance(future, PrefectFuture)
        return future, str(future.task_run_id), future.result()

    state, run_id, (seen_id, pid) = f()
    assert state.is_completed() and state.result() == (seen_id, pid)
    assert seen_id == run_id and (pid != os.getpid()) == runner.remote


def test_futures_as_arguments_at_any_depth(runner):
    @task
    def number(x):
        return x

    @task
    def total(values, mapping, box, keys):
        return values[0] + values[1][0] + mapping["x"] + box.item + sum(keys)

    @flow(task_runner=runner())
    def f():
        a, b, c, d, e = (number.submit(i) for i in (1, 2, 3, 4, 5))
        return total.submit([a, (b,)], {"x": c}, Box(d), {e: "key"}).result()

    assert f() == 15


def test_failed_upstream_leaves_downstream_not_ready(runner):
    @task
    def boom():
        raise ValueError("boom")

    @task
    def after(x):
        return x

    @flow(task_runner=runner())
    def f():
        a = boom.submit()
        b = after.submit(a)
        c = after.submit(b)
        allowed = after.submit(allow_failure(a))
        waited = after.submit(1, wait_for=[a])
        waited_allowed = after.submit(2, wait_for=[allow_failure(a)])
        futures = [a, b, c, allowed, waited, waited_allowed]
        wait(futures)
        return [future.task_run for future in futures]

    a, b, c, allowed, waited, waited_allowed = (run.state for run in f())
    assert a.is_failed() and isinstance(a.result(raise_on_failure=False), ValueError)
    for state in (b, c, waited):
        assert state.is_pending() and state.name == "NotReady"
        with pytest.raises(UnfinishedRun):
            state.result(raise_on_failure=False)
    assert "boom" in b.message and "(NotReady: task run " in c.message and "boom" in c.message
    assert isinstance(allowed.result(), ValueError) and str(allowed.result()) == "boom"
    assert waited_allowed.result() == 2


def test_exception_type_and_message_come_back(runner):
    @task
    def boom():
        raise KeyError("missing thing")

    @flow(task_runner=runner())
    def f():
        return boom.submit().result()

    with pytest.raises(KeyError, match="missing thing") as info:
        f()
    notes = getattr(info.value, "__notes__", [])
    assert any("Traceback on the worker" in note for note in notes) == runner.remote


def test_map_with_unmapped_and_futures(runner):
    @task
    def numbers(n):
        return list(range(n))

    @task
    def scale(x, factor, offset):
        return x * factor + sum(offset)

    @flow(task_runner=runner())
    def f():
        listed = numbers.submit(3)
        first = scale.map(listed, 10, unmapped([1, 1]))  # a future of a list maps over its elements
        second = scale.map(first, 1, unmapped(listed))  # a future list maps element-wise
        return first.result(), second.result()

    assert f() == ([2, 12, 22], [5, 15, 25])


def test_wait_and_as_completed(runner, tmp_path):
    gate = str(tmp_path / "gate")

    @task
    def quick(x):
        return x

    @task
    def slow():
        wait_for_file(gate)
        return "slow"

    @flow(task_runner=runner())
    def f():
        held = slow.submit()
        done = [quick.submit(i) for i in range(3)]
        finished, unfinished = wait(done)
        assert finished == set(done) and not unfinished
        assert wait(done + [held], timeout=0.05).not_done == {held}
        open(gate, "w").close()
        order = list(as_completed(done + [held]))
        return len(order), order[-1] is held, held.result()

    assert f() == (4, True, "slow")


# -- the engine in the worker -------------------------------------------------------------------
def test_retries_run_in_the_worker(runner):
    @task(retries=2)
    def flaky():
        count = nbflow.runtime.task_run.run_count
        if count < 3:
            raise RuntimeError(f"attempt {count}")
        return count, os.getpid()

    @flow(task_runner=runner())
    def f():
        future = flaky.submit()
        return future.result(), future.task_run

    (count, pid), run = f()
    assert count == 3 and run.run_count == 3 and (pid != os.getpid()) == runner.remote
    names = [state.name for state in run.states]
    assert names == ["Pending", "Running", "AwaitingRetry", "Retrying", "AwaitingRetry", "Retrying",
                     "Completed"]


def test_timeout_fails_the_run_as_timed_out(runner):
    @task(timeout_seconds=0.3)
    def spin():
        while True:
            pass

    @flow(task_runner=runner())
    def f():
        future = spin.submit()
        future.wait()
        return future.task_run

    state = f().state
    assert state.name == "TimedOut"
    with pytest.raises(TaskRunTimeoutError):
        state.result()


def test_run_name_runtime_and_tags_in_the_worker(runner):
    @task(task_run_name="scale-{x}", tags=["remote"])
    def describe(x):
        from nbflow.runtime import flow_run, task_run

        return (task_run.name, task_run.parameters, task_run.run_count, task_run.tags,
                task_run.map_index, flow_run.name, flow_run.flow_name)

    @flow(task_runner=runner(), flow_run_name="named-run")
    def f():
        return [future.result() + (future.task_run.name,) for future in describe.map([4, 5])]

    first, second = f()
    assert first == ("scale-4", {"x": 4}, 1, ["remote"], 0, "named-run", "f", "scale-4")
    assert second[0] == second[-1] == "scale-5" and second[4] == 1


def test_prints_logs_and_hooks_land_in_the_driver_record(runner):
    def announce(task_, task_run, state):
        print(f"hook saw {state.name} for {task_run.name}")

    @task(on_completion=[announce])
    def chatty():
        print("to stdout")
        print("to stderr", file=sys.stderr)
        return 1

    @task(log_prints=True)
    def logged():
        print("as a log record")

    @flow(task_runner=runner())
    def f():
        a, b = chatty.submit(), logged.submit()
        wait([a, b])
        return a.task_run, b.task_run

    chatty_run, logged_run = f()
    text = chatty_run.output.text()
    assert "to stdout\n" in chatty_run.output.text(("stdout",))
    assert "to stderr\n" in chatty_run.output.text(("stderr",))
    assert f"hook saw Completed for {chatty_run.name}" in text
    assert "as a log record" in logged_run.output.text(("log",))


def test_running_and_prints_reach_the_driver_live(runner, tmp_path):
    gate = str(tmp_path / "gate")
    running = threading.Event()
    printed = threading.Event()

    @task
    def waits():
        print("started")
        wait_for_file(gate)
        return "done"

    def watch(event):
        if getattr(event.run, "task", None) is not waits:
            return
        if event.kind == "state" and event.state.name == "Running":
            running.set()
        if event.kind == "output" and event.text.rstrip("\n") == "started":
            printed.set()

    nbflow.runs.subscribe(watch)

    @flow(task_runner=runner())
    def f():
        future = waits.submit()
        assert running.wait(SAFETY) and printed.wait(SAFETY)
        assert future.state.is_running() and not future.done()
        open(gate, "w").close()
        return future.result()

    assert f() == "done"


def test_a_failing_flow_cancels_runs_that_have_not_started(runner, tmp_path):
    gate = str(tmp_path / "gate")
    running = threading.Semaphore(0)

    @task
    def hold():
        wait_for_file(gate)
        return "held"

    @task
    def later():
        return "ran"

    def watch(event):
        if event.kind != "state" or not isinstance(getattr(event.run, "task", None), type(hold)):
            return
        if event.run.task is hold and event.state.name == "Running":
            running.release()
        if event.run.task is later and event.state.is_cancelled():
            open(gate, "w").close()  # the started runs may finish now

    nbflow.runs.subscribe(watch)
    runs = []

    @flow(task_runner=runner())
    def f():
        held = [hold.submit() for _ in range(2)]
        assert running.acquire(timeout=SAFETY) and running.acquire(timeout=SAFETY)
        runs.extend(future.task_run for future in held)
        runs.append(later.submit(wait_for=held).task_run)
        raise RuntimeError("the flow gives up")

    with pytest.raises(RuntimeError, match="gives up"):
        f()
    first, second, queued = runs
    assert first.state.result() == second.state.result() == "held"  # started runs finished
    assert queued.state.is_cancelled() and not any(s.is_running() for s in queued.states)


def test_cancelling_a_flow_run_ends_its_executing_runs_cancelled(runner, tmp_path):
    gate = str(tmp_path / "gate")  # opened on teardown only: the runs are stopped, not released
    running = threading.Semaphore(0)

    @task
    def held():
        wait_for_file(gate)
        return "finished"

    def watch(event):
        if event.kind == "state" and getattr(event.run, "task", None) is held and event.state.is_running():
            running.release()

    nbflow.runs.subscribe(watch)
    runs = []

    @flow(task_runner=runner())
    def f():
        futures = [held.submit() for _ in range(2)]
        assert running.acquire(timeout=SAFETY) and running.acquire(timeout=SAFETY)
        runs.extend(future.task_run for future in futures)
        cancel_flow_run(current_flow_run())
        wait(futures, timeout=SAFETY)

    try:
        state = f(return_state=True)
        assert state.is_cancelled()
        for run in runs:
            assert run.state.is_cancelled() and "was cancelled while running" in run.state.message
    finally:
        open(gate, "w").close()


# -- bad input -------------------------------------------------------------------------------------
@remote_only
def test_unpicklable_argument_fails_the_run_naming_task_and_argument(runner):
    @task
    def uses(x, lock):
        return x

    @flow(task_runner=runner())
    def f():
        future = uses.submit(1, threading.Lock())
        future.wait()
        return future.task_run

    state = f().state
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, SerializationError)
    assert "'uses'" in str(error) and "'lock'" in str(error) and "cannot be pickled" in str(error)
    assert "ThreadPoolTaskRunner" in str(error)


@remote_only
def test_unpicklable_result_fails_the_run_naming_it(runner):
    @task
    def makes_lock():
        return threading.Lock()

    @flow(task_runner=runner())
    def f():
        future = makes_lock.submit()
        future.wait()
        return future.task_run

    run = f()
    assert run.state.is_failed()
    error = run.state.result(raise_on_failure=False)
    assert isinstance(error, SerializationError) and run.name in str(error) and "lock" in str(error)


@remote_only
def test_argument_the_worker_cannot_import_fails_the_run_clearly(runner, monkeypatch):
    ghost = types.ModuleType("nbflow_test_ghost")  # importable here only, not on workers
    exec("class Thing:\n    pass", ghost.__dict__)
    monkeypatch.setitem(sys.modules, "nbflow_test_ghost", ghost)

    @task
    def takes(thing):
        return 1

    @flow(task_runner=runner())
    def f():
        future = takes.submit(ghost.Thing())
        future.wait()
        return future.task_run

    run = f()
    error = run.state.result(raise_on_failure=False)
    assert isinstance(error, SerializationError)
    assert run.name in str(error) and "nbflow_test_ghost" in str(error)

