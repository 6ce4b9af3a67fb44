"""The event seam: typed events about runs, and the subscribers that receive them.

The core publishes one small event for every state a task run or flow run
enters, every chunk of text a task run prints and every record it logs.
Whatever watches runs (the notebook view, output routing to cells, run
history, progress bars) subscribes here or reads the run records; the core
runs the same with no subscriber at all.

Events, by ``event.kind``:

- ``"state"`` (:class:`StateEvent`): ``run`` (a TaskRun or a FlowRun) entered ``state``;
- ``"output"`` (:class:`OutputEvent`): ``run`` printed ``text`` on ``stream`` (stdout, stderr);
- ``"log"`` (:class:`OutputEvent`, ``stream == "log"``): ``run`` logged a record, formatted as ``text``;
- ``"cluster"`` (:class:`ClusterEvent`): a task runner is starting, has started, is stopping or has
  stopped the cluster engine of ``flow_run`` (a Dask cluster, Ray), so a watcher can say so and time it.

``subscribe(fn, kinds=...)`` chooses among ``"task-state"``, ``"flow-state"``
(state events of task runs, of flow runs), ``"output"``, ``"log"`` and
``"cluster"``; ``"state"`` stands for both state kinds.

Subscribers are called in the thread where the event happens (a worker
thread, or the driver for process and cluster runners) and must return at
once: aggregate, never draw or do I/O in the callback. What a subscriber
prints is not captured as the output of the run whose event it handles, so it
never comes back to it as an event.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple, Union

if TYPE_CHECKING:
    from nbflow.records import FlowRun, TaskRun
    from nbflow.states import State

#: What :func:`subscribe` can choose (``"state"`` stands for the first two).
KINDS = ("task-state", "flow-state", "output", "log", "cluster")

#: The phases of a :class:`ClusterEvent`, in order.
CLUSTER_PHASES = ("starting", "started", "stopping", "stopped")


class StateEvent(NamedTuple):
    """A task run or flow run entered ``state`` (``kind`` is ``"state"``)."""

    kind: str
    run: "TaskRun | FlowRun"
    state: "State"


class OutputEvent(NamedTuple):
    """A run printed (kind ``"output"``) or logged (kind ``"log"``) ``text`` on ``stream``."""

    kind: str
    run: "TaskRun | FlowRun"
    stream: str
    text: str


class ClusterEvent(NamedTuple):
    """A task runner's engine changed ``phase`` (kind ``"cluster"``, one of :data:`CLUSTER_PHASES`).

    ``what`` names the engine for people (``"Dask cluster"``, ``"Ray"``),
    ``flow_run`` is the flow run the runner serves (None outside a flow) and
    ``time`` when the phase began (``time.time()``).
    """

    kind: str
    runner: Any
    phase: str
    what: str
    flow_run: "FlowRun | None"
    time: float

    @property
    def run(self) -> "FlowRun | None":
        """The flow run the runner serves: every event has a ``run`` (a subscriber to all kinds reads it)."""
        return self.flow_run


RunEvent = Union[StateEvent, OutputEvent, ClusterEvent]
Subscriber = Callable[[Any], Any]

# One tuple of callbacks per kind, replaced on (un)subscribe: publishing takes
# no lock, and "is anyone listening" is one truth test on the hot path.
task_state: tuple[Subscriber, ...] = ()
flow_state: tuple[Subscriber, ...] = ()
output: tuple[Subscriber, ...] = ()
log: tuple[Subscriber, ...] = ()
cluster: tuple[Subscriber, ...] = ()

_lock = threading.Lock()
_delivering = threading.local()
logger = logging.getLogger("nbflow")


class Subscription:
    """Handle returned by :func:`subscribe`; call it, ``.unsubscribe()`` or leave its ``with`` block to stop."""

    __slots__ = ("callback", "kinds")

    def __init__(self, callback: Subscriber, kinds: tuple[str, ...]) -> None:
        self.callback = callback
        self.kinds = kinds

    def unsubscribe(self) -> None:
        _remove(self.callback)

    __call__ = unsubscribe

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.unsubscribe()


def subscribe(callback: Subscriber, kinds: Iterable[str] | str | None = None) -> Subscription:
    """Call ``callback(event)`` for every event of the given kinds from now on (all kinds by default).

    ``kinds`` is a subset of ``("task-state", "flow-state", "output", "log", "cluster")``,
    or ``"state"`` for both state kinds. A subscriber costs the runs nothing
    for the kinds it did not ask for. A callback that raises is reported once
    and removed.
    """
    global task_state, flow_state, output, log, cluster
    if not callable(callback):
        raise TypeError(f"nbflow.events.subscribe() needs a callable, got {callback!r}")
    chosen = _kinds(kinds)
    with _lock:
        if "task-state" in chosen:
            task_state = task_state + (callback,)
        if "flow-state" in chosen:
            flow_state = flow_state + (callback,)
        if "output" in chosen:
            output = output + (callback,)
        if "log" in chosen:
            log = log + (callback,)
        if "cluster" in chosen:
            cluster = cluster + (callback,)
    return Subscription(callback, chosen)


def _kinds(kinds: Iterable[str] | str | None) -> tuple[str, ...]:
    if kinds is None:
        return KINDS
    if isinstance(kinds, str):
        kinds = [kinds]
    chosen: list[str] = []
    for kind in kinds:
        expanded = ("task-state", "flow-state") if kind == "state" else (kind,)
        for one in expanded:
            if one not in KINDS:
                raise ValueError(
                    f"nbflow.events.subscribe(): unknown event kind {kind!r}; "
                    f"choose from {', '.join(map(repr, KINDS))} or 'state'"
                )
            if one not in chosen:
                chosen.append(one)
    return tuple(chosen)


def _remove(callback: Subscriber) -> None:
    global task_state, flow_state, output, log, cluster
    with _lock:
        task_state = tuple(s for s in task_state if s is not callback)
        flow_state = tuple(s for s in flow_state if s is not callback)
        output = tuple(s for s in output if s is not callback)
        log = tuple(s for s in log if s is not callback)
        cluster = tuple(s for s in cluster if s is not callback)


def publish(event: RunEvent, callbacks: tuple[Subscriber, ...]) -> None:
    """Deliver ``event`` to ``callbacks`` (the current tuple of its kind)."""
    outer = getattr(_delivering, "active", False)
    _delivering.active = True
    try:
        for callback in callbacks:
            try:
                callback(event)
            except Exception as exc:  # a broken subscriber must not break runs
                _remove(callback)
                logger.error("run-event subscriber %r raised %r and was removed", callback, exc)
    finally:
        _delivering.active = outer


def delivering() -> bool:
    """True while this thread is inside a subscriber (its output is not a run's output)."""
    return getattr(_delivering, "active", False)


def publish_task_state(run: "TaskRun", state: "State") -> None:
    """Publish that task run ``run`` entered ``state`` (callers check ``events.task_state`` first)."""
    publish(StateEvent("state", run, state), task_state)


def publish_flow_state(run: "FlowRun", state: "State") -> None:
    """Publish that flow run ``run`` entered ``state``."""
    if flow_state:
        publish(StateEvent("state", run, state), flow_state)


def publish_output(run: "TaskRun | FlowRun", stream: str, text: str) -> None:
    """Publish a chunk a run printed (``stdout``/``stderr``) or a record it logged (``log``)."""
    if stream == "log":
        if log:
            publish(OutputEvent("log", run, stream, text), log)
    elif output:
        publish(OutputEvent("output", run, stream, text), output)


def publish_cluster(runner: Any, phase: str, what: str, flow_run: "FlowRun | None", at: float) -> None:
    """Publish that ``runner``'s engine ``what`` entered ``phase`` at ``at`` (see :class:`ClusterEvent`)."""
    if cluster:
        publish(ClusterEvent("cluster", runner, phase, what, flow_run, at), cluster)


__all__ = [
    "CLUSTER_PHASES",
    "KINDS",
    "ClusterEvent",
    "StateEvent",
    "OutputEvent",
    "RunEvent",
    "Subscription",
    "subscribe",
    "publish",
    "publish_task_state",
    "publish_flow_state",
    "publish_output",
    "publish_cluster",
    "delivering",
]
