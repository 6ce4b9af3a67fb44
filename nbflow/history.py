"""The run history: flow runs and task runs of this and earlier processes, read back from disk.

>>> import nbflow.history
>>> nbflow.history.flow_runs(name="etl", state="failed", limit=5)   # newest first
>>> run = nbflow.history.flow_run("etl")     # an id (or a prefix of 6+), a run name, or a flow name
>>> run.state, run.state_counts(), [t.upstream for t in run.task_runs]

While history is on (``settings.current.history``), a background writer
(:mod:`nbflow.store.history`) records every flow run and its task runs in
``history.sqlite`` under ``NBFLOW_HOME``: names, ids, parameters and inputs
(summarised), states with their times, result summaries and the keys of
persisted results, exceptions with a trimmed traceback, the tails of output
and logs, and the upstream edges. The newest ``settings.history_max_runs``
top-level runs are kept, within ``settings.history_max_mb`` megabytes.

The records read back (:class:`FlowRunRecord`, :class:`TaskRunRecord`) have
the reading interface of the in-memory records (:mod:`nbflow.records`):
``.name``, ``.state``, ``.states``, ``.task_runs``, ``.state_counts()``,
``.upstream``, ``.output``, ... They are loaded whole when returned and never
touch the file again. Values are summaries (short reprs), never the values.
"""

from __future__ import annotations

import collections
import json
import re
import sqlite3
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from nbflow.records import FlowRunReading, TaskRunReading
from nbflow.states import State, StateType

if TYPE_CHECKING:
    from nbflow.logging import OutputBuffer

#: How many recent runs a failed lookup names.
RECENT_IN_ERRORS = 5


class TaskInfo(NamedTuple):
    """What a history record knows of a task run's task (``task_run.task``)."""

    name: str
    task_key: str


class TaskRunRecord(TaskRunReading):
    """One task run as the history holds it (see :class:`nbflow.records.TaskRun` for the live one).

    ``inputs`` (also ``parameters``) maps each argument to a summary;
    ``result_summary`` summarises the result of a completed run and
    ``result_key`` names where the result store keeps it (None if it was not
    persisted); ``cache`` is what the cache did (``.key``, ``.hit``, ``.why``) or
    None; ``exception`` is ``"Type: message"`` and ``traceback`` its trimmed
    text for a run that failed; ``output`` holds the tail of what it printed
    and logged (an OutputBuffer, as on a live run: ``output.text()``), ``logs``
    the tail of its log records.
    """

    __slots__ = (
        "_row",
        "dynamic_key",
        "end_time",
        "exception",
        "flow_run",
        "logs",
        "map_index",
        "name",
        "result_key",
        "result_summary",
        "run_count",
        "start_time",
        "states",
        "task",
        "traceback",
        "upstream",
    )

    def __init__(self, row: tuple, task: TaskInfo, states: list[State], flow_run: FlowRunRecord) -> None:
        # Cheap fields are set now; ids, inputs, cache and output are decoded when asked for (the record
        # of a 10,000-task run loads in a few tens of milliseconds).
        self._row = row
        self.task = task
        self.states = states
        self.flow_run = flow_run
        self.upstream: tuple[TaskRunRecord, ...] = ()
        (self.dynamic_key, self.map_index, self.name, self.start_time, self.end_time, self.run_count,
         self.result_summary, self.result_key, self.exception, self.traceback, self.logs) = (
            row[_T_DYNAMIC_KEY], row[_T_MAP_INDEX], row[_T_NAME], row[_T_START], row[_T_END], row[_T_RUN_COUNT] or 0,
            row[_T_RESULT], row[_T_RESULT_KEY], row[_T_EXCEPTION], row[_T_TRACEBACK], row[_T_LOG])

    @property
    def id(self) -> uuid.UUID:
        return uuid.UUID(self._row[_T_ID])

    @property
    def inputs(self) -> dict[str, str]:
        return json.loads(self._row[_T_INPUTS] or "{}")

    @property
    def parameters(self) -> dict[str, str]:
        """The summaries of its arguments (the same as ``inputs``; a live run's ``parameters`` are the values)."""
        return self.inputs

    @property
    def cache(self) -> Any:
        from nbflow.store.cache import CacheOutcome

        row = self._row
        return None if row[_T_CACHE_KEY] is None else CacheOutcome(row[_T_CACHE_KEY], bool(row[_T_CACHE_HIT]),
                                                                    row[_T_CACHE_WHY])

    @property
    def output(self) -> OutputBuffer | None:
        from nbflow.logging import OutputBuffer

        row = self._row
        if row[_T_OUTPUT] is None:
            return None
        chunks = [(stream, text) for stream, text in json.loads(row[_T_OUTPUT])]
        return OutputBuffer(chunks, sum(len(t) for _, t in chunks), row[_T_DROPPED] or 0)

    @property
    def task_name(self) -> str:
        return self.task.name

    @property
    def done(self) -> bool:
        """True if the run had ended when it was last written."""
        return self.states[-1].is_final()

    @property
    def flow_run_id(self) -> uuid.UUID:
        return self.flow_run.id

    def __repr__(self) -> str:
        return f"TaskRunRecord(name={self.name!r}, state={self.state.name})"


class FlowRunRecord(FlowRunReading):
    """One flow run as the history holds it (see :class:`nbflow.records.FlowRun` for the live one).

    ``parameters`` maps each parameter to a summary (:meth:`parameter_values`
    gives the values, when they could be kept); ``task_runs`` are its own task
    runs in the order they were made, ``subflow_runs`` its subflow runs.
    """

    __slots__ = (
        "_values",
        "end_time",
        "flow_name",
        "id",
        "name",
        "parameters",
        "parent",
        "parent_id",
        "retry_of_id",
        "run_count",
        "start_time",
        "states",
        "subflow_runs",
        "tags",
        "task_runs",
    )

    def __init__(self, row: sqlite3.Row, states: list[State]) -> None:
        self.id = uuid.UUID(row["id"])  # few of them: decoded now
        self.name: str = row["name"]
        self.flow_name: str = row["flow_name"]
        self.parent_id = uuid.UUID(row["parent_id"]) if row["parent_id"] else None
        self.retry_of_id = uuid.UUID(row["retry_of_id"]) if row["retry_of_id"] else None
        self.parameters: dict[str, str] = json.loads(row["parameters"] or "{}")
        self.tags: frozenset[str] = frozenset(json.loads(row["tags"] or "[]"))
        self.states = states
        self.run_count: int = row["run_count"] or 0
        self.start_time: float | None = row["start_time"]
        self.end_time: float | None = row["end_time"]
        self.task_runs: list[TaskRunRecord] = []
        self.subflow_runs: list[FlowRunRecord] = []
        self.parent: FlowRunRecord | None = None
        self._values: bytes | None = row["parameter_values"]

    def parameter_values(self) -> dict[str, Any] | None:
        """The run's parameters as they were passed; None if they could not be kept (not picklable, or large)."""
        if self._values is None:
            return None
        import pickle

        try:
            return pickle.loads(self._values)
        except Exception:  # noqa: BLE001 - a class that no longer imports, or changed: treat as not kept
            return None

    def __repr__(self) -> str:
        return (
            f"FlowRunRecord(name={self.name!r}, flow={self.flow_name!r}, "
            f"state={self.state.name}, task_runs={len(self.task_runs)})"
        )


# -- reading -------------------------------------------------------------------------------------------------
def flow_runs(name: str | None = None, state: str | None = None, limit: int = 20,
              path: Path | None = None) -> list[FlowRunRecord]:
    """Top-level flow runs in the history, newest first.

    ``name``: only runs of the flow of that name; ``state``: only runs whose
    state has that name (``"failed"``, ``"Completed"``: case does not matter);
    ``limit``: at most that many. ``path``: another history file.
    """
    with _reading(path) as (conn, _):
        if conn is None:
            return []
        where, args = ["parent_id IS NULL"], []
        if name is not None:
            where.append("flow_name = ?")
            args.append(name)
        if state is not None:
            where.append("lower(state) = lower(?)")
            args.append(state)
        ids = [r[0] for r in conn.execute(
            f"SELECT id FROM flow_runs WHERE {' AND '.join(where)} ORDER BY created DESC LIMIT ?",
            (*args, max(int(limit), 0)))]
        loaded = _load(conn, ids)
        return [loaded[i] for i in ids if i in loaded]


def flow_run(id_or_name: str | uuid.UUID, path: Path | None = None) -> FlowRunRecord:
    """One flow run: by id (or a prefix of at least 6 characters), by run name, or by flow name (its latest run).

    Raises LookupError naming what was tried and a few recent runs.
    """
    text = str(id_or_name).strip()
    with _reading(path) as (conn, where):
        found = None if conn is None else _find(conn, text)
        if found is None:
            recent = [] if conn is None else [r[0] for r in conn.execute(
                "SELECT name FROM flow_runs WHERE parent_id IS NULL ORDER BY created DESC LIMIT ?",
                (RECENT_IN_ERRORS,))]
            raise LookupError(
                f"No flow run in the run history ({where}) has the id {text!r} (or one starting with it), is "
                f"named {text!r}, or is a run of a flow named {text!r}. Recent runs: "
                f"{', '.join(recent) or 'none (run a flow with the history on first)'}."
            )
        run_id, root_id = found
        return _load(conn, [root_id])[run_id]


def clear(path: Path | None = None) -> int:
    """Empty the history; returns how many top-level flow runs it held."""
    from nbflow.store import history as store

    return store.clear(path)


_ID_PREFIX = re.compile(r"[0-9a-fA-F-]{6,36}")


def _find(conn: sqlite3.Connection, text: str) -> tuple[str, str] | None:
    """``(id, root id)`` of the run ``text`` names, or None; LookupError if an id prefix is ambiguous."""
    if _ID_PREFIX.fullmatch(text):
        prefix = text.lower()
        rows = conn.execute(
            "SELECT id, root_id, name FROM flow_runs WHERE substr(id, 1, ?) = ? ORDER BY created DESC LIMIT 6",
            (len(prefix), prefix)).fetchall()
        if len(rows) == 1:
            return rows[0][0], rows[0][1]
        if rows:
            raise LookupError(
                f"{'More than 5' if len(rows) > 5 else len(rows)} flow runs in the run history have an id "
                f"starting with {text!r}: {', '.join(f'{r[2]} ({r[0]})' for r in rows[:5])}; give more of the id."
            )
    row = conn.execute("SELECT id, root_id FROM flow_runs WHERE name = ? ORDER BY created DESC LIMIT 1",
                       (text,)).fetchone()
    if row is None:
        row = conn.execute("SELECT id, root_id FROM flow_runs WHERE flow_name = ? AND parent_id IS NULL "
                           "ORDER BY created DESC LIMIT 1", (text,)).fetchone()
    return None if row is None else (row[0], row[1])


class _reading:
    """``with _reading(path) as (conn, path)``: a snapshot of the history (conn is None if there is none)."""

    def __init__(self, path: Path | None) -> None:
        from nbflow.store import history as store

        self.store = store
        self.path = store.default_path() if path is None else Path(path)
        self.conn: sqlite3.Connection | None = None

    def __enter__(self) -> tuple[Any, Path]:
        store = self.store
        writer = store.current(self.path)
        if writer is not None:
            writer.flush()  # so a run that just ended is there to read
        conn = store.open_for_reading(self.path)
        if conn is not None:
            store.retrying(lambda: conn.execute("BEGIN"))
            self.conn = conn
        return conn, self.path

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()


_TYPES = {t.value: t for t in StateType}

# The columns of a task run read back, and where each is in the row.
_TASK_COLUMNS = (
    "seq", "id", "flow_run_id", "task_name", "task_key", "dynamic_key", "map_index", "inputs", "name",
    "state", "state_type", "state_message", "start_time", "end_time", "run_count", "result_summary",
    "result_key", "cache_hit", "cache_key", "cache_why", "exception", "traceback", "output_tail",
    "output_dropped", "log_tail",
)
(_T_SEQ, _T_ID, _T_FLOW_RUN, _T_TASK_NAME, _T_TASK_KEY, _T_DYNAMIC_KEY, _T_MAP_INDEX, _T_INPUTS, _T_NAME,
 _T_STATE, _T_STATE_TYPE, _T_STATE_MESSAGE, _T_START, _T_END, _T_RUN_COUNT, _T_RESULT, _T_RESULT_KEY,
 _T_CACHE_HIT, _T_CACHE_KEY, _T_CACHE_WHY, _T_EXCEPTION, _T_TRACEBACK, _T_OUTPUT, _T_DROPPED,
 _T_LOG) = range(len(_TASK_COLUMNS))


def _states(rows: Iterable[tuple]) -> dict[Any, list[State]]:
    """States by run key from ``(key, name, type, message, time)`` rows, in order."""
    by_run: dict[Any, list[State]] = collections.defaultdict(list)
    types = _TYPES
    for key, name, type_, message, at in rows:
        by_run[key].append(State(types[type_], name, message, timestamp=at))
    return by_run


def _load(conn: sqlite3.Connection, root_ids: list[str]) -> dict[str, FlowRunRecord]:
    """Every flow run of these top-level runs (by id), with subflows, task runs, states and edges, in one go."""
    if not root_ids:
        return {}
    roots = (json.dumps(root_ids),)
    in_roots = "root_id IN (SELECT value FROM json_each(?))"
    flow_states = _states(conn.execute(
        "SELECT s.flow_run_id, s.name, s.type, s.message, s.time FROM flow_run_states s "
        f"JOIN flow_runs f ON f.id = s.flow_run_id WHERE f.{in_roots} ORDER BY s.flow_run_id, s.seq", roots))
    flows: dict[str, FlowRunRecord] = {}
    conn.row_factory = sqlite3.Row
    try:
        for row in conn.execute(f"SELECT * FROM flow_runs WHERE {in_roots} ORDER BY created, rowid", roots):
            states = flow_states.get(row["id"]) or [State(_TYPES[row["state_type"]], row["state"],
                                                          row["state_message"], timestamp=row["created"])]
            flows[row["id"]] = FlowRunRecord(row, states)
    finally:
        conn.row_factory = None
    for child in flows.values():
        parent = flows.get(str(child.parent_id)) if child.parent_id is not None else None
        if parent is not None:
            child.parent = parent
            parent.subflow_runs.append(child)
    task_states = _states(conn.execute(
        "SELECT task_seq, name, type, message, time FROM task_run_states WHERE task_seq IN "
        f"(SELECT seq FROM task_runs WHERE {in_roots}) ORDER BY task_seq, seq", roots))
    tasks: dict[str, TaskRunRecord] = {}
    infos: dict[tuple[str, str], TaskInfo] = {}
    for row in conn.execute(f"SELECT {', '.join(_TASK_COLUMNS)} FROM task_runs WHERE {in_roots} ORDER BY seq",
                            roots):
        owner = flows.get(row[_T_FLOW_RUN])
        if owner is None:
            continue
        states = task_states.get(row[_T_SEQ]) or [State(_TYPES[row[_T_STATE_TYPE]], row[_T_STATE],
                                                        row[_T_STATE_MESSAGE])]
        key = (row[_T_TASK_NAME], row[_T_TASK_KEY])
        info = infos.get(key)
        if info is None:
            info = infos[key] = TaskInfo(*key)
        record = TaskRunRecord(row, info, states, owner)
        earlier = tasks.get(row[_T_ID])
        if earlier is None:
            owner.task_runs.append(record)
        else:  # written again whole by a writer that started while it ran: the later row is complete
            owner.task_runs[owner.task_runs.index(earlier)] = record
        tasks[row[_T_ID]] = record
    upstream: dict[str, list[TaskRunRecord]] = collections.defaultdict(list)
    for up_id, down_id in conn.execute(
            f"SELECT e.upstream_id, e.downstream_id FROM edges e JOIN flow_runs f ON f.id = e.flow_run_id "
            f"WHERE f.{in_roots}", roots):
        up = tasks.get(up_id)
        if up is not None:
            upstream[down_id].append(up)
    order = {id(record): i for i, record in enumerate(tasks.values())}
    for downstream, ups in upstream.items():
        record = tasks.get(downstream)
        if record is not None:
            record.upstream = tuple(sorted(ups, key=lambda r: order[id(r)]))
    return flows


__all__ = ["FlowRunRecord", "TaskInfo", "TaskRunRecord", "clear", "flow_run", "flow_runs"]
