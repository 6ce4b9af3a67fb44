"""The view of a flow on a cluster runner: the cluster's start and stop are shown and timed; a cluster
subflow is a node of its own whose runs are never merged with the parent's."""

from __future__ import annotations

import time

import pytest

import nbflow
from nbflow import flow, task
from nbflow.notebook import session as sessions
from nbflow.notebook.session import NotebookSession
from nbflow.report.model import RunModel, counts_dict
from nbflow.notebook.widget import RedrawClock, RunView

pytest.importorskip("distributed")

from nbflow.task_runners import DaskTaskRunner, ThreadPoolTaskRunner  # noqa: E402

THREADED = {"n_workers": 1, "threads_per_worker": 2, "processes": False, "dashboard_address": None}


@task
def square(x: int) -> int:
    return x * x


def test_the_header_says_the_cluster_starts_and_stops_and_its_time_covers_both(comms, displays, view_settings):
    session = NotebookSession(None, display=displays, widgets=True, clock=RedrawClock(thread=False),
                              update=lambda bundle, display_id: None)
    sessions.install(session)
    view_settings.view_delay = 0
    seen: dict[str, tuple] = {}

    def watch(event) -> None:  # subscribed after the session: it has handled the event
        live = session.live.get(event.flow_run)
        session.clock.tick()  # what the clock does meanwhile: show the view, redraw it
        seen[event.phase] = (event.time, live, live.view.header if live and live.view else "")

    @flow(task_runner=DaskTaskRunner(cluster_kwargs=THREADED))
    def on_dask() -> int:
        return sum(square.map(range(10)).result())

    with nbflow.events.subscribe(watch, "cluster"):
        before = time.time()
        assert on_dask() == 285
        after = time.time()
    run = nbflow.runs.last_flow_run()
    started_at, live, header = seen["starting"]
    assert live is not None and live.model.flow_run is run  # the view begins before Running
    assert run.states[0].name == "Pending" and "starting Dask cluster…" in header
    assert 'class="nbflow-cluster" data-phase="starting"' in header
    assert "stopping Dask cluster…" in seen["stopping"][2]
    view = live.view
    assert view.finished and "Dask cluster…" not in view.header
    stopped_at = seen["stopped"][0]
    # the header's time runs from the cluster's start to its stop, within the call's wall time
    assert live.model.elapsed() == max(run.end_time, stopped_at) - started_at
    assert before <= started_at < run.start_time and run.end_time <= after and stopped_at <= after


def test_a_dask_subflow_in_a_thread_parent_is_one_node_and_keeps_its_runs(comms):
    @flow(task_runner=DaskTaskRunner(cluster_kwargs=THREADED))
    def child() -> int:
        return sum(square.map(range(200)).result())

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def parent() -> int:
        return sum(square.map(range(20)).result()) + child()

    parent()
    run = nbflow.runs.last_flow_run()
    view = RunView(RunModel.of(run))
    view.redraw(final=True)
    assert view.counts == {"Completed": 20} == run.state_counts()  # what `%nbflow runs` counts
    assert [(g["name"], g["count"], g["flow"]) for g in view.groups] == [("square", 20, None), ("square", 200, "child")]
    assert "square x20" in view.dag and "square x220" not in view.dag and "▸ child" in view.dag
    assert counts_dict(view.model.flow_counts(0)) == {"Completed": 200}
    view.expand(0)
    assert "square x200" in view.dag and view.counts == {"Completed": 20}
