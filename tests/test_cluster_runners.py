"""DaskTaskRunner and RayTaskRunner: what cluster runners add to the semantics every runner shares.

The shared semantics are in ``runner_semantics.py``. For both engines (the
``engine`` fixture): a missing extra names its install command, a downstream
run waits on the cluster for its upstream's value, and an existing cluster is
used and left running. Then each engine's own: a Dask worker that dies crashes
its run where Ray runs the task again, a Ray flow that fails while a run waits
on the cluster leaves its driver alive, and a runner given no address starts
its own cluster and stops it (Ray's in a child process: a process holds one
Ray). Runners use the session's clusters (see ``conftest.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import cloudpickle
import pytest

import nbflow.runtime
from nbflow import allow_failure, flow, task, wait
from nbflow.context import current_flow_run
from nbflow.exceptions import MissingDependencyError
from nbflow.flows import cancel_flow_run
from nbflow.futures import PrefectFuture
from nbflow.task_runners import DaskTaskRunner, RayTaskRunner
from runner_semantics import SAFETY, wait_for_file

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Engine:
    """One cluster engine as these tests use it; clusters are asked for only when a test needs one."""

    def __init__(self, name: str, request: pytest.FixtureRequest) -> None:
        self.name = name
        self._request = request
        self.runner_class = DaskTaskRunner if name == "dask" else RayTaskRunner
        self.module = "distributed" if name == "dask" else "ray"  # what the extra installs
        self.future_class_name = "PrefectDaskFuture" if name == "dask" else "PrefectRayFuture"

    def runner(self):
        """A runner on the session's cluster."""
        if self.name == "dask":
            return DaskTaskRunner(address=self._request.getfixturevalue("dask_cluster").scheduler_address)
        self._request.getfixturevalue("ray_session")  # initialised: the runner uses it, leaves it running
        return RayTaskRunner()

    def module_object(self):
        return self._request.getfixturevalue("ray_session") if self.name == "ray" else None

    def session_cluster_runs(self) -> bool:
        if self.name == "dask":
            return self._request.getfixturevalue("dask_cluster").status.name == "running"
        return self._request.getfixturevalue("ray_session").is_initialized()


@pytest.fixture(params=["dask", "ray"])
def engine(request) -> Engine:
    pytest.importorskip(request.param if request.param == "ray" else "distributed")
    return Engine(request.param, request)


# -- what both engines do -------------------------------------------------------------------------
def test_missing_extra_raises_with_the_install_command(engine, monkeypatch):
    monkeypatch.setitem(sys.modules, engine.module, None)
    with pytest.raises(MissingDependencyError, match=rf'pip install "nbflow\[{engine.name}\]"'):
        engine.runner_class()


def test_downstream_runs_wait_on_the_cluster_for_upstream_values(engine, tmp_path):
    gate = str(tmp_path / "gate")

    @task
    def produce():
        wait_for_file(gate)
        return list(range(1000))

    @task
    def consume(values):
        return sum(values)

    @flow(task_runner=engine.runner())
    def f():
        runner = current_flow_run().task_runner
        a = produce.submit()
        b = consume.submit(a)
        handed_over = b.task_run in runner._handles  # on the cluster already, waiting there for a
        open(gate, "w").close()
        assert isinstance(b, PrefectFuture) and type(b).__name__ == engine.future_class_name
        value = b.result()
        if engine.name == "dask":  # the scheduler knows b needs a
            b_key, a_key = runner._handles[b.task_run].key, runner._handles[a.task_run].key
            dependencies = runner._client.run_on_scheduler(
                lambda dask_scheduler: [dep.key for dep in dask_scheduler.tasks[b_key].dependencies]
            )
            assert dependencies == [a_key]
        return handed_over, value, a.state.on_cluster

    assert f() == (True, sum(range(1000)), True)  # a's list never came to the driver


def test_an_existing_cluster_is_used_and_left_running(engine):
    @task
    def where():
        return os.getpid()

    @flow(task_runner=engine.runner())
    def f():
        return where.submit().result()

    assert f() != os.getpid()
    assert engine.session_cluster_runs()


def test_a_run_cancelled_while_it_executes_has_its_engine_task_cancelled(engine, tmp_path, wait_until):
    gate = str(tmp_path / "gate")  # opened on teardown: a Dask worker thread cannot be stopped

    @task
    def held():
        wait_for_file(gate)
        return "finished"

    seen = []

    @flow(task_runner=engine.runner())
    def f():
        future = held.submit()
        assert wait_until(lambda: future.state.is_running())  # it executes on the cluster
        seen.append((future.task_run, current_flow_run().task_runner._handles[future.task_run]))
        cancel_flow_run(current_flow_run())
        return "cancelled"

    try:
        state = f(return_state=True)
        (run, handle), = seen
        assert state.is_cancelled() and run.state.is_cancelled()
        assert "was cancelled while running" in run.state.message
        if engine.name == "dask":
            assert wait_until(lambda: handle.status == "cancelled")
        else:
            with pytest.raises(ray_exceptions().TaskCancelledError):
                engine.module_object().get(handle[0], timeout=SAFETY)  # cancelled, not left to finish
    finally:
        open(gate, "w").close()


def ray_exceptions():
    import ray.exceptions

    return ray.exceptions


def test_a_ray_run_past_its_deadline_is_cancelled_there_and_retried(ray_session, tmp_path):
    marker = str(tmp_path / "first-attempt")
    handles = []

    @task(timeout_seconds=0.5, retries=1)
    def stuck_once():
        if not os.path.exists(marker):
            open(marker, "w").close()
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # the worker's own deadline cannot fire
            time.sleep(30)
        return nbflow.runtime.task_run.run_count

    @task
    def after(x):
        return x * 10

    @flow(task_runner=RayTaskRunner())
    def f():
        future = stuck_once.submit()
        handles.append(current_flow_run().task_runner._handles[future.task_run])
        downstream = after.submit(future)  # waits on Ray for the first attempt, which is cancelled
        return future.result(), future.task_run, downstream.result()

    count, run, downstream = f()
    assert downstream == 20  # handed over again with the retried run's value
    assert count == 2 and [s.name for s in run.states] == [
        "Pending", "Running", "AwaitingRetry", "Retrying", "Completed"
    ]
    assert "exceeded timeout of 0.5 second(s)" in run.states[2].message
    with pytest.raises(ray_exceptions().TaskCancelledError):
        ray_session.get(handles[0][0], timeout=SAFETY)  # the first attempt was cancelled (its worker killed)


def test_a_dask_run_past_its_deadline_ends_on_time_and_is_retried():
    """A Dask worker thread blocked in C cannot be interrupted: the driver ends the attempt at its
    deadline, cancels its task and retries; the blocked thread's late report is ignored."""
    cluster_kwargs = {"n_workers": 1, "threads_per_worker": 2, "dashboard_address": ":0"}

    @task(timeout_seconds=0.5, retries=1)
    def stuck_once():
        # Both attempts run in the one worker process, in two of its threads.
        first = sys.__dict__.setdefault("nbflow_test_first_attempt", (threading.Lock(), threading.Event()))
        blocked, release = first
        if nbflow.runtime.task_run.run_count == 1:
            with blocked:
                release.wait(SAFETY)  # a C-level wait: no deadline interrupts it
            return "first"
        still_blocked = blocked.locked()
        release.set()
        return nbflow.runtime.task_run.run_count, still_blocked

    @task
    def after(x):
        return x

    @flow(task_runner=DaskTaskRunner(cluster_kwargs=cluster_kwargs))
    def f():
        future = stuck_once.submit()
        downstream = after.submit(future)  # waits on Dask for the first attempt, which is cancelled
        return future.result(), future.task_run, downstream.result()

    (count, first_still_blocked), run, downstream = f()
    assert count == 2 and first_still_blocked  # the retry did not wait for the blocked attempt
    assert downstream == (2, True)  # handed over again with the retried run's value
    assert [s.name for s in run.states] == ["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]
    assert "exceeded timeout of 0.5 second(s)" in run.states[2].message


# -- where they differ ------------------------------------------------------------------------------
def test_a_dask_worker_killed_mid_task_crashes_its_run_and_the_flow_reports_it(dask_cluster):
    @task
    def dies():
        os._exit(3)

    @task
    def after(x):
        return x

    runs = []

    @flow(task_runner=DaskTaskRunner(address=dask_cluster.scheduler_address))
    def f():
        killed = dies.submit()
        # Dask fails both dependents without running them; the runner runs
        # them again with the crash known, so the usual upstream rules apply.
        blocked, allowed = after.submit(killed), after.submit(allow_failure(killed))
        wait([killed, blocked, allowed])
        runs.extend(future.task_run for future in (killed, blocked, allowed))
        return killed

    state = f(return_state=True)
    assert state.is_failed() and state.result(raise_on_failure=False).is_crashed()
    killed, blocked, allowed = runs
    assert killed.state.is_crashed() and "crashed" in killed.state.message
    # As in Prefect, allow_failure admits a Failed upstream, not a Crashed one.
    for run in (blocked, allowed):
        assert run.state.name == "NotReady" and "Crashed" in run.state.message


def test_a_ray_worker_killed_mid_task_is_retried_by_ray(ray_session, tmp_path):
    marker = str(tmp_path / "died-once")

    @task
    def dies_once():
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)
        return "second attempt"

    @flow(task_runner=RayTaskRunner())
    def f():
        return dies_once.submit().result()

    assert f() == "second attempt" and os.path.exists(marker)


# A driver of the session's Ray, in a child process: the flow fails while a run
# waits on the cluster for two runs still executing, so the runner withdraws it.
_FAILING_FLOWS = textwrap.dedent(
    """
    import sys, time
    import ray
    from nbflow import flow, task
    from nbflow.task_runners import RayTaskRunner

    ray.init(address=sys.argv[1], log_to_driver=False)

    @task
    def hold():
        time.sleep(0.5)  # still executing when the flow below gives up
        return "held"

    @task
    def later():
        return "ran"

    @flow(task_runner=RayTaskRunner())
    def gives_up():
        held = [hold.submit() for _ in range(2)]
        later.submit(wait_for=held)
        raise RuntimeError("the flow gives up")

    for _ in range(int(sys.argv[2])):
        try:
            gives_up()
        except RuntimeError:
            pass
    print("the driver is alive")
    """
)


def test_a_failing_ray_flow_leaves_its_driver_alive(ray_session):
    out = subprocess.run(
        [sys.executable, "-c", _FAILING_FLOWS, ray_session.get_runtime_context().gcs_address, "8"],
        capture_output=True, text=True, timeout=240,
    )
    crash = [line for line in out.stderr.splitlines() if "Check failed" in line][:1]
    assert "the driver is alive" in out.stdout, (out.returncode, crash)


# A driver of the session's Ray, in a child process, that shuts Ray down itself after flows
# (as a script, a test or Ray's atexit does): nbflow must not be waiting on Ray by then.
_SHUTDOWN_CYCLES = textwrap.dedent(
    """
    import sys
    import ray
    from nbflow import flow, task
    from nbflow.task_runners import RayTaskRunner

    @task
    def one():
        print("hello")
        return 1

    @flow(task_runner=RayTaskRunner())
    def f():
        return one.submit().result()

    for cycle in range(int(sys.argv[2])):
        ray.init(address=sys.argv[1], log_to_driver=False)
        assert f() == 1 and f() == 1
        ray.shutdown()
        print("cycle", cycle, "survived", flush=True)
    """
)


def test_ray_shut_down_by_its_user_after_flows_leaves_the_driver_alive(ray_session):
    out = subprocess.run(
        [sys.executable, "-c", _SHUTDOWN_CYCLES, ray_session.get_runtime_context().gcs_address, "3"],
        capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0 and "cycle 2 survived" in out.stdout, (out.returncode, out.stderr[-1500:])


def test_a_dask_runner_given_no_address_starts_its_own_cluster_and_closes_it():
    """The seed's "multiple task runners" example: a subflow on its own cluster inside a thread-pool flow."""
    clusters = []

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
        clusters.append(current_flow_run().task_runner._cluster)
        future = hello_dask.submit()
        return future.result(), future.task_run

    @flow
    def parent_flow():
        marvin, ford = hello_local.submit("marvin"), hello_local.submit("ford")
        pid, run = dask_subflow()
        return marvin.result(), ford.result(), pid, run

    marvin, ford, pid, run = parent_flow()
    assert (marvin, ford) == ("marvin", "ford") and pid != os.getpid()
    assert "Hello from Dask!\n" in run.output.text()
    assert clusters[0].status.name == "closed"


# The same example with Ray, in a child process: one process holds one Ray, and
# this one's is the session's.
_OWN_RAY = textwrap.dedent(
    """
    import json, os, sys
    import ray
    from nbflow import flow, task
    from nbflow.task_runners import RayTaskRunner

    @task
    def hello_local(name):
        return name

    @task
    def hello_ray():
        print("Hello from Ray!")
        return os.getpid()

    @flow(task_runner=RayTaskRunner(init_kwargs=json.loads(sys.argv[1])))
    def ray_subflow():
        future = hello_ray.submit()
        return future.result(), future.task_run.output.text(), ray.is_initialized()

    @flow
    def parent_flow():
        marvin, ford = hello_local.submit("marvin"), hello_local.submit("ford")
        return (marvin.result(), ford.result(), *ray_subflow())

    marvin, ford, pid, output, running = parent_flow()
    print(json.dumps([marvin, ford, pid != os.getpid(), output, running, ray.is_initialized()]))
    """
)


def test_a_ray_runner_given_no_address_starts_its_own_ray_and_shuts_it_down(ray_options):
    pytest.importorskip("ray")
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    for _ in range(2):  # a loaded machine can miss Ray's fixed start-up limits once
        out = subprocess.run(
            [sys.executable, "-c", _OWN_RAY, json.dumps(ray_options)],
            capture_output=True, text=True, timeout=120, env=env,
        )
        if "timed out during startup" not in out.stderr:
            break
    else:
        pytest.skip("Ray could not start its own cluster in time on this machine, twice")
    assert out.returncode == 0, out.stderr[-2000:]
    marvin, ford, elsewhere, output, running, still_running = json.loads(out.stdout.splitlines()[-1])
    assert (marvin, ford) == ("marvin", "ford") and elsewhere
    assert output == "Hello from Ray!\n" and running and not still_running


def test_a_retry_reuses_what_the_cluster_computed_and_reruns_only_the_failure(engine, tmp_path):
    import nbflow
    import nbflow.runs
    import nbflow.settings

    nbflow.settings.current.persist_results = True
    fixed = tmp_path / "fixed"  # the workers are other processes: the fix is a file they see

    @task
    def load(i: int) -> int:
        if i == 1 and not fixed.exists():
            raise ValueError("bad")
        return i * 10

    @flow(name=f"cluster-retry-{engine.name}", task_runner=engine.runner())
    def f(n: int) -> list[int]:
        loads = load.map(range(n))
        loads.wait()
        return loads.result()

    assert f(3, return_state=True).is_failed()
    fixed.touch()
    assert nbflow.retry(nbflow.runs.last_flow_run()) == [0, 10, 20]
    assert [r.state.name for r in nbflow.runs.last_flow_run().task_runs] == ["Cached", "Completed", "Cached"]
