"""Run records and the event seam (DESIGN principle 1): nbflow.runs."""

from __future__ import annotations

import datetime
import gc
import threading
import weakref

import pytest

import nbflow.events
import nbflow.runs
import nbflow.task_runners
import nbflow.settings
from nbflow import flow, task
from nbflow.runs import FlowRun, RunEvent, TaskRun, flow_runs, last_flow_run
from nbflow.states import StateType

SAFETY = 10.0


@task
def ident(x):
    return x


@task
def fail():
    raise ValueError("nope")


def test_subscribe_returns_a_handle_that_unsubscribes():
    got = []
    handle = nbflow.runs.subscribe(got.append)

    @flow
    def f():
        return ident(1)

    f()
    assert got and all(isinstance(e, RunEvent) for e in got)
    handle.unsubscribe()
    n = len(got)
    f()
    assert len(got) == n


def test_subscription_as_context_manager_and_callable():
    got = []
    with nbflow.runs.subscribe(got.append):

        @flow
        def f():
            return 1

        f()
    n = len(got)
    assert n > 0
    f()
    assert len(got) == n

    handle = nbflow.runs.subscribe(got.append)
    handle()
    f()
    assert len(got) == n


def test_subscribe_requires_a_callable():
    with pytest.raises(TypeError):
        nbflow.runs.subscribe("not callable")


def test_events_for_every_transition_of_flow_and_task_runs_in_order(events):
    @flow
    def f():
        a = ident.submit(1)
        b = fail.submit()
        c = ident.submit(b)
        nbflow.wait([a, b, c])

    f()
    fr = last_flow_run()
    assert events.state_names(fr) == ["Pending", "Running", "Completed"]
    a, b, c = fr.task_runs
    assert events.state_names(a) == ["Pending", "Running", "Completed"]
    assert events.state_names(b) == ["Pending", "Running", "Failed"]
    assert events.state_names(c) == ["Pending", "NotReady"]
    # the events match the records' state histories
    for run in (fr, a, b, c):
        assert events.state_names(run) == [s.name for s in run.states]
    # the flow run's first event comes before its task runs' and its last after theirs
    state_events = [e for e in events.events if e.kind == "state"]
    first_flow = state_events.index(next(e for e in state_events if e.run is fr))
    last_flow = max(i for i, e in enumerate(state_events) if e.run is fr)
    task_positions = [i for i, e in enumerate(state_events) if isinstance(e.run, TaskRun)]
    assert first_flow < min(task_positions) and last_flow > max(task_positions)


def test_events_for_retries_and_subflows(events):
    attempts = []

    @task(retries=1)
    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("again")
        return 1

    @flow
    def child():
        return flaky()

    @flow
    def parent():
        return child()

    parent()
    fr = last_flow_run()
    sub = fr.subflow_runs[0]
    assert events.state_names(sub) == ["Pending", "Running", "Completed"]
    assert events.state_names(sub.task_runs[0]) == [
        "Pending", "Running", "AwaitingRetry", "Retrying", "Completed",
    ]


def test_subscriber_that_raises_is_removed_and_runs_go_on():
    calls = []

    def bad(event):
        calls.append(event)
        raise RuntimeError("broken subscriber")

    nbflow.runs.subscribe(bad)

    @flow
    def f():
        return ident.submit(1).result()

    assert f() == 1
    assert len(calls) == 1
    assert bad not in nbflow.events.task_state and bad not in nbflow.events.flow_state


def test_flow_run_records_task_runs_state_and_timing():
    @flow
    def f():
        ident.submit(1).wait()
        ident(2)
        return 3

    f()
    fr = last_flow_run()
    assert isinstance(fr, FlowRun)
    assert fr.state.is_completed() and fr.state.type is StateType.COMPLETED
    assert len(fr.task_runs) == 2 and all(isinstance(r, TaskRun) for r in fr.task_runs)
    assert fr.flow_name == "f" and fr.parameters == {}
    assert fr.start_time is not None and fr.end_time is not None and fr.duration >= 0
    assert fr.state_counts() == {"Completed": 2}


def test_task_run_states_have_times_in_order():
    @flow
    def f():
        ident.submit(1).wait()

    f()
    run = last_flow_run().task_runs[0]
    stamps = [s.timestamp for s in run.states]
    assert all(isinstance(t, datetime.datetime) and t.tzinfo is not None for t in stamps)
    assert stamps == sorted(stamps)
    assert run.start_time is not None and run.end_time >= run.start_time
    assert run.duration >= 0


def test_task_run_upstream_lists_data_dependencies_and_wait_for():
    @flow
    def f():
        a = ident.submit(1)
        b = ident.submit(2)
        c = ident.submit([a, {"k": a}], wait_for=[b])
        d = ident.submit(3)
        nbflow.wait([c, d])
        return a.task_run, b.task_run, c.task_run, d.task_run

    a, b, c, d = f()
    assert c.upstream == (a, b)
    assert a.upstream == () and d.upstream == ()


def test_task_run_record_fields():
    @task(tags=["x"])
    def t(v):
        return v

    @flow
    def f():
        futures = t.map([10, 20])
        futures.wait()

    f()
    r0, r1 = last_flow_run().task_runs
    assert r0.parameters == {"v": 10} and r1.parameters == {"v": 20}
    assert r0.map_index == 0 and r1.map_index == 1
    assert r0.tags == frozenset({"x"})
    assert r0.task.name == "t" and r0.flow_run is last_flow_run()
    assert r0.run_count == 1 and r0.done


def test_last_flow_run_is_the_last_top_level_run():
    @flow
    def child():
        return 1

    @flow(flow_run_name="the-parent")
    def parent():
        return child()

    parent()
    assert last_flow_run().name == "the-parent"
    assert flow_runs()[-1].parent is last_flow_run()  # the subflow is recorded too


def test_old_flow_run_records_are_let_go_beyond_max_flow_runs():
    nbflow.settings.current.max_flow_runs = 3

    @flow
    def f(i):
        return ident.submit(i).result()

    refs = []
    for i in range(6):
        f(i)
        refs.append(weakref.ref(last_flow_run()))
    kept = flow_runs()
    assert len(kept) == 3
    assert [r.parameters["i"] for r in kept] == [3, 4, 5]
    from nbflow.store import history

    writer = history.current()
    if writer is not None:  # the run history holds a run only until it wrote it
        assert writer.flush(10)
    gc.collect()
    assert all(ref() is None for ref in refs[:3]), "old flow runs are still referenced"


def test_no_subscriber_means_no_cost_and_same_behaviour():
    nbflow.events.task_state = nbflow.events.flow_state = ()

    @flow
    def f():
        return ident.map([1, 2]).result()

    assert f() == [1, 2]
    assert [s.name for s in last_flow_run().states] == ["Pending", "Running", "Completed"]


def test_events_come_from_worker_threads_for_submitted_runs(events):
    threads = set()

    def watcher(event):
        if isinstance(event.run, TaskRun) and event.state is not None and event.state.name == "Running":
            threads.add(threading.current_thread().name)

    nbflow.runs.subscribe(watcher)

    @flow
    def f():
        ident.submit(1).wait()

    f()
    assert threads and all(t.startswith("nbflow-worker") for t in threads)


def test_cancelled_runs_publish_their_cancellation(events):
    gate = threading.Event()
    started = threading.Event()
    out = {}

    @task
    def blocker():
        started.set()
        gate.wait(SAFETY)

    @flow(task_runner=nbflow.task_runners.ThreadPoolTaskRunner(max_workers=1))
    def f():
        out["running"] = blocker.submit()
        assert started.wait(SAFETY)
        out["queued"] = ident.submit(1)
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            f()
    finally:
        gate.set()
    queued = out["queued"].task_run
    assert events.state_names(queued) == ["Pending", "Cancelled"]
    assert events.state_names(last_flow_run())[-1] == "Cancelled"


def test_subflow_called_in_a_task_owns_the_runs_its_body_submits():
    @flow
    def inner():
        return ident.submit(1).result()

    @task
    def runs_inner():
        return inner()

    @flow
    def outer():
        return runs_inner.submit().result()

    assert outer() == 1
    fr = last_flow_run()
    assert [r.task.name for r in fr.task_runs] == ["runs_inner"]
    (sub,) = fr.subflow_runs
    assert [r.task.name for r in sub.task_runs] == ["ident"]
    assert sub.parent is fr


@pytest.mark.timeout(60)
def test_no_event_is_lost_under_concurrency(events):
    @flow
    def f():
        firsts = ident.map(range(300))
        seconds = ident.map(firsts)
        return sum(seconds.result())

    assert f() == sum(range(300))
    fr = last_flow_run()
    assert len(fr.task_runs) == 600
    for run in fr.task_runs:
        assert events.state_names(run) == ["Pending", "Running", "Completed"]
    assert fr.state_counts() == {"Completed": 600}


def test_a_map_announces_its_runs_before_it_creates_them():
    seen: list[tuple[str, int]] = []

    def on_task_state(event):  # called as each run is created, in the flow's thread
        run = event.run
        if event.state.name == "Pending" and run.task is ident:
            seen.append((run.dynamic_key, run.flow_run.expected_runs()))

    @flow
    def mapped():
        ident.submit(0).wait()  # an earlier run of the same task does not count against the map
        ident.map(range(5)).wait()
        return nbflow.runs.last_flow_run().expected_runs()

    with nbflow.events.subscribe(on_task_state, "task-state"):
        left_at_end_of_body = mapped()
    assert seen == [("0", 0), ("1", 4), ("2", 3), ("3", 2), ("4", 1), ("5", 0)]
    assert left_at_end_of_body == 0
    run = last_flow_run()
    run.expect(ident.task_key, 3)  # once the run has ended, nothing is awaited
    assert run.expected_runs() == 0


def test_run_records_have_prefects_reading_fields():
    import datetime

    from nbflow import flow, task

    seen = {}

    @task(retries=1, version="2")
    def flaky():
        if not seen:
            seen["first"] = True
            raise ValueError("again")
        return 1

    def on_done(fl, run, state):
        seen["flow"] = (run.flow_version, run.deployment_id, run.work_pool_name, run.total_run_time, run.created)

    @flow(version="7", on_completion=[on_done])
    def f():
        return flaky.submit()

    before = datetime.datetime.now(datetime.timezone.utc)
    state = f(return_state=True)
    task_run = last_flow_run().task_runs[0]
    assert state.is_completed() and task_run.run_count == 2
    assert (task_run.task_version, task_run.flow_run_run_count) == ("2", 1)
    assert isinstance(task_run.total_run_time, datetime.timedelta) and task_run.estimated_run_time == task_run.total_run_time
    assert task_run.total_run_time.total_seconds() <= task_run.duration
    assert before <= task_run.created == task_run.expected_start_time
    version, deployment, pool, run_time, created = seen["flow"]
    assert (version, deployment, pool) == ("7", None, None) and run_time.total_seconds() > 0 and created >= before
