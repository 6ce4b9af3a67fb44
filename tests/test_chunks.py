"""Dask and Ray runners send the runs of a large .map of small tasks in chunks, each run its own.

A chunk is one engine task executing several runs in turn; every run keeps
its own states, retries, failure, output and value, and downstream runs (a
map over a chunked map, a task gathering them all) get each run's own value.
Runners use the session's Dask cluster and Ray (see ``conftest.py``).
"""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

from nbflow import flow, task
from nbflow.runners import chunks

cloudpickle.register_pickle_by_value(sys.modules[__name__])

N = 400  # several chunks on the session cluster's threads


@pytest.fixture(params=["dask", "ray"])
def runner(request, monkeypatch):
    monkeypatch.setattr(chunks, "FIRST_CHUNK", 25)  # chunks of 25 runs: 16 engine tasks per map
    if request.param == "dask":
        pytest.importorskip("distributed")
        from nbflow.task_runners import DaskTaskRunner

        return DaskTaskRunner(address=request.getfixturevalue("dask_cluster").scheduler_address)
    pytest.importorskip("ray")
    request.getfixturevalue("ray_session")
    from nbflow.task_runners import RayTaskRunner

    return RayTaskRunner()


@pytest.fixture
def chunks_made(monkeypatch):
    """The sizes of the chunks runners make, by task name, as they make them."""
    made: dict[str, list[int]] = {}
    slots = chunks.slots

    def counting(future, group):
        made.setdefault(group[0].run.task.name, []).append(len(group))
        return slots(future, group)

    monkeypatch.setattr(chunks, "slots", counting)
    return made


@task(retries=1, retry_delay_seconds=0)
def picky(x: int) -> int:
    from nbflow.runtime import task_run

    if x % 50 == 7 and task_run.run_count == 1:
        raise ValueError(f"first try of {x}")  # a retry succeeds
    if x % 100 == 13:
        raise ValueError(f"bad item {x}")  # fails for good
    print(f"item {x}")
    return x + 1


@task
def total(values: list[int]) -> int:
    return sum(values)


def test_chunk_size_aims_at_the_target_duration_and_spreads_the_work():
    assert chunks.chunk_size(10, threads=2, mean_seconds=None) == 2  # spread over 8 chunks at least
    assert chunks.chunk_size(1_000_000, threads=2, mean_seconds=None) == chunks.FIRST_CHUNK
    assert chunks.chunk_size(1_000_000, threads=2, mean_seconds=0.001) == int(chunks.CHUNK_SECONDS / 0.001)
    assert chunks.chunk_size(1_000_000, threads=2, mean_seconds=10.0) == 1  # slow tasks: one per Dask task


@task
def same(x: int) -> int:
    return x


def test_each_run_of_a_chunked_map_has_its_own_state_output_and_value(runner, chunks_made):
    @flow(task_runner=runner)
    def chunked() -> tuple:
        upstream = same.map(range(N))
        picked = picky.map(upstream)  # each run consumes one run of a chunk upstream
        picked.wait()
        ok = [f for f in picked if f.state.is_completed()]
        runs = [f.task_run for f in picked]
        return upstream.result(), runs, total.submit(ok).result()

    values, runs, summed = chunked()
    made = chunks_made["same"]  # 25 runs each at first, then sized from the durations measured
    assert sum(made) == N and len(made) >= 8 and min(made) > 1
    assert values == list(range(N))
    assert {r.map_index for r in runs if r.state.is_failed()} == {x for x in range(N) if x % 100 == 13}
    assert summed == sum(x + 1 for x in range(N) if x % 100 != 13)
    run = runs[3]
    assert run.map_index == 3 and run.output.text() == "item 3\n"
    assert [s.name for s in run.states] == ["Pending", "Running", "Completed"]


def test_a_failure_and_a_retry_in_a_chunk_touch_only_their_runs(runner):
    @flow(task_runner=runner)
    def chunked():
        return picky.map(range(N), return_state=True)

    states = chunked()
    assert len(states) == N
    for x, state in enumerate(states):
        if x % 100 == 13:
            assert state.is_failed() and f"bad item {x}" in state.message, (x, state)
        else:
            assert state.is_completed() and state.result() == x + 1, (x, state)
    retried = [s for x, s in enumerate(states) if x % 50 == 7]
    assert retried and all(s.is_completed() for s in retried)


def _ended_runs(runner, mapped) -> list:
    """The task runs of ``mapped.map(range(N))`` on ``runner``, once all ended."""
    @flow(task_runner=runner)
    def chunked():
        futures = mapped.map(range(N))
        futures.wait()
        return [f.task_run for f in futures]

    return chunked()


def test_a_retried_run_in_a_chunk_shows_both_attempts(runner):
    runs = _ended_runs(runner, picky)
    assert runs[7].run_count == 2
    assert [s.name for s in runs[7].states] == ["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]
    assert runs[8].run_count == 1


def test_a_big_map_goes_out_in_parts_and_its_values_come_back_in_parts(runner, chunks_made, monkeypatch):
    # Issue 12: the driver never holds a whole million-item map's payloads, nor all its chunks'
    # outcomes at once; each part is still chunked, each run still its own.
    monkeypatch.setattr(type(runner), "map_part", 100)
    monkeypatch.setattr(chunks, "GATHER_CHUNKS", 3)
    sent, fetched = [], []
    submit, gather = type(runner)._submit, chunks.gather
    monkeypatch.setattr(type(runner), "_submit", lambda self, batch: sent.append(len(batch)) or submit(self, batch))

    def counting_gather(handles, fetch, *rest):
        return gather(handles, lambda futures: fetched.append(len(futures)) or fetch(futures), *rest)

    monkeypatch.setattr(chunks, "gather", counting_gather)

    from nbflow.context import current_flow_run

    @flow(task_runner=runner)
    def chunked():
        futures = same.map(range(N))
        futures.wait()
        remotes_left = len(current_flow_run().task_runner._remotes)
        return [f.result() for f in futures], remotes_left

    values, remotes_left = chunked()
    assert values == list(range(N))
    assert sent == [100] * (N // 100)  # four parts of 100 runs...
    assert len(chunks_made["same"]) > N // 100  # ...each cut into chunks
    assert len(fetched) > 1 and max(fetched) <= 3  # the outcomes come back at most 3 chunks a fetch
    assert remotes_left == 0  # the driver lets go of its hold on each run as it ends


# -- faults in a chunk touch only their runs ----------------------------------------------------------
def _unfinished(runs) -> list[str]:
    return [f"{run.name}: {run.state.name}" for run in runs if not run.state.is_final()]


def test_a_worker_killed_mid_chunk_keeps_every_other_run(runner, tmp_path):
    # The chunk dies with its worker before reporting: its runs that were not seen starting go
    # again one by one (the one that killed the worker does not kill it twice here), so every
    # other run completes with its own value and none is left Pending or Running.
    died = str(tmp_path / "died")

    @task
    def fragile(x: int) -> int:
        if x == 30 and not os.path.exists(died):
            open(died, "w").close()
            os._exit(3)
        return x * 2

    runs = _ended_runs(runner, fragile)
    assert os.path.exists(died)
    assert _unfinished(runs) == []
    for x, run in enumerate(runs):
        if x != 30:
            assert run.state.is_completed() and run.state.result() == x * 2, (x, run.state)
    assert runs[30].state.is_completed() or runs[30].state.is_crashed()


def test_a_cancel_mid_chunked_map_keeps_what_completed_and_cancels_the_rest(runner, tmp_path, wait_until):
    from nbflow.context import current_flow_run
    from nbflow.flows import cancel_flow_run
    from runner_semantics import wait_for_file

    gate = str(tmp_path / "gate")  # opened on teardown: a Dask worker thread cannot be stopped
    seen = {}

    @task
    def slow_after(x: int) -> int:
        if x >= N // 2:
            wait_for_file(gate)
        return x

    @flow(task_runner=runner)
    def chunked():
        futures = slow_after.map(range(N))
        seen["runs"] = [f.task_run for f in futures]
        assert wait_until(lambda: all(f.state.is_completed() for f in futures[: N // 2]))
        cancel_flow_run(current_flow_run())

    try:
        assert chunked(return_state=True).is_cancelled()
        runs = seen["runs"]
        assert [run.state.result() for run in runs[: N // 2]] == list(range(N // 2))
        assert all(run.state.is_cancelled() for run in runs[N // 2:]), [run.state.name for run in runs]
    finally:
        open(gate, "w").close()
