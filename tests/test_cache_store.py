"""The result store never costs a cached task run its result.

A write that fails (no folder, full disk, any I/O error, an unpicklable
value) is a warning naming the task and the reason, with no temporary file
left; an entry that cannot be read (empty, truncated, garbage, the wrong
format) is a miss, and the next run replaces it. The store's own rules are
in test_result_store.py; these are what a task run sees. Small results live
in the store's index (see test_result_store.py); here every entry is a file,
the kind a disk fault can reach.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

import pytest

from nbflow import flow, task


@pytest.fixture(autouse=True)
def every_entry_a_file(monkeypatch):
    from nbflow.store import results

    monkeypatch.setattr(results, "INLINE_MAX", -1)


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
    entries = home / "results" / "entries"
    return [p for p in entries.rglob("*") if p.is_file() and not p.name.startswith(".")] if entries.is_dir() else []


def _temp_files(root):
    return [p for p in root.rglob(".tmp-*")]


def _store_warnings(caplog):
    return [r for r in caplog.records if r.name == "nbflow" and r.levelno == logging.WARNING]


def _not_stored(caplog):
    """The warnings that a task run's result was not stored."""
    return [r for r in _store_warnings(caplog) if "result not stored" in r.getMessage()]


# -- writes that fail -----------------------------------------------------------------------------
def _home_is_a_file(home):
    home.write_text("a file where NBFLOW_HOME should be a folder")


def _storage_is_a_file(home):
    home.mkdir()
    (home / "results").write_text("a file where the result store's folder should be")


@pytest.mark.parametrize("block", [_home_is_a_file, _storage_is_a_file])
def test_a_store_folder_that_cannot_be_created_keeps_the_result(block, nbflow_home, compute, calls, caplog, tmp_path):
    block(nbflow_home)
    assert _run(compute) == (10, "Completed")
    assert _run(compute) == (10, "Completed")  # nothing was stored: it runs again
    assert calls == [1, 1]
    warnings = _not_stored(caplog)
    assert len(warnings) == 2
    message = warnings[0].getMessage()
    assert "'compute'" in message and "Not a directory" in message and str(nbflow_home) in message
    assert not _temp_files(tmp_path)


def test_a_full_disk_keeps_the_result_and_leaves_no_temporary_file(nbflow_home, compute, calls, caplog, monkeypatch):
    real_open = open

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        if "x" in mode:  # the store's temporary file exists, but writing to it fails: ENOSPC
            real_open(path, mode).close()
            return real_open("/dev/full", "wb")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_on_a_full_disk)
    assert _run(compute) == (10, "Completed")
    [warning] = _not_stored(caplog)
    assert "'compute'" in warning.getMessage() and "is full" in warning.getMessage()
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
    [warning] = _not_stored(caplog)
    assert "'compute'" in warning.getMessage() and "is full" in warning.getMessage()
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
    [warning] = _not_stored(caplog)
    assert "'make_lock'" in warning.getMessage() and "cannot be pickled" in warning.getMessage()
    assert not _entries(nbflow_home) and not _temp_files(nbflow_home)


# -- entries that cannot be read -----------------------------------------------------------------
def _valid(home):
    [entry] = _entries(home)
    return entry, entry.read_bytes()


def _in_a_new_kernel():
    """Forget what this process holds in memory: the next lookup reads the store's files."""
    from nbflow.store import cache

    cache.close_stores()


BAD_ENTRIES = {
    "empty": lambda valid: b"",
    "truncated": lambda valid: valid[: len(valid) // 2],
    "garbage": lambda valid: b"\x00\xffthis is not an entry",
    "wrong magic": lambda valid: b"XXXX" + valid[4:],
    "a pickle that does not load": lambda valid: valid.replace(b"x", b"\xff"),
}


@pytest.mark.parametrize("spoil", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_a_malformed_entry_is_a_miss_that_the_next_store_replaces(spoil, nbflow_home, compute, calls, caplog):
    assert _run(compute) == (10, "Completed")
    entry, valid = _valid(nbflow_home)
    entry.write_bytes(spoil(valid))
    _in_a_new_kernel()

    assert _run(compute) == (10, "Completed")  # a miss: the task runs ...
    assert _run(compute) == (10, "Cached")  # ... and its result replaced the entry
    assert calls == [1, 1]
    assert any("cannot be read" in w.getMessage() for w in _store_warnings(caplog))


def test_a_folder_in_place_of_an_entry_is_a_miss_that_the_next_store_replaces(nbflow_home, compute, calls):
    assert _run(compute) == (10, "Completed")
    [entry] = _entries(nbflow_home)
    entry.unlink()
    (entry / "inside").mkdir(parents=True)
    _in_a_new_kernel()

    assert _run(compute) == (10, "Completed")
    assert _run(compute) == (10, "Cached")
    assert calls == [1, 1] and entry.is_file()


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
    assert len(_entries(nbflow_home)) == 1
    assert not _temp_files(nbflow_home)
    assert compute(99, return_state=True).name == "Cached"
