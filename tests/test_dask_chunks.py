"""DaskTaskRunner sends the runs of a large .map of small tasks in chunks, each run its own.

A chunk is one Dask task executing several runs in turn; every run keeps its
own states, retries, failure, output and value, and downstream runs (a map
over a chunked map, a task gathering them all) get each run's own value.
Runners use the session's Dask cluster (see ``conftest.py``).
"""

from __future__ import annotations

import sys

import cloudpickle
import pytest

from nbflow import flow, task
from nbflow.runners import dask as dask_runner
from nbflow.task_runners import DaskTaskRunner

pytest.importorskip("distributed")
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N = 400  # several chunks on the session cluster's threads


@pytest.fixture
def runner(dask_cluster, monkeypatch):
    monkeypatch.setattr(dask_runner, "FIRST_CHUNK", 25)  # chunks of 25 runs: 16 Dask tasks per map
    return DaskTaskRunner(address=dask_cluster.scheduler_address)


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
    assert dask_runner.chunk_size(10, threads=2, mean_seconds=None) == 2  # spread over 8 chunks at least
    assert dask_runner.chunk_size(1_000_000, threads=2, mean_seconds=None) == dask_runner.FIRST_CHUNK
    assert dask_runner.chunk_size(1_000_000, threads=2, mean_seconds=0.001) == int(dask_runner.CHUNK_SECONDS / 0.001)
    assert dask_runner.chunk_size(1_000_000, threads=2, mean_seconds=10.0) == 1  # slow tasks: one per Dask task


@task
def same(x: int) -> int:
    return x


def _dask_tasks_named(client, prefix: str) -> int:
    return client.run_on_scheduler(lambda dask_scheduler: sum(str(k).startswith(prefix) for k in dask_scheduler.tasks))


def test_each_run_of_a_chunked_map_has_its_own_state_output_and_value(runner, dask_cluster):
    import distributed

    @flow(task_runner=runner)
    def chunked() -> tuple:
        upstream = same.map(range(N))
        picked = picky.map(upstream)  # each run consumes one run of a chunk upstream
        picked.wait()
        with distributed.Client(dask_cluster.scheduler_address, set_as_default=False) as client:
            assert _dask_tasks_named(client, "same-") == N // 25  # one Dask task per chunk of 25 runs
        ok = [f for f in picked if f.state.is_completed()]
        runs = [f.task_run for f in picked]
        return upstream.result(), runs, total.submit(ok).result()

    values, runs, summed = chunked()
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


def test_a_retried_run_in_a_chunk_shows_both_attempts(runner):
    @flow(task_runner=runner)
    def chunked():
        futures = picky.map(range(N))
        futures.wait()
        return [f.task_run for f in futures]

    runs = chunked()
    assert runs[7].run_count == 2
    assert [s.name for s in runs[7].states] == ["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]
    assert runs[8].run_count == 1


def test_a_big_map_goes_out_in_parts_and_its_values_come_back_in_parts(runner, monkeypatch):
    # Issue 12: the driver never holds a whole million-item map's payloads, nor all its chunks'
    # outcomes at once; each part is still chunked, each run still its own.
    from nbflow.runners import cluster

    monkeypatch.setattr(cluster, "SEND_EVERY", 100)
    monkeypatch.setattr(dask_runner, "GATHER_CHUNKS", 3)
    sent, gathered = [], []
    submit, gather = type(runner)._submit, type(runner)._gather
    monkeypatch.setattr(type(runner), "_submit", lambda self, batch: sent.append(len(batch)) or submit(self, batch))

    def counting_gather(self, handles):
        calls = self._client.gather
        self._client.gather = lambda futures: gathered.append(len(futures)) or calls(futures)
        try:
            return gather(self, handles)
        finally:
            del self._client.gather

    monkeypatch.setattr(type(runner), "_gather", counting_gather)

    from nbflow.context import current_flow_run

    @flow(task_runner=runner)
    def chunked():
        futures = same.map(range(N))
        futures.wait()
        remotes_left = len(current_flow_run().task_runner._remotes)
        return [f.result() for f in futures], remotes_left

    values, remotes_left = chunked()
    assert values == list(range(N))
    assert sent == [100] * (N // 100)  # four parts of 100 runs, each cut into chunks
    assert len(gathered) > 1 and max(gathered) <= 3  # the outcomes come back at most 3 chunks a gather
    assert remotes_left == 0  # the driver lets go of its hold on each run as it ends
