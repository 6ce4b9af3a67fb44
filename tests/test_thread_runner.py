"""ThreadPoolTaskRunner: caps, no deadlocks for tasks waiting on tasks, standalone use, bad input."""

from __future__ import annotations

import threading

import pytest

import nbflow
import nbflow.runs
from nbflow import as_completed, flow, task, wait
from nbflow.futures import PrefectFuture, PrefectFutureList
from nbflow.runs import last_flow_run
from nbflow.task_runners import TaskRunner, ThreadPoolTaskRunner

SAFETY = 10.0


@task
def ident(x):
    return x


@task
def square(x):
    return x * x


# -- caps ---------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_max_workers_is_never_exceeded(n, counter, gate):
    @task
    def work(i):
        counter.enter()
        try:
            gate.wait()
        finally:
            counter.leave()
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=n))
    def f():
        futures = work.map(range(3 * n + 1))
        assert counter.wait_total(n)  # n runs started...
        # ...and no (n+1)th starts while they hold their slots
        assert not counter.wait_total(n + 1, timeout=0.1)
        gate.open()
        return futures.result()

    assert f() == list(range(3 * n + 1))
    assert counter.peak == n


@pytest.mark.timeout(30)
def test_default_runner_lets_16_mutually_waiting_tasks_run():
    barrier = threading.Barrier(16, timeout=SAFETY)

    @task
    def meet(i):
        barrier.wait()
        return i

    @flow
    def f():
        return meet.map(range(16)).result()

    assert f() == list(range(16))


def test_max_workers_must_be_positive():
    with pytest.raises(ValueError):
        ThreadPoolTaskRunner(max_workers=0)


def test_thread_pool_max_workers_setting_caps_default_runner(counter, gate):
    nbflow.settings.current.thread_pool_max_workers = 2

    @task
    def work(i):
        counter.enter()
        try:
            gate.wait()
        finally:
            counter.leave()

    @flow
    def f():
        futures = work.map(range(5))
        assert counter.wait_total(2)
        assert not counter.wait_total(3, timeout=0.1)
        gate.open()
        futures.wait()

    f()
    assert counter.peak == 2


# -- tasks that wait on tasks never deadlock (semantics 4.2) ---------------------------------------
@pytest.mark.timeout(30)
def test_nested_map_and_result_with_one_worker():
    @task
    def outer(n):
        return sum(square.map(range(n)).result())

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        return outer.map([3, 4]).result()

    assert f() == [5, 14]


@pytest.mark.timeout(30)
def test_nested_submit_and_wait_with_one_worker():
    @task
    def outer(x):
        fut = square.submit(x)
        fut.wait()
        return fut.result() + ident.submit(1).result()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        return outer.submit(3).result()

    assert f() == 10


@pytest.mark.timeout(30)
def test_as_completed_inside_a_task_with_one_worker():
    @task
    def outer(n):
        futures = [square.submit(i) for i in range(n)]
        return sorted(fu.result() for fu in as_completed(futures))

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        return outer.submit(4).result()

    assert f() == [0, 1, 4, 9]


@pytest.mark.timeout(30)
def test_wait_inside_a_task_with_one_worker():
    @task
    def outer(n):
        futures = square.map(range(n))
        done, not_done = wait(futures)
        return len(done), len(not_done)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        return outer(3), outer.submit(2).result()

    assert f() == ((3, 0), (2, 0))


@pytest.mark.timeout(30)
def test_deeply_nested_waits_with_one_worker():
    @task
    def level(depth):
        if depth == 0:
            return 1
        return sum(level.map([depth - 1, depth - 1]).result())

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        return level.submit(4).result()

    assert f() == 16


@pytest.mark.timeout(30)
def test_nested_waits_still_respect_the_cap_for_running_tasks(counter):
    """While outer tasks block on inner ones, at most max_workers threads execute task code."""

    @task
    def inner(i):
        counter.enter()
        counter.leave()
        return i

    @task
    def outer(i):
        return sum(inner.map(range(3)).result())

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def f():
        return outer.map(range(4)).result()

    assert f() == [3, 3, 3, 3]
    assert counter.peak <= 2


# -- standalone use --------------------------------------------------------------------------------
def test_runner_as_standalone_context_manager():
    with ThreadPoolTaskRunner() as runner:
        fut = runner.submit(square, {"x": 3})
        futures = runner.map(square, {"x": [1, 2]})
        assert isinstance(fut, PrefectFuture)
        assert isinstance(futures, PrefectFutureList)
        assert fut.result() == 9
        assert futures.result() == [1, 4]


def test_standalone_runner_waits_for_its_runs_on_exit(gate, open_gate_on_wait):
    done = []

    @task
    def slow(x):
        gate.wait()
        done.append(x)

    with ThreadPoolTaskRunner(max_workers=2) as runner:
        futures = runner.map(slow, {"x": [1, 2, 3]})
        open_gate_on_wait(slow)
    assert sorted(done) == [1, 2, 3]
    assert all(fu.state.is_completed() for fu in futures)


def test_standalone_runner_with_future_arguments():
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        a = runner.submit(square, {"x": 2})
        b = runner.submit(square, {"x": a})
        assert b.result() == 16


def test_submit_of_non_task_is_type_error_naming_the_fix():
    def plain(x):
        return x

    with ThreadPoolTaskRunner() as runner:
        with pytest.raises(TypeError) as info:
            runner.submit(plain, {"x": 1})
        assert "@task" in str(info.value) and "task(" in str(info.value)
        with pytest.raises(TypeError) as info:
            runner.map(plain, {"x": [1]})
        assert "@task" in str(info.value)


def test_each_flow_run_gets_its_own_runner_copy():
    runner = ThreadPoolTaskRunner(max_workers=2)
    seen = []

    @flow(task_runner=runner)
    def f():
        seen.append(last_flow_run().task_runner)
        return ident.submit(1).result()

    f()
    f()
    assert seen[0] is not seen[1]
    assert all(isinstance(r, ThreadPoolTaskRunner) and r.max_workers == 2 for r in seen)


def test_task_runner_is_abstract_base():
    assert issubclass(ThreadPoolTaskRunner, TaskRunner)
    with pytest.raises(TypeError):
        TaskRunner()


def test_duplicate_keeps_configuration():
    r = ThreadPoolTaskRunner(max_workers=7)
    d = r.duplicate()
    assert d is not r and d.max_workers == 7


def _open_gate_on_cancel(gate):
    """Open ``gate`` once a run is cancelled (the running one may then finish)."""

    def on_event(event):
        if event.state is not None and event.state.is_cancelled():
            gate.open()

    nbflow.runs.subscribe(on_event)


def test_runner_exit_with_error_cancels_queued_runs(gate):
    started = threading.Event()

    @task
    def blocker(x):
        started.set()
        gate.wait()
        return x

    futures = None
    with pytest.raises(RuntimeError):
        with ThreadPoolTaskRunner(max_workers=1) as runner:
            futures = runner.map(blocker, {"x": [1, 2, 3]})
            assert started.wait(SAFETY)
            _open_gate_on_cancel(gate)
            raise RuntimeError("leave the block")
    assert futures[0].state.is_completed()
    assert all(fu.state.is_cancelled() for fu in futures[1:])


def test_cancelled_run_result_gives_a_clear_error(gate):
    started = threading.Event()

    @task
    def blocker(x):
        started.set()
        gate.wait()
        return x

    with pytest.raises(RuntimeError):
        with ThreadPoolTaskRunner(max_workers=1) as runner:
            futures = runner.map(blocker, {"x": [1, 2]})
            assert started.wait(SAFETY)
            _open_gate_on_cancel(gate)
            raise RuntimeError("leave")
    cancelled = futures[1]
    assert cancelled.state.is_cancelled()
    with pytest.raises(Exception) as info:
        cancelled.result()
    from nbflow.exceptions import CancelledRun

    assert isinstance(info.value, CancelledRun)
    assert "ancel" in str(info.value)
    assert isinstance(cancelled.result(raise_on_failure=False), CancelledRun)


@pytest.mark.timeout(60)
def test_max_workers_holds_when_a_waiting_task_resumes(counter):
    """A worker that waited on tasks must not resume while its stand-in still runs a task:
    with max_workers=1 at most one run executes task code at any moment (checked over many
    repetitions, since the overlap needs an unlucky interleaving)."""

    def work():
        total = 0
        for i in range(20000):
            total += i
        return total

    @task
    def inner(i):
        counter.enter()
        try:
            work()
        finally:
            counter.leave()
        return i

    @task
    def outer(n):
        counter.enter()
        futures = [inner.submit(i) for i in range(n)]
        counter.leave()  # blocked on a result below: not executing
        futures[0].result()
        counter.enter()  # resumed
        try:
            work()
        finally:
            counter.leave()
        return [fu.result() for fu in futures]

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        return outer.submit(5).result()

    for _ in range(40):
        assert f() == [0, 1, 2, 3, 4]
        assert counter.peak <= 1, "more than max_workers=1 runs executed at once"
