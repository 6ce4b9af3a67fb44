"""ProcessPoolTaskRunner: what worker processes add (the semantics every runner shares are in runner_semantics.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest

import nbflow.runtime
from nbflow import allow_failure, flow, task, wait
from nbflow.context import current_flow_run
from nbflow.exceptions import TaskRunTimeoutError
from nbflow.flows import cancel_flow_run
from nbflow.task_runners import ProcessPoolTaskRunner
from runner_semantics import SAFETY, wait_for_file

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


# -- faults: stopping work, dead workers ------------------------------------------------------
def _pid_file(tmp_path, name):
    return str(tmp_path / f"{name}.pid")


def _write_pid(path):
    with open(path + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.replace(path + ".tmp", path)  # the test never reads half a pid


def _read_pid(path):
    wait_for_file(path)
    with open(path) as handle:
        return int(handle.read())


def _gone(pid):
    """True once process ``pid`` has exited and been reaped (the pool reaps its workers)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _blocks_in_c():
    # A C call that no signal interrupts: the worker's own deadline (SIGALRM) cannot stop it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGINT})
    time.sleep(30)


def _swallows_its_deadline():
    try:
        time.sleep(30)
    except BaseException:  # the worker's own timeout lands here; the code goes on blocking
        time.sleep(30)


@pytest.mark.parametrize("stop", ["cancel_flow_run", "flow timeout", "task timeout, blocked in C",
                                  "task timeout, swallowed"])
def test_a_run_stopped_while_it_executes_has_its_worker_killed_and_replaced(stop, tmp_path, wait_until):
    pid_file = _pid_file(tmp_path, "stuck")
    timeout = 0.5 if stop.startswith("task timeout") else None

    @task(timeout_seconds=timeout)
    def stuck():
        _write_pid(pid_file)
        if stop == "task timeout, swallowed":
            _swallows_its_deadline()
        else:
            _blocks_in_c()
        return "finished"

    @task
    def pid(_):
        return os.getpid()

    runs = []

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1), timeout_seconds=1 if stop == "flow timeout" else None)
    def f():
        future = stuck.submit()
        runs.append(future.task_run)
        _read_pid(pid_file)
        if stop == "cancel_flow_run":
            assert wait_until(lambda: future.state.is_running())
            cancel_flow_run(current_flow_run())
            return "cancelled"
        if stop == "flow timeout":
            while True:  # until the flow's deadline interrupts it
                time.sleep(0.01)
        future.wait()
        return "waited"

    state = f(return_state=True)
    (run,) = runs
    expected = {"cancel_flow_run": "Cancelled", "flow timeout": "TimedOut"}.get(stop, "Failed")
    assert state.name == expected if expected != "Failed" else state.is_completed()
    if timeout is None:
        assert run.state.is_cancelled() and "was cancelled while running" in run.state.message
    else:
        assert run.state.name == "TimedOut" and "exceeded timeout of 0.5 second(s)" in run.state.message
        with pytest.raises(TaskRunTimeoutError):
            run.state.result()
    assert [s.name for s in run.states][:2] == ["Pending", "Running"]
    killed = _read_pid(pid_file)
    assert wait_until(lambda: _gone(killed))  # killed, not left to block for 30 s

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def again():
        return pid.map(range(3)).result()

    pids = again()  # a new worker, at once: the next flow does not wait for the stuck one
    assert len(set(pids)) == 1 and killed not in pids


def test_a_run_past_its_deadline_is_retried_after_its_worker_was_killed(tmp_path):
    pid_file = _pid_file(tmp_path, "first")

    @task(timeout_seconds=0.5, retries=1)
    def stuck_once():
        if not os.path.exists(pid_file):
            _write_pid(pid_file)
            _blocks_in_c()
        return nbflow.runtime.task_run.run_count, os.getpid()

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def f():
        future = stuck_once.submit()
        return future.result(), future.task_run

    (count, pid), run = f()
    assert count == 2 and run.run_count == 2 and pid != _read_pid(pid_file)
    assert [s.name for s in run.states] == ["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]
    assert "exceeded timeout of 0.5 second(s)" in run.states[2].message


def test_a_run_whose_worker_dies_is_retried_and_its_record_shows_it_ran(tmp_path):
    marker = str(tmp_path / "died-once")

    @task(retries=1)
    def dies_once():
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return nbflow.runtime.task_run.run_count

    @task
    def dies():
        os._exit(3)

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    def f():
        retried, crashed = dies_once.submit(), dies.submit()
        wait([retried, crashed])
        return retried.task_run, crashed.task_run

    retried, crashed = f()
    assert retried.state.result() == 2 and retried.run_count == 2
    assert [s.name for s in retried.states] == ["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]
    assert "died while running it" in retried.states[2].message
    assert [s.name for s in crashed.states] == ["Pending", "Running", "Crashed"]


def test_runs_are_never_handed_to_workers_that_died_idle(tmp_path, wait_until):
    gate = str(tmp_path / "gate")

    @task
    def pid(_):
        return os.getpid()

    @task
    def gathers(i):
        open(str(tmp_path / f"started-{i}"), "w").close()
        wait_for_file(gate)  # both workers are busy at once, so both exist
        return os.getpid()

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    def start_two():
        futures = gathers.map(range(2))
        for i in range(2):
            wait_for_file(str(tmp_path / f"started-{i}"))
        open(gate, "w").close()
        return futures.result()

    workers = set(start_two())
    assert len(workers) == 2
    for worker in workers:  # idle, and unable to read what they are sent
        os.kill(worker, signal.SIGSTOP)

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    def after_the_deaths():
        futures = pid.map(range(4))
        assert wait_until(lambda: sum(f.task_run.started for f in futures) == 2)  # sent to the stopped ones
        for worker in workers:
            os.kill(worker, signal.SIGKILL)
        wait(futures)
        return [f.task_run for f in futures]

    runs = after_the_deaths()
    assert all(run.state.is_completed() for run in runs), [run.state for run in runs]
    assert not workers & {run.state.result() for run in runs}
    for run in runs:
        assert [s.name for s in run.states] == ["Pending", "Running", "Completed"]


_INTERRUPTED_SCRIPT = textwrap.dedent(
    """
    import json, time
    from nbflow import flow, task
    from nbflow.runs import last_flow_run
    from nbflow.task_runners import ProcessPoolTaskRunner

    @task
    def blocks(i):
        print(f"started {i}", flush=True)
        time.sleep(30)

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    def main_flow():
        return blocks.map(range(4)).result()  # two execute, two wait for a worker

    try:
        main_flow()
    except KeyboardInterrupt:
        run = last_flow_run()
        print("interrupted", json.dumps([run.state.name, [r.state.name for r in run.task_runs]]), flush=True)
    """
)


def test_ctrl_c_in_a_script_leaves_no_run_running(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(_INTERRUPTED_SCRIPT)
    child = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        for line in child.stdout:  # echoed by the driver as the worker prints it
            if line.startswith("started"):
                break
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=SAFETY)  # not 30 s: the workers were killed
    finally:
        child.kill()
    assert child.returncode == 0, err
    flow_state, task_states = json.loads(out.split("interrupted ", 1)[1])
    assert flow_state == "Cancelled" and len(task_states) == 4
    assert set(task_states) <= {"Cancelled", "Crashed"}, task_states


def test_runs_of_a_short_task_queue_at_the_workers_each_keeping_its_own_outcome():
    from nbflow.runners import sizing

    @task
    def short(x):
        if x == 77:
            raise ValueError("bad 77")
        return x * 2

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    def twice():
        short.map(range(10)).wait()  # measures the task: its runs are short
        assert sizing.mean_duration(short.task_key) is not None
        futures = short.map(range(300))  # now queued several at a worker
        futures.wait()
        return [f.task_run for f in futures]

    runs = twice()
    for x, run in enumerate(runs):
        if x == 77:
            assert run.state.is_failed() and "bad 77" in run.state.message
        else:
            assert run.state.result() == 2 * x
            assert [s.name for s in run.states] == ["Pending", "Running", "Completed"]


def test_a_map_of_a_short_task_crosses_the_pipes_in_bundles_each_run_its_own(monkeypatch):
    # Issue 12: the driver sends a worker the runs queued for it in one message, and a worker
    # with runs waiting behind the one it runs reports them with its live messages, a batch at
    # a time: far fewer messages than two each way per run, every run still its own.
    from nbflow.runners import processes
    from nbflow.runners.wire import driver

    sends, blobs = [], []
    send, receive = processes._Pool._send, driver.receive
    monkeypatch.setattr(processes._Pool, "_send", lambda self, worker, jobs: sends.append(len(jobs)) or send(self, worker, jobs))
    monkeypatch.setattr(driver, "receive", lambda blob: blobs.append(1) or receive(blob))

    @task
    def short(x):
        if x % 500 == 7:
            raise ValueError(f"bad {x}")
        print(f"item {x}")
        return x * 2

    n = 2000

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    def many():
        short.map(range(10)).wait()  # measured short: its runs queue at the workers
        sends.clear(), blobs.clear()
        futures = short.map(range(n))
        futures.wait()
        return [f.task_run for f in futures]

    runs = many()
    assert sum(sends) == n and len(sends) < n / 8, len(sends)
    assert len(blobs) < n / 4, len(blobs)
    for x, run in enumerate(runs):
        if x % 500 == 7:
            assert run.state.is_failed() and f"bad {x}" in run.state.message
        else:
            assert run.state.result() == 2 * x and run.output.text() == f"item {x}\n"
            assert [s.name for s in run.states] == ["Pending", "Running", "Completed"]
