"""Faults on Dask (a local cluster of worker processes) and Ray: a task raising SystemExit or
KeyboardInterrupt, a worker killed mid-map, a cancel mid-map. Each keeps what completed and
leaves no run Pending or Running.

Runners use the session's clusters (``conftest.py``); tasks are pickled by value.
"""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

from nbflow import flow, task
from nbflow.context import current_flow_run
from nbflow.flows import cancel_flow_run
from runner_semantics import wait_for_file
from test_cluster_runners import engine  # noqa: F401  (the dask/ray fixture)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)


def unfinished(flow_run) -> list[str]:
    """The task runs of ``flow_run`` (and its subflows) that did not end: what must never be left."""
    runs = list(flow_run.task_runs)
    return [f"{run.name}: {run.state.name}" for run in runs if not run.state.is_final() and run.state.name != "NotReady"]


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_a_task_raising_a_base_exception_on_a_cluster_crashes_only_that_run(engine, exc):  # noqa: F811
    @task
    def work(x):
        if x == 1:
            raise exc(3)
        return x * 10

    seen = {}

    @flow(task_runner=engine.runner())
    def f():
        futures = work.map([0, 1, 2])
        futures.wait()
        seen["runs"] = [future.task_run for future in futures]
        seen["flow_run"] = current_flow_run()
        return [future.state.name for future in futures]

    assert f() == ["Completed", "Crashed", "Completed"]
    first, crashed, last = seen["runs"]
    assert (first.state.result(), last.state.result()) == (0, 20)
    assert exc.__name__ in crashed.state.message
    assert unfinished(seen["flow_run"]) == []

    @flow(task_runner=engine.runner())
    def again():
        return work.map([0, 2]).result()

    assert again() == [0, 20]  # the workers live on


def test_a_worker_killed_mid_map_keeps_what_completed(engine, tmp_path):  # noqa: F811
    done = str(tmp_path / "first-done")
    died = str(tmp_path / "died")

    @task
    def work(x):
        if x == 0:
            open(done, "w").close()
            return "kept"
        try:
            wait_for_file(done, timeout=5)
        except TimeoutError:  # run 0 waits behind this one on the same worker: it runs elsewhere once this dies
            pass
        if not os.path.exists(died):  # Ray runs a task whose worker died again: the second attempt completes
            open(died, "w").close()
            os._exit(3)
        return "again"

    seen = {}

    @flow(task_runner=engine.runner())
    def f():
        futures = work.map([0, 1])
        futures.wait()
        seen["runs"] = [future.task_run for future in futures]
        seen["flow_run"] = current_flow_run()
        return [future.state for future in futures]

    f(return_state=True)
    first, killed = seen["runs"]
    assert first.state.is_completed() and first.state.result() == "kept"
    if engine.name == "dask":
        assert killed.state.is_crashed()
    else:
        assert killed.state.result() == "again"
    assert os.path.exists(died)
    assert unfinished(seen["flow_run"]) == []


def test_one_unpicklable_argument_or_result_in_a_map_fails_only_its_run(engine):  # noqa: F811
    import threading

    from nbflow.exceptions import SerializationError

    @task
    def work(x):
        return threading.Lock() if x == "lock please" else x

    seen = {}

    @flow(task_runner=engine.runner())
    def f():
        futures = work.map([1, threading.Lock(), "lock please", 4])
        futures.wait()
        seen["flow_run"] = current_flow_run()
        return [future.task_run for future in futures]

    first, bad_argument, bad_result, last = f()
    assert (first.state.result(), last.state.result()) == (1, 4)
    for run in (bad_argument, bad_result):
        assert run.state.is_failed()
        assert isinstance(run.state.result(raise_on_failure=False), SerializationError)
    assert unfinished(seen["flow_run"]) == []


@pytest.mark.parametrize("stop", ["cancel_flow_run", "real Ctrl-C"])
def test_a_cancel_or_interrupt_mid_map_keeps_what_completed_and_cancels_the_rest(engine, tmp_path, wait_until, stop):  # noqa: F811
    import signal

    gate = str(tmp_path / "gate")  # opened on teardown: a Dask worker thread cannot be stopped

    @task
    def work(x):
        if x >= 2:
            wait_for_file(gate)
        return x

    seen = {}

    @flow(task_runner=engine.runner())
    def f():
        futures = work.map(range(6))
        seen["runs"] = [future.task_run for future in futures]
        seen["flow_run"] = current_flow_run()
        assert wait_until(lambda: all(future.state.is_completed() for future in futures[:2]))
        if stop == "cancel_flow_run":
            cancel_flow_run(current_flow_run())
            return "cancelled"
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C while the flow waits on the cluster
        futures.wait()

    try:
        if stop == "cancel_flow_run":
            assert f(return_state=True).is_cancelled()
        else:
            with pytest.raises(KeyboardInterrupt):
                f()
        runs = seen["runs"]
        assert seen["flow_run"].state.is_cancelled()
        assert [run.state.result() for run in runs[:2]] == [0, 1]
        assert all(run.state.is_cancelled() for run in runs[2:]), [run.state.name for run in runs]
        assert unfinished(seen["flow_run"]) == []
    finally:
        open(gate, "w").close()
