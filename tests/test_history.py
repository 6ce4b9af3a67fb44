"""The run history: what the writer records of real flow runs, and reading it back (``nbflow.history``)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

import nbflow
import nbflow.events
import nbflow.records
import nbflow.runs
import nbflow.settings
from nbflow import flow, get_run_logger, history, task
from nbflow.cache_policies import INPUTS
from nbflow.store import history as store
from nbflow.task_runners import ProcessPoolTaskRunner


@pytest.fixture
def writer():
    """A writer of the test's history; ``writer.flush()`` makes what ran so far readable."""
    return store.start(prune_seconds=0)


def make_pipeline(failing: set[int]):
    @task
    def load(i: int) -> int:
        print(f"loading {i}")
        get_run_logger().info("item %s", i)
        if i in failing:
            raise ValueError(f"item {i} is bad")
        return i * 10

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    @flow(name="pipeline")
    def pipeline(n: int, label: str = "x") -> int:
        loads = load.map(range(n))
        loads.wait()  # every item ends before the total fails: the counts are certain
        return total.submit(loads).result()  # a NotReady total raises: the flow run fails

    return pipeline


# -- what is recorded ---------------------------------------------------------------------------------------
def test_a_flow_run_with_a_failing_mapped_task_reads_back_whole(writer):
    state = make_pipeline({3})(5, return_state=True)
    assert state.is_failed()
    live = nbflow.runs.last_flow_run()

    run = history.flow_run(live.name)

    assert (run.id, run.name, run.flow_name, run.parent_id) == (live.id, live.name, "pipeline", None)
    assert [s.name for s in run.states] == [s.name for s in live.states] == ["Pending", "Running", "Failed"]
    assert [s.timestamp_seconds for s in run.states] == [s.timestamp_seconds for s in live.states]
    assert run.state.message == live.state.message and run.state.is_failed()
    assert run.state_counts() == live.state_counts() == {"Completed": 4, "Failed": 1, "NotReady": 1}
    assert run.parameters == {"n": "5", "label": "'x'"} and run.parameter_values() == {"n": 5, "label": "x"}
    assert run.start_time == live.start_time and run.end_time == live.end_time
    assert run.duration == pytest.approx(live.duration)

    assert [t.id for t in run.task_runs] == [t.id for t in live.task_runs]  # in creation order
    assert [t.name for t in run.task_runs] == [t.name for t in live.task_runs]
    assert [t.map_index for t in run.task_runs] == [0, 1, 2, 3, 4, None]
    assert [t.dynamic_key for t in run.task_runs] == ["0", "1", "2", "3", "4", "0"]
    assert [t.task.name for t in run.task_runs] == ["load"] * 5 + ["total"]
    assert run.task_runs[0].task_key == live.task_runs[0].task_key
    loads, total = run.task_runs[:5], run.task_runs[5]
    assert total.upstream == tuple(loads) and loads[0].upstream == ()
    assert total.inputs["values"].startswith("[<future of load-")
    assert [s.name for s in total.states] == ["Pending", "NotReady"] and not total.done

    good, bad = loads[2], loads[3]
    assert [s.name for s in good.states] == ["Pending", "Running", "Completed"] and good.done
    assert good.inputs == good.parameters == {"i": "2"} and good.result_summary == "20"
    assert good.exception is None and good.traceback is None
    assert bad.state.is_failed() and bad.result_summary is None
    assert bad.exception == "ValueError: item 3 is bad"
    assert bad.traceback.splitlines()[-1] == "ValueError: item 3 is bad"
    assert 'raise ValueError(f"item {i} is bad")' in bad.traceback and __file__ in bad.traceback
    assert os.path.dirname(nbflow.__file__) not in bad.traceback  # nbflow's own frames are left out
    assert "loading 3\n" in bad.output.text() and "item 3" in bad.output.text()
    assert "item 3" in bad.logs and "loading" not in bad.logs
    assert bad.run_count == 1 and bad.start_time == live.task_runs[3].start_time
    assert bad.end_time == live.task_runs[3].end_time and bad.flow_run is run and bad.flow_run_id == run.id
    assert repr(run) == f"FlowRunRecord(name={live.name!r}, flow='pipeline', state=Failed, task_runs=6)"
    assert repr(bad) == f"TaskRunRecord(name={bad.name!r}, state=Failed)"


def test_subflow_runs_are_recorded_under_their_parent(writer):
    @task
    def leaf(x: int) -> int:
        return x

    @flow(name="child")
    def child(x: int) -> int:
        return leaf(x)

    @flow(name="parent")
    def parent() -> int:
        return child(1) + leaf(2)

    assert parent() == 3
    run = history.flow_run("parent")
    [sub] = run.subflow_runs
    assert sub.flow_name == "child" and sub.parent is run and sub.parent_id == run.id and sub.root is run
    assert [t.task.name for t in sub.task_runs] == ["leaf"] and [t.task.name for t in run.task_runs] == ["leaf"]
    assert [r.flow_name for r in history.flow_runs()] == ["parent"]  # top-level runs only
    found = history.flow_run(sub.name)
    assert found.id == sub.id and found.parent.id == run.id


def test_task_runs_on_the_process_runner_are_recorded_from_the_driver(writer):
    @task
    def shout(i: int) -> int:
        print(f"from a worker {i}")
        if i == 1:
            raise RuntimeError("worker failure")
        return i

    @flow(name="on-processes", task_runner=ProcessPoolTaskRunner(max_workers=1))
    def f() -> list:
        return shout.map(range(2)).result(raise_on_failure=False)

    f()
    run = history.flow_run("on-processes")
    ok, failed = run.task_runs
    assert ok.state.is_completed() and ok.output.text() == "from a worker 0\n"
    assert failed.exception == "RuntimeError: worker failure" and "worker failure" in failed.traceback


def test_cache_outcomes_and_result_keys_are_recorded(writer):
    @task(cache_policy=INPUTS)
    def double(x: int) -> int:
        return 2 * x

    @flow(name="cached")
    def f() -> int:
        return double(4)

    f()
    f()
    first, second = history.flow_runs(name="cached")[::-1]
    live = nbflow.runs.last_flow_run().task_runs[0]
    miss, hit = first.task_runs[0], second.task_runs[0]
    assert hit.cache == live.cache and hit.cache.hit and not miss.cache.hit and hit.cache.key == miss.cache.key
    assert hit.state.name == "Cached" and hit.result_key == live.result_key
    assert miss.result_key is not None


def test_a_retry_records_what_it_retried(writer):
    nbflow.settings.current.persist_results = True
    failing = {1}
    pipeline = make_pipeline(failing)
    pipeline(3, return_state=True)
    original = history.flow_run("pipeline")
    failing.clear()
    assert nbflow.retry(original) == 30  # a history record is enough to retry
    retried = history.flow_run("pipeline")
    assert retried.id != original.id and retried.retry_of_id == original.id
    assert [t.state.name for t in retried.task_runs] == ["Cached", "Completed", "Cached", "Completed"]


def test_summaries_are_short_and_unpicklable_parameters_are_not_kept(writer):
    @flow(name="odd-parameters")
    def f(text: str, lock: object) -> None:
        return None

    f("y" * 1000, threading.Lock())
    run = history.flow_run("odd-parameters")
    assert len(run.parameters["text"]) <= store.SUMMARY_CHARS and "..." in run.parameters["text"]
    assert "lock" in run.parameters["lock"] and run.parameter_values() is None


def _ping(n: int) -> int:
    if n == 0:
        raise KeyError("bottom")
    return _pong(n - 1)


def _pong(n: int) -> int:
    return _ping(n)  # two functions in turn: no frame repeats the one before (which a traceback folds)


def test_a_long_traceback_is_trimmed_to_its_end(writer):
    @task
    def deep(n: int) -> int:
        return _ping(n)

    @flow(name="deep")
    def f() -> None:
        deep(60)

    f(return_state=True)
    trace = history.flow_run("deep").task_runs[0].traceback
    lines = trace.splitlines()
    assert len(lines) == store.TRACEBACK_LINES and lines[-1] == "KeyError: 'bottom'"
    assert lines[0] == "Traceback (most recent call last):" and "lines ...]" in lines[1]


def test_output_is_kept_as_a_bounded_tail(writer):
    @task
    def chatty() -> None:
        for k in range(5000):
            print(f"line {k:05d}")

    @flow(name="chatty")
    def f() -> None:
        chatty()

    f()
    output = history.flow_run("chatty").task_runs[0].output
    text = output.text()
    assert text.endswith("line 04999\n") and text.startswith("[... ")
    assert output.size <= store.TAIL_CHARS and output.dropped == 5000 * 11 - output.size


def test_a_running_flow_run_is_visible_as_it_goes(writer, gate):
    started = threading.Event()

    @task
    def slow() -> str:
        started.set()
        gate.wait()
        return "done"

    @flow(name="slowly")
    def f() -> str:
        return slow()

    thread = threading.Thread(target=f)
    thread.start()
    try:
        assert started.wait(10)
        run = history.flow_run("slowly")  # flushes: the writer looks at what executes
        assert run.state.name == "Running" and run.task_runs[0].state.name == "Running"
        assert run.end_time is None and not run.task_runs[0].done
    finally:
        gate.open()
        thread.join(10)
    assert history.flow_run("slowly").task_runs[0].state.name == "Completed"


# -- reading --------------------------------------------------------------------------------------------------
def test_flow_runs_lists_newest_first_with_filters_and_a_limit(writer):
    @flow(name="good")
    def good() -> int:
        return 1

    @flow(name="bad")
    def bad() -> None:
        raise ValueError("no")

    good()
    bad(return_state=True)
    good()
    names = [r.flow_name for r in history.flow_runs()]
    assert names == ["good", "bad", "good"]
    assert [r.flow_name for r in history.flow_runs(limit=2)] == ["good", "bad"]
    assert [r.flow_name for r in history.flow_runs(name="good")] == ["good", "good"]
    assert [r.flow_name for r in history.flow_runs(state="FAILED")] == ["bad"]
    assert [r.flow_name for r in history.flow_runs(name="good", state="completed", limit=1)] == ["good"]
    assert history.flow_runs(name="nothing") == [] and history.flow_runs(limit=0) == []


def test_flow_run_finds_a_run_by_id_prefix_run_name_or_flow_name(writer):
    @flow(name="lookup", flow_run_name="nightly-{n}")
    def f(n: int) -> int:
        return n

    f(1)
    f(2)
    first, latest = nbflow.records.flow_runs()[-2:]
    assert history.flow_run(str(first.id)).name == "nightly-1"
    assert history.flow_run(first.id).name == "nightly-1"  # a UUID
    assert history.flow_run(str(first.id)[:8].upper()).name == "nightly-1"
    assert history.flow_run("nightly-1").id == first.id
    assert history.flow_run("lookup").id == latest.id  # a flow name: its latest run
    with pytest.raises(LookupError) as caught:
        history.flow_run("nope")
    message = str(caught.value)
    assert "'nope'" in message and "nightly-2, nightly-1" in message and str(store.default_path()) in message


def test_an_ambiguous_id_prefix_says_so(writer, monkeypatch):
    ids = iter([0xABCDEF01 << 96 | 1, 0xABCDEF01 << 96 | 2])
    real = nbflow.records.new_id
    monkeypatch.setattr(nbflow.records, "new_id", lambda: next(ids, None) or real())

    @flow(name="twins")
    def f() -> None:
        return None

    f()
    f()
    with pytest.raises(LookupError, match="2 flow runs in the run history have an id starting with 'abcdef'"):
        history.flow_run("abcdef")
    assert history.flow_run("abcdef01-0000-4000-8000-000000000001").flow_name == "twins"


def test_an_empty_or_missing_history_reads_as_empty():
    assert history.flow_runs() == []
    with pytest.raises(LookupError, match="none"):
        history.flow_run("anything")
    assert history.clear() == 0
    assert not store.default_path().exists()  # reading creates nothing


def test_a_new_process_lists_runs_of_an_earlier_one(writer, nbflow_home):
    make_pipeline({1})(2, return_state=True)
    live = nbflow.runs.last_flow_run()
    writer.flush()
    code = textwrap.dedent("""
        import nbflow.history as h
        run = h.flow_run("pipeline")
        print(run.name, run.state.name, sorted(run.state_counts().items()), run.task_runs[1].exception)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "NBFLOW_HOME": str(nbflow_home)}, check=True).stdout
    assert out.strip() == (f"{live.name} Failed [('Completed', 1), ('Failed', 1), ('NotReady', 1)] "
                           "ValueError: item 1 is bad")


def test_a_process_that_exits_leaves_its_runs_written(nbflow_home):
    code = textwrap.dedent("""
        from nbflow import flow, task
        from nbflow.store import history
        history.start()

        @task
        def one():
            return 1

        @flow(name="before-exit")
        def f():
            return one()

        f()
        # no flush, no stop: the writer commits at exit
    """)
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True,
                   env={**os.environ, "NBFLOW_HOME": str(nbflow_home)})
    run = history.flow_run("before-exit")
    assert run.state.is_completed() and [t.state.name for t in run.task_runs] == ["Completed"]


# -- retention and clearing ---------------------------------------------------------------------------------------
def test_retention_keeps_the_newest_runs_by_count(writer):
    nbflow.settings.current.history_max_runs = 3

    @task
    def step() -> int:
        return 1

    @flow(name="kept")
    def inner() -> int:
        return step()

    @flow(name="counted")
    def f(i: int) -> int:
        return inner() + step()

    for i in range(5):
        f(i)
    writer.flush()
    runs = history.flow_runs(limit=10)
    assert [r.parameters["i"] for r in runs] == ["4", "3", "2"]
    conn = sqlite3.connect(store.default_path())
    kept = {str(r.id) for r in runs}
    roots = {row[0] for row in conn.execute("SELECT root_id FROM flow_runs")}
    task_roots = {row[0] for row in conn.execute("SELECT root_id FROM task_runs")}
    states = conn.execute("SELECT count(*) FROM task_run_states").fetchone()[0]
    conn.close()
    assert roots == task_roots == kept  # subflows and task runs of the deleted runs went with them
    assert states == 3 * 2 * 3  # three runs, two task runs each (one in the subflow), three states each


def test_retention_keeps_the_history_under_its_size_limit(writer):
    nbflow.settings.current.history_max_mb = 1

    @task
    def bulky(i: int) -> None:
        print(f"{i}" * store.TAIL_CHARS)

    @flow(name="bulky")
    def f(run: int) -> None:
        bulky.map(range(20)).wait()

    for run in range(6):  # each run keeps 20 tails of 16 KB: over 1 MB in all
        f(run)
    writer.flush()
    runs = history.flow_runs(limit=10)
    assert 1 <= len(runs) < 6 and runs[0].parameters["run"] == "5"
    conn = sqlite3.connect(store.default_path())
    assert store.used_bytes(conn) <= 1024 * 1024
    conn.close()


def test_clear_empties_the_history(writer):
    @flow(name="cleared")
    def f() -> None:
        return None

    f()
    f()
    assert history.clear() == 2
    assert history.flow_runs() == []
    f()
    assert [r.flow_name for r in history.flow_runs()] == ["cleared"]
    store.stop()
    assert history.clear() == 1  # without a writer running too
    assert history.flow_runs() == []


def test_clear_while_a_run_executes_keeps_writing_it_whole(writer, gate):
    started = threading.Event()

    @task
    def wait() -> int:
        started.set()
        gate.wait()
        return 1

    @flow(name="cleared-midway")
    def f() -> int:
        return wait() + wait()

    thread = threading.Thread(target=f)
    thread.start()
    try:
        assert started.wait(10)
        assert history.clear() == 1
    finally:
        gate.open()
        thread.join(10)
    run = history.flow_run("cleared-midway")
    assert run.state.is_completed() and [t.state.name for t in run.task_runs] == ["Completed", "Completed"]
    assert [s.name for s in run.task_runs[0].states] == ["Pending", "Running", "Completed"]


# -- the writer -----------------------------------------------------------------------------------------------
def test_start_is_idempotent_and_stop_unsubscribes(writer):
    assert store.start() is writer and store.current() is writer and writer.running
    subscribers = len(nbflow.events.flow_state)
    writer.stop()
    assert not writer.running and store.current() is None
    assert len(nbflow.events.flow_state) == subscribers - 1
    again = store.start()
    assert again is not writer and again.running


def test_ids_are_written_as_the_records_uuids():
    for _ in range(1000):
        value = nbflow.records.new_id()
        assert store.uuid_text(value) == str(nbflow.records.as_uuid(value))
    assert uuid.UUID(store.uuid_text(0)).version == 4


def test_runs_are_not_written_twice_when_their_last_event_comes_late(writer):
    @task
    def one(i: int) -> int:
        return i

    @flow(name="once")
    def f() -> list:
        return one.map(range(3)).result()

    f()
    writer.flush()
    root = nbflow.runs.last_flow_run()
    nbflow.events.publish_flow_state(root, root.state)  # a late event of an ended run
    writer.flush()
    conn = sqlite3.connect(store.default_path())
    assert conn.execute("SELECT count(*) FROM task_runs").fetchone()[0] == 3
    conn.close()


def test_task_runs_outside_a_flow_run_are_not_recorded(writer):
    @task
    def alone() -> int:
        return 1

    assert alone() == 1
    writer.flush()
    assert history.flow_runs() == []


def test_a_past_runs_details_show_its_result_and_traceback_summaries(writer):
    from nbflow.notebook import reprs

    @task
    def half(x: int) -> float:
        if x == 0:
            raise ZeroDivisionError("no half of nothing here")
        return x / 2

    @flow(name="halves")
    def halves() -> None:
        half.map([0, 4]).wait()

    halves(return_state=True)
    writer.flush()
    failed, done = sorted(history.flow_run("halves").task_runs, key=lambda r: r.map_index)
    assert "ZeroDivisionError: no half of nothing here" in reprs.task_run_html(failed)
    assert "<b>Result</b> <code>2.0</code>" in reprs.task_run_html(done)
