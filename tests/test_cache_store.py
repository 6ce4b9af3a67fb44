"""The result store behind cache_key_fn never costs a run its result.

A write that fails (no folder, full disk, any I/O error, an unpicklable
value) is a warning naming the task and the reason, with no temporary file
left; an entry that cannot be read (empty, truncated, garbage, the wrong
shape) is a miss, and the next run replaces it.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import tempfile
import threading

import cloudpickle
import pytest

from nbflow import flow, task


def _key(context, parameters):
    return f"key-{parameters['x']}"


@pytest.fixture
def calls():
    return []


@pytest.fixture
def compute(calls):
    @task(cache_key_fn=_key)
    def compute(x):
        calls.append(x)
        return x * 10

    return compute


def _run(t, x=1):
    """Run ``t(x)`` in a flow; return its (value, state name)."""

    @flow
    def f():
        fut = t.submit(x)
        return fut.result(), fut.state.name

    return f()


def _entries(home):
    storage = home / "storage"
    return [p for p in storage.rglob("*") if p.is_file()] if storage.is_dir() else []


def _temp_files(root):
    return [p for p in root.rglob(".tmp-*")]


def _store_warnings(caplog):
    return [r for r in caplog.records if r.name == "nbflow" and r.levelno == logging.WARNING]


# -- writes that fail -----------------------------------------------------------------------------
def _home_is_a_file(home):
    home.write_text("a file where NBFLOW_HOME should be a folder")


def _storage_is_a_file(home):
    home.mkdir()
    (home / "storage").write_text("a file where the storage folder should be")


@pytest.mark.parametrize("block", [_home_is_a_file, _storage_is_a_file])
def test_a_store_folder_that_cannot_be_created_keeps_the_result(block, nbflow_home, compute, calls, caplog, tmp_path):
    block(nbflow_home)
    assert _run(compute) == (10, "Completed")
    assert _run(compute) == (10, "Completed")  # nothing was stored: it runs again
    assert calls == [1, 1]
    warnings = _store_warnings(caplog)
    assert len(warnings) == 2
    message = warnings[0].getMessage()
    assert "'compute'" in message and "result not cached" in message and "Errno" in message
    assert "NBFLOW_HOME" in message
    assert not _temp_files(tmp_path)


def test_a_full_disk_keeps_the_result_and_leaves_no_temporary_file(nbflow_home, compute, calls, caplog, monkeypatch):
    real_mkstemp = tempfile.mkstemp

    def mkstemp_on_a_full_disk(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)  # the temporary file exists ...
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name  # ... but writing to it fails: ENOSPC

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_on_a_full_disk)
    assert _run(compute) == (10, "Completed")
    [warning] = _store_warnings(caplog)
    assert "'compute'" in warning.getMessage() and os.strerror(errno.ENOSPC) in warning.getMessage()
    assert not _temp_files(nbflow_home) and not _entries(nbflow_home)

    monkeypatch.undo()  # the disk has room again: the next run stores, the one after is cached
    assert _run(compute) == (10, "Completed")
    assert _run(compute) == (10, "Cached")
    assert calls == [1, 1]


def test_a_failed_rename_keeps_the_result_and_leaves_no_temporary_file(nbflow_home, compute, caplog, monkeypatch):
    def replace(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", replace)
    assert _run(compute) == (10, "Completed")
    [warning] = _store_warnings(caplog)
    assert "'compute'" in warning.getMessage() and os.strerror(errno.ENOSPC) in warning.getMessage()
    assert not _temp_files(nbflow_home) and not _entries(nbflow_home)


def test_an_unpicklable_result_is_returned_and_not_cached(nbflow_home, caplog):
    @task(cache_key_fn=_key)
    def make_lock(x):
        return threading.Lock()

    @flow
    def f():
        fut = make_lock.submit(1)
        return fut.result(), fut.state.name

    value, state = f()
    assert state == "Completed" and hasattr(value, "acquire")
    [warning] = _store_warnings(caplog)
    assert "'make_lock'" in warning.getMessage() and "cannot be pickled" in warning.getMessage()
    assert not _entries(nbflow_home) and not _temp_files(nbflow_home)


# -- entries that cannot be read -----------------------------------------------------------------
def _valid():
    return cloudpickle.dumps((None, 10))


BAD_ENTRIES = {
    "empty": b"",
    "truncated": _valid()[: len(_valid()) // 2],
    "garbage": b"\x00\xffthis is not a pickle",
    "expiry not a number": pickle.dumps(("tomorrow", 10)),
    "expiry nan": pickle.dumps((float("nan"), 10)),
    "expiry a bool": pickle.dumps((True, 10)),
    "expiry bytes": pickle.dumps((b"soon", 10)),
    "not a pair": pickle.dumps((None, 10, 20)),
    "a two-character string": pickle.dumps("ab"),
    "a dict of two keys": pickle.dumps({"a": 1, "b": 2}),
    "a list": pickle.dumps([None, 10]),
    "a number": pickle.dumps(42),
    "a class that does not import": b"cno_such_module_for_nbflow_tests\nThing\n.",
}


@pytest.mark.parametrize("content", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_a_malformed_entry_is_a_miss_that_the_next_store_replaces(content, nbflow_home, compute, calls, caplog):
    assert _run(compute) == (10, "Completed")
    [entry] = _entries(nbflow_home)
    entry.write_bytes(content)

    assert _run(compute) == (10, "Completed")  # a miss: the task runs ...
    assert _run(compute) == (10, "Cached")  # ... and its result replaced the entry
    assert calls == [1, 1]
    assert cloudpickle.loads(entry.read_bytes()) == (None, 10)
    assert any("'compute'" in w.getMessage() and "could not be read" in w.getMessage()
               for w in _store_warnings(caplog))


def test_a_folder_in_place_of_an_entry_is_a_miss_that_the_next_store_replaces(nbflow_home, compute, calls):
    assert _run(compute) == (10, "Completed")
    [entry] = _entries(nbflow_home)
    entry.unlink()
    (entry / "inside").mkdir(parents=True)

    assert _run(compute) == (10, "Completed")
    assert _run(compute) == (10, "Cached")
    assert calls == [1, 1] and entry.is_file()


def test_an_expired_entry_is_replaced(nbflow_home, compute, calls):
    assert _run(compute) == (10, "Completed")
    [entry] = _entries(nbflow_home)
    entry.write_bytes(cloudpickle.dumps((0.0, "stale")))  # expired in 1970

    assert _run(compute) == (10, "Completed")
    assert _run(compute) == (10, "Cached")
    assert calls == [1, 1]


def test_concurrent_stores_of_one_key_leave_one_valid_entry(nbflow_home, calls):
    @task(cache_key_fn=lambda context, parameters: "one-key")
    def compute(x):
        calls.append(x)
        return "value"

    @flow
    def f():
        return [s.name for s in compute.map(range(20), return_state=True)]

    names = f()
    assert set(names) <= {"Completed", "Cached"} and names.count("Completed") == len(calls)
    [entry] = _entries(nbflow_home)
    assert cloudpickle.loads(entry.read_bytes()) == (None, "value")
    assert not _temp_files(nbflow_home)
    assert compute(99, return_state=True).name == "Cached"
