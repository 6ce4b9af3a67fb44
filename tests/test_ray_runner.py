"""RayTaskRunner on a real local Ray: the semantics every remote runner shares, and what Ray adds.

One local Ray (2 CPUs) serves the module and runners reuse it; the last test
shuts it down to check a runner that starts its own Ray also stops it.
"""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

import nbflow.task_runners
from nbflow import flow, task
from nbflow.context import current_flow_run
from nbflow.exceptions import MissingDependencyError
from nbflow.futures import PrefectFuture
from runner_semantics import *  # noqa: F401,F403  (the shared tests run here)
from runner_semantics import wait_for_file

cloudpickle.register_pickle_by_value(sys.modules[__name__])

RAY_OPTIONS = {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray", reason="ray is not installed")
    ray.init(**RAY_OPTIONS)
    yield ray
    ray.shutdown()


@pytest.fixture
def runner(ray):
    from nbflow.integrations.ray import RayTaskRunner

    return lambda: RayTaskRunner()


def test_missing_extra_raises_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "nbflow\[ray\]"'):
        nbflow.task_runners.RayTaskRunner()


def test_downstream_runs_get_upstream_object_refs(runner, tmp_path):
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
        ray_runner = current_flow_run().task_runner
        a = produce.submit()
        b = consume.submit(a)
        submitted = b.task_run in ray_runner._handles  # on Ray already, waiting there for a
        open(gate, "w").close()
        assert isinstance(b, PrefectFuture) and type(b).__name__ == "PrefectRayFuture"
        return submitted, b.result(), a.state.on_cluster

    assert f() == (True, sum(range(1000)), True)  # a's list never came to the driver


def test_a_running_ray_is_reused_and_left_running(runner, ray):
    @task
    def one():
        return 1

    @flow(task_runner=runner())
    def f():
        return one.submit().result()

    assert f() == 1 and ray.is_initialized()


def test_worker_killed_mid_task_is_retried_by_ray(runner, tmp_path):
    marker = str(tmp_path / "died-once")

    @task
    def dies_once():
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)
        return "second attempt"

    @flow(task_runner=runner())
    def f():
        return dies_once.submit().result()

    assert f() == "second attempt" and os.path.exists(marker)


def test_subflow_on_its_own_ray_in_a_thread_pool_flow(ray):
    """The seed's "multiple task runners" example, on a Ray the runner starts and stops."""
    from nbflow.integrations.ray import RayTaskRunner

    ray.shutdown()

    @task
    def hello_local(name):
        print(f"Hello {name}!")
        return name

    @task
    def hello_ray():
        print("Hello from Ray!")
        return os.getpid()

    @flow(task_runner=RayTaskRunner(init_kwargs=RAY_OPTIONS))
    def ray_subflow():
        future = hello_ray.submit()
        return future.result(), future.task_run

    @flow
    def parent_flow():
        marvin, ford = hello_local.submit("marvin"), hello_local.submit("ford")
        pid, run = ray_subflow()
        return marvin.result(), ford.result(), pid, run

    marvin, ford, pid, run = parent_flow()
    assert (marvin, ford) == ("marvin", "ford") and pid != os.getpid()
    assert "Hello from Ray!\n" in run.output.text()
    assert not ray.is_initialized()
