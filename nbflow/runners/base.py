"""The base of every task runner: submitting, mapping, and scheduling on upstream runs.

Every runner shares the same scheduling: a run whose upstream runs are not
done is dispatched when the last one ends, through callbacks on their records
(no thread is parked waiting). Runners differ only in ``_dispatch``: where
``engine.run_here`` executes the run and how its states travel back.
"""

from __future__ import annotations

import abc
import io
import threading
from collections.abc import Iterable
from typing import Any

from nbflow.annotations import BaseAnnotation, allow_failure, unmapped
from nbflow.completion import when_all_done
from nbflow.context import current_flow_run
from nbflow.engine import admits, upstream_message
from nbflow.exceptions import MappingLengthMismatch, MappingMissingIterable, UpstreamTaskError
from nbflow.futures import PrefectConcurrentFuture, PrefectFuture, PrefectFutureList
from nbflow.records import TaskRun
from nbflow.resolve import wait_for_items
from nbflow.states import State
from nbflow.tasks import Task


def _is_mappable(value: Any) -> bool:
    if isinstance(value, (str, bytes, io.IOBase)):
        return False
    try:
        iter(value)
    except TypeError:
        return False
    return True


class TaskRunner(abc.ABC):
    """Runs task runs submitted to it; a context manager.

    Used by flows (``@flow(task_runner=...)``), or on its own::

        with ThreadPoolTaskRunner(max_workers=2) as runner:
            future = runner.submit(my_task, {"x": 1})
            futures = runner.map(my_task, {"x": [1, 2, 3]})
    """

    #: Runs a ``.map`` hands on together, in parts of at most this many (0: each run as it is
    #: dispatched). Runners with a fixed cost per hand-over set it and :meth:`_hand_over`.
    map_part = 0

    def __init__(self) -> None:
        self._runs: list[TaskRun] = []
        self._started = False  # entered (``with runner:``, or by the flow run that owns it)
        self._map_batch = threading.local()  # .items: what this thread's map collects to hand on

    @property
    def name(self) -> str:
        return type(self).__name__.removesuffix("TaskRunner").lower() or "task"

    @abc.abstractmethod
    def duplicate(self) -> TaskRunner:
        """A new runner with the same configuration (each flow run gets its own)."""

    # -- lifecycle --------------------------------------------------------------
    def __enter__(self) -> TaskRunner:
        if self._started:
            raise RuntimeError(
                f"This task runner is already started: {type(self).__name__} is entered once "
                "(use .duplicate() for another)"
            )
        self._started = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None:
                self.cancel_all()
            for run in self._runs:
                run.wait()
        finally:
            self._started = False
            self.shutdown()

    def shutdown(self) -> None:
        """Release what the runner started (threads, processes, clusters)."""

    def cancel_all(self, reason: str = "its task runner was cancelled") -> None:
        """Cancel every run of this runner that has not started."""
        for run in self._runs:
            run.cancel(reason)

    # -- submitting -------------------------------------------------------------------
    def submit(
        self,
        task: Task,
        parameters: dict[str, Any] | None = None,
        wait_for: Iterable[Any] | None = None,
        map_index: int | None = None,
    ) -> PrefectFuture:
        """Start a run of ``task`` with ``parameters``; returns its future at once."""
        _check_task(self, task, "submit")
        run = task.create_run(parameters or {}, wait_for, map_index)
        self._runs.append(run)
        self._schedule(run)
        return self._future(run)

    def _future(self, run: TaskRun) -> PrefectFuture:
        return PrefectConcurrentFuture(run)

    def map(
        self, task: Task, parameters: dict[str, Any], wait_for: Iterable[Any] | None = None
    ) -> PrefectFutureList:
        """Start one run of ``task`` per element of the iterable ``parameters``."""
        _check_task(self, task, "map")
        signature = task.signature
        var_kw = signature.var_keyword
        if var_kw and isinstance(parameters.get(var_kw), dict):
            # Entries of **kwargs are mapped like named parameters.
            parameters = {k: v for k, v in parameters.items() if k != var_kw} | parameters[var_kw]
        static: dict[str, Any] = {}
        mapped: dict[str, tuple[list, type | None]] = {}
        for name, value in parameters.items():
            if isinstance(value, unmapped):
                static[name] = value.value
                continue
            annotation = None
            if isinstance(value, BaseAnnotation):
                annotation, value = type(value), value.value
            if isinstance(value, (PrefectFuture, State)):
                value = _settled(task, name, value, annotation)  # a future or state of a list maps over its elements
            if _is_mappable(value):
                mapped[name] = (list(value), annotation)
            else:
                static[name] = value if annotation is None else annotation(value)
        if not mapped:
            raise MappingMissingIterable(  # Prefect's words first, then the task and the fix
                "No iterable parameters were received. Parameters for map must include at least one "
                f"iterable. Parameters: {static}. Task {task.name!r}: pass at least one list, tuple, "
                "range, set, dict or generator; strings and bytes are not mapped over. To call the "
                "task once, use .submit()."
            )
        lengths = {name: len(values) for name, (values, _) in mapped.items()}
        if len(set(lengths.values())) > 1:
            raise MappingLengthMismatch(
                "Received iterable parameters with different lengths. Parameters for map must all be "
                f"the same length. Got lengths: {lengths}. Task {task.name!r}: give every mapped "
                "argument the same length, or wrap an argument that every run should receive whole "
                "in unmapped(...)."
            )
        futures: PrefectFutureList = PrefectFutureList()
        wait_for = wait_for_items(wait_for)
        count = next(iter(lengths.values()))
        flow_run = current_flow_run()
        if flow_run is not None:  # watchers count the whole map from its first run
            flow_run.expect(task.task_key, count)
        batch: list[Any] | None = [] if self.map_part else None
        self._map_batch.items = batch
        try:
            for i in range(count):
                call = dict(static)
                for name, (values, annotation) in mapped.items():
                    call[name] = values[i] if annotation is None else annotation(values[i])
                if var_kw:
                    call = _collapse_var_keyword(call, signature)
                futures.append(self.submit(task, signature.apply_defaults(call), wait_for, i))
        finally:
            self._map_batch.items = None
            if batch:
                self._hand_over(batch)
        return futures

    def _add_to_map(self, item: Any) -> bool:
        """Collect ``item`` (what ``_dispatch`` made of a run) with the others of the map being
        submitted in this thread, handed on every ``map_part``; False outside such a map."""
        batch = getattr(self._map_batch, "items", None)
        if batch is None:
            return False
        batch.append(item)
        if len(batch) >= self.map_part:  # a big map goes in parts: the work starts on the first
            self._hand_over(batch[:])
            batch.clear()
        return True

    def _hand_over(self, batch: list[Any]) -> None:
        """Hand on what :meth:`_add_to_map` collected (runners that set ``map_part``)."""
        raise NotImplementedError(f"{type(self).__name__} sets map_part but does not hand batches over")

    # -- scheduling ------------------------------------------------------------------------
    def _schedule(self, run: TaskRun) -> None:
        """Dispatch ``run`` now, or once its last pending upstream run ends."""
        if run.done:  # served from the original run of a retry
            return
        pending = self._pending_upstream(run)
        if pending:
            when_all_done(pending, lambda: self._dispatch(run))
        else:
            self._dispatch(run)

    def _pending_upstream(self, run: TaskRun) -> list[TaskRun]:
        """The upstream runs that must end before ``run`` is dispatched: here, every unfinished one.

        Cluster runners leave out upstream runs on their own engine, which
        orders them itself.
        """
        return run.pending_upstream()

    @abc.abstractmethod
    def _dispatch(self, run: TaskRun) -> None:
        """Execute ``run``, whose upstream runs have all ended, and finish it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _settled(task: Task, name: str, value: PrefectFuture | State, annotation: type | None) -> Any:
    """A future's (waited for) or a state's value if it completed.

    As in Prefect, what did not complete cannot be mapped over: .map() raises
    UpstreamTaskError, unless ``allow_failure`` lets a failed (or NotReady)
    upstream through, passed whole to every run.
    """
    if isinstance(value, PrefectFuture):
        value.wait()
        dep: Any = value.task_run if isinstance(value.task_run, TaskRun) else value.state
        state = value.state
        if not state.is_final() and state.name != "NotReady":  # a placeholder (a visualize trace)
            return value
    else:
        dep = state = value
    if state.is_completed():
        return state.result(_sync=True)
    if admits(state, annotation is allow_failure):
        return value
    raise UpstreamTaskError(f"Task {task.name!r}: .map() cannot map over {name}: {upstream_message(dep, state)}")


def _collapse_var_keyword(call: dict[str, Any], signature: Any) -> dict[str, Any]:
    named = set(signature.names)
    extra = {k: call.pop(k) for k in list(call) if k not in named}
    call[signature.var_keyword] = extra
    return call


def _check_task(runner: TaskRunner, task: Any, method: str) -> None:
    if not runner._started:  # Prefect's words, then the fix
        raise RuntimeError(
            f"Task runner is not started: enter {type(runner).__name__} first "
            f"(`with runner:`) before calling .{method}(), or let a flow run use it (@flow(task_runner=...))."
        )
    if not isinstance(task, Task):
        raise TypeError(
            f"{type(runner).__name__}.{method}() takes a task, got {task!r}. Decorate the "
            "function with @task, or wrap it: task(fn)."
        )


__all__ = ["TaskRunner"]
