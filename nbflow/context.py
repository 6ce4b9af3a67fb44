"""Context variables: the flow run and task run being executed, and active tags."""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from nbflow.runs import FlowRun, TaskRun

task_run_var: ContextVar["TaskRun | None"] = ContextVar("nbflow_task_run", default=None)
flow_run_var: ContextVar["FlowRun | None"] = ContextVar("nbflow_flow_run", default=None)
tags_var: ContextVar[frozenset[str]] = ContextVar("nbflow_tags", default=frozenset())


def current_task_run() -> "TaskRun | None":
    """The task run executing in this thread or coroutine, if any."""
    return task_run_var.get()


def current_flow_run() -> "FlowRun | None":
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


__all__ = ["current_task_run", "current_flow_run", "tags"]
