"""Context variables: the flow run and task run being executed, and active tags."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

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
def tags(*names: str) -> Iterator[frozenset[str]]:
    """Add tags to every task run and flow run created inside the block.

    >>> with tags("db", "nightly"):
    ...     my_task.submit()
    """
    new = tags_var.get() | frozenset(names)
    token = tags_var.set(new)
    try:
        yield new
    finally:
        tags_var.reset(token)


__all__ = ["current_flow_run", "current_task_run", "tags"]
