"""DaskTaskRunner on a real local cluster: the semantics every remote runner shares, and what Dask adds.

One small cluster (2 worker processes, 1 thread each) serves the module; a
worker that dies fails its task at once (``allowed-failures: 0``) so the
crash test is fast.
"""

from __future__ import annotations

import logging
import os
import sys

import cloudpickle
import pytest

import nbflow.task_runners
from nbflow import allow_failure, flow, task, wait
from nbflow.context import current_flow_run
from nbflow.exceptions import CrashedRun, MissingDependencyError
from nbflow.futures import PrefectFuture
from runner_semantics import *  # noqa: F401,F403  (the shared tests run here)
from runner_semantics import wait_for_file

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.CRITICAL
        )
    yield cluster
    cluster.close()


@pytest.fixture
def runner(cluster):
    from nbflow.integrations.dask import DaskTaskRunner

    return lambda: DaskTaskRunner(address=cluster.scheduler_address)


def test_missing_extra_raises_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "nbflow\[dask\]"'):
        nbflow.task_runners.DaskTaskRunner()


def test_downstream_runs_are_handed_to_dask_with_upstream_futures(runner, tmp_path):
    gate = str(tmp_path / "gate")

    @task
    def produce():
        wait_for_file(gate)
        return list(range(1000))

    @task
    def consume(values):
        return sum(values)

    @flow(task_runner=runner())
    def f():
        dask_runner = current_flow_run().task_runner
        a = produce.submit()
        b = consume.submit(a)
        # b is on the cluster already, waiting there for a (not on the driver)
        b_key = dask_runner._handles[b.task_run].key
        a_key = dask_runner._handles[a.task_run].key
        open(gate, "w").close()
        value = b.result()
        dependencies = dask_runner._client.run_on_scheduler(
            lambda dask_scheduler: [dep.key for dep in dask_scheduler.tasks[b_key].dependencies]
        )
        assert isinstance(b, PrefectFuture) and type(b).__name__ == "PrefectDaskFuture"
        return value, dependencies == [a_key], a.state._fetcher is not None

    assert f() == (sum(range(1000)), True, True)  # a's list never came to the driver


def test_an_existing_cluster_is_left_running(runner, cluster):
    @task
    def one():
        return 1

    @flow(task_runner=runner())
    def f():
        return one.submit().result()

    assert f() == 1
    assert len(cluster.scheduler_info["workers"]) == 2


def test_subflow_on_a_temporary_cluster_in_a_thread_pool_flow(cluster):
    """The seed's "multiple task runners" example; the subflow's cluster is closed after it."""
    from nbflow.integrations.dask import DaskTaskRunner

    started = []

    @task
    def hello_local(name):
        print(f"Hello {name}!")
        return name

    @task
    def hello_dask():
        print("Hello from Dask!")
        return os.getpid()

    @flow(task_runner=DaskTaskRunner(
        cluster_kwargs={"n_workers": 1, "threads_per_worker": 1, "dashboard_address": ":0"}
    ))
    def dask_subflow():
        started.append(current_flow_run().task_runner._cluster)
        return hello_dask.submit().result()

    @flow
    def parent_flow():
        marvin, ford = hello_local.submit("marvin"), hello_local.submit("ford")
        pid = dask_subflow()
        return marvin.result(), ford.result(), pid

    marvin, ford, pid = parent_flow()
    assert (marvin, ford) == ("marvin", "ford") and pid != os.getpid()
    assert started[0].status.name == "closed"


def test_worker_killed_mid_task_crashes_its_run_and_the_flow_reports_it(runner):
    @task
    def dies():
        os._exit(3)

    @task
    def after(x):
        return x

    runs = []

    @flow(task_runner=runner())
    def f():
        killed = dies.submit()
        # Dask fails both dependents without running them; the runner runs
        # them again with the crash known, so the usual upstream rules apply.
        blocked, allowed = after.submit(killed), after.submit(allow_failure(killed))
        wait([killed, blocked, allowed])
        runs.extend(future.task_run for future in (killed, blocked, allowed))
        return killed

    state = f(return_state=True)
    assert state.is_failed() and isinstance(state.data, CrashedRun)
    killed, blocked, allowed = runs
    assert killed.state.is_crashed() and "crashed" in killed.state.message
    assert blocked.state.name == "NotReady" and "Crashed" in blocked.state.message
    assert isinstance(allowed.state.result(), CrashedRun)
