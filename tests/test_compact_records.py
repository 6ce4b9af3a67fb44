"""Ended task runs are kept compactly (issue 12) and read as they did while live."""

from __future__ import annotations

import gc
import logging
import tracemalloc

import pytest

import nbflow.settings
from nbflow import flow, task
from nbflow.records import EndedStates
from nbflow.runs import last_flow_run
from nbflow.states import StateType


@task
def inc(x, step=1):
    return x + step


@task(retries=1)
def flaky_once(x, seen=[]):  # noqa: B006 - counts attempts across runs
    if x not in seen:
        seen.append(x)
        raise ValueError(x)
    return x


def test_an_ended_run_reads_its_states_as_the_list_it_held():
    @flow
    def pipeline():
        return inc(1, return_state=True)

    pipeline()
    run = last_flow_run().task_runs[0]
    states = run.states
    assert isinstance(states, EndedStates)
    assert len(states) == 3 and [s.type for s in states] == [StateType.PENDING, StateType.RUNNING, StateType.COMPLETED]
    assert states[-1] is run.state and states[2] is states[-1] and states[-1].result() == 2
    assert states[0].timestamp_seconds <= states[1].timestamp_seconds <= states[2].timestamp_seconds
    assert run.start_time == states[1].timestamp_seconds and run.end_time == states[-1].timestamp_seconds
    assert [s.name for s in states[1:]] == ["Running", "Completed"] and states == list(states)
    assert repr(states).startswith("[Pending(")


def test_a_run_with_more_states_keeps_them_all():
    @flow
    def pipeline():
        return flaky_once(7)

    assert pipeline() == 7
    run = last_flow_run().task_runs[0]
    assert isinstance(run.states, list)
    assert [s.name for s in run.states] == ["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]


def test_parameters_read_as_a_dict_of_what_was_submitted():
    @flow
    def pipeline():
        return inc.map([1, 2, 3], step=10).result()

    assert pipeline() == [11, 12, 13]
    runs = last_flow_run().task_runs
    assert [r.parameters for r in runs] == [{"x": 1, "step": 10}, {"x": 2, "step": 10}, {"x": 3, "step": 10}]
    runs[0].parameters["x"] = 99  # a copy: the record keeps what the run received
    assert runs[0].parameters == {"x": 1, "step": 10}
    assert [r.dynamic_key for r in runs] == ["0", "1", "2"]


@task
def one(x):
    return x


@pytest.mark.parametrize(("mapped", "bound"), [(inc, 800), (one, 680)])
def test_a_big_maps_ended_runs_hold_a_bounded_number_of_bytes(monkeypatch, mapped, bound):
    """Bytes the records of a finished 2,000-item map keep (tracemalloc: the same on every machine).

    With every state object and a dict of parameters per run, this was about 1,100 bytes a run;
    a one-parameter task's runs keep their value bare, and their dynamic key shares the map index.
    """
    monkeypatch.setattr(nbflow.settings.current, "history", False)
    monkeypatch.setattr(logging.root, "handlers", [])  # pytest's would keep a "Finished in state" record per run
    n = 2000
    values = list(range(1000, 1000 + n))
    kept = []

    @flow
    def fan_out():
        futures = mapped.map(values)
        futures.wait()
        kept.append(futures)

    fan_out()  # warm: the first run imports and caches what later ones share
    kept.clear()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fan_out()
        gc.collect()
        per_run = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert all(f.state.is_completed() for f in kept[0])
    assert per_run < bound, f"{per_run:.0f} bytes per ended run"
