"""The result store: results on disk that are never half written, never a risk to a run.

A write is atomic and a failed one leaves the previous entry intact; an entry
that cannot be read is a miss and the next write replaces it; small entries live
in the index (visible to this process at once, to others once flushed), larger
ones in files, and a key has one live entry either way; large arrays go to disk
and back without a second copy; the least recently used entries go when the
store is over its size; several threads and processes can share it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nbflow.store import results
from nbflow.store.results import (
    INLINE_MAX,
    MAGIC,
    VERSION,
    Entry,
    ResultStore,
    StoreError,
    TaskSummary,
)

BIG = 1 << 40  # a size limit never reached

SAFETY = 10.0  # seconds: a bound on waits that a correct store never gets near


class Clock:
    """A "last used" clock that ticks once per reading: the LRU order is the order of the calls."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def store(root: Path):
    opened = ResultStore(root, BIG)
    yield opened
    opened.close()


def _large(fill: int = 0) -> bytes:
    """A value whose entry is too big for the index: it gets a file."""
    return bytes([fill]) * (INLINE_MAX + 1)


def _entry_files(root: Path) -> list[Path]:
    entries = root / "entries"
    return sorted(p for p in entries.rglob("*") if p.is_file() and not p.name.startswith(".")) if entries.exists() else []


def _temporary_files(root: Path) -> list[Path]:
    return list(root.rglob(".tmp-*"))


def _only_entry(root: Path) -> Path:
    (path,) = _entry_files(root)
    return path


def _inline_rows(root: Path) -> dict[str, bytes]:
    """The entries held in the index (what the store committed), by key."""
    db = sqlite3.connect(root / "index.sqlite")
    try:
        return dict(db.execute("SELECT key, data FROM inline"))
    finally:
        db.close()


def _set_inline_row(root: Path, key: str, data: bytes) -> None:
    db = sqlite3.connect(root / "index.sqlite")
    try:
        with db:
            db.execute("UPDATE inline SET data = ? WHERE key = ?", (data, key))
    finally:
        db.close()


def _unreadable_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]


@contextlib.contextmanager
def _index_held(monkeypatch):
    """Inside the block, the background thread's index transactions wait: nothing queued is committed.

    Nothing done inside may wait for a commit: the block fails if a transaction waited past SAFETY.
    """
    release = threading.Event()
    waited_too_long = threading.Event()
    real = results._Index.transaction

    def held(index, work):
        if not release.wait(SAFETY):
            waited_too_long.set()
        return real(index, work)

    monkeypatch.setattr(results._Index, "transaction", held)
    try:
        yield
    finally:
        release.set()
    assert not waited_too_long.is_set(), "the block waited for the background thread it held"


def _waiting(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked on a threading primitive (a Condition, an Event, a Queue)."""
    frame = sys._current_frames().get(thread.ident)
    return frame is not None and frame.f_code.co_name == "wait" and frame.f_code.co_filename == threading.__file__


# -- round trips ------------------------------------------------------------------------------
def test_a_small_value_round_trips_with_its_task_times_and_meta(store, root):
    before = time.time()
    size = store.write("k", {"a": [1, 2]}, task="load", meta={"attempt": 2})
    after = time.time()
    entry = store.read("k")
    assert isinstance(entry, Entry)
    assert entry.value == {"a": [1, 2]}
    assert entry.task == "load"
    assert before <= entry.created <= after
    assert entry.expires is None
    assert entry.meta == {"attempt": 2}
    assert store.exists("k")
    store.flush()
    assert size == len(_inline_rows(root)["k"])  # in the index, not in a file
    assert _entry_files(root) == []
    assert store.read("k").value == {"a": [1, 2]}  # read back from the index


def test_entries_up_to_inline_max_bytes_live_in_the_index_bigger_ones_in_files(store, root):
    small = store.write("small", bytes(INLINE_MAX - 200), task="t")
    large = store.write("large", bytes(INLINE_MAX), task="t")  # the header makes it bigger
    store.flush()
    assert small <= INLINE_MAX < large
    assert set(_inline_rows(root)) == {"small"}
    assert _only_entry(root).stat().st_size == large
    assert store.read("small").value == bytes(INLINE_MAX - 200)
    assert store.read("large").value == bytes(INLINE_MAX)


def test_a_small_write_stores_the_value_as_it_was_then(store):
    value = [1, 2]
    store.write("k", value, task="t")
    value.append(3)  # after the write, before the background thread got to it
    assert store.read("k").value == [1, 2]
    store.flush()
    assert store.read("k").value == [1, 2]


def test_missing_keys(store):
    assert store.read("nothing") is None
    assert not store.exists("nothing")


def test_meta_defaults_to_empty(store):
    store.write("k", 1, task="t")
    assert store.read("k").meta == {}


def test_a_numpy_array_is_stored_raw_and_read_back_writable(store, root):
    array = np.random.default_rng(0).random(200_000)  # 1.6 MB
    size = store.write("a", array, task="t")
    assert array.nbytes <= size < array.nbytes + 1_000  # the buffer itself, beside a small pickle
    assert _only_entry(root).stat().st_size == size
    value = store.read("a").value
    np.testing.assert_array_equal(value, array)
    assert value.dtype == array.dtype and value.flags.writeable
    value[0] = -1.0  # its own memory: neither the file's nor the original's
    assert array[0] != -1.0


@pytest.mark.parametrize("committed", [False, True], ids=["pending", "committed"])
def test_a_small_array_is_read_back_writable_too(store, committed):
    array = np.arange(5)
    store.write("small", array, task="t")
    if committed:
        store.flush()
    value = store.read("small").value
    value[0] = 10
    assert value.tolist() == [10, 1, 2, 3, 4]
    assert array[0] == 0 and store.read("small").value[0] == 0  # each read has its own copy


def test_a_pandas_frame_round_trips_through_out_of_band_buffers(store, root):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.random(100_000), "y": rng.random(100_000), "n": np.arange(100_000)})
    size = store.write("f", frame, task="t")
    nbytes = int(frame.memory_usage(index=False).sum())
    assert nbytes <= size < nbytes + 5_000
    pd.testing.assert_frame_equal(store.read("f").value, frame)


# -- who sees a small entry, and when --------------------------------------------------------------
def test_a_small_entry_is_read_at_once_and_seen_by_another_store_once_committed(store, root, monkeypatch):
    store.flush()  # the index is open
    other = ResultStore(root, BIG)
    with _index_held(monkeypatch):
        store.write("k", "value", task="t")
        assert store.read("k").value == "value" and store.exists("k")  # from this process's pending map
        assert other.read("k") is None and not other.exists("k")  # not committed yet
        assert "k" not in _inline_rows(root)
    assert store.flush()
    assert other.read("k").value == "value" and other.exists("k")
    other.close()


def test_a_store_that_read_before_its_folder_existed_sees_what_is_written_later(root):
    reader = ResultStore(root, BIG)
    assert reader.read("k") is None  # no folder yet, let alone an index
    writer = ResultStore(root, BIG)
    writer.write("k", "value", task="t")
    writer.flush()
    assert reader.read("k").value == "value"
    writer.close()
    reader.close()


def test_a_closed_store_has_committed_what_it_held(root):
    store = ResultStore(root, BIG)
    store.write("k", "value", task="t")
    store.close()
    other = ResultStore(root, BIG)
    assert other.read("k").value == "value"
    other.close()


def test_flush_reports_a_timeout(store, monkeypatch):
    store.flush()
    with _index_held(monkeypatch):
        store.write("k", 1, task="t")
        assert store.flush(timeout=0.01) is False  # the batch waits for the index
    assert store.flush() is True


def _read_then_write_in_another_process(root: str, report) -> None:
    store = ResultStore(Path(root), BIG)
    found = store.read("from the parent")
    store.write("from the child", "child value", task="t")
    store.flush()
    report.put(None if found is None else found.value)
    store.close()


def test_small_entries_cross_processes_once_flushed(store, root):
    store.write("from the parent", "parent value", task="t")
    store.flush()
    context = multiprocessing.get_context("spawn")
    report = context.Queue()
    process = context.Process(target=_read_then_write_in_another_process, args=(str(root), report))
    process.start()
    assert report.get(timeout=SAFETY * 3) == "parent value"
    process.join(SAFETY)
    assert process.exitcode == 0
    assert store.read("from the child").value == "child value"


def test_a_process_that_exits_commits_its_small_entries_first(root):
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from nbflow.store import results

        real = results._Index.transaction

        def late(index, work):
            time.sleep(0.2)  # commits come late: only a flush at exit waits for them
            return real(index, work)

        results._Index.transaction = late
        store = results.ResultStore(Path({str(root)!r}), 1 << 40)
        for i in range(100):
            store.write(f"k{{i}}", i, task="t")
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=SAFETY * 3)
    store = ResultStore(root, BIG)
    assert [store.read(f"k{i}").value for i in range(100)] == list(range(100))
    store.close()


# -- a key has one live entry -------------------------------------------------------------------
def test_a_key_written_small_then_large_then_small_again_has_one_live_entry(store, root, monkeypatch):
    store.write("k", "small", task="t")
    store.flush()
    with _index_held(monkeypatch):
        large = store.write("k", _large(1), task="t")
        assert "k" in _inline_rows(root)  # the small entry is still committed ...
        assert store.read("k").value == _large(1)  # ... but a read finds the file written since
    store.flush()
    assert "k" not in _inline_rows(root) and len(_entry_files(root)) == 1
    assert [(s.entries, s.bytes) for s in store.summary()] == [(1, large)]

    with _index_held(monkeypatch):
        small = store.write("k", "small again", task="t")
        assert store.read("k").value == "small again"
    store.flush()
    assert set(_inline_rows(root)) == {"k"} and _entry_files(root) == []
    assert store.read("k").value == "small again"
    assert [(s.entries, s.bytes) for s in store.summary()] == [(1, small)]
    assert store.total_bytes() == small


def test_a_write_committed_after_a_newer_one_of_another_process_gives_way(store, root, monkeypatch):
    store.flush()
    with _index_held(monkeypatch):
        store.write("k", _large(1), task="t")  # written first, its index row committed last
        later = textwrap.dedent(f"""
            from pathlib import Path
            from nbflow.store.results import ResultStore
            ResultStore(Path({str(root)!r}), 1 << 40).write("k", "later", task="t")
        """)
        subprocess.run([sys.executable, "-c", later], check=True, timeout=SAFETY * 3)
    store.flush()
    assert store.read("k").value == "later"
    assert _entry_files(root) == []  # the older write's file went too
    assert [(s.entries, s.bytes) for s in store.summary()] == [(1, len(_inline_rows(root)["k"]))]


def test_two_file_writes_of_a_key_indexed_out_of_order_keep_a_file(root, monkeypatch, wait_until):
    started, go_on = threading.Event(), threading.Event()

    def clock() -> float:  # read by a write after its creation time, before the write is queued
        if threading.current_thread() is not threading.main_thread() and not started.is_set():
            started.set()
            assert go_on.wait(SAFETY)
        return time.time()

    store = ResultStore(root, BIG, clock=clock)
    store.flush()
    first = threading.Thread(target=store.write, args=("k", _large(1)), kwargs={"task": "t"})
    with _index_held(monkeypatch):
        first.start()
        assert started.wait(SAFETY)  # made first ...
        store.write("k", _large(2), task="t")  # ... this one made later, written and queued first
        assert wait_until(store._queue.empty)  # its index row is being committed alone
        go_on.set()
        first.join(SAFETY)  # the first one's file replaced the second's
    store.flush()  # the first write's row comes last and gives way to the newer row, but its file stays
    assert store.read("k").value == _large(1)
    assert len(_entry_files(root)) == 1
    store.close()


# -- what cannot be read is a miss ------------------------------------------------------------
def _craft(key: str, payload: bytes, **fields) -> bytes:
    header = {"key": key, "task": "t", "created": time.time(), "expires": None,
              "pickle": len(payload), "buffers": [], **fields}
    raw = json.dumps(header).encode()
    return struct.pack("<7sBI", MAGIC, VERSION, len(raw)) + raw + payload


CORRUPTIONS = {
    "empty": lambda data, key: b"",
    "truncated": lambda data, key: data[: len(data) // 2],
    "one byte short": lambda data, key: data[:-1],
    "one byte more": lambda data, key: data + b"\0",
    "garbage": lambda data, key: os.urandom(len(data)),
    "wrong magic": lambda data, key: b"XXXXXXX" + data[7:],
    "another version": lambda data, key: data[:7] + bytes([VERSION + 1]) + data[8:],
    "header not json": lambda data, key: data[:12] + b"{" * (len(data) - 12),
    "another key": lambda data, key: _craft("another", pickle.dumps(({}, 1))),
    "header field missing": lambda data, key: _craft(key, pickle.dumps(({}, 1)), task=None),
    "not a (meta, value) pair": lambda data, key: _craft(key, pickle.dumps("just a value")),
    "pickle garbage": lambda data, key: _craft(key, b"\x80\x05garbage"),
}


@pytest.mark.parametrize("where", ["inline", "file"])
@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_an_unreadable_entry_is_a_miss_then_replaced(store, root, corrupt, where, caplog):
    if where == "inline":
        store.write("k", list(range(10)), task="t")
        store.flush()
        _set_inline_row(root, "k", corrupt(_inline_rows(root)["k"], "k"))
    else:
        store.write("k", np.arange(100_000), task="t")
        path = _only_entry(root)
        path.write_bytes(corrupt(path.read_bytes(), "k"))
    with caplog.at_level(logging.WARNING, logger="nbflow"):
        assert store.read("k") is None
        assert store.read("k") is None
    assert len(_unreadable_warnings(caplog)) == 1  # once per key
    assert "'k'" in _unreadable_warnings(caplog)[0]
    store.write("k", "fresh", task="t")
    assert store.read("k").value == "fresh"
    store.flush()
    assert store.read("k").value == "fresh"


def test_something_other_than_bytes_in_the_index_is_a_miss(store, root, caplog):
    store.write("k", 1, task="t")
    store.flush()
    _set_inline_row(root, "k", "text")  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="nbflow"):
        assert store.read("k") is None and not store.exists("k")
    assert "str" in _unreadable_warnings(caplog)[0]


@pytest.mark.parametrize("committed", [False, True], ids=["pending", "committed"])
def test_an_entry_whose_class_no_longer_imports_is_a_miss(store, monkeypatch, caplog, committed):
    module = types.ModuleType("vanishing_module")
    module.Thing = type("Thing", (), {"__module__": "vanishing_module"})
    monkeypatch.setitem(sys.modules, "vanishing_module", module)
    store.write("k", module.Thing(), task="t")
    if committed:
        store.flush()
    monkeypatch.delitem(sys.modules, "vanishing_module")
    assert store.exists("k")  # exists reads the header only, never the value
    with caplog.at_level(logging.WARNING, logger="nbflow"):
        assert store.read("k") is None
    assert "vanishing_module" in _unreadable_warnings(caplog)[0]


def test_a_directory_in_the_way_is_a_miss_and_replaced(store, root):
    store.write("k", _large(1), task="t")
    path = _only_entry(root)
    path.unlink()
    (path / "inside").mkdir(parents=True)
    assert store.read("k") is None
    store.write("k", _large(2), task="t")
    assert store.read("k").value == _large(2)


# -- writes that fail -------------------------------------------------------------------------
class _FailingFile:
    """A file that writes its first chunk, then fails like a full disk (or whatever ``error`` is)."""

    def __init__(self, handle, error: OSError) -> None:
        self.handle = handle
        self.error = error

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.handle.close()

    def writelines(self, chunks):
        self.handle.write(next(iter(chunks)))
        raise self.error


def _fail_writes(monkeypatch, error: OSError) -> None:
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return _FailingFile(handle, error) if mode == "xb" else handle

    monkeypatch.setattr(results, "open", fake_open, raising=False)


def test_a_write_failing_midway_leaves_the_old_entry_intact(store, root, monkeypatch):
    store.write("k", _large(1), task="t")
    before = _only_entry(root).read_bytes()
    _fail_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StoreError, match="full"):
        store.write("k", _large(2), task="t")
    assert _only_entry(root).read_bytes() == before
    assert store.read("k").value == _large(1)
    assert _temporary_files(root) == []


def test_a_read_only_store_refuses_writes_with_the_reason_and_still_reads(store, root, monkeypatch):
    store.write("k", _large(1), task="t")
    _fail_writes(monkeypatch, PermissionError(errno.EROFS, "Read-only file system"))
    with pytest.raises(StoreError, match="read-only"):
        store.write("k", _large(2), task="t")
    with pytest.raises(StoreError, match="read-only"):
        store.write("other", _large(2), task="t")
    assert store.read("k").value == _large(1)
    assert store.read("other") is None


def test_without_an_index_small_writes_to_a_read_only_store_are_refused(root, monkeypatch):
    (root / "index.sqlite").mkdir(parents=True)  # no database can be opened there
    store = ResultStore(root, BIG)
    _fail_writes(monkeypatch, PermissionError(errno.EROFS, "Read-only file system"))
    with pytest.raises(StoreError, match="read-only"):
        store.write("k", 1, task="t")
    assert store.read("k") is None
    store.close()


def test_a_chmod_read_only_store(root):
    store = ResultStore(root, BIG)
    store.write("small", "kept", task="t")
    store.write("large", _large(1), task="t")
    store.close()
    paths = [root, *root.rglob("*")]
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")
        reopened = ResultStore(root, BIG)
        for key, value in (("small", "new"), ("large", _large(2)), ("other", "new")):
            with pytest.raises(StoreError, match="read-only"):
                reopened.write(key, value, task="t")
        assert reopened.read("small").value == "kept"
        assert reopened.read("large").value == _large(1)
        reopened.close()
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_an_unpicklable_value_is_refused_naming_its_type(store, root):
    with pytest.raises(StoreError, match=r"dict.*cannot pickle '_thread\.lock'"):
        store.write("k", {"lock": threading.Lock()}, task="t")
    assert store.read("k") is None
    store.flush()
    assert _entry_files(root) == [] and _temporary_files(root) == [] and _inline_rows(root) == {}


# -- when the index cannot be used, small entries are files ------------------------------------------
def test_without_an_index_entries_still_read_and_write(root, caplog):
    (root / "index.sqlite").mkdir(parents=True)  # no database can be opened there
    store = ResultStore(root, BIG)
    with caplog.at_level(logging.WARNING, logger="nbflow"):
        store.write("a", 1, task="t")
        assert len(_entry_files(root)) == 1  # a file at once: the index cannot hold it
        assert store.read("a").value == 1
        store.remember("slot", {"p": "d"})
        store.flush()
        assert store.recall("slot") is None  # nothing keeps it once applied
        with pytest.raises(StoreError, match="index"):
            store.summary()
    assert any("cannot be opened" in r.getMessage() for r in caplog.records)
    store.close()
    assert ResultStore(root, BIG).read("a").value == 1


def test_small_entries_become_files_while_the_index_cannot_be_written(store, root, monkeypatch, caplog):
    store.flush()
    real = results._Index.transaction

    def full(index, work):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(results._Index, "transaction", full)
    with caplog.at_level(logging.WARNING, logger="nbflow"):
        store.write("a", "queued", task="t")
        store.flush()
        assert len(_entry_files(root)) == 1  # what the index did not take went to a file
        store.write("b", "direct", task="t")
        assert len(_entry_files(root)) == 2  # and small writes go to files while it fails
    assert any("could not be updated" in r.getMessage() for r in caplog.records)
    assert store.read("a").value == "queued" and store.read("b").value == "direct"

    monkeypatch.setattr(results._Index, "transaction", real)
    store.write("c", "as a file, indexed", task="t")
    store.flush()  # the index works again ...
    store.write("d", "inline", task="t")
    store.flush()
    assert set(_inline_rows(root)) == {"d"} and len(_entry_files(root)) == 3  # ... and holds small entries again
    assert [store.read(k).value for k in "cd"] == ["as a file, indexed", "inline"]


# -- size limit -------------------------------------------------------------------------------
def _payload(n: int = 1) -> bytes:
    return bytes(1_000 * n)


@pytest.mark.parametrize("scale", [1, INLINE_MAX // 1_000 + 1], ids=["inline", "file"])
def test_least_recently_used_entries_go_first(root, scale):
    clock = Clock()
    store = ResultStore(root, 1, clock=clock)
    size = store.write("probe", _payload(scale), task="t")
    store.clear()
    store.max_bytes = 3 * size + size // 2  # room for three entries
    for key in "abc":
        store.write(key, _payload(scale), task="t")
    assert store.read("a") is not None  # a is now used after b and c
    store.write("d", _payload(scale), task="t")  # over: b goes
    store.close()
    assert [k for k in "abcd" if store.exists(k)] == ["a", "c", "d"]
    store.read("c")
    store.write("e", _payload(scale), task="t")  # over: a goes (c was read, d written, after it)
    store.close()
    assert [k for k in "abcde" if store.exists(k)] == ["c", "d", "e"]
    assert store.total_bytes() <= store.max_bytes
    assert len(_inline_rows(root)) + len(_entry_files(root)) == 3
    store.close()


def test_the_entry_just_written_is_never_evicted(root):
    store = ResultStore(root, 10_000, clock=Clock())
    store.write("a", _payload(), task="t")
    store.write("b", _payload(), task="t")
    store.write("huge", _large(), task="t")  # alone over the limit
    store.close()
    assert not store.exists("a") and not store.exists("b")
    assert store.read("huge").value == _large()
    assert _inline_rows(root) == {}
    store.close()


def test_an_entry_rewritten_since_it_was_indexed_is_not_evicted(root, tmp_path):
    clock = Clock()
    store = ResultStore(root, BIG, clock=clock)
    size = store.write("a", _large(), task="t")
    store.write("b", _large(), task="t")
    store.close()
    # Another writer replaces a's file; its row (the least recently used) is not updated yet.
    elsewhere = tmp_path / "elsewhere"
    other = ResultStore(elsewhere, BIG)
    other.write("a", _large(), task="t", meta={"writer": "other"})
    other.close()
    written = _only_entry(elsewhere)
    shutil.copyfile(written, root / written.relative_to(elsewhere))  # same key, same file name
    store.max_bytes = 2 * size + size // 2
    store.write("c", _large(), task="t")
    store.close()
    assert store.read("a").meta == {"writer": "other"}  # kept: it is not what the row described
    assert not store.exists("b")
    assert store.exists("c")
    store.close()


# -- expiry -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [1, _large()], ids=["inline", "file"])
def test_an_expired_entry_is_a_miss(store, value):
    store.write("old", value, task="t", expires=time.time() - 1)
    store.write("fresh", value, task="t", expires=time.time() + 3600)
    for _ in ("pending", "committed"):
        assert store.read("old") is None and not store.exists("old")
        entry = store.read("fresh")
        assert entry.value == value and entry.expires > time.time()
        assert store.exists("fresh")
        store.flush()


# -- remember / recall ------------------------------------------------------------------------
def test_remembered_parts_survive_a_new_store_and_the_latest_wins(root):
    store = ResultStore(root, BIG)
    store.remember("load#0", {"parameter x": "aa", "code": "cc"})
    store.remember("load#0", {"parameter x": "bb", "code": "cc"})
    assert store.recall("load#0") == {"parameter x": "bb", "code": "cc"}
    store.close()
    reopened = ResultStore(root, BIG)
    assert reopened.recall("load#0") == {"parameter x": "bb", "code": "cc"}
    assert reopened.recall("load#1") is None
    reopened.close()


def test_recall_finds_parts_remembered_in_this_process_before_they_are_committed(store, root, monkeypatch):
    store.remember("slot", {"p": "old"})
    store.flush()
    other = ResultStore(root, BIG)
    with _index_held(monkeypatch):
        store.remember("slot", {"p": "new"})
        assert store.recall("slot") == {"p": "new"}  # without waiting for the background thread
        assert other.recall("slot") == {"p": "old"}  # read from the index, without waiting either
    store.flush()
    assert other.recall("slot") == {"p": "new"}
    other.close()


def test_remembered_slots_are_capped_least_recently_remembered_first(root):
    store = ResultStore(root, BIG, clock=Clock(), max_slots=2)
    for slot in ("a", "b", "c"):
        store.remember(slot, {"p": slot})
    store.flush()
    assert [store.recall(s) for s in "abc"] == [None, {"p": "b"}, {"p": "c"}]
    store.close()


# -- the whole store --------------------------------------------------------------------------
def test_summary_total_and_clear_by_task(root):
    clock = Clock()
    store = ResultStore(root, BIG, clock=clock)
    sizes = [store.write("l0", _payload(1), task="load"), store.write("l1", _payload(2), task="load"),
             store.write("l2", _large(), task="load")]
    size = store.write("s0", _payload(), task="save")
    summary = store.summary()  # counts what was written before it, committed or not
    assert summary == [TaskSummary("load", 3, sum(sizes), 3.0), TaskSummary("save", 1, size, 4.0)]
    assert store.total_bytes() == sum(sizes) + size
    assert store.clear("load") == 3
    assert [s.name for s in store.summary()] == ["save"]
    assert not any(store.exists(k) for k in ("l0", "l1", "l2")) and store.exists("s0")
    assert set(_inline_rows(root)) == {"s0"} and _entry_files(root) == []
    assert store.clear("nobody") == 0
    store.write("l2", _large(), task="load")
    assert store.clear() == 2
    assert store.summary() == [] and store.total_bytes() == 0
    assert _entry_files(root) == [] and _inline_rows(root) == {}
    assert store.read("s0") is None and store.read("l2") is None
    store.close()


def test_a_missing_index_is_rebuilt_from_the_entry_files(root):
    store = ResultStore(root, BIG)
    store.write("a", _large(1), task="load")
    store.write("b", _large(2), task="save")
    store.write("small", 1, task="save")
    store.close()
    for path in root.glob("index.sqlite*"):
        path.unlink()
    reopened = ResultStore(root, BIG)
    assert [(s.name, s.entries) for s in reopened.summary()] == [("load", 1), ("save", 1)]
    assert reopened.read("b").value == _large(2)
    assert reopened.read("small") is None  # it lived in the index
    reopened.close()


def test_a_corrupt_index_is_set_aside_and_rebuilt(root, caplog):
    store = ResultStore(root, BIG)
    store.write("a", _large(1), task="load")
    store.close()
    for path in root.glob("index.sqlite-*"):
        path.unlink()
    (root / "index.sqlite").write_bytes(b"this is not a database" * 100)
    reopened = ResultStore(root, BIG)
    with caplog.at_level(logging.WARNING, logger="nbflow"):
        assert [(s.name, s.entries) for s in reopened.summary()] == [("load", 1)]
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert (root / "index.sqlite.corrupt").read_bytes().startswith(b"this is not")
    assert reopened.read("a").value == _large(1)
    reopened.write("small", 1, task="t")  # the new index holds small entries
    reopened.flush()
    assert set(_inline_rows(root)) == {"small"}
    reopened.close()


def test_an_index_of_schema_version_1_gains_the_inline_table(root):
    root.mkdir(parents=True)
    db = sqlite3.connect(root / "index.sqlite")
    db.execute("CREATE TABLE entries (key TEXT PRIMARY KEY, task TEXT NOT NULL, bytes INTEGER NOT NULL,"
               " created REAL NOT NULL, expires REAL, last_used REAL NOT NULL)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = ResultStore(root, BIG)
    store.write("k", 1, task="t")
    store.close()
    assert set(_inline_rows(root)) == {"k"}
    assert ResultStore(root, BIG).read("k").value == 1


def test_a_closed_store_can_be_used_again(store):
    store.write("a", 1, task="t")
    store.close()
    store.close()
    store.write("b", 2, task="t")
    assert store.read("a").value == 1 and store.read("b").value == 2
    assert store.total_bytes() > 0


def _store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nbflow-result-store"]


def test_an_idle_store_lets_its_thread_go_and_starts_it_again(root, monkeypatch, wait_until):
    before = set(_store_threads())
    monkeypatch.setattr(results, "_IDLE", 0.01)
    store = ResultStore(root, BIG)
    store.write("a", 1, task="t")
    assert wait_until(lambda: set(_store_threads()) <= before)  # gone, with its database connection
    store.write("b", 2, task="t")
    assert [s.entries for s in store.summary()] == [2]
    store.close()


# -- locks ------------------------------------------------------------------------------------
def test_lock_excludes_another_thread(store):
    entered = threading.Event()

    def other() -> None:
        with store.lock("k"):
            entered.set()

    with store.lock("k"):
        thread = threading.Thread(target=other)
        thread.start()
        assert not entered.wait(0.3)  # held here: the other thread waits
        with store.lock("another key"):  # other keys are free
            pass
    assert entered.wait(SAFETY)
    thread.join(SAFETY)


def _lock_in_another_process(root: str, trying, acquired) -> None:
    store = ResultStore(Path(root), BIG)
    trying.set()
    with store.lock("k"):
        acquired.set()
    store.close()


def test_lock_excludes_another_process(store, root):
    context = multiprocessing.get_context("spawn")
    trying, acquired = context.Event(), context.Event()
    with store.lock("k"):
        process = context.Process(target=_lock_in_another_process, args=(str(root), trying, acquired))
        process.start()
        assert trying.wait(SAFETY * 3)
        assert not acquired.wait(0.5)  # held here: the other process waits
    assert acquired.wait(SAFETY)
    process.join(SAFETY)
    assert process.exitcode == 0


# -- sharing ----------------------------------------------------------------------------------
def _writer_process(root: str, name: str, rounds: int, max_bytes: int, problems) -> None:
    """Write (small and large values) and read the shared keys; report anything logged or raised."""
    captured: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record.getMessage())

    logging.getLogger("nbflow").addHandler(Capture(logging.WARNING))
    try:
        store = ResultStore(Path(root), max_bytes)
        for i in range(rounds):
            key = f"k{i % 10}"
            data = np.full(500 if i % 4 else 10_000, i)  # 4 KB inline, or 80 KB in a file
            store.write(key, {"key": key, "by": name, "data": data}, task=name)
            found = store.read(f"k{(i * 7) % 10}")
            if found is not None and found.value["key"] != f"k{(i * 7) % 10}":
                captured.append(f"wrong value under k{(i * 7) % 10}: {found.value['key']}")
            if i % 25 == 0:
                store.remember(f"slot{i % 3}", {"by": name})
                store.summary()
        store.close()
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails with it
        captured.append(f"{type(exc).__name__}: {exc}")
    problems.put((name, captured))


def test_two_processes_writing_and_reading_the_same_keys(root):
    context = multiprocessing.get_context("spawn")
    problems = context.Queue()
    max_bytes = 200_000  # two large entries and a few small ones: both processes evict too
    processes = [context.Process(target=_writer_process, args=(str(root), name, 150, max_bytes, problems))
                 for name in ("one", "two")]
    for process in processes:
        process.start()
    reports = dict(problems.get(timeout=SAFETY * 6) for _ in processes)
    for process in processes:
        process.join(SAFETY)
    assert reports == {"one": [], "two": []}
    store = ResultStore(root, max_bytes)
    for i in range(10):
        found = store.read(f"k{i}")
        assert found is None or (found.value["key"] == f"k{i}" and found.task == found.value["by"])
    assert store.total_bytes() == sum(s.bytes for s in store.summary())
    assert store.recall("slot0") in ({"by": "one"}, {"by": "two"})
    assert _temporary_files(root) == []
    store.close()


def test_many_threads_reading_and_writing(store):
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            start.wait(SAFETY)
            for i in range(100):
                key = f"k{(n + i) % 10}"
                value = (key, n, i) if i % 5 else (key, n, i, _large())
                store.write(key, value, task=f"t{n % 2}")
                found = store.read(f"k{i % 10}")
                assert found is None or found.value[0] == f"k{i % 10}"
                store.remember(f"s{i % 5}", {"n": str(n)})
        except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails with it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SAFETY * 3)
    assert errors == []
    assert sum(s.entries for s in store.summary()) == 10
    assert all(store.read(f"k{i}").value[0] == f"k{i}" for i in range(10))


def test_reads_share_a_transaction_and_a_flush_does_not_wait_for_more(store, monkeypatch, wait_until):
    store.write("k", 1, task="t")
    store.flush()
    monkeypatch.setattr(results, "_LINGER", SAFETY)  # uses alone wait as long as it takes for company
    transactions = []
    real = results._Index.transaction

    def counted(index, work):
        transactions.append(work)
        return real(index, work)

    monkeypatch.setattr(results._Index, "transaction", counted)
    for _ in range(3):
        assert store.read("k").value == 1
        assert wait_until(store._queue.empty)  # the background thread holds the use, waiting for more
    assert store.flush(timeout=SAFETY / 2)  # anything but a use ends the wait at once
    assert len(transactions) == 1


def test_a_flood_of_small_writes_waits_for_room_rather_than_growing(store, monkeypatch, wait_until):
    value = bytes(1_000)
    size = store.write("00-00", value, task="t")  # keys of one length: entries of one size
    store.flush()
    monkeypatch.setattr(results, "_QUEUED_BYTES", 10 * size + size // 2)  # room for ten queued entries
    done: list[str] = []

    def flood(n: int) -> None:
        for i in range(20):
            key = f"{n:02}-{i:02}"
            store.write(key, value, task="t")
            done.append(key)

    threads = [threading.Thread(target=flood, args=(n,)) for n in range(1, 5)]
    with _index_held(monkeypatch):
        for thread in threads:
            thread.start()
        assert wait_until(lambda: all(_waiting(thread) for thread in threads))  # every writer waits ...
        assert len(done) == 10  # ... with ten entries queued, none of them committed
    for thread in threads:
        thread.join(SAFETY)
    assert len(done) == 80
    store.flush()
    assert all(store.read(key).value == value for key in done)


def _use_in_forked_child(store: ResultStore, done) -> None:
    store.write("child", "from the child", task="t")
    done.put((store.read("parent").value, [s.entries for s in store.summary()]))
    store.close()


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_a_forked_child_uses_the_store_of_its_parent(store):
    store.write("parent", "from the parent", task="t")
    assert store.read("parent").value == "from the parent"  # the parent has a read connection
    assert store.total_bytes() > 0  # the parent's background thread is running
    context = multiprocessing.get_context("fork")
    done = context.Queue()
    process = context.Process(target=_use_in_forked_child, args=(store, done))
    process.start()
    assert done.get(timeout=SAFETY) == ("from the parent", [2])
    process.join(SAFETY)
    assert store.read("child").value == "from the child"
    assert store.read("parent").value == "from the parent"


def _wait_in_forked_child(store: ResultStore, started, finish) -> None:
    started.set()
    finish.wait(SAFETY)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_a_lock_is_released_even_if_a_child_forked_while_it_was_held(store):
    context = multiprocessing.get_context("fork")
    started, finish = context.Event(), context.Event()
    with store.lock("k"):
        child = context.Process(target=_wait_in_forked_child, args=(store, started, finish))
        child.start()
        assert started.wait(SAFETY)
    acquired = threading.Event()

    def again() -> None:
        with store.lock("k"):
            acquired.set()

    thread = threading.Thread(target=again)
    thread.start()
    try:
        assert acquired.wait(SAFETY)  # not held by the child's copy of the lock file
    finally:
        finish.set()
        child.join(SAFETY)
        thread.join(SAFETY)
