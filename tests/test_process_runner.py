"""ProcessPoolTaskRunner: what worker processes add (the semantics every runner shares are in runner_semantics.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import cloudpickle
import pytest

from nbflow import allow_failure, flow, task, wait
from nbflow.task_runners import ProcessPoolTaskRunner
from runner_semantics import SAFETY

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_pool_stays_warm_across_flow_runs():
    @task
    def pid(_):
        return os.getpid()

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    def f():
        return set(pid.map(range(6)).result())

    first, second = f(), f()
    assert first and second <= first | second and len(first | second) <= 2
    assert os.getpid() not in first


@pytest.mark.parametrize("death", ["exit", "sigkill"])
def test_worker_killed_mid_task_crashes_its_run_and_the_flow_reports_it(death):
    @task
    def dies():
        if death == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)

    @task
    def fine():
        return "fine"

    runs = []

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    def f():
        killed = dies.submit()
        blocked, allowed = fine.submit(wait_for=[killed]), fine.submit(wait_for=[allow_failure(killed)])
        wait([killed, blocked, allowed])
        runs.extend(future.task_run for future in (killed, blocked, allowed))
        return killed

    state = f(return_state=True)
    returned = state.result(raise_on_failure=False)  # as in Prefect: the state of the run it returned
    assert state.is_failed() and returned.is_crashed() and "died while running it" in returned.message
    killed, blocked, allowed = runs
    # As in Prefect, allow_failure admits a Failed upstream, not a Crashed one.
    assert blocked.state.name == allowed.state.name == "NotReady"

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    def again():
        return fine.submit().result()

    assert again() == "fine"  # the pool replaced the dead worker


def test_initializer_runs_once_in_each_worker(tmp_path):
    marker = str(tmp_path / "init")

    def setup(path):
        with open(path, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        os.environ["NBFLOW_TEST_INIT"] = "ready"

    @task
    def read(_):
        return os.environ.get("NBFLOW_TEST_INIT")

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1, initializer=setup, initargs=(marker,)))
    def f():
        return read.map(range(3)).result()

    assert f() == ["ready"] * 3
    assert f() == ["ready"] * 3
    with open(marker) as handle:
        assert len(handle.read().split()) == 1


def test_failing_initializer_crashes_runs_with_its_error():
    def setup():
        raise RuntimeError("no database here")

    @task
    def anything():
        return 1

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1, initializer=setup))
    def f():
        future = anything.submit()
        future.wait()
        return future.task_run

    state = f().state
    assert state.is_crashed() and "no database here" in state.message


def test_tasks_defined_in_a_main_script_run_without_a_main_guard(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(
        """
        from nbflow import allow_failure, flow, task, wait
        from nbflow.task_runners import ProcessPoolTaskRunner

        OFFSET = 100

        @task
        def shift(x):
            print(f"shifting {x}")
            return x + OFFSET

        @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
        def main_flow():
            return shift.map([1, 2]).result()

        print("result", main_flow())
        """
    ))
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=SAFETY, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "result [101, 102]" in out.stdout
    assert "shifting 1" in out.stdout and "shifting 2" in out.stdout  # echoed by the driver
