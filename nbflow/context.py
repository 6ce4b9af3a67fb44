"""Context variables: the flow run and task run being executed, and active tags.

Prefect's context objects read them: ``get_run_context()``, ``FlowRunContext.get()``,
``TaskRunContext.get()`` and ``TagsContext.get()``.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from nbflow.exceptions import MissingContextError

if TYPE_CHECKING:
    from nbflow.runs import FlowRun, TaskRun

task_run_var: ContextVar[TaskRun | None] = ContextVar("nbflow_task_run", default=None)
flow_run_var: ContextVar[FlowRun | None] = ContextVar("nbflow_flow_run", default=None)
tags_var: ContextVar[frozenset[str]] = ContextVar("nbflow_tags", default=frozenset())
# What the next top-level flow run retries: ``(original, reuse)``, set by nbflow.retry around
# its call of the flow; ``reuse.serve(task_run)`` ends a task run from the original's results.
retry_var: ContextVar[tuple | None] = ContextVar("nbflow_retry", default=None)
# The tracer of Flow.visualize() / Flow.plan() (nbflow.visualize.Tracer) while it traces a flow
# body: task and subflow calls are handed to it and nothing runs.
tracer_var: ContextVar[Any] = ContextVar("nbflow_tracer", default=None)


def current_task_run() -> TaskRun | None:
    """The task run executing in this thread or coroutine, if any."""
    return task_run_var.get()


def current_flow_run() -> FlowRun | None:
    """The flow run that work submitted here belongs to, if any.

    Inside a task executing on a worker, that is the task run's flow run; a
    flow body runs with no current task run, so a subflow called from a task
    owns what its body submits.
    """
    task_run = task_run_var.get()
    if task_run is not None and task_run.flow_run is not None:
        return task_run.flow_run
    return flow_run_var.get()


@contextlib.contextmanager
def tags(*names: str) -> Iterator[set[str]]:
    """Add tags to every task run and flow run created inside the block; yields them all (a set, as Prefect).

    >>> with tags("db", "nightly"):
    ...     my_task.submit()
    """
    new = tags_var.get() | frozenset(names)
    token = tags_var.set(new)
    try:
        yield set(new)
    finally:
        tags_var.reset(token)


class RunContext:
    """What ``get_run_context()`` returns: a view of the run executing here."""

    __slots__ = ("_run",)

    def __init__(self, run: Any) -> None:
        self._run = run

    @property
    def start_time(self) -> datetime.datetime | None:
        """When the run started (UTC), None before it has."""
        started = self._run.start_time
        return None if started is None else datetime.datetime.fromtimestamp(started, datetime.timezone.utc)

    @property
    def log_prints(self) -> bool:
        """Whether ``print`` in this run becomes a log record (its own setting or its parent's)."""
        from nbflow.logging import should_log_prints

        return should_log_prints(self._run)


class EngineContext(RunContext):
    """The context of a flow run: ``flow``, ``flow_run``, ``parameters``, ``task_runner``.

    Inside a task it is the task run's flow run, as in Prefect.
    """

    __slots__ = ()

    @classmethod
    def get(cls) -> EngineContext | None:
        """The context of the flow run executing here, or None outside a flow run."""
        run = current_flow_run()
        return None if run is None else cls(run)

    @property
    def flow_run(self) -> FlowRun:
        return self._run

    @property
    def flow(self) -> Any:
        return self.flow_run.flow

    @property
    def parameters(self) -> dict[str, Any]:
        return self.flow_run.parameters

    @property
    def task_runner(self) -> Any:
        return self.flow_run.task_runner

    def __repr__(self) -> str:
        return f"EngineContext(flow_run={self.flow_run!r})"


FlowRunContext = EngineContext  # Prefect's name for the same class


class TaskRunContext(RunContext):
    """The context of a task run: ``task``, ``task_run``, ``parameters``.

    Inside a subflow called from a task's code it is that task's run, as in
    Prefect. A ``cache_key_fn`` receives one (with the arguments it keys on).
    """

    __slots__ = ("_parameters",)

    def __init__(self, run: Any, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(run)
        self._parameters = parameters

    @classmethod
    def get(cls) -> TaskRunContext | None:
        """The context of the task run executing here, or None outside a task run."""
        from nbflow.runtime.task_run import calling_task_run_var

        run = task_run_var.get()
        if run is None:
            run = calling_task_run_var.get()
        return None if run is None else cls(run)

    @property
    def task_run(self) -> TaskRun:
        return self._run

    @property
    def task(self) -> Any:
        return self.task_run.task

    @property
    def parameters(self) -> dict[str, Any]:
        given = self._parameters
        return dict(self.task_run.current_parameters) if given is None else given

    def __repr__(self) -> str:
        return f"TaskRunContext(task_run={self.task_run!r})"


class TagsContext:
    """The tags of ``with tags(...)`` blocks around the code here: ``current_tags``."""

    __slots__ = ("current_tags",)

    def __init__(self, current_tags: set[str] | None = None) -> None:
        self.current_tags: set[str] = set(current_tags or ())

    @classmethod
    def get(cls) -> TagsContext:
        """The tags active here (an empty set outside any ``tags`` block)."""
        return cls(set(tags_var.get()))


def get_run_context() -> EngineContext | TaskRunContext:
    """The context of the task run executing here, else of the flow run.

    Raises ``MissingContextError`` outside any flow or task run.
    """
    task_run = task_run_var.get()
    if task_run is not None:
        return TaskRunContext(task_run)
    flow_run = flow_run_var.get()
    if flow_run is not None:
        return EngineContext(flow_run)
    raise MissingContextError("No run context available. You are not in a flow or task run context.")


__all__ = [
    "current_flow_run",
    "current_task_run",
    "tags",
    "get_run_context",
    "RunContext",
    "EngineContext",
    "FlowRunContext",
    "TaskRunContext",
    "TagsContext",
]
