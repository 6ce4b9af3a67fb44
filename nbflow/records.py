"""Run records: every flow run and task run, its states, upstream runs and output.

A record changes only through its own methods (enter a state, claim it,
finish it, apply a state a worker reported, ...), and each change of state
is published on the event seam (:mod:`nbflow.events`). Futures, runners, the
engine and every watcher read records; none writes their fields.

Records of old flow runs are let go beyond ``settings.max_flow_runs`` runs, so
a long notebook session does not grow without bound.
"""

from __future__ import annotations

import collections
import contextvars
import datetime
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from nbflow import events, settings
from nbflow.completion import Completion
from nbflow.context import retry_var
from nbflow.states import Cancelled, Crashed, Retrying, Running, State, StateType

if TYPE_CHECKING:
    import os
    import pathlib

    from nbflow.flows import Flow
    from nbflow.task_runners import TaskRunner
    from nbflow.tasks import Task

#: "Nothing returned": distinct from a None result.
NOTHING: Any = type("Nothing", (), {"__repr__": lambda self: "NOTHING", "__slots__": ()})()

#: What a run waits for before it starts: ``(upstream, failure allowed)`` pairs, where
#: ``upstream`` is a task run, or a State given as an argument or in ``wait_for``.
Dependencies = tuple[tuple["TaskRun | State", bool], ...]


#: One tuple of parameter names per signature, shared by the runs that have it.
_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {}


def new_id() -> int:
    """A new random 128-bit run id (as an int: cheap to make, hash and send).

    Random, not Prefect's time-ordered version 7: the first characters of an
    id tell runs apart (``%nbflow view 3f2a9c``), as they could not for runs
    made in the same minute.
    """
    # getrandbits never releases the GIL, unlike uuid4()'s os.urandom.
    return random.getrandbits(128)


def as_uuid(value: int) -> uuid.UUID:
    """The UUID form of a run id made by :func:`new_id`."""
    return uuid.UUID(int=value, version=4)


def _start_time(states: Sequence[State]) -> float | None:
    """When a run first entered Running (None if it never ran)."""
    if type(states) is EndedStates:
        return states.running_time
    return next((s.timestamp_seconds for s in states if s.type is StateType.RUNNING), None)


class EndedStates(Sequence[State]):
    """A task run's states once it ended the usual way: Pending, Running, then its end.

    Read as the list was (``len``, indexing, iteration, ``==``), it keeps the
    first two as their times and makes them when asked for, so that a big
    map's ended runs hold half the memory their states took.
    """

    __slots__ = ("_pending", "_running", "_end")

    def __init__(self, pending: float, running: float, end: State) -> None:
        self._pending, self._running, self._end = pending, running, end

    @staticmethod
    def of(states: list[State]) -> Sequence[State]:
        """``states`` in this form when they have its shape (default-named, with nothing else), else as they are."""
        if len(states) != 3:
            return states
        pending, running, end = states
        for state, kind in ((pending, StateType.PENDING), (running, StateType.RUNNING)):
            if (state.type is not kind or state.name != kind.value.title() or state.message is not None
                    or state.data is not None or state.id_seen):
                return states
        return EndedStates(pending.timestamp_seconds, running.timestamp_seconds, end)

    @property
    def running_time(self) -> float:
        return self._running

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(3)[index]]
        if index == 2 or index == -1:
            return self._end
        if index == 0 or index == -3:
            return State(StateType.PENDING, timestamp=self._pending)
        if index == 1 or index == -2:
            return State(StateType.RUNNING, timestamp=self._running)
        raise IndexError("a run's states index out of range")

    def __iter__(self) -> Iterator[State]:  # not Sequence's: it indexes until an IndexError
        yield State(StateType.PENDING, timestamp=self._pending)
        yield State(StateType.RUNNING, timestamp=self._running)
        yield self._end

    def __eq__(self, other: object) -> bool:
        return list(self) == (list(other) if isinstance(other, Sequence) else other)

    __hash__ = None  # type: ignore[assignment]  # as a list's

    def __repr__(self) -> str:
        return repr(list(self))


def _duration(start: float | None, end: float | None) -> float | None:
    """Seconds from ``start`` to ``end`` (or to now while still running)."""
    return None if start is None else (end or time.time()) - start


class RunId:
    """The id of a run record (``_id``, an int made by :func:`new_id`), as a UUID and as an int."""

    __slots__ = ()
    _id: int

    @property
    def id(self) -> uuid.UUID:
        return as_uuid(self._id)

    @property
    def int_id(self) -> int:
        """The run id as an int (what crosses to workers and back)."""
        return self._id


class RunReading:
    """What reading any run offers, live or from the run history: its ``state`` and ``duration``.

    Its class has ``states`` (oldest first), ``start_time`` and ``end_time``.
    """

    __slots__ = ()
    states: Sequence[State]
    start_time: float | None
    end_time: float | None

    @property
    def state(self) -> State:
        """The latest state."""
        return self.states[-1]

    @property
    def state_name(self) -> str:
        """The latest state's name (as Prefect's run objects have it)."""
        return self.state.name

    @property
    def state_type(self) -> StateType:
        """The latest state's type (as Prefect's run objects have it)."""
        return self.state.type

    @property
    def duration(self) -> float | None:
        return _duration(self.start_time, self.end_time)

    @property
    def total_run_time(self) -> datetime.timedelta:
        """Time spent running, over every attempt (Prefect's ``total_run_time``; so is ``estimated_run_time``)."""
        total, began = 0.0, None
        for state in self.states:
            if state.type is StateType.RUNNING:
                if began is None:
                    began = state.timestamp_seconds
            elif began is not None:
                total, began = total + state.timestamp_seconds - began, None
        if began is not None:
            total += time.time() - began
        return datetime.timedelta(seconds=total)

    estimated_run_time = total_run_time

    @property
    def created(self) -> datetime.datetime:
        """When the run was made (its first state), timezone-aware; also Prefect's ``expected_start_time``."""
        return self.states[0].timestamp

    expected_start_time = created


class TaskRunReading(RunReading):
    """What reading a task run offers, live or from the run history (its class also has ``task``)."""

    __slots__ = ()
    task: Any

    @property
    def task_key(self) -> str:
        return self.task.task_key


class TaskRun(RunId, TaskRunReading, Completion):
    """The record of one run of a task.

    ``states`` holds every state the run entered, oldest first; ``state`` is
    the latest. ``upstream`` lists the task runs it waited for (data
    dependencies and ``wait_for``). ``output`` holds what it printed or logged.
    """

    __slots__ = (
        "__weakref__",
        "_call",
        "_context",
        "_dependencies",
        "_ending",
        "_id",
        "_inputs",
        "_name",
        "_resolved",
        "_returned",
        "_started",
        "_stop",
        "cache",
        "_dynamic",
        "flow_run",
        "map_index",
        "_keys",
        "_values",
        "output",
        "result_key",
        "run_count",
        "states",
        "tags",
        "task",
        "upstream",
    )

    def __init__(
        self,
        task: Task,
        flow_run: FlowRun | Any | None,
        parameters: dict[str, Any],
        tags: frozenset[str] = frozenset(),
        map_index: int | None = None,
        name: str | None = None,
        dependencies: Dependencies | None = None,
        context: contextvars.Context | None = None,
        id: int | None = None,
        dynamic_key: str | None = None,
    ) -> None:
        Completion.__init__(self)
        self.task = task
        self.flow_run = flow_run
        self.parameters = parameters
        self.tags = tags
        self.states: Sequence[State] = [State(StateType.PENDING)]
        self.run_count = 0
        self.map_index = map_index
        self.output: Any = None  # an OutputBuffer once the run prints or logs
        self.cache: Any = None  # a CacheOutcome once a cache policy gave the run a key
        self.result_key: str | None = None  # where the result store holds its result, if it does
        self._id = new_id() if id is None else id
        self._name = name
        self._started = False
        # None: the parameters hold nothing to resolve; otherwise what to wait for first.
        self._dependencies = dependencies
        self._resolved = False  # someone asked for the result, or depended on it
        self._call: Any = None  # what the run is doing that an interrupt can stop (a Watch, a _Pause)
        self._stop: type[BaseException] | None = None  # the interrupt asked for (a cancel), if any
        # Context variables as they were at submit time, entered where the run
        # executes (as Prefect does): user ContextVars and tags reach the task.
        self._context = context
        self._inputs: dict[str, Any] | None = None  # resolved arguments while it executes
        self._returned: Any = NOTHING  # what the last attempt returned, when that was state-like
        self._ending: State | None = None  # the state it ends in, while its final hooks run
        self.upstream: tuple[TaskRun, ...] = ()
        if dependencies:
            upstream: dict[TaskRun, None] = {}
            for dep, _ in dependencies:
                if type(dep) is TaskRun:
                    dep._resolved = True
                    upstream[dep] = None
            self.upstream = tuple(upstream)
        # Which run of its task this is within its flow run ("0", "1", ...), as Prefect's
        # dynamic_key: what a retry of the flow run matches runs by (a worker is told the driver's).
        # Kept as the count (a str from a driver), made a str when read: a big map's runs hold ints,
        # and the runs of a task's first map hold their map index's (the count equals it).
        dynamic: int | str = (
            dynamic_key if dynamic_key is not None
            else flow_run.count_task_run(task.task_key) if flow_run is not None and task is not None else 0
        )
        self._dynamic = map_index if dynamic == map_index else dynamic
        if flow_run is not None:
            flow_run.task_runs.append(self)
        if events.task_state:
            events.publish_task_state(self, self.states[0])

    # -- identity ------------------------------------------------------------
    @property
    def name(self) -> str:
        """The run's name: ``task_run_name`` if given, else ``"{task}-{3 hex}"``."""
        name = self._name
        if name is None:  # made each time, not kept: a big map's runs need not hold one string each
            return self.task.name if self.flow_run is None else f"{self.task.name}-{self._id >> 116:03x}"
        return name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def dynamic_key(self) -> str:
        """Which run of its task this is within its flow run (``"0"``, ``"1"``, ...), as Prefect's."""
        return str(self._dynamic)

    @property
    def flow_run_id(self) -> uuid.UUID | None:
        """The id of the flow run this run belongs to (None outside a flow)."""
        return self.flow_run.id if self.flow_run is not None else None

    @property
    def task_version(self) -> str | None:
        return self.task.version

    @property
    def flow_run_run_count(self) -> int:
        """The attempt of its flow run this run belongs to (0 outside a flow), as Prefect's."""
        return self.flow_run.run_count if self.flow_run is not None else 0

    @property
    def parameters(self) -> dict[str, Any]:
        """The arguments as submitted (a new dict each time: a run keeps its names and values apart, compactly)."""
        keys = self._keys
        if len(keys) == 1:
            return {keys[0]: self._values}
        return dict(zip(keys, self._values))

    @parameters.setter
    def parameters(self, value: dict[str, Any]) -> None:
        keys = tuple(value)
        self._keys = _KEYS.setdefault(keys, keys)  # the runs of a task share one tuple of names
        # One value is kept bare, not in a tuple of its own: a big map of a one-parameter task.
        self._values = next(iter(value.values())) if len(keys) == 1 else tuple(value.values())

    # -- reading -----------------------------------------------------------------
    @property
    def started(self) -> bool:
        """True once the run was claimed to execute (or cancelled before it could be)."""
        return self._started

    @property
    def dependencies(self) -> Dependencies | None:
        """What the run waits for before it starts; None if its arguments hold nothing to resolve."""
        return self._dependencies

    def pending_upstream(self) -> list[TaskRun]:
        """The upstream runs this run waits for that have not ended yet."""
        deps = self._dependencies
        if not deps:
            return []
        return [dep for dep, _ in deps if type(dep) is TaskRun and dep._done is not True]

    @property
    def resolved(self) -> bool:
        """True once someone asked for the result, waited for it, or depended on it."""
        return self._resolved

    @property
    def current_parameters(self) -> dict[str, Any]:
        """The resolved arguments while the run executes, else the parameters as submitted."""
        return self._inputs if self._inputs is not None else self.parameters

    @property
    def start_time(self) -> float | None:
        return _start_time(self.states)

    @property
    def end_time(self) -> float | None:
        return self.states[-1].timestamp_seconds if self._done else None

    # -- transitions -----------------------------------------------------------
    def mark_resolved(self) -> None:
        """Note that someone asked for the result (a flow does not warn about it at exit)."""
        self._resolved = True

    def take_context(self) -> contextvars.Context | None:
        """The submit-time context to execute in (once; later calls return None)."""
        context, self._context = self._context, None
        return context

    def claim(self) -> bool:
        """Mark the run started; False if it already ended (e.g. was cancelled) or was claimed."""
        with self._lock:
            if self._done or self._started:
                return False
            self._started = True
            return True

    def set_state(self, state: State) -> None:
        """Enter a state that does not end the run."""
        self.states.append(state)  # type: ignore[attr-defined]  # a run that has not ended holds a list
        if events.task_state:
            events.publish_task_state(self, state)

    def start_attempt(self) -> State:
        """Enter Running (Retrying after the first attempt); returns that state."""
        self.run_count += 1
        state = Running() if self.run_count == 1 else Retrying()
        self.set_state(state)
        return state

    @property
    def returned(self) -> Any:
        """What the last attempt returned when that was a State or states (else :data:`NOTHING`).

        An inline call hands it back as it is, as Prefect does.
        """
        return self._returned

    def note_returned(self, value: Any) -> None:
        """Keep what an attempt returned (:data:`NOTHING` to forget it)."""
        self._returned = value

    def set_inputs(self, inputs: dict[str, Any] | None) -> None:
        """The resolved arguments of the executing run (None once it stops executing)."""
        self._inputs = inputs

    @property
    def state(self) -> State:
        """The latest state; while the run's final hooks run, the state it is ending in (as Prefect's hooks see it)."""
        ending = self._ending
        return self.states[-1] if ending is None else ending

    def ending(self, state: State) -> None:
        """Note the state the run is about to end in: its final hooks run before :meth:`finish`."""
        self._ending = state

    def finish(self, state: State) -> bool:
        """Enter the state that ends the run; wakes waiters and runs callbacks.

        Returns False (and changes nothing) if the run had already ended.
        """
        self._ending = None
        flow_run = self.flow_run
        state.mark_run(self._id, None if flow_run is None else flow_run.int_id)
        if not self._end(lambda: self.states.append(state)):  # type: ignore[attr-defined]
            return False
        self.states = EndedStates.of(self.states)  # type: ignore[arg-type]  # no state is added from here on
        return True

    def _ended(self) -> None:
        if events.task_state:
            events.publish_task_state(self, self.states[-1])

    def cancel(self, reason: str = "cancelled by the user") -> bool:
        """Cancel the run if it has not started; True if it was cancelled.

        Its ``.result()`` then raises CancelledRun naming the run and ``reason``.
        """
        with self._lock:
            if self._done or self._started:
                return False
            self._started = True
        return self.finish(
            Cancelled(
                message=f"Task run {self.name!r} was cancelled before it started ({reason}); "
                "it has no result. Run the flow again to compute it."
            )
        )

    def apply_reported(self, index: int, state: State, name: str, run_count: int) -> bool:
        """Take a state a worker reported as the run's ``index``-th; False if it is stale.

        Reports can repeat (an engine re-ran the work) or arrive late (after
        the outcome): a state is taken only as the next one of an unfinished run.
        """
        with self._lock:
            if self._done or len(self.states) != index:
                return False
            self._started = True
            self._take_name(name)
            self.run_count = run_count
            self.states.append(state)  # type: ignore[attr-defined]
        if events.task_state:
            events.publish_task_state(self, state)
        return True

    def finish_reported(self, state: State, name: str, run_count: int, cache: Any = None,
                        result_key: str | None = None) -> bool:
        """End the run in the final ``state`` a worker reported, with its name, attempt count,
        cache outcome and the key of its stored result."""
        with self._lock:
            if self._done:
                return False
            self._take_name(name)
            self.run_count = run_count
            self.cache = cache
            self.result_key = result_key
        return self.finish(state)

    def _take_name(self, name: str) -> None:
        # Kept only when it is not the generated one: a big map's runs need not hold a string each.
        if self._name is not None or name != self.name:
            self._name = name

    def resume(self, states: tuple[State, ...], run_count: int) -> None:
        """Take up, in a worker's shell that has not started, a run whose earlier attempts ran elsewhere.

        ``states`` are the states the run entered so far (its driver's record,
        ``Pending`` first) and ``run_count`` its attempts: the next attempt is
        a retry, numbered on from them. Nothing is published (the driver has them).
        """
        self.states[:] = states  # type: ignore[index]  # a run that has not ended holds a list
        self.run_count = run_count

    # -- what is executing it (so that a cancel can stop it) ---------------------------
    def attach_call(self, call: Any) -> type[BaseException] | None:
        """The run's code starts executing under ``call`` (a ``timeouts.Watch``).

        Returns the interrupt asked for before it started, which the caller
        raises at once (None if there was none).
        """
        self._call = call
        return self._stop

    def detach_call(self, call: Any) -> None:
        """``call`` stopped executing the run's code."""
        if self._call is call:
            self._call = None

    def interrupt(self, exc: type[BaseException]) -> bool:
        """Stop the executing run with ``exc``: raised in its call, or ending its wait before a retry.

        No attempt starts after it. Returns True if the run will end by itself
        shortly (a call that is abandoned unless it reacts, or a wait cut
        short); False if it had ended or nothing stoppable is executing.
        """
        with self._lock:
            if self._done:
                return False
            if self._stop is None:
                self._stop = exc
            call = self._call
        if call is None:
            return False
        return call.interrupt(exc) and call.abandonable

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` before a retry; an interrupt (a cancel) ends the wait at once."""
        pause = _Pause()
        self._call = pause
        if self._stop is None:
            pause.event.wait(seconds)
        self._call = None

    def stop_reason(self) -> str | None:
        """Why no attempt may start now: the run was interrupted, or its flow run was cancelled.

        Before a retry, also once its flow run has ended.
        """
        if self._stop is not None:
            return "it was cancelled"
        flow_run = self.flow_run
        reason = getattr(flow_run, "cancel_reason", None)  # a worker's stand-in has neither cancel nor state
        if reason is not None:
            return f"its flow run was cancelled ({reason})"
        if self.run_count:
            state = getattr(flow_run, "state", None)
            if state is not None and state.is_final():
                return f"its flow run had ended {state.name}"
        return None

    def __repr__(self) -> str:
        return f"TaskRun(name={self.name!r}, state={self.state.name})"


class _Pause:
    """A run's wait before a retry, which an interrupt ends early."""

    __slots__ = ("event",)

    abandonable = True  # an interrupted wait ends at once

    def __init__(self) -> None:
        self.event = threading.Event()

    def interrupt(self, exc: type[BaseException]) -> bool:
        self.event.set()
        return True


class FlowRunReading(RunReading):
    """What reading a flow run offers, for the live record and for one from the run history.

    Its class also has ``parent`` and ``task_runs``.
    """

    __slots__ = ()
    parent: Any
    task_runs: list[Any]

    @property
    def root(self) -> Any:
        """The top-level flow run this run belongs to (itself if it has no parent)."""
        run = self
        while run.parent is not None:
            run = run.parent
        return run

    def state_counts(self) -> dict[str, int]:
        """How many of this run's task runs are in each state (by state name)."""
        return dict(collections.Counter(r.states[-1].name for r in self.task_runs))

    def export(self, path: str | os.PathLike[str]) -> pathlib.Path:
        """Write the offline HTML report of this run's top-level run to ``path`` (what ``%nbflow export`` writes).

        One file, no network needed to open it: header, DAG, state grids,
        failures with their tracebacks, logs and timings. Returns the path.
        """
        from nbflow.report.export import export  # the report's modules load only when asked for

        return export(self, path)


class FlowRun(RunId, FlowRunReading):
    """The record of one run of a flow: its task runs, subflow runs and states."""

    __slots__ = (
        "__weakref__",
        "_expected",
        "_id",
        "_name",
        "_task_counts",
        "cancel_reason",
        "flow",
        "parameters",
        "parent",
        "retry_of",
        "reuse",
        "run_count",
        "states",
        "subflow_runs",
        "tags",
        "task_runner",
        "task_runs",
    )

    def __init__(
        self,
        flow: Flow,
        parameters: dict[str, Any],
        parent: FlowRun | None = None,
        tags: frozenset[str] = frozenset(),
    ) -> None:
        self.flow = flow
        self.parameters = parameters
        self.parent = parent
        self.task_runs: list[TaskRun] = []
        self.subflow_runs: list[FlowRun] = []
        self.states: list[State] = [State(StateType.PENDING)]
        self.run_count = 0
        self.tags = tags
        self.task_runner: TaskRunner | None = None  # a fresh one per attempt
        self.cancel_reason: str | None = None  # set when someone cancels the run
        self.retry_of: Any = None  # the flow run (or its history record) this run retries
        self.reuse: Any = None  # for a retry: serves task runs that completed in the original
        if parent is None:
            pending = retry_var.get()
            if pending is not None:
                self.retry_of, self.reuse = pending
                retry_var.set(None)  # one flow run retries; flows it calls do not
        self._task_counts: dict[str, int] = {}
        self._expected: dict[str, int] = {}  # task key -> runs of it there will be (see expect)
        self._id = new_id()
        self._name: str | None = None
        if parent is not None:
            parent.subflow_runs.append(self)
        _record(self)
        events.publish_flow_state(self, self.states[0])

    @property
    def name(self) -> str:
        """``flow_run_name`` if given, else a generated ``adjective-noun`` name."""
        if self._name is None:
            self._name = _generated_name(self._id)
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def flow_name(self) -> str:
        return self.flow.name

    @property
    def flow_version(self) -> str | None:
        return self.flow.version

    deployment_id = None  # Prefect's server fields: no deployments, no work pools here
    work_pool_name = None

    @property
    def flow_id(self) -> uuid.UUID:
        """The flow's id: one per flow name, as Prefect's server gives each flow one."""
        return uuid.uuid5(uuid.NAMESPACE_URL, f"nbflow:flow/{self.flow.name}")

    def inherited(self, option: str) -> bool | None:
        """A flow option its tasks inherit (``log_prints``, ``persist_result``): its flow's, else
        its nearest parent's that sets one, as Prefect passes them down; None if no flow does."""
        run: Any = self
        while run is not None:
            value = getattr(run.flow, option)
            if value is not None:
                return bool(value)
            run = run.parent
        return None

    @property
    def persist_result(self) -> bool | None:
        """Whether its tasks persist results by default (see :meth:`inherited`)."""
        return self.inherited("persist_result")

    @property
    def start_time(self) -> float | None:
        return _start_time(self.states)

    @property
    def end_time(self) -> float | None:
        last = self.states[-1]
        return last.timestamp_seconds if last.is_final() else None

    def set_state(self, state: State) -> None:
        self.states.append(state)
        events.publish_flow_state(self, state)

    def count_task_run(self, task_key: str) -> int:
        """The number of the next run of the task ``task_key`` in this flow run (its ``dynamic_key``)."""
        counts = self._task_counts
        count = counts.get(task_key, 0)
        counts[task_key] = count + 1
        return count

    def expect(self, task_key: str, n: int) -> None:
        """Note that ``n`` runs of the task ``task_key`` are about to be created (a ``.map``).

        Watchers count them from the start (:meth:`expected_runs`), so a
        progress bar's total is right before the map has submitted them all.
        """
        self._expected[task_key] = self._task_counts.get(task_key, 0) + n

    def expected_runs(self) -> int:
        """How many task runs announced by :meth:`expect` have not been created yet (0 once the run ended)."""
        if not self._expected or self.states[-1].is_final():
            return 0
        counts = self._task_counts
        return sum(max(0, n - counts.get(key, 0)) for key, n in list(self._expected.items()))

    def start_attempt(self, task_runner: TaskRunner) -> State:
        """Begin an attempt with a fresh ``task_runner``: enter Running (every attempt, as Prefect's flow runs do).

        ``run_count`` counts the attempt from :meth:`start_body`: as in Prefect,
        on_running hooks see the attempts before this one.
        """
        self.task_runner = task_runner
        state = Running()
        self.set_state(state)
        return state

    def start_body(self) -> None:
        """Count the attempt whose body starts now."""
        self.run_count += 1

    def request_cancel(self, reason: str) -> None:
        """Note that the run was cancelled (it ends Cancelled when its body returns)."""
        if self.cancel_reason is None:
            self.cancel_reason = reason

    def crash_unfinished(self, state: State) -> None:
        """End the run in ``state`` (a Crashed one) if it has not ended, and its subflow runs that never started.

        For a run whose lifecycle was cut short (a RecursionError from deeply
        nested subflows): no record is left Pending or Running.
        """
        current = self.states[-1]
        if not (current.is_final() or current.name == "NotReady"):
            self.set_state(state)
        self.crash_unfinished_subflows()

    def crash_unfinished_subflows(self) -> None:
        """End Crashed the subflow runs of this run that never started (an error cut them short as they were made).

        Called as the run ends. A subflow run that started ends itself, even
        when its lifecycle is cut short (see ``crash_unfinished``).
        """
        for sub in self.subflow_runs:
            if sub.run_count == 0 and sub.states[-1].name == "Pending":
                sub.set_state(
                    Crashed(message=f"Flow run {sub.name!r} never started: an error (e.g. a RecursionError) "
                            f"cut it short as it was created; its parent {self.name!r} ended it.")
                )

    def unfinished_task_runs(self) -> list[TaskRun]:
        """Task runs of this run and of its subflow runs that have not ended."""
        return [run for run in iter_task_runs(self) if not run.done]

    def __repr__(self) -> str:
        return (
            f"FlowRun(name={self.name!r}, flow={self.flow_name!r}, "
            f"state={self.state.name}, task_runs={len(self.task_runs)})"
        )


_ADJECTIVES = (
    "amber", "brave", "calm", "daring", "eager", "fancy", "gentle", "happy", "icy",
    "jolly", "keen", "lively", "mellow", "nimble", "olive", "proud", "quick", "rapid",
    "silver", "tidy", "upbeat", "vivid", "witty", "young", "zesty",
)
_NOUNS = (
    "otter", "falcon", "badger", "heron", "lynx", "marten", "newt", "orca", "panda",
    "quail", "raven", "salmon", "tapir", "urchin", "viper", "walrus", "yak", "zebra",
    "bison", "crane", "dingo", "egret", "gecko", "ibis", "koala",
)


def _generated_name(value: int) -> str:
    return f"{_ADJECTIVES[value % len(_ADJECTIVES)]}-{_NOUNS[(value >> 8) % len(_NOUNS)]}"


# -- the registry of recent flow runs ------------------------------------------
_flow_runs: collections.deque[FlowRun] = collections.deque(maxlen=settings.current.max_flow_runs)


def _record(run: FlowRun) -> None:
    global _flow_runs
    limit = settings.current.max_flow_runs
    if _flow_runs.maxlen != limit:
        _flow_runs = collections.deque(_flow_runs, maxlen=limit)
    _flow_runs.append(run)


def flow_runs() -> list[FlowRun]:
    """The recorded flow runs (subflows included), oldest first."""
    return list(_flow_runs)


def last_flow_run() -> FlowRun | None:
    """The most recently started top-level flow run, or None."""
    for run in reversed(_flow_runs):
        if run.parent is None:
            return run
    return None


def find_flow_run(key: str | int | uuid.UUID) -> FlowRun:
    """A recorded flow run by name, id, id prefix, flow name (its latest top-level run) or index (``-1`` = last)."""
    runs = list(_flow_runs)
    if isinstance(key, int):
        try:
            return runs[key]
        except IndexError:
            raise LookupError(f"no recorded flow run at index {key}") from None
    text = str(key)
    for run in reversed(runs):
        if run.name == text or str(run.id).startswith(text):
            return run
    for run in reversed(runs):
        if run.parent is None and run.flow_name == text:
            return run
    raise LookupError(
        f"no recorded flow run named or with id {text!r}; "
        f"recent runs: {', '.join(r.name for r in runs[-5:]) or 'none'}"
    )


def iter_task_runs(flow_run: FlowRun) -> Iterator[TaskRun]:
    """The task runs of a flow run and of all its subflow runs."""
    yield from flow_run.task_runs
    for sub in flow_run.subflow_runs:
        yield from iter_task_runs(sub)


__all__ = [
    "FlowRunReading",
    "RunReading",
    "TaskRunReading",
    "NOTHING",
    "Dependencies",
    "FlowRun",
    "TaskRun",
    "as_uuid",
    "find_flow_run",
    "flow_runs",
    "iter_task_runs",
    "last_flow_run",
    "new_id",
]
