"""The run history's SQLite file: its schema, and the background writer that fills it from run records.

:func:`start` starts a :class:`HistoryWriter`: it subscribes to the state
events of flow runs (whose callback, on the hot path, only appends the flow
run to a bounded buffer) and a daemon thread reads the records (public
attributes only) and writes what changed: the flow runs, and their task runs
with their states, output and upstream edges. Task runs are read from their
flow run's record (when it changes state, every ``SWEEP_SECONDS`` while it
executes, and on a flush), never through a callback per task event: a 10,000-
task map costs the hot path nothing. Each sweep writes the rows of the runs
that moved, so a run that changed many times costs one row write.

The file (``settings.current.history_path``) is shared by every process that
writes or reads it: WAL mode, ``BEGIN IMMEDIATE`` transactions, a busy
timeout and retries with backoff keep "database is locked" inside this
module. A history that cannot be written warns once and drops what it was
given; a corrupt one is set aside and a new one started. A run never fails
because of its history. :mod:`nbflow.history` reads it.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import logging
import os
import pickle
import random
import reprlib
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from nbflow import events, settings
from nbflow.exceptions import MissingResult
from nbflow.futures import PrefectFuture, PrefectFutureList
from nbflow.records import FlowRun, TaskRun
from nbflow.states import get_state_exception

logger = logging.getLogger("nbflow")
T = TypeVar("T")

#: The schema's version (``PRAGMA user_version``); a file of another version is migrated or set aside.
SCHEMA_VERSION = 1
#: Characters kept of a run's output, and of its log, in the history (the tail).
TAIL_CHARS = 16 * 1024
#: Characters of a summary of a parameter, an input or a result.
SUMMARY_CHARS = 200
#: Lines of a traceback kept (its end).
TRACEBACK_LINES = 50
#: Parameter values are kept (for a retry) when they pickle to at most this many bytes.
PARAMETERS_MAX_BYTES = 1024 * 1024
#: Flow-run markers the buffer holds before it is coalesced.
BUFFER_BOUND = 10_000
#: How long the writer gathers events before it commits (a flush cuts it short).
BATCH_SECONDS = 0.25
#: How often the writer looks for what changed in the flow runs that execute.
SWEEP_SECONDS = 1.0
#: Task runs written per transaction while flow runs execute: the writer pauses between slices so that
#: it takes at most ``BUSY_SHARE`` of the time. Once they end (or on a flush) it catches up in larger ones.
SLICE_RUNS = 200
CATCH_UP_RUNS = 5000
BUSY_SHARE = 0.05
#: How many ended top-level flow runs the writer remembers having written (so a late event does not
#: make it write one again).
FINISHED_KEPT = 10_000
#: How often (seconds) the writer applies the retention limits after a commit.
PRUNE_SECONDS = 30.0
#: How long one statement waits for another process's lock, then how long retries go on before a warning.
BUSY_MS = 5000
LOCK_PATIENCE = 30.0

# Task runs are keyed in the file by ``seq``, a row number the writer gives each in the order it first
# writes them (their uuid is ``id``): rows and states then go in at the end of their b-trees. With the
# random uuid as key every commit dirtied pages all over the file and writing took three times as long.
# AUTOINCREMENT: a number is never given twice, even after the rows holding it were deleted.
SCHEMA = """
CREATE TABLE flow_runs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, flow_name TEXT NOT NULL, parent_id TEXT, root_id TEXT NOT NULL,
    retry_of_id TEXT, parameters TEXT, parameter_values BLOB, tags TEXT, state TEXT, state_type TEXT,
    state_message TEXT, start_time REAL, end_time REAL, created REAL NOT NULL, run_count INTEGER
);
CREATE INDEX flow_runs_by_flow ON flow_runs (flow_name, created);
CREATE INDEX flow_runs_by_created ON flow_runs (created);
CREATE INDEX flow_runs_by_root ON flow_runs (root_id);
CREATE INDEX flow_runs_by_name ON flow_runs (name);
CREATE TABLE flow_run_states (
    flow_run_id TEXT NOT NULL, seq INTEGER NOT NULL, name TEXT, type TEXT, message TEXT, time REAL,
    PRIMARY KEY (flow_run_id, seq)
) WITHOUT ROWID;
CREATE TABLE task_runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, flow_run_id TEXT NOT NULL, root_id TEXT NOT NULL,
    task_name TEXT, task_key TEXT, dynamic_key TEXT, map_index INTEGER, inputs TEXT,
    name TEXT, state TEXT, state_type TEXT, state_message TEXT, start_time REAL, end_time REAL,
    run_count INTEGER, result_summary TEXT, result_key TEXT, cache_hit INTEGER, cache_key TEXT,
    cache_why TEXT, exception TEXT, traceback TEXT, output_tail TEXT, output_dropped INTEGER, log_tail TEXT
);
CREATE INDEX task_runs_by_root ON task_runs (root_id);
CREATE TABLE task_run_states (
    task_seq INTEGER NOT NULL, seq INTEGER NOT NULL, name TEXT, type TEXT, message TEXT, time REAL,
    PRIMARY KEY (task_seq, seq)
) WITHOUT ROWID;
CREATE TABLE edges (flow_run_id TEXT NOT NULL, upstream_id TEXT NOT NULL, downstream_id TEXT NOT NULL);
CREATE INDEX edges_by_flow_run ON edges (flow_run_id);
"""

#: ``from version: SQL`` bringing a file of an older schema to the next version (none yet).
MIGRATIONS: dict[int, str] = {}

_UPSERT_FLOW_RUN = """
INSERT INTO flow_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET name = excluded.name, retry_of_id = excluded.retry_of_id,
    parameters = coalesce(excluded.parameters, parameters),
    parameter_values = coalesce(excluded.parameter_values, parameter_values), tags = excluded.tags,
    state = excluded.state, state_type = excluded.state_type, state_message = excluded.state_message,
    start_time = excluded.start_time, end_time = excluded.end_time, run_count = excluded.run_count
"""
# What changes in a task run's row as it goes on (the rest is written once, with the row).
_TASK_RUN_CHANGES = (
    "name", "state", "state_type", "state_message", "start_time", "end_time", "run_count", "result_summary",
    "result_key", "cache_hit", "cache_key", "cache_why", "exception", "traceback", "output_tail",
    "output_dropped", "log_tail",
)
_INSERT_TASK_RUN = (
    "INSERT INTO task_runs (seq, id, flow_run_id, root_id, task_name, task_key, dynamic_key, map_index, inputs, "
    f"{', '.join(_TASK_RUN_CHANGES)}) VALUES ({', '.join('?' * (9 + len(_TASK_RUN_CHANGES)))})"
)
# By seq (fast) and id: a row another process cleared or pruned meanwhile is not there to update.
_UPDATE_TASK_RUN = (
    f"UPDATE task_runs SET {', '.join(f'{c} = ?' for c in _TASK_RUN_CHANGES)} WHERE seq = ? AND id = ?"
)
_NEXT_SEQ = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'task_runs'), 0), "
    "coalesce((SELECT max(seq) FROM task_runs), 0)) + 1"
)


# -- errors ----------------------------------------------------------------------------------------
class HistoryUnavailable(Exception):
    """The history file cannot be used; the message says where, why, and the fix."""


def _code(exc: BaseException) -> int:
    """The primary SQLite result code of an sqlite3 error (0 if it has none)."""
    return (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def is_busy(exc: BaseException) -> bool:
    """True for "database is locked" (another connection holds the lock: wait and retry)."""
    if _code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def is_corrupt(exc: BaseException) -> bool:
    """True when the file is not an SQLite database, or is damaged."""
    if _code(exc) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return True
    text = str(exc)
    return isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text)


def _fix(path: Path, exc: BaseException) -> str:
    """What to do about an error writing the history at ``path``."""
    code = _code(exc)
    if path.is_dir():
        return f"{path} is a directory: move it away, or point NBFLOW_HOME at another folder"
    if code == sqlite3.SQLITE_FULL or "full" in str(exc):
        return "free some disk space, or lower NBFLOW_HISTORY_MAX_MB"
    return (f"make {path.parent} (and {path.name}, if it exists) writable, or point NBFLOW_HOME "
            "at a writable folder")


def retrying(work: Callable[[], T], patience: float = LOCK_PATIENCE) -> T:
    """``work()``, retried with backoff while the database is locked (up to ``patience`` seconds)."""
    delay = 0.005
    deadline = time.monotonic() + patience
    while True:
        try:
            return work()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))  # backoff, jittered so processes do not march together
        delay = min(delay * 2, 0.5)


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction (``BEGIN IMMEDIATE``: the lock is taken at once, or "locked" is raised to retry)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# -- connections and the schema -----------------------------------------------------------------------
def default_path() -> Path:
    """The history file of the settings in force."""
    path = getattr(settings.current, "history_path", None)
    return Path(path) if path is not None else settings.current.home / "history.sqlite"


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the history at ``path`` with its schema ready (created, migrated or started afresh).

    Raises :class:`HistoryUnavailable` if the file cannot be opened or written.
    A corrupt file, or one of a schema this nbflow cannot migrate, is renamed
    aside (with a warning) and a new one started.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return _open_ready(path)
        except _SetAside as aside:
            set_aside(path, aside.why)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            set_aside(path, f"it is corrupt ({exc})")
        return _open_ready(path)
    except (OSError, sqlite3.Error, _SetAside) as exc:
        raise HistoryUnavailable(
            f"nbflow cannot write the run history at {path} ({type(exc).__name__}: {exc}); flow runs are "
            f"not recorded. Fix: {_fix(path, exc)}; or set NBFLOW_HISTORY=0 to turn the history off."
        ) from exc


class _SetAside(Exception):
    """The file holds a history this nbflow cannot use: set it aside."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _open_ready(path: Path) -> sqlite3.Connection:
    conn = _open(path)
    try:
        retrying(lambda: _prepare(conn, path))
    except BaseException:
        conn.close()
        raise
    return conn


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=BUSY_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
    return conn


def open_for_reading(path: Path) -> sqlite3.Connection | None:
    """A connection to read the history at ``path``; None if there is none yet or it is of another schema."""
    if not path.is_file():
        return None
    conn = _open(path)
    try:
        version = retrying(lambda: conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        conn.close()
        if not is_corrupt(exc):
            raise
        logger.warning("nbflow: the run history at %s cannot be read (%s); it is set aside when nbflow "
                       "next writes it.", path, exc)
        return None
    if version != SCHEMA_VERSION:
        conn.close()
        return None
    return conn


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    """WAL mode, then the schema: created in a new file, migrated in an older one, else the file set aside."""
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect in a new, empty file
    if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
        raise sqlite3.OperationalError(f"cannot use WAL mode for {path}")
    conn.execute("PRAGMA synchronous = NORMAL")
    with immediate(conn):  # one process at a time creates or migrates
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            version = SCHEMA_VERSION
        while version in MIGRATIONS:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            version += 1
            conn.execute(f"PRAGMA user_version = {version}")
    if version > SCHEMA_VERSION:
        raise HistoryUnavailable(
            f"nbflow cannot write the run history at {path}: a newer nbflow wrote it (schema {version}, this "
            f"one knows {SCHEMA_VERSION}); flow runs are not recorded. Fix: upgrade nbflow, or point NBFLOW_HOME "
            "at another folder."
        )
    if version != SCHEMA_VERSION:
        raise _SetAside(f"its schema (version {version}) is not one this nbflow knows")


def set_aside(path: Path, why: str) -> Path:
    """Rename the history file (and its WAL files) to ``<name>.corrupt-<time>``; warn; return the new name."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{aside}{suffix}")
    logger.warning("nbflow: the run history at %s could not be used: %s. It was set aside as %s and a new "
                   "one started; delete the old file once you no longer need it.", path, why, aside)
    return aside


def delete_flow_runs(conn: sqlite3.Connection, root_ids: Iterable[str]) -> int:
    """Delete top-level flow runs and everything of theirs (subflows, task runs, states, edges); in a transaction."""
    ids = [(i,) for i in root_ids]
    if not ids:
        return 0
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (id TEXT PRIMARY KEY)")
    conn.execute("DELETE FROM temp.doomed")
    conn.executemany("INSERT OR IGNORE INTO temp.doomed VALUES (?)", ids)
    flows = "SELECT id FROM flow_runs WHERE root_id IN (SELECT id FROM temp.doomed)"
    tasks = "SELECT seq FROM task_runs WHERE root_id IN (SELECT id FROM temp.doomed)"
    conn.execute(f"DELETE FROM task_run_states WHERE task_seq IN ({tasks})")
    conn.execute(f"DELETE FROM edges WHERE flow_run_id IN ({flows})")
    conn.execute("DELETE FROM task_runs WHERE root_id IN (SELECT id FROM temp.doomed)")
    conn.execute(f"DELETE FROM flow_run_states WHERE flow_run_id IN ({flows})")
    conn.execute("DELETE FROM flow_runs WHERE root_id IN (SELECT id FROM temp.doomed)")
    conn.execute("DELETE FROM temp.doomed")
    return len(ids)


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes the history's pages hold (the file's size, less its free pages)."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    return pages * conn.execute("PRAGMA page_size").fetchone()[0]


def prune(conn: sqlite3.Connection, max_runs: int, max_bytes: int) -> int:
    """Delete the oldest top-level flow runs beyond ``max_runs``, then while the history passes ``max_bytes``.

    The newest run is always kept. Returns how many top-level runs were deleted.
    """
    def work() -> int:
        with immediate(conn):
            old = [r[0] for r in conn.execute(
                "SELECT id FROM flow_runs WHERE parent_id IS NULL ORDER BY created DESC LIMIT -1 OFFSET ?",
                (max(max_runs, 1),))]
            removed = delete_flow_runs(conn, old)
            while used_bytes(conn) > max_bytes:
                count = conn.execute("SELECT count(*) FROM flow_runs WHERE parent_id IS NULL").fetchone()[0]
                if count <= 1:
                    break
                batch = [r[0] for r in conn.execute(
                    "SELECT id FROM flow_runs WHERE parent_id IS NULL ORDER BY created LIMIT ?",
                    (min(count - 1, max(1, count // 10)),))]
                removed += delete_flow_runs(conn, batch)
        if removed:
            conn.execute("PRAGMA incremental_vacuum")  # give the freed pages back to the file system
        return removed

    return retrying(work)


def delete_all(conn: sqlite3.Connection) -> int:
    """Delete every flow run in the history (in a transaction, retried while locked); how many top-level runs."""
    def work() -> int:
        with immediate(conn):
            roots = conn.execute("SELECT count(*) FROM flow_runs WHERE parent_id IS NULL").fetchone()[0]
            for table in ("flow_runs", "flow_run_states", "task_runs", "task_run_states", "edges"):
                conn.execute(f"DELETE FROM {table}")
        conn.execute("PRAGMA incremental_vacuum")
        return roots

    return retrying(work)


def clear(path: Path | None = None) -> int:
    """Delete every flow run in the history at ``path`` (default: the settings'); how many top-level runs it held.

    With a writer running for that file, the writer does it, after writing what
    it holds; flow runs still executing are then written whole again as they go on.
    """
    path = default_path() if path is None else Path(path)
    writer = current(path)
    if writer is not None and writer.running:
        return writer.clear()
    conn = open_for_reading(path)
    if conn is None:
        return 0
    try:
        return delete_all(conn)
    finally:
        conn.close()


# -- what a row holds ----------------------------------------------------------------------------------
class _Summary(reprlib.Repr):
    """Short reprs; a future is shown by its task run's name (its state changes while it is written)."""

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, PrefectFuture):
            return f"<future of {x.task_run.name}>"
        if isinstance(x, PrefectFutureList):
            return self.repr_list(x, level)
        return super().repr1(x, level)


_repr = _Summary()
_repr.maxstring = _repr.maxother = SUMMARY_CHARS
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxfrozenset = _repr.maxdict = 20
_PLAIN = (int, float, bool, type(None))


def summary(value: Any) -> str:
    """A short repr of ``value`` (at most ``SUMMARY_CHARS``), never raising; big containers are not walked."""
    try:
        text = repr(value) if type(value) in _PLAIN else _repr.repr(value)
    except Exception as exc:  # noqa: BLE001 - a user's __repr__ can fail anyhow
        text = f"<{type(value).__name__}: repr failed: {type(exc).__name__}>"
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 3] + "..."


def summaries(values: dict[str, Any]) -> str:
    """JSON of ``{name: summary(value)}``."""
    return json.dumps({str(k): summary(v) for k, v in values.items()})


def _pickled(values: dict[str, Any]) -> bytes | None:
    try:
        blob = pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - cannot be pickled: a retry is then told to pass them
        return None
    return blob if len(blob) <= PARAMETERS_MAX_BYTES else None


_NBFLOW_DIR = str(Path(__file__).resolve().parent.parent)


def format_traceback(exc: BaseException, limit: int = TRACEBACK_LINES) -> str | None:
    """The traceback of ``exc`` (with its notes) without nbflow's own frames, its last ``limit`` lines.

    None when it has neither a traceback nor notes (an exception made, not raised).
    """
    if exc.__traceback__ is None and not getattr(exc, "__notes__", None):
        return None
    try:
        report = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
        mine = [frame for frame in report.stack if not frame.filename.startswith(_NBFLOW_DIR)]
        if mine:  # the user's frames tell the story
            report.stack = traceback.StackSummary.from_list(mine)
        lines = "".join(report.format()).rstrip().splitlines()
    except Exception:  # noqa: BLE001 - a user's __str__ can fail anyhow
        return None
    if len(lines) > limit:
        lines = [lines[0], f"  [... {len(lines) - limit + 1} lines ...]"] + lines[-(limit - 2):]
    return "\n".join(lines)


def _tails(output: Any) -> tuple[str | None, int, str | None]:
    """``(JSON of the kept [stream, text] chunks, characters dropped, log text)`` of an OutputBuffer."""
    if output is None:
        return None, 0, None
    chunks = output.chunks
    dropped = output.dropped
    kept: list[tuple[str, str]] = []
    size = 0
    for stream, text in reversed(chunks):
        if size >= TAIL_CHARS:
            dropped += len(text)
            continue
        if size + len(text) > TAIL_CHARS:
            cut = len(text) - (TAIL_CHARS - size)
            dropped += cut
            text = text[cut:]
        kept.append((stream, text))
        size += len(text)
    kept.reverse()
    log = "".join(t for s, t in chunks if s == "log")[-TAIL_CHARS:] or None
    return json.dumps(kept), dropped, log


def _state_rows(run_id: str | int, states: list[Any], start: int) -> list[tuple]:
    # s.type is a str enum: bound as its value
    return [(run_id, seq, s.name, s.type, s.message, s.timestamp_seconds) for seq, s in enumerate(states[start:], start)]


def uuid_text(run_id: int) -> str:
    """``str(nbflow.records.as_uuid(run_id))``, made directly (the writer makes one per row)."""
    value = (run_id & ~(0xC000 << 48) | (0x8000 << 48)) & ~(0xF000 << 64) | (4 << 76)  # variant, version 4
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _depth(run: FlowRun) -> int:
    depth = 0
    while run.parent is not None:
        run, depth = run.parent, depth + 1
    return depth


def _result_summary(state: Any) -> str | None:
    """The summary of a Completed state's value, if the value is here: reading one that stayed on
    a cluster would fetch it (or fail once the cluster is gone), which the history never does."""
    if getattr(state, "on_cluster", False):
        return None
    try:
        return summary(state.data)
    except MissingResult:
        return None


def _progress(run: TaskRun) -> tuple[int, int]:
    """How far a task run has got: ``(states entered, characters of output written)``."""
    output = run.output
    return len(run.states), 0 if output is None else output.size + output.dropped


class _Flush:
    """A marker in the buffer: ``action`` runs and ``done`` is set once everything enqueued before it is committed."""

    __slots__ = ("action", "done", "outcome")

    def __init__(self, action: Callable[[], Any] | None = None) -> None:
        self.action = action
        self.done = threading.Event()
        self.outcome: tuple[bool, Any] = (True, None)


# -- the writer ------------------------------------------------------------------------------------------
class HistoryWriter:
    """Writes the flow runs and task runs of this process into the history at ``path``, in the background.

    It subscribes to the state events of flow runs only, and reads their task
    runs from the records: when a flow run changes state, every ``sweep_seconds``
    while one executes, and on a flush. Task runs, their output and logs cost
    the runs nothing (no callback per task event); each sweep writes the task
    runs that moved since the last one, in slices of ``SLICE_RUNS``, and while
    flow runs execute it pauses between slices so as to take at most
    ``busy_share`` of the time (it catches up at full speed once they end).

    ``bound`` caps the buffer of flow-run markers (coalesced past it: one per
    flow run; the oldest let go, counted in ``dropped``, if even that is too
    many); ``peak`` is the most it held; ``failed`` says why the history could
    not be written (None while all is well).
    """

    def __init__(self, path: Path, bound: int = BUFFER_BOUND, batch_seconds: float = BATCH_SECONDS,
                 sweep_seconds: float = SWEEP_SECONDS, prune_seconds: float = PRUNE_SECONDS) -> None:
        self.path = path
        self.bound = max(bound, 2)
        self.batch_seconds = batch_seconds
        self.sweep_seconds = sweep_seconds
        self.prune_seconds = prune_seconds
        self.busy_share = BUSY_SHARE
        self.peak = 0
        self.dropped = 0
        self.failed: str | None = None
        self.commits = 0
        #: Called by the writer thread before each commit (a test's hook to slow it down).
        self.before_commit: Callable[[], None] | None = None
        self._queue: collections.deque[Any] = collections.deque()
        self._coalescing = threading.Lock()
        self._wake = threading.Event()
        self._hurry = threading.Event()
        self._stopping = False
        self._conn: sqlite3.Connection | None = None
        self._warned: set[str] = set()
        self._last_prune = 0.0
        # What was written of each run still in flight: task run id -> (seq, states, output chars);
        # flow run id -> states.
        self._task_written: dict[int, tuple[int, int, int]] = {}
        self._flow_written: dict[int, int] = {}
        self._active: dict[FlowRun, None] = {}  # top-level flow runs seen that had not ended
        self._finished: dict[int, None] = {}  # ids of the last top-level flow runs written whole, once ended
        self._thread = threading.Thread(target=self._loop, name=f"nbflow-history {path.name}", daemon=True)
        self._subscription: events.Subscription | None = None

    # -- life ------------------------------------------------------------------------------------------
    def start(self) -> HistoryWriter:
        """Subscribe to flow-run events and start the writer thread."""
        self._subscription = events.subscribe(self._on_event, kinds=("flow-state",))
        self._thread.start()
        atexit.register(self._at_exit)
        return self

    @property
    def running(self) -> bool:
        """True while the writer takes events."""
        return self._subscription is not None and self._thread.is_alive()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every run seen so far is committed as it is now (or dropped, if the history cannot be written).

        Returns False if that did not happen within ``timeout`` seconds.
        """
        if not self._thread.is_alive() or threading.current_thread() is self._thread:
            return not self._thread.is_alive()
        marker = _Flush()
        self._queue.append(marker)
        self._hurry.set()
        self._wake.set()
        return marker.done.wait(timeout)

    def clear(self, timeout: float | None = 60.0) -> int:
        """Empty the history, on the writer's thread once it has written what it holds; how many top-level runs."""
        marker = _Flush(self._delete_all)
        self._queue.append(marker)
        self._hurry.set()
        self._wake.set()
        if not marker.done.wait(timeout):
            raise TimeoutError(f"nbflow: the run history writer for {self.path} did not clear it in {timeout} s")
        ok, value = marker.outcome
        if not ok:
            raise value
        return value

    def _delete_all(self) -> int:
        conn = self._connection()
        if conn is None:
            return 0
        removed = delete_all(conn)
        self._task_written.clear()  # the file holds none of them now: write runs still executing whole
        self._flow_written.clear()
        self._finished.clear()
        return removed

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop taking events, commit what is pending, and end the thread; False if it did not end in time."""
        if self._subscription is not None:
            self._subscription.unsubscribe()
            self._subscription = None
        with _registry_lock:
            if _writers.get(self.path) is self:
                del _writers[self.path]
        atexit.unregister(self._at_exit)
        if not self._thread.is_alive():
            return True
        self._stopping = True
        self._hurry.set()
        self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _at_exit(self) -> None:
        self.stop(timeout=5.0)

    # -- the hot path ----------------------------------------------------------------------------------
    def _on_event(self, event: Any) -> None:
        queue = self._queue
        queue.append(event.run)
        count = len(queue)
        if count >= self.bound // 4:  # many flow runs in a burst: no more gathering, write them now
            if count >= self.bound:
                self._coalesce()
            if not self._hurry.is_set():
                self._hurry.set()
        if not self._wake.is_set():
            self._wake.set()

    def _coalesce(self) -> None:
        """Keep one marker per flow run (and the flush markers), oldest first; past ``bound // 2``, the newest."""
        if not self._coalescing.acquire(blocking=False):
            return  # another thread is at it, or the writer is taking the lot
        try:
            queue = self._queue
            count = len(queue)
            self.peak = max(self.peak, count)
            items = list(dict.fromkeys(queue.popleft() for _ in range(count)))
            excess = len(items) - self.bound // 2
            if excess > 0:  # the writer is that far behind: let the oldest flow runs go
                gone = set([item for item in items if type(item) is not _Flush][:excess])
                self.dropped += len(gone)
                items = [item for item in items if item not in gone]
            queue.extendleft(reversed(items))
        finally:
            self._coalescing.release()
        if self.dropped:
            self._warn("dropped", f"nbflow: the run history writer for {self.path} fell behind (a slow or "
                       f"stalled disk?): flow runs are not all recorded; writer.dropped counts them.")

    # -- the writer thread -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._wake.wait(self.sweep_seconds if self._active else None)
            self._wake.clear()
            if not self._stopping and self._queue:
                self._hurry.wait(self.batch_seconds)  # gather what else comes; a flush or stop cuts it short
            self._hurry.clear()
            self._write(self._drain())
            if self._stopping and not self._queue:
                break
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _drain(self) -> list[Any]:
        """Take what the buffer holds (under the lock a coalescing takes: one taker at a time)."""
        queue = self._queue
        with self._coalescing:
            count = len(queue)
            self.peak = max(self.peak, count)
            return [queue.popleft() for _ in range(count)]

    def _write(self, items: list[Any]) -> None:
        flushes = [item for item in items if type(item) is _Flush]
        try:
            roots = dict.fromkeys(item.root for item in items if isinstance(item, FlowRun))
            roots.update(self._active)
            if roots:
                self._write_roots(list(roots))
        except sqlite3.Error as exc:  # full disk, read-only file, I/O error: warn once per kind, go on
            self._warn(f"sqlite-{_code(exc)}", f"nbflow cannot write the run history at {self.path} "
                       f"({type(exc).__name__}: {exc}); what it was writing is lost. Fix: {_fix(self.path, exc)}; "
                       "or set NBFLOW_HISTORY=0 to turn the history off.")
        except Exception as exc:  # noqa: BLE001 - never let the writer die: warn once, drop the batch
            self._warn(type(exc).__name__, f"nbflow: the run history writer failed on {self.path} "
                       f"({type(exc).__name__}: {exc}); what it was writing is lost.")
        finally:
            for flush in flushes:
                if flush.action is not None:
                    try:
                        flush.outcome = (True, flush.action())
                    except Exception as exc:  # noqa: BLE001 - handed to the thread that asked for it
                        flush.outcome = (False, exc)
                flush.done.set()

    def _write_roots(self, roots: list[FlowRun]) -> None:
        """Write what changed in these top-level flow runs (their subflows and task runs), in slices."""
        flow_runs: list[FlowRun] = []
        task_runs: list[TaskRun] = []
        flows_written, tasks_written = self._flow_written, self._task_written
        ended = []  # read once they had ended: complete (a flow run ends after its task runs)
        for root in roots:
            if not root.state.is_final():
                self._active[root] = None
            elif root.int_id in self._finished:
                continue  # its last event came after it was written whole
            else:
                ended.append(root)
            stack = [root]
            while stack:
                flow_run = stack.pop()
                if flows_written.get(flow_run.int_id) != len(flow_run.states):
                    flow_runs.append(flow_run)
                for task_run in list(flow_run.task_runs):
                    mark = tasks_written.get(task_run.int_id)
                    if mark is None or mark[1:] != _progress(task_run):
                        task_runs.append(task_run)
                stack.extend(flow_run.subflow_runs)
        flow_runs.sort(key=_depth)  # parents first
        start = 0
        try:
            while True:
                size = SLICE_RUNS if self._executing() else CATCH_UP_RUNS
                began = time.perf_counter()
                if not self._commit(flow_runs if start == 0 else [], task_runs[start:start + size]):
                    return
                start += size
                if start >= len(task_runs):
                    break
                if self._executing() and not self._stopping:
                    spent = time.perf_counter() - began
                    self._hurry.wait(spent * (1 - self.busy_share) / self.busy_share)
        finally:
            self._forget_finished(ended)  # written, or lost with a warning
        conn = self._conn
        if conn is not None and time.monotonic() - self._last_prune >= self.prune_seconds:
            self._last_prune = time.monotonic()
            current = settings.current
            prune(conn, getattr(current, "history_max_runs", 1000),
                  getattr(current, "history_max_mb", 200) * 1024 * 1024)

    def _executing(self) -> bool:
        """True while a flow run the writer saw executes (and no flush asks it to hurry)."""
        return not self._hurry.is_set() and any(not run.state.is_final() for run in self._active)

    def _commit(self, flow_runs: list[FlowRun], task_runs: list[TaskRun]) -> bool:
        """Write one transaction; False if the history cannot be written."""
        conn = self._connection()
        if conn is None:
            return False
        try:
            marks = retrying(lambda: self._transaction(conn, flow_runs, task_runs))
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            self._reopen_corrupt(exc)
            conn = self._connection()
            if conn is None:
                return False
            marks = retrying(lambda: self._transaction(conn, flow_runs, task_runs))
        self._flow_written.update(marks[0])
        self._task_written.update(marks[1])
        return True

    def _transaction(self, conn: sqlite3.Connection, flow_runs: list[FlowRun],
                     task_runs: list[TaskRun]) -> tuple[dict, dict]:
        """Write the runs in one transaction; what was then written of each (to note once it committed)."""
        if self.before_commit is not None:
            self.before_commit()
        with immediate(conn):
            rows, flow_marks, task_marks = self._rows(flow_runs, task_runs, conn.execute(_NEXT_SEQ).fetchone()[0])
            conn.executemany(_UPSERT_FLOW_RUN, rows["flows"])
            conn.executemany("INSERT OR IGNORE INTO flow_run_states VALUES (?, ?, ?, ?, ?, ?)", rows["flow_states"])
            conn.executemany(_INSERT_TASK_RUN, rows["new_tasks"])
            conn.executemany(_UPDATE_TASK_RUN, rows["tasks"])
            conn.executemany("INSERT OR IGNORE INTO task_run_states VALUES (?, ?, ?, ?, ?, ?)", rows["task_states"])
            conn.executemany("INSERT INTO edges VALUES (?, ?, ?)", rows["edges"])
        self.commits += 1
        return flow_marks, task_marks

    def _rows(self, flow_runs: list[FlowRun], task_runs: list[TaskRun],
              next_seq: int) -> tuple[dict[str, list[tuple]], dict, dict]:
        """The rows to write for these runs (new task runs numbered from ``next_seq``), and the marks to note."""
        flows, flow_states, new_tasks, tasks, task_states, edges = [], [], [], [], [], []
        flow_marks: dict[int, int] = {}
        task_marks: dict[int, tuple[int, int, int]] = {}
        ids: dict[int, str] = {}  # flow run id texts, made once per slice

        def id_of(run: Any) -> str:
            text = ids.get(run.int_id)
            if text is None:
                text = ids[run.int_id] = uuid_text(run.int_id)
            return text

        for run in flow_runs:
            states = list(run.states)
            done = self._flow_written.get(run.int_id)
            run_id = id_of(run)
            parent = run.parent
            last = states[-1]
            retry_of = run.retry_of
            flows.append((
                run_id, run.name, run.flow_name, None if parent is None else id_of(parent), id_of(run.root),
                None if retry_of is None else str(retry_of.id),
                summaries(run.parameters) if done is None else None,
                _pickled(run.parameters) if done is None else None,
                json.dumps(sorted(run.tags)), last.name, last.type, last.message, run.start_time,
                run.end_time, states[0].timestamp_seconds, run.run_count,
            ))
            flow_states.extend(_state_rows(run_id, states, done or 0))
            flow_marks[run.int_id] = len(states)
        for run in task_runs:
            flow_run = run.flow_run
            progress = _progress(run)  # before reading: a change while reading is written next time
            states = list(run.states)
            mark = self._task_written.get(run.int_id)
            last = states[-1]
            result = exception = trace = None
            final = last.is_final()
            if last.is_completed():
                result = _result_summary(last)
            elif final:
                try:
                    exc = get_state_exception(last, _sync=True)
                except Exception:  # noqa: BLE001 - a state whose data is no exception
                    exc = None
                if exc is not None:
                    exception = summary_line(exc)
                    trace = format_traceback(exc)
            cache = run.cache
            tail, dropped, log = _tails(run.output)
            changes = (
                run.name, last.name, last.type, last.message, run.start_time,
                last.timestamp_seconds if final else None, run.run_count, result, run.result_key,
                None if cache is None else int(bool(cache.hit)), None if cache is None else cache.key,
                None if cache is None else cache.why, exception, trace, tail, dropped, log,
            )
            if mark is None:
                seq, written = next_seq, 0
                next_seq += 1
                run_id = uuid_text(run.int_id)
                flow_id = id_of(flow_run)
                new_tasks.append((seq, run_id, flow_id, id_of(flow_run.root), run.task.name, run.task_key,
                                  run.dynamic_key, run.map_index, summaries(run.parameters)) + changes)
                edges.extend((flow_id, uuid_text(up.int_id), run_id) for up in run.upstream)
            else:
                seq, written = mark[0], mark[1]
                tasks.append(changes + (seq, uuid_text(run.int_id)))
            task_states.extend(_state_rows(seq, states, written))
            task_marks[run.int_id] = (seq, len(states), progress[1])
        rows = {"flows": flows, "flow_states": flow_states, "new_tasks": new_tasks, "tasks": tasks,
                "task_states": task_states, "edges": edges}
        return rows, flow_marks, task_marks

    def _forget_finished(self, roots: list[FlowRun]) -> None:
        """Let go of what was noted about top-level flow runs read once they had ended."""
        for root in roots:
            self._active.pop(root, None)
            self._finished[root.int_id] = None
            if len(self._finished) > FINISHED_KEPT:
                del self._finished[next(iter(self._finished))]
            stack = [root]
            while stack:
                flow_run = stack.pop()
                self._flow_written.pop(flow_run.int_id, None)
                for task_run in list(flow_run.task_runs):
                    self._task_written.pop(task_run.int_id, None)
                stack.extend(flow_run.subflow_runs)

    # -- a history that cannot be written --------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection | None:
        """The writer's connection (opened at first use); None once the history proved unusable."""
        if self._conn is None and self.failed is None:
            try:
                self._conn = connect(self.path)
            except HistoryUnavailable as exc:
                self._fail(str(exc))
        return self._conn

    def _fail(self, why: str) -> None:
        """Give up on the file: warn once and stop taking events (the hot path goes back to costing nothing)."""
        self.failed = why
        self._warn("failed", why)
        if self._subscription is not None:
            self._subscription.unsubscribe()
            self._subscription = None
        self._active.clear()

    def _reopen_corrupt(self, exc: BaseException) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        set_aside(self.path, f"it is corrupt ({exc})")
        self._task_written.clear()  # the new file holds nothing: write each run whole
        self._flow_written.clear()
        self._finished.clear()

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def __repr__(self) -> str:
        status = "failed" if self.failed else "running" if self.running else "stopped"
        return f"HistoryWriter({str(self.path)!r}, {status})"


def summary_line(exc: BaseException) -> str:
    """``"Type: message"`` of an exception (its first line, bounded)."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= 2 * SUMMARY_CHARS else line[: 2 * SUMMARY_CHARS - 3] + "..."


# -- one writer per process per file ---------------------------------------------------------------------
_writers: dict[Path, HistoryWriter] = {}
_registry_lock = threading.Lock()


def start(path: Path | None = None, **options: Any) -> HistoryWriter:
    """The running writer of the history at ``path`` (default ``settings.current.history_path``), started if needed.

    ``options`` (``bound``, ``batch_seconds``, ``prune_seconds``) apply to a
    writer started now. Call :meth:`HistoryWriter.stop` (or :func:`stop`) to
    end it; at exit it flushes by itself.
    """
    path = (default_path() if path is None else Path(path)).expanduser().absolute()
    with _registry_lock:
        writer = _writers.get(path)
        if writer is not None and writer._thread.is_alive():
            return writer
        # Started under the lock: a stop() from another thread sees it subscribed, never half-started.
        writer = _writers[path] = HistoryWriter(path, **options).start()
    return writer


def current(path: Path | None = None) -> HistoryWriter | None:
    """The writer of the history at ``path`` running in this process, or None."""
    path = (default_path() if path is None else Path(path)).expanduser().absolute()
    return _writers.get(path)


def stop(path: Path | None = None, timeout: float | None = 10.0) -> None:
    """Stop the writers of this process (only the one of ``path`` if given), after they commit what they hold."""
    with _registry_lock:
        writers = list(_writers.values()) if path is None else [w for w in [current(path)] if w is not None]
    for writer in writers:
        writer.stop(timeout)


def _forget_after_fork() -> None:
    """A forked child inherits the writers but not their threads: it records nothing of its own."""
    for writer in list(_writers.values()):
        if writer._subscription is not None:
            writer._subscription.unsubscribe()
            writer._subscription = None
    _writers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


__all__ = [
    "SCHEMA_VERSION",
    "HistoryUnavailable",
    "HistoryWriter",
    "clear",
    "connect",
    "current",
    "default_path",
    "delete_all",
    "delete_flow_runs",
    "format_traceback",
    "immediate",
    "is_busy",
    "is_corrupt",
    "open_for_reading",
    "prune",
    "retrying",
    "set_aside",
    "start",
    "stop",
    "summaries",
    "summary",
    "summary_line",
    "used_bytes",
    "uuid_text",
]
