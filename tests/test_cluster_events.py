"""Cluster runners tell watchers when their engine starts and stops (events.ClusterEvent)."""

from __future__ import annotations

import pytest

import nbflow
from nbflow import flow, task

pytest.importorskip("distributed")

from nbflow.task_runners import DaskTaskRunner  # noqa: E402

THREADED = {"n_workers": 1, "threads_per_worker": 2, "processes": False, "dashboard_address": None}


@task
def double(x: int) -> int:
    return 2 * x


def test_a_local_dask_cluster_publishes_its_start_and_stop_around_the_flow_runs_states():
    @flow(task_runner=DaskTaskRunner(cluster_kwargs=THREADED))
    def doubled() -> list[int]:
        return double.map(range(3)).result()

    seen = []
    with nbflow.events.subscribe(seen.append, ("cluster", "flow-state")):
        assert doubled() == [0, 2, 4]
    run = nbflow.runs.last_flow_run()
    # the cluster starts before the flow run enters Running and stops before its final state is published
    order = [e.phase if e.kind == "cluster" else e.state.name for e in seen]
    assert order == ["Pending", "starting", "started", "Running", "stopping", "stopped", "Completed"]
    got = [e for e in seen if e.kind == "cluster"]
    assert {e.what for e in got} == {"Dask cluster"}
    assert all(e.flow_run is run and e.run is run and isinstance(e.runner, DaskTaskRunner) for e in got)
    times = [e.time for e in got]
    assert times == sorted(times)
    assert run.states[0].timestamp_seconds <= times[0] <= times[1] <= run.start_time <= times[2]


def test_no_subscriber_no_cluster_event_and_other_kinds_do_not_get_them():
    @flow(task_runner=DaskTaskRunner(cluster_kwargs=THREADED))
    def one() -> int:
        return double.submit(1).result()

    got = []
    with nbflow.events.subscribe(got.append, ("flow-state", "task-state")):
        assert one() == 2
    assert {e.kind for e in got} == {"state"}
