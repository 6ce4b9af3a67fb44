"""The run history with many writers, and with a file that cannot be written: runs never fail for it."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from nbflow import flow, history, task
from nbflow.store import history as store


@pytest.fixture
def warnings(caplog):
    """The warnings nbflow logged during the test."""
    caplog.set_level(logging.WARNING, logger="nbflow")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "nbflow" and r.levelno >= logging.WARNING]


@task
def add(x: int, y: int) -> int:
    return x + y


@flow(name="small")
def small(i: int) -> int:
    return add(add.submit(i, 1), 1)


def assert_runs_fine(times: int = 3) -> None:
    """Flows run and return as if there were no history at all."""
    for i in range(times):
        assert small(i) == i + 2


# -- many writers ----------------------------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys
    from nbflow import flow, task
    from nbflow.store import history

    @task
    def add(x, y):
        return x + y

    @flow(name="from-" + sys.argv[1])
    def small(i):
        return add(add.submit(i, 1), 1)

    writer = history.start()
    print("ready", flush=True)
    sys.stdin.readline()  # both processes start writing together
    for i in range(int(sys.argv[2])):
        assert small(i) == i + 2
        writer.flush()  # one commit per flow run: as many chances to collide as possible
    writer.stop()
    print("failed" if writer.failed else "ok", flush=True)
""")


def test_two_processes_write_one_history_at_once(nbflow_home):
    runs = 25
    env = {**os.environ, "NBFLOW_HOME": str(nbflow_home)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, name, str(runs)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for name in ("a", "b")]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for (out, err), proc in zip(outcomes, procs):
        assert proc.returncode == 0, err
        assert out.strip() == "ok" and "locked" not in err and "Traceback" not in err and "nbflow" not in err
    for name in ("a", "b"):
        found = history.flow_runs(name=f"from-{name}", limit=100)
        assert len(found) == runs
        assert [(r.state.name, r.state_counts()) for r in found] == [("Completed", {"Completed": 2})] * len(found)
        assert all([t.upstream for t in r.task_runs][1] == (r.task_runs[0],) for r in found)
    conn = sqlite3.connect(store.default_path())
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_threads_running_flows_at_once_are_all_recorded(warnings):
    store.start()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            assert_runs_fine(10)
        except Exception as exc:  # noqa: BLE001 - handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    found = history.flow_runs(name="small", limit=100)
    assert len(found) == 40 and all(r.state_counts() == {"Completed": 2} for r in found)
    assert warnings() == []


def test_a_locked_history_is_waited_for_never_reported(warnings):
    writer = store.start()
    assert_runs_fine(1)
    assert writer.flush()
    other = sqlite3.connect(store.default_path(), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    try:
        assert_runs_fine(1)  # runs go on
        assert not writer.flush(timeout=0.3)  # the writer waits for the lock...
    finally:
        other.execute("COMMIT")
        other.close()
    assert writer.flush()  # ...and writes once it is free
    assert len(history.flow_runs()) == 2 and writer.failed is None
    assert warnings() == []


# -- a history that cannot be written ---------------------------------------------------------------------------
def test_a_directory_where_the_file_should_be(warnings):
    store.default_path().mkdir(parents=True)
    writer = store.start()
    assert_runs_fine()
    writer.flush()
    [message] = warnings()
    assert str(store.default_path()) in message and "is a directory" in message and "NBFLOW_HOME" in message
    assert writer.failed == message and not writer.running  # it stopped taking events: runs cost nothing
    assert_runs_fine()
    assert len(warnings()) == 1


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_folder(nbflow_home, warnings):
    nbflow_home.mkdir(parents=True, exist_ok=True)
    nbflow_home.chmod(0o500)
    try:
        writer = store.start()
        assert_runs_fine()
        writer.flush()
    finally:
        nbflow_home.chmod(0o700)
    [message] = warnings()
    assert str(store.default_path()) in message and "writable" in message
    assert writer.failed is not None


def test_a_read_only_file(monkeypatch, warnings):
    writer = store.start()
    assert_runs_fine(1)
    writer.stop()
    real = sqlite3.connect

    def read_only(database, *args, **kwargs):  # what sqlite does with a file it may not write
        return real(f"file:{database}?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only)
    writer = store.start()
    assert_runs_fine()
    writer.flush()
    [message] = warnings()
    assert str(store.default_path()) in message and "writable" in message and writer.failed
    monkeypatch.undo()
    assert len(history.flow_runs()) == 1  # what was there is still there to read


def test_a_full_disk(monkeypatch, warnings):
    real = sqlite3.connect

    def small_disk(database, *args, **kwargs):  # the file cannot grow past 40 pages, as on a full disk
        conn = real(database, *args, **kwargs)
        conn.execute("PRAGMA max_page_count = 40")
        return conn

    monkeypatch.setattr(sqlite3, "connect", small_disk)

    @task
    def bulky(i: int) -> int:
        print("x" * store.TAIL_CHARS)
        return i

    @flow(name="bulky")
    def f() -> list[int]:
        return bulky.map(range(20)).result()

    writer = store.start()
    assert_runs_fine(1)
    writer.flush()
    assert f() == list(range(20))  # a run never fails for its history
    writer.flush()
    assert_runs_fine(1)
    writer.flush()
    [message] = warnings()
    assert "full" in message and "free some disk space" in message and str(store.default_path()) in message
    assert writer.running  # it goes on: the disk may have room again for the next runs
    assert [r.flow_name for r in history.flow_runs()] == ["small", "small"]


def test_a_corrupt_file_is_set_aside_and_a_new_one_started(nbflow_home, warnings):
    path = store.default_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database, " * 200)
    writer = store.start()
    assert_runs_fine(2)
    writer.flush()
    [aside] = list(nbflow_home.glob("history.sqlite.corrupt-*"))
    assert aside.read_bytes().startswith(b"this is not a database")
    [message] = warnings()
    assert str(path) in message and str(aside) in message and "corrupt" in message
    assert len(history.flow_runs()) == 2 and writer.failed is None


def test_a_corrupt_file_reads_as_empty(warnings):
    path = store.default_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage" * 1000)
    assert history.flow_runs() == []
    assert "cannot be read" in warnings()[0]


def test_a_file_of_an_unknown_older_schema_is_set_aside(nbflow_home, warnings):
    path = store.default_path()
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE something_else (x)")
    conn.commit()
    conn.close()
    writer = store.start()
    assert_runs_fine(1)
    writer.flush()
    assert len(list(nbflow_home.glob("history.sqlite.corrupt-*"))) == 1
    assert "schema (version 0)" in warnings()[0] and len(history.flow_runs()) == 1


def test_a_file_of_a_newer_nbflow_is_left_alone(warnings):
    path = store.default_path()
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    writer = store.start()
    assert_runs_fine()
    writer.flush()
    [message] = warnings()
    assert "newer nbflow" in message and writer.failed
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 99
    conn.close()
    assert history.flow_runs() == []  # not a schema this nbflow reads


def test_a_writer_that_fails_warns_once_and_goes_on(warnings):
    writer = store.start()

    def broken() -> None:
        raise RuntimeError("disk on fire")

    writer.before_commit = broken
    assert_runs_fine()
    writer.flush()
    assert_runs_fine()
    writer.flush()
    [message] = warnings()
    assert "disk on fire" in message and str(store.default_path()) in message
    writer.before_commit = None
    assert_runs_fine(1)
    writer.flush()
    assert len(history.flow_runs()) == 1  # the next runs are written again


# -- bounded memory ------------------------------------------------------------------------------------------------
def test_a_flood_of_output_never_reaches_the_writers_buffer(gate):
    writer = store.start(bound=8)
    writer.before_commit = gate.wait  # the writer is stuck until the flood is over

    @task
    def chatty(i: int) -> int:
        for k in range(5000):
            print(f"{i}:{k}")
        return i

    @flow(name="flood")
    def f() -> list[int]:
        return chatty.map(range(4)).result()

    assert f() == [0, 1, 2, 3]
    assert writer.peak <= 3  # one marker per flow run state, none per line printed
    gate.open()
    writer.flush()
    run = history.flow_run("flood")
    assert run.state_counts() == {"Completed": 4}
    assert [t.output.text().endswith(f"{t.map_index}:4999\n") for t in run.task_runs] == [True] * 4


def test_a_flood_of_flow_runs_keeps_the_buffer_bounded(gate, warnings):
    writer = store.start(bound=8)
    writer.before_commit = gate.wait  # a stalled disk
    assert_runs_fine(30)
    assert writer.peak <= writer.bound and writer.dropped > 0
    gate.open()
    writer.flush()
    found = history.flow_runs(limit=100)
    assert len(warnings()) == 1 and "fell behind" in warnings()[0]
    assert 30 - writer.dropped <= len(found) < 30
    assert found[0].parameters == {"i": "29"}  # the newest are kept
    assert [(r.state.name, r.state_counts()) for r in found] == [("Completed", {"Completed": 2})] * len(found)
