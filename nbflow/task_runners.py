"""Task runners: where submitted task runs execute.

Every runner shares the same scheduling: a run whose upstream runs are not
done registers one callback on each and is dispatched when the last one ends
(no thread is parked waiting). Runners differ only in ``_dispatch``: where
``engine`` executes the run and how its states travel back.

``DaskTaskRunner`` and ``RayTaskRunner`` live in ``nbflow.integrations`` and
are imported from here on first use, so ``import nbflow`` never imports
Dask or Ray.
"""

from __future__ import annotations

import abc
import io
import sys
import threading
from typing import Any, Callable, Iterable

from nbflow.annotations import BaseAnnotation, unmapped
from nbflow.exceptions import MappingLengthMismatch, MappingMissingIterable
from nbflow.futures import PrefectConcurrentFuture, PrefectFuture, PrefectFutureList
from nbflow.runs import TaskRun, _done_lock
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

    def __init__(self) -> None:
        self._runs: list[TaskRun] = []
        self._entered = False

    @property
    def name(self) -> str:
        return type(self).__name__.removesuffix("TaskRunner").lower() or "task"

    @abc.abstractmethod
    def duplicate(self) -> "TaskRunner":
        """A new runner with the same configuration (each flow run gets its own)."""

    # -- lifecycle --------------------------------------------------------------
    def __enter__(self) -> "TaskRunner":
        self._entered = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None:
                self.cancel_all()
            for run in self._runs:
                run.wait()
        finally:
            self._entered = False
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
        task: "Task",
        parameters: dict[str, Any] | None = None,
        wait_for: Iterable[Any] | None = None,
        dependencies: Any = None,
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
        self, task: "Task", parameters: dict[str, Any], wait_for: Iterable[Any] | None = None
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
            if isinstance(value, PrefectFuture):
                value = value.result()  # a future of a list maps over its elements
            if _is_mappable(value):
                mapped[name] = (list(value), annotation)
            else:
                static[name] = value if annotation is None else annotation(value)
        if not mapped:
            raise MappingMissingIterable(
                f"Task {task.name!r}: .map() found no iterable argument to map over "
                f"(got {', '.join(f'{k}={v!r}' for k, v in static.items()) or 'no arguments'}). "
                "Pass at least one list, tuple, range, set, dict or generator; strings and bytes "
                "are not mapped over. To call the task once, use .submit()."
            )
        lengths = {name: len(values) for name, (values, _) in mapped.items()}
        if len(set(lengths.values())) > 1:
            raise MappingLengthMismatch(
                f"Task {task.name!r}: .map() got iterables of different lengths: "
                + ", ".join(f"{k}={n}" for k, n in lengths.items())
                + ". Give every mapped argument the same length, or wrap an argument that every "
                "run should receive whole in unmapped(...)."
            )
        futures: PrefectFutureList = PrefectFutureList()
        wait_for = list(wait_for) if wait_for is not None else None
        for i in range(next(iter(lengths.values()))):
            call = dict(static)
            for name, (values, annotation) in mapped.items():
                call[name] = values[i] if annotation is None else annotation(values[i])
            if var_kw:
                call = _collapse_var_keyword(call, signature)
            futures.append(self.submit(task, signature.apply_defaults(call), wait_for, None, i))
        return futures

    # -- scheduling ------------------------------------------------------------------------
    def _schedule(self, run: TaskRun) -> None:
        """Dispatch ``run`` now, or once its last pending upstream run ends."""
        pending = self._pending_upstream(run)
        if pending:
            when_done(run, pending, self._dispatch)
        else:
            self._dispatch(run)

    def _pending_upstream(self, run: TaskRun) -> list[TaskRun]:
        """The upstream runs that must end before ``run`` is dispatched: here, every unfinished one.

        Cluster runners leave out upstream runs on their own engine, which
        orders them itself.
        """
        deps = run._dependencies
        return [dep for dep, _ in deps if not dep._done] if deps else []

    @abc.abstractmethod
    def _dispatch(self, run: TaskRun) -> None:
        """Execute ``run``, whose upstream runs have all ended, and finish it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def when_done(run: TaskRun, pending: list[TaskRun], then: Callable[[TaskRun], Any]) -> None:
    """Call ``then(run)`` once every run in ``pending`` has ended (no thread waits meanwhile)."""
    run._deps_left = len(pending)

    def upstream_done(_dep: TaskRun) -> None:
        with _done_lock:
            run._deps_left -= 1
            ready = run._deps_left == 0
        if ready:
            then(run)

    for dep in pending:
        dep.add_done_callback(upstream_done)


def _collapse_var_keyword(call: dict[str, Any], signature: Any) -> dict[str, Any]:
    named = set(signature.names)
    extra = {k: call.pop(k) for k in list(call) if k not in named}
    call[signature.var_keyword] = extra
    return call


def _check_task(runner: TaskRunner, task: Any, method: str) -> None:
    if not isinstance(task, Task):
        raise TypeError(
            f"{type(runner).__name__}.{method}() takes a task, got {task!r}. Decorate the "
            "function with @task, or wrap it: task(fn)."
        )


class ThreadPoolTaskRunner(TaskRunner):
    """Runs task runs in threads of this process (the default runner).

    ``max_workers`` caps how many run at once (default: no small cap, as
    Prefect). A task that waits on tasks it submitted never deadlocks: its
    thread lends its slot while it waits.
    """

    def __init__(self, max_workers: int | None = None) -> None:
        super().__init__()
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"ThreadPoolTaskRunner(max_workers={max_workers}): need at least 1 worker")
        self.max_workers = max_workers
        self._pool = None
        self._pool_lock = threading.Lock()

    def duplicate(self) -> "ThreadPoolTaskRunner":
        return type(self)(max_workers=self.max_workers)

    def _dispatch(self, run: TaskRun) -> None:
        pool = self._pool
        if pool is None:
            pool = self._start_pool()
        pool.submit(run)

    def _start_pool(self) -> Any:
        from nbflow import engine, settings
        from nbflow.worker_pool import WorkerPool

        with self._pool_lock:
            if self._pool is None:
                limit = self.max_workers or settings.current.thread_pool_max_workers or sys.maxsize
                self._pool = WorkerPool(engine.run_task, limit, "nbflow-worker")
            return self._pool

    def shutdown(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()

    def __repr__(self) -> str:
        return f"ThreadPoolTaskRunner(max_workers={self.max_workers})"


def __getattr__(name: str) -> Any:
    # Heavy runners load on first use: Dask and Ray are optional extras.
    if name == "ProcessPoolTaskRunner":
        from nbflow.process_runner import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner
    if name == "DaskTaskRunner":
        from nbflow.integrations.dask import DaskTaskRunner

        return DaskTaskRunner
    if name == "RayTaskRunner":
        from nbflow.integrations.ray import RayTaskRunner

        return RayTaskRunner
    raise AttributeError(f"module 'nbflow.task_runners' has no attribute {name!r}")


__all__ = [
    "TaskRunner",
    "ThreadPoolTaskRunner",
    "ProcessPoolTaskRunner",
    "DaskTaskRunner",
    "RayTaskRunner",
]
