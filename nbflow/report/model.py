"""A flow run's task runs aggregated per task group and state, in pure Python: what views and reports draw.

A :class:`RunModel` keeps each task run's state as one byte in its group's
``codes`` (a group of 100,000 runs is a 100 kB bytearray) with running counts,
the group graph and the rows a view lists first. It reads the run records on
the view's clock -- the runs added since the last read and those not yet
ended -- instead of reacting to every run event: even a subscriber that does
nothing costs a trivial 10,000-task map about a fifth of its time, while
reading the records ten times a second costs it almost nothing. Part of
the core (the run view in ``nbflow.notebook`` and ``FlowRun.export`` both
use it); nothing here imports IPython or ipywidgets.
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
import reprlib
import threading
import time
import traceback
from collections.abc import Iterable
from typing import Any, NamedTuple

from nbflow import events
from nbflow.records import FlowRun, TaskRun
from nbflow.states import State, StateType

logger = logging.getLogger("nbflow.report")


class Category(NamedTuple):
    """How the view shows a family of states: its label, colour, and whether a run in it is over."""

    code: int
    name: str
    colour: str
    done: bool


# Order matters: it is the order of the segments in a state bar and of the chips
# in a header. A run's state is stored as its category's code.
CATEGORIES: tuple[Category, ...] = tuple(
    Category(i, name, colour, done)
    for i, (name, colour, done) in enumerate(
        (
            ("Completed", "#3a9e4f", True),
            ("Cached", "#8fd19e", True),
            ("Failed", "#d9483b", True),
            ("Crashed", "#8b1e3f", True),
            ("Cancelled", "#8c8c8c", True),
            ("NotReady", "#e8a33d", True),
            ("Running", "#3778c2", False),
            ("Scheduled", "#9cc3e6", False),
            ("Paused", "#b8a03a", False),
            ("Cancelling", "#bdbdbd", False),
            ("Pending", "#dcdcdc", False),
        )
    )
)
COMPLETED, CACHED, FAILED, CRASHED, CANCELLED, NOT_READY, RUNNING, SCHEDULED, PAUSED, CANCELLING, PENDING = range(
    len(CATEGORIES)
)
DONE_CODES = frozenset(c.code for c in CATEGORIES if c.done)

_CODE_BY_NAME = {
    "Completed": COMPLETED,
    "Cached": CACHED,
    "Failed": FAILED,
    "TimedOut": FAILED,
    "Crashed": CRASHED,
    "Cancelled": CANCELLED,
    "NotReady": NOT_READY,
    "Running": RUNNING,
    "Retrying": RUNNING,
    "Scheduled": SCHEDULED,
    "AwaitingRetry": SCHEDULED,
    "Late": SCHEDULED,
    "Paused": PAUSED,
    "Cancelling": CANCELLING,
    "Pending": PENDING,
}
_CODE_BY_TYPE = {
    StateType.COMPLETED: COMPLETED,
    StateType.FAILED: FAILED,
    StateType.CRASHED: CRASHED,
    StateType.CANCELLED: CANCELLED,
    StateType.RUNNING: RUNNING,
    StateType.SCHEDULED: SCHEDULED,
    StateType.PAUSED: PAUSED,
    StateType.CANCELLING: CANCELLING,
    StateType.PENDING: PENDING,
}

# The order rows are listed in a view: what needs attention first.
ROW_ORDER = (FAILED, CRASHED, RUNNING, NOT_READY, CANCELLED, CANCELLING, PAUSED, SCHEDULED, COMPLETED, CACHED, PENDING)


def state_code(state: State) -> int:
    """The category code of a state (custom state names fall back to their type)."""
    code = _CODE_BY_NAME.get(state.name)
    return _CODE_BY_TYPE[state.type] if code is None else code


_TASK_OF = operator.attrgetter("task")


def category(state: State) -> Category:
    """The category a state is shown in."""
    return CATEGORIES[state_code(state)]


def counts_dict(counts: Iterable[int]) -> dict[str, int]:
    """``{category name: count}`` for the non-zero counts, in category order."""
    return {CATEGORIES[code].name: n for code, n in enumerate(counts) if n}


# -- summaries of values shown in a view -----------------------------------------------
_short = reprlib.Repr()
_short.maxstring = 120
_short.maxother = 120
_short.maxlist = _short.maxtuple = _short.maxset = _short.maxdict = 8
_short.maxlevel = 3


def short_repr(value: Any, limit: int = 200) -> str:
    """A bounded repr: containers show their first items, long text is cut."""
    try:
        text = _short.repr(value)
    except Exception as exc:  # a broken __repr__ must not break the view
        text = f"<{type(value).__name__} (repr failed: {type(exc).__name__})>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ValueSummary(NamedTuple):
    """What the view shows of a result: its type, shape or length, and a short repr."""

    type: str
    shape: str | None
    length: int | None
    text: str


def summarize(value: Any) -> ValueSummary:
    """Summarise a value without shipping it whole: type, shape (arrays, frames), len, short repr."""
    kind = type(value)
    type_name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__.split('.')[0]}.{kind.__qualname__}"
    shape = getattr(value, "shape", None)
    shape_text = None
    if isinstance(shape, tuple) and all(isinstance(n, int) for n in shape):
        shape_text = "×".join(str(n) for n in shape) or "scalar"
    length = None
    if shape_text is None and not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        try:
            length = len(value)
        except Exception:
            length = None
    return ValueSummary(type_name, shape_text, length, short_repr(value))


_NBFLOW_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def format_exception(exc: BaseException, limit: int = 6000) -> str:
    """The traceback of an exception as text, without nbflow's own frames (the end, if long).

    A task's exception re-raised by ``.result()`` carries the frames of every
    re-raise; the user's frames are what tells the story.
    """
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
    mine = [frame for frame in report.stack if not frame.filename.startswith(_NBFLOW_DIR)]
    if mine:
        report.stack = traceback.StackSummary.from_list(mine)
    text = "".join(report.format())
    return text if len(text) <= limit else "…" + text[-limit:]


def run_exception(state: State) -> BaseException | None:
    """The exception a failed, crashed or cancelled state carries, if any."""
    return state.data if isinstance(state.data, BaseException) else None


# -- the per-flow-run model ----------------------------------------------------------
class Group:
    """The task runs of one task in one flow run: one DAG node, one grid.

    ``flow`` is the index of the subflow (in :attr:`RunModel.subflows`) the
    runs belong to, None for the model's own flow run.
    """

    __slots__ = ("codes", "flow", "index", "name", "runs", "scan_limit", "scanned", "tally", "upstream")

    def __init__(self, index: int, name: str, flow: int | None = None) -> None:
        self.index = index
        self.name = name
        self.flow = flow
        self.runs: list[TaskRun] = []
        self.codes = bytearray()  # codes[i] is the category code of runs[i]'s state
        self.tally = [0] * len(CATEGORIES)  # runs per category code
        self.upstream: set[int] = set()  # indices of groups this group's runs waited for
        self.scanned = 0  # runs[:scanned] have had their upstream read
        self.scan_limit = 0

    def counts(self) -> list[int]:
        """How many of the group's runs are in each category (by code)."""
        return list(self.tally)

    def __len__(self) -> int:
        return len(self.codes)


class Subflow:
    """A subflow run in a model: one node of its parent's DAG, which expands to its own groups.

    ``parent`` is the index of the subflow it was called in, None for the model's own flow run.
    """

    __slots__ = ("flow_run", "index", "parent")

    def __init__(self, index: int, flow_run: FlowRun, parent: int | None) -> None:
        self.index = index
        self.flow_run = flow_run
        self.parent = parent


class RunModel:
    """Aggregated state of one top-level flow run, its subflows and all their task runs.

    Every flow run keeps its own groups: a subflow's runs of ``square`` are
    never merged with the parent's. :attr:`groups` holds them all (a group's
    ``flow`` says whose it is), :attr:`subflows` the subflow runs; counts,
    rows and the task run total are those of the top-level run's own task runs
    unless a subflow is asked for.

    The model reads the run records when asked (:meth:`refresh`, on the view's
    clock): the task runs added since the last refresh, and the state of those
    that had not ended. Nothing is done per run event, so a watched run costs
    its tasks nothing. A refresh looks at each unfinished run's number of
    states (a C-speed pass) and reads states only where it changed.
    """

    def __init__(self, flow_run: FlowRun) -> None:
        self.flow_run = flow_run
        self.groups: list[Group] = []
        self.subflows: list[Subflow] = []
        self._flow_of: dict[Any, int | None] = {flow_run: None}  # flow run -> its subflow index
        self._by_task: dict[tuple[Any, Any], Group] = {}  # (flow run, task) -> group
        self._by_key: dict[tuple[int | None, str, str], Group] = {}
        # The runs that had not ended at the last refresh, how many states each had, and
        # where each is drawn (group, index): three parallel lists.
        self._open: list[TaskRun] = []
        self._seen: list[int] = []
        self._slots: list[tuple[Group, int]] = []
        self._read: dict[FlowRun, int] = {}  # how many of a flow run's task runs were read
        self._flow_states = 0
        self._lock = threading.Lock()
        #: Bumped by every refresh that found a change: a view compares it with what it drew.
        self.changes = 0
        #: ``(phase, what)`` of the latest cluster event of the run or its subflows (see note_cluster).
        self.cluster: tuple[str, str] | None = None
        self._cluster_start: float | None = None  # the first "starting" event's time
        self._cluster_last = 0.0  # the latest cluster event's time
        self._cluster_notes = self._cluster_seen = 0

    def refresh(self) -> int:
        """Read what changed in the records since the last refresh; return :attr:`changes`."""
        with self._lock:
            changed = self._read_open_runs()
            changed = self._read_new_runs() or changed
            flow_states = len(self.flow_run.states) + sum(len(sub.flow_run.states) for sub in self.subflows)
            if flow_states != self._flow_states or self._cluster_notes != self._cluster_seen:
                self._flow_states, self._cluster_seen = flow_states, self._cluster_notes
                changed = True
            if changed:
                self.changes += 1
            return self.changes

    def _read_open_runs(self) -> bool:
        runs, seen = self._open, self._seen
        now = [len(run.states) for run in runs]
        if now == seen:
            return False
        slots, by_name = self._slots, _CODE_BY_NAME
        still = [True] * len(runs)
        for k in itertools.compress(range(len(now)), map(operator.ne, now, seen)):  # the hot loop
            run = runs[k]
            if run.done:  # read before the state: a run that is done has its final state
                still[k] = False
            state = run.states[-1]
            code = by_name.get(state.name)
            if code is None:
                code = _CODE_BY_TYPE[state.type]
            group, i = slots[k]
            codes = group.codes
            old = codes[i]
            if code != old:
                codes[i] = code
                tally = group.tally
                tally[old] -= 1
                tally[code] += 1
        # state counts were read before the states: a change meanwhile is seen next time
        if False in still:
            compress = itertools.compress
            self._open = list(compress(runs, still))
            self._seen = list(compress(now, still))
            self._slots = list(compress(slots, still))
        else:
            self._seen = now
        return True

    def _read_new_runs(self) -> bool:
        found = False
        pending = [self.flow_run]
        flow_of = self._flow_of
        while pending:
            flow_run = pending.pop()
            for sub in list(flow_run.subflow_runs):
                if sub not in flow_of:  # a parent is read before its subflows
                    flow_of[sub] = len(self.subflows)
                    self.subflows.append(Subflow(len(self.subflows), sub, flow_of[flow_run]))
                    found = True
                pending.append(sub)
            runs = flow_run.task_runs
            start, end = self._read.get(flow_run, 0), len(runs)
            if end > start:
                self._add(flow_run, runs[start:end])
                self._read[flow_run] = end
                found = True
        return found

    def _add(self, flow_run: Any, runs: list[TaskRun]) -> None:
        # A map's runs come in long stretches of one task: each stretch is added whole.
        for task, stretch in itertools.groupby(runs, key=_TASK_OF):
            group = self._by_task.get((flow_run, task))
            if group is None:
                group = self._group(flow_run, task)
            batch = list(stretch)
            # done flags and state counts before the states: a run that is done has its final
            # state, and one that moves on meanwhile shows a new count at the next refresh
            done = [run.done for run in batch]
            lengths = [len(run.states) for run in batch]
            codes = [_CODE_BY_NAME.get(run.states[-1].name) for run in batch]
            for i, code in enumerate(codes):
                if code is None:  # a custom state name: its type decides
                    codes[i] = _CODE_BY_TYPE[batch[i].states[-1].type]
            start = len(group.codes)
            group.runs.extend(batch)  # runs first: a reader that sees codes[i] always finds runs[i]
            group.codes.extend(codes)
            for code in set(codes):
                group.tally[code] += codes.count(code)
            if False in done:
                for i, run in enumerate(batch):
                    if not done[i]:
                        self._open.append(run)
                        self._seen.append(lengths[i])
                        self._slots.append((group, start + i))

    def _group(self, flow_run: Any, task: Any) -> Group:
        # Bound tasks (methods) are new Task objects per access: key by name and code.
        flow = self._flow_of[flow_run]
        key = (flow, task.name, task.task_key)
        group = self._by_key.get(key)
        if group is None:
            group = Group(len(self.groups), task.name, flow)
            self.groups.append(group)
            self._by_key[key] = group
        self._by_task[(flow_run, task)] = group
        return group

    def groups_of(self, flow: int | None = None, deep: bool = False) -> list[Group]:
        """The groups of the model's own flow run (``flow=None``) or of subflow ``flow``.

        ``deep`` adds those of the subflows it called, at any depth.
        """
        wanted = {flow}
        if deep:
            for sub in self.subflows:  # parents come before their subflows
                if sub.parent in wanted:
                    wanted.add(sub.index)
        return [g for g in list(self.groups) if g.flow in wanted]

    def group_title(self, group: Group) -> str:
        """``task`` for a group of the flow run's own, ``subflow › task`` for a subflow's."""
        if group.flow is None:
            return group.name
        return f"{self.subflows[group.flow].flow_run.flow_name} › {group.name}"

    def children(self, flow: int | None = None) -> list[Subflow]:
        """The subflow runs called directly by the model's flow run (``None``) or by subflow ``flow``."""
        return [sub for sub in list(self.subflows) if sub.parent == flow]

    def flow_counts(self, flow: int) -> list[int]:
        """Task runs per category code of subflow ``flow`` and the subflows it called (its node's bar)."""
        total = [0] * len(CATEGORIES)
        for group in self.groups_of(flow, deep=True):
            for code, n in enumerate(group.tally):
                total[code] += n
        sub = self.subflows[flow]
        expected = getattr(sub.flow_run, "expected_runs", None)
        if expected is not None:
            total[PENDING] += expected()
        return total

    # -- reading ------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """The flow run's current state."""
        return self.flow_run.state

    def task_run_count(self) -> int:
        """How many of the flow run's own task runs the model has read (its subflows' not included)."""
        return sum(len(g.codes) for g in self.groups_of())

    def counts(self) -> list[int]:
        """The flow run's own task runs per category code (as of the last refresh; subflows not included).

        Runs a ``.map`` announced but has not created yet count as Pending, so
        the total is right from the map's first run.
        """
        total = [0] * len(CATEGORIES)
        for group in self.groups_of():
            for code, n in enumerate(group.tally):
                total[code] += n
        total[PENDING] += self.expected_runs()
        return total

    def expected_runs(self) -> int:
        """Task runs announced by the flow run's maps and not created yet (see ``FlowRun.expect``)."""
        expected = getattr(self.flow_run, "expected_runs", None)  # a history record has none
        return expected() if expected is not None else 0

    def unfinished(self) -> list[TaskRun]:
        """The task runs that had not ended at the last refresh."""
        return list(self._open)

    def settled(self) -> bool:
        """True once the flow run is final and every task run has ended."""
        return self.flow_run.state.is_final() and not self._open

    def edges(self, complete: bool = False) -> set[tuple[int, int]]:
        """``(upstream group, group)`` pairs.

        A run's upstream is recorded just after the run is, so runs read since
        the previous call are looked at on the next one; ``complete=True`` (for
        a final picture) looks at them all.
        """
        by_task = self._by_task
        found: set[tuple[int, int]] = set()
        for group in list(self.groups):
            limit = len(group.runs) if complete else group.scan_limit
            for run in group.runs[group.scanned : limit]:
                for up in run.upstream:
                    # an upstream run is drawn as its task's node, if the model has one
                    source = by_task.get((up.flow_run, up.task))
                    if source is not None and source is not group:
                        group.upstream.add(source.index)
            group.scanned = max(group.scanned, limit)
            group.scan_limit = len(group.runs)
            found.update((up, group.index) for up in group.upstream)
        return found

    def rows(self, limit: int) -> list[TaskRun]:
        """Up to ``limit`` of the flow run's own task runs, failed and running ones first (see ``ROW_ORDER``)."""
        picked: list[TaskRun] = []
        snapshots = [(g, bytes(g.codes)) for g in self.groups_of()]
        for code in ROW_ORDER:
            for group, codes in snapshots:
                i = codes.find(code)
                while i != -1:
                    if len(picked) >= limit:
                        return picked
                    picked.append(group.runs[i])
                    i = codes.find(code, i + 1)
        return picked

    def note_cluster(self, event: events.ClusterEvent) -> None:
        """A runner of the flow run (or of a subflow) is starting or stopping its cluster: show it, time it.

        The flow run enters Running once its runner's cluster is up, and its
        final state is timed before the cluster stops: the view's time runs
        from the first ``starting`` to the last event (see :meth:`elapsed`).
        """
        self.cluster = (event.phase, event.what)
        if event.phase == "starting" and self._cluster_start is None:
            self._cluster_start = event.time
        self._cluster_last = max(self._cluster_last, event.time)
        self._cluster_notes += 1

    def cluster_note(self) -> str:
        """``starting Dask cluster…`` or ``stopping Dask cluster…`` while that goes on, else ""."""
        if self.cluster is None or self.flow_run.state.is_final():
            return ""
        phase, what = self.cluster
        return f"{phase} {what}…" if phase in ("starting", "stopping") else ""

    def elapsed(self) -> float | None:
        """Seconds the flow run has been running (so far, or in all), its cluster's start and stop included."""
        start = self.flow_run.start_time
        early = self._cluster_start
        if early is not None and (start is None or early < start):
            start = early
        if start is None:
            return None
        end = self.flow_run.end_time
        return (time.time() if end is None else max(end, self._cluster_last)) - start

    @classmethod
    def of(cls, flow_run: FlowRun) -> RunModel:
        """A model of a flow run as its records stand now."""
        model = cls(flow_run)
        model.refresh()
        return model


__all__ = [
    "CATEGORIES",
    "Category",
    "Group",
    "RunModel",
    "Subflow",
    "ValueSummary",
    "category",
    "counts_dict",
    "format_exception",
    "run_exception",
    "short_repr",
    "state_code",
    "summarize",
]
