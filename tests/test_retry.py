"""``nbflow.retry``: a new run of a flow that re-executes only what did not complete."""

from __future__ import annotations

import threading

import pytest

import nbflow
import nbflow.runs
import nbflow.settings
from nbflow import allow_failure, flow, task
from nbflow.store import cache
from nbflow.store.results import StoreError
from nbflow.task_runners import ProcessPoolTaskRunner


@pytest.fixture(autouse=True)
def persisted():
    nbflow.settings.current.persist_results = True
    yield


class Calls:
    """Thread-safe record of which items a task computed."""

    def __init__(self) -> None:
        self.items: list = []
        self._lock = threading.Lock()

    def add(self, item) -> None:
        with self._lock:
            self.items.append(item)


def make_pipeline(failing: set[int], calls: Calls, runner=None):
    @task
    def load(i: int) -> int:
        calls.add(("load", i))
        if i in failing:
            raise ValueError(f"item {i} is bad")
        return i * 10

    @task
    def total(values: list[int]) -> int:
        calls.add(("total", None))
        return sum(values)

    options = {"task_runner": runner} if runner is not None else {}

    @flow(name="retry-pipeline", **options)
    def pipeline(n: int) -> int:
        loads = load.map(range(n))
        loads.wait()  # every load ends before total gives up on the first failed one
        return total.submit(loads).result()  # a NotReady total raises: the flow run fails

    return pipeline


def test_a_retry_runs_only_the_failed_items_and_what_depends_on_them():
    failing, calls = {3, 7}, Calls()
    pipeline = make_pipeline(failing, calls)
    state = pipeline(10, return_state=True)
    assert state.is_failed()
    original = nbflow.runs.last_flow_run()
    failing.clear()  # the bug is fixed
    calls.items.clear()
    assert nbflow.retry(original) == sum(i * 10 for i in range(10))
    assert sorted(calls.items, key=str) == [("load", 3), ("load", 7), ("total", None)]
    retried = nbflow.runs.last_flow_run()
    assert retried.retry_of is original
    states = {r.map_index: r.state for r in retried.task_runs if r.map_index is not None}
    assert states[0].name == "Cached" and "Reused from flow run" in states[0].message
    assert states[3].name == "Completed" and states[7].name == "Completed"


def test_a_retry_of_a_retry_reuses_both_earlier_runs_results():
    failing, calls = {1, 2}, Calls()
    pipeline = make_pipeline(failing, calls)
    pipeline(4, return_state=True)
    failing.discard(1)
    nbflow.retry(nbflow.runs.last_flow_run(), return_state=True)
    failing.clear()
    calls.items.clear()
    assert nbflow.retry(nbflow.runs.last_flow_run()) == 60
    assert sorted(calls.items, key=str) == [("load", 2), ("total", None)]


def test_a_completed_run_downstream_of_a_rerun_is_run_again():
    calls = Calls()
    broken = {"yes"}

    @task
    def source() -> int:
        calls.add("source")
        if broken:
            raise ValueError("broken")
        return 1

    @task
    def tolerant(x) -> str:
        calls.add("tolerant")
        return "saw " + ("failure" if isinstance(x, BaseException) else str(x))

    @flow(name="retry-tolerant")
    def f() -> str:
        return tolerant(allow_failure(source.submit()))

    assert f(return_state=True).is_completed()  # the tolerant task completed on a failed upstream
    broken.clear()
    calls.items.clear()
    assert nbflow.retry(nbflow.runs.last_flow_run()) == "saw 1"
    assert calls.items == ["source", "tolerant"]


def test_without_persisted_results_a_retry_computes_everything():
    nbflow.settings.current.persist_results = False
    failing, calls = {0}, Calls()
    pipeline = make_pipeline(failing, calls)
    pipeline(3, return_state=True)
    failing.clear()
    calls.items.clear()
    assert nbflow.retry(nbflow.runs.last_flow_run()) == 30
    assert len(calls.items) == 4


def test_parameters_can_be_overridden():
    failing, calls = set(), Calls()
    pipeline = make_pipeline(failing, calls)
    pipeline(2)
    assert nbflow.retry(nbflow.runs.last_flow_run(), n=3) == 30


def test_a_retry_on_the_process_runner_reuses_results_stored_by_the_workers(tmp_path):
    fixed = tmp_path / "fixed"  # the workers are other processes: the "fix" is a file they see

    @task
    def load(i: int) -> int:
        if i == 1 and not fixed.exists():
            raise ValueError("bad")
        return i

    @flow(name="retry-processes", task_runner=ProcessPoolTaskRunner(max_workers=2))
    def f(n: int) -> list[int]:
        return load.map(range(n)).result()

    assert f(3, return_state=True).is_failed()
    fixed.touch()
    assert nbflow.retry(nbflow.runs.last_flow_run()) == [0, 1, 2]
    assert [r.state.name for r in nbflow.runs.last_flow_run().task_runs] == ["Cached", "Completed", "Cached"]


def test_retrying_a_flow_that_is_not_defined_says_how_to_fix_it():
    class Record:
        name, flow_name, task_runs = "gone-run", "never-defined-flow", []

    with pytest.raises(LookupError, match="no flow named 'never-defined-flow' is defined"):
        nbflow.retry(Record())


def test_a_run_that_completes_keeps_nothing_for_a_retry():
    """Results only a retry would read are kept when the run did not complete: a run that did costs nothing."""
    pipeline = make_pipeline(set(), Calls())
    assert pipeline(3) == 30
    runs = nbflow.runs.last_flow_run().task_runs
    assert [r.result_key for r in runs] == [None] * 4
    assert cache.store_at().summary() == []


def test_a_run_that_fails_has_kept_its_completed_results_when_it_returns(tmp_path):
    """Before the failed run's call returns, what completed is in the store, for another process
    (a restarted kernel) to reuse."""
    import os
    import subprocess
    import sys

    pipeline = make_pipeline({1}, Calls())
    assert pipeline(3, return_state=True).is_failed()
    loads = [r for r in nbflow.runs.last_flow_run().task_runs if r.map_index is not None]
    assert [r.result_key for r in loads] == [f"run-{loads[0].id}", None, f"run-{loads[2].id}"]
    script = (
        "import sys\nfrom nbflow.store import cache\n"
        "print([cache.read(cache.store_at(), key) for key in sys.argv[1:]])"
    )
    env = {**os.environ, "NBFLOW_HOME": str(nbflow.settings.current.home)}
    out = subprocess.run([sys.executable, "-c", script, loads[0].result_key, loads[2].result_key],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[(0,), (20,)]"


def test_a_result_that_cannot_be_kept_is_computed_again_by_the_retry(monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise StoreError("the disk is full")

    calls = Calls()
    pipeline = make_pipeline({2}, calls)
    monkeypatch.setattr(cache.ResultStore, "write", refuse)
    assert pipeline(3, return_state=True).is_failed()
    original = nbflow.runs.last_flow_run()
    assert "result not kept for a retry (the disk is full)" in caplog.text and "load-" in caplog.text
    monkeypatch.undo()
    calls.items.clear()
    assert nbflow.retry(original, n=2) == 10  # nothing was kept: both loads run again
    assert sorted(calls.items, key=str) == [("load", 0), ("load", 1), ("total", None)]
