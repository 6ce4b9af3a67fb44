"""Run records and the event seam.

Every flow run and task run is recorded here: its id, name, parameters,
upstream runs and every state it entered. Each state transition is published
to the subscribers registered with :func:`subscribe`; the notebook view, run
history and progress displays are such subscribers, and the core runs the
same with none at all.

Subscribers are called in the thread where the transition happens (a worker
thread, or the driver for remote runners) with one small :class:`RunEvent`,
and must return at once: aggregate, never draw or do I/O in the callback.

Records of old flow runs are let go beyond ``settings.max_flow_runs`` runs, so
a long notebook session does not grow without bound.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import itertools
import random
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple

from nbflow import settings
from nbflow.states import State, StateType

if TYPE_CHECKING:
    from nbflow.flows import Flow
    from nbflow.task_runners import TaskRunner
    from nbflow.tasks import Task


class RunEvent(NamedTuple):
    """One state transition of a flow run or task run.

    ``kind`` is ``"state"`` for a transition (``state`` is the new state) and
    ``"output"`` for a line a task run printed or logged (``text`` holds it,
    ``stream`` is ``"stdout"``, ``"stderr"`` or ``"log"``).
    """

    kind: str
    run: "FlowRun | TaskRun"
    state: State | None = None
    stream: str | None = None
    text: str | None = None


Subscriber = Callable[[RunEvent], Any]

# Tuples, replaced on (un)subscribe, so publishing needs no lock and the
# no-subscriber check is one truth test. Task runs (the hot path) publish to
# _subscribers; flow runs to _flow_subscribers: those plus the subscribers
# that asked for flow-run events only.
_subscribers: tuple[Subscriber, ...] = ()
_flow_subscribers: tuple[Subscriber, ...] = ()
_subscribers_lock = threading.Lock()


class Subscription:
    """Handle returned by :func:`subscribe`; call it or ``.unsubscribe()`` to stop."""

    __slots__ = ("callback",)

    def __init__(self, callback: Subscriber) -> None:
        self.callback = callback

    def unsubscribe(self) -> None:
        global _subscribers, _flow_subscribers
        with _subscribers_lock:
            _subscribers = tuple(s for s in _subscribers if s is not self.callback)
            _flow_subscribers = tuple(s for s in _flow_subscribers if s is not self.callback)

    __call__ = unsubscribe

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.unsubscribe()


def subscribe(callback: Subscriber, task_runs: bool = True) -> Subscription:
    """Call ``callback(event)`` for every run event from now on.

    With ``task_runs=False`` only flow-run events are delivered, and task-run
    transitions cost nothing for this subscriber (a watcher that reads task
    runs from the records on its own clock). Returns a handle whose
    ``unsubscribe()`` (or a call, or leaving a ``with`` block) stops the
    calls. A callback that raises is reported once and removed.
    """
    global _subscribers, _flow_subscribers
    if not callable(callback):
        raise TypeError(f"nbflow.runs.subscribe() needs a callable, got {callback!r}")
    with _subscribers_lock:
        if task_runs:
            _subscribers = _subscribers + (callback,)
        _flow_subscribers = _flow_subscribers + (callback,)
    return Subscription(callback)


def _publish(event: RunEvent, callbacks: tuple[Subscriber, ...] | None = None) -> None:
    for callback in _subscribers if callbacks is None else callbacks:
        try:
            callback(event)
        except Exception as exc:  # a broken subscriber must not break runs
            Subscription(callback).unsubscribe()
            import logging

            logging.getLogger("nbflow").error(
                "run-event subscriber %r raised %r and was removed", callback, exc
            )


def publish_output(run: "TaskRun | FlowRun", stream: str, text: str) -> None:
    """Publish a line a run printed or logged (used by output capture)."""
    if _subscribers:
        _publish(RunEvent("output", run, None, stream, text))


# -- completion -------------------------------------------------------------
# One lock guards the done flag, waiter lists and callback lists of every
# task run: held for a few bytecodes, it is cheaper than a lock per run.
_done_lock = threading.Lock()

# Set by worker pools so that a worker blocking on a future lets its pool
# start another thread (a task waiting on tasks never deadlocks the pool).
_worker = threading.local()


@contextlib.contextmanager
def blocking_wait() -> Iterator[None]:
    """Wrap a blocking wait: inside a pool worker, the pool starts a stand-in thread."""
    pool = getattr(_worker, "pool", None)
    if pool is None:
        yield
        return
    pool.blocking()
    try:
        yield
    finally:
        pool.unblocking()


def _new_id() -> int:
    # getrandbits never releases the GIL, unlike uuid4()'s os.urandom.
    return random.getrandbits(128)


def _uuid(value: int) -> uuid.UUID:
    return uuid.UUID(int=value, version=4)


class Completion:
    """Something that ends once: waiters block on it, callbacks run when it ends.

    Waiting blocks on a private lock (interruptible by Ctrl-C) registered under
    one shared lock, and lets a worker pool start a stand-in thread meanwhile.
    """

    __slots__ = ("_done", "_waiters", "_callbacks")

    def __init__(self) -> None:
        self._done = False
        self._waiters: list | None = None
        self._callbacks: list | None = None

    def _open(self, states: list | None = None, state: State | None = None) -> bool:
        """End it (appending ``state`` to ``states`` first, atomically); False if it had ended."""
        with _done_lock:
            if self._done:
                return False
            if states is not None:
                states.append(state)
            self._done = True
            waiters, self._waiters = self._waiters, None
            callbacks, self._callbacks = self._callbacks, None
        self._after_open()
        if waiters:
            for lock in waiters:
                lock.release()
        if callbacks:
            for callback in callbacks:
                callback(self)
        return True

    def _after_open(self) -> None:
        """Hook run once it has ended, before waiters wake."""

    def add_done_callback(self, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(self)`` once it has ended (at once if it already has)."""
        with _done_lock:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = [callback]
                else:
                    self._callbacks.append(callback)
                return
        callback(self)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until it has ended or ``timeout`` seconds pass; True if it has ended."""
        if self._done:
            return True
        lock = threading.Lock()
        lock.acquire()
        with _done_lock:
            if self._done:
                return True
            if self._waiters is None:
                self._waiters = [lock]
            else:
                self._waiters.append(lock)
        try:
            with blocking_wait():
                finished = lock.acquire(timeout=-1 if timeout is None else max(timeout, 0))
        finally:
            if not self._done:
                with _done_lock:
                    if self._waiters is not None and lock in self._waiters:
                        self._waiters.remove(lock)
        return finished or self._done


def _start_time(states: list[State]) -> float | None:
    """When a run first entered Running (None if it never ran)."""
    return next((s._ts for s in states if s.type is StateType.RUNNING), None)


def _duration(start: float | None, end: float | None) -> float | None:
    """Seconds from ``start`` to ``end`` (or to now while still running)."""
    return None if start is None else (end or time.time()) - start


class TaskRun(Completion):
    """The record of one run of a task.

    ``states`` holds every state the run entered, oldest first; ``state`` is
    the latest. ``upstream`` lists the task runs it waited for (data
    dependencies and ``wait_for``). ``output`` holds what it printed or logged.
    """

    __slots__ = (
        "task",
        "flow_run",
        "parameters",
        "upstream",
        "tags",
        "states",
        "run_count",
        "map_index",
        "output",
        "_id",
        "_name",
        "_started",
        "_deps_left",
        "_dependencies",
        "_resolved",
        "_thread_id",
        "_context",
        "_inputs",
        "__weakref__",
    )

    def __init__(
        self,
        task: "Task",
        flow_run: "FlowRun | None",
        parameters: dict[str, Any],
        tags: frozenset[str] = frozenset(),
        map_index: int | None = None,
        name: str | None = None,
    ) -> None:
        Completion.__init__(self)
        self.task = task
        self.flow_run = flow_run
        self.parameters = parameters
        self.upstream: tuple[TaskRun, ...] = ()
        self.tags = tags
        self.states: list[State] = [State(StateType.PENDING)]
        self.run_count = 0
        self.map_index = map_index
        self.output: list[tuple[str, str]] | None = None
        self._id = _new_id()
        self._name = name
        self._started = False
        self._deps_left = 0
        # (run, allow_failure) pairs this run must see finished before starting
        self._dependencies: tuple | None = None
        self._resolved = False  # someone asked for the result, or depended on it
        self._thread_id: int | None = None
        # Context variables as they were at submit time, entered where the run
        # executes (as Prefect does): user ContextVars and tags reach the task.
        self._context: contextvars.Context | None = None
        self._inputs: dict[str, Any] | None = None  # resolved arguments while it executes
        if flow_run is not None:
            flow_run.task_runs.append(self)
        if _subscribers:
            _publish(RunEvent("state", self, self.states[0]))

    # -- identity ------------------------------------------------------------
    @property
    def id(self) -> uuid.UUID:
        return _uuid(self._id)

    @property
    def name(self) -> str:
        """The run's name: ``task_run_name`` if given, else ``"{task}-{3 hex}"``."""
        if self._name is None:
            if self.flow_run is None:
                self._name = self.task.name
            else:
                self._name = f"{self.task.name}-{self._id >> 116:03x}"
        return self._name  # type: ignore[return-value]

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def flow_run_id(self) -> uuid.UUID | None:
        """The id of the flow run this run belongs to (None outside a flow)."""
        return self.flow_run.id if self.flow_run is not None else None

    @property
    def task_key(self) -> str:
        return self.task.task_key

    @property
    def state(self) -> State:
        return self.states[-1]

    @property
    def done(self) -> bool:
        """True once the run is over: final, cancelled, or left ``NotReady``."""
        return self._done

    @property
    def start_time(self) -> float | None:
        return _start_time(self.states)

    @property
    def end_time(self) -> float | None:
        return self.states[-1]._ts if self._done else None

    @property
    def duration(self) -> float | None:
        return _duration(self.start_time, self.end_time)

    # -- transitions -----------------------------------------------------------
    def set_state(self, state: State) -> None:
        """Enter a state that does not end the run."""
        self.states.append(state)
        if _subscribers:
            _publish(RunEvent("state", self, state))

    def finish(self, state: State) -> bool:
        """Enter the state that ends the run; wakes waiters and runs callbacks.

        Returns False (and changes nothing) if the run had already ended.
        """
        state._run_id = self._id
        return self._open(self.states, state)

    def _after_open(self) -> None:
        if _subscribers:
            _publish(RunEvent("state", self, self.states[-1]))

    def claim(self) -> bool:
        """Mark the run started; False if it already ended (e.g. was cancelled)."""
        with _done_lock:
            if self._done or self._started:
                return False
            self._started = True
            return True

    def cancel(self, reason: str = "cancelled by the user") -> bool:
        """Cancel the run if it has not started; True if it was cancelled.

        Its ``.result()`` then raises CancelledRun naming the run and ``reason``.
        """
        from nbflow.states import Cancelled

        with _done_lock:
            if self._done or self._started:
                return False
            self._started = True
        return self.finish(
            Cancelled(
                message=f"Task run {self.name!r} was cancelled before it started ({reason}); "
                "it has no result. Run the flow again to compute it."
            )
        )

    def __repr__(self) -> str:
        return f"TaskRun(name={self.name!r}, state={self.state.name})"

    def _repr_html_(self) -> str:
        from nbflow.notebook import reprs

        return reprs.task_run_html(self)


class FlowRun:
    """The record of one run of a flow: its task runs, subflow runs and states."""

    __slots__ = (
        "flow",
        "parameters",
        "parent",
        "task_runs",
        "subflow_runs",
        "states",
        "run_count",
        "tags",
        "task_runner",
        "_id",
        "_name",
        "_number",
        "__weakref__",
    )

    _counter = itertools.count(1)

    def __init__(
        self,
        flow: "Flow",
        parameters: dict[str, Any],
        parent: "FlowRun | None" = None,
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
        self._id = _new_id()
        self._name: str | None = None
        self._number = next(FlowRun._counter)
        if parent is not None:
            parent.subflow_runs.append(self)
        _record(self)
        if _flow_subscribers:
            _publish(RunEvent("state", self, self.states[0]), _flow_subscribers)

    @property
    def id(self) -> uuid.UUID:
        return _uuid(self._id)

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
    def state(self) -> State:
        return self.states[-1]

    @property
    def start_time(self) -> float | None:
        return _start_time(self.states)

    @property
    def end_time(self) -> float | None:
        return self.states[-1]._ts if self.states[-1].is_final() else None

    @property
    def duration(self) -> float | None:
        return _duration(self.start_time, self.end_time)

    def set_state(self, state: State) -> None:
        self.states.append(state)
        if _flow_subscribers:
            _publish(RunEvent("state", self, state), _flow_subscribers)

    def state_counts(self) -> dict[str, int]:
        """How many of this run's task runs are in each state (by state name)."""
        return dict(collections.Counter(r.states[-1].name for r in self.task_runs))

    def __repr__(self) -> str:
        return (
            f"FlowRun(name={self.name!r}, flow={self.flow_name!r}, "
            f"state={self.state.name}, task_runs={len(self.task_runs)})"
        )

    def _repr_html_(self) -> str:
        from nbflow.notebook import reprs

        return reprs.flow_run_html(self)


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
    """A recorded flow run by name, id, id prefix or negative index (``-1`` = last)."""
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
    "RunEvent",
    "Subscription",
    "subscribe",
    "publish_output",
    "TaskRun",
    "FlowRun",
    "flow_runs",
    "last_flow_run",
    "find_flow_run",
    "iter_task_runs",
]
