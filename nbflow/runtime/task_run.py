"""The current task run: ``id``, ``name``, ``task_name``, ``parameters``, ``run_count``, ``tags``, ``map_index``.

Inside a subflow called from a task's code, as in Prefect, that is the task
run whose code called it (its flow's own task runs read their own).

``api_url`` and ``ui_url`` are None (Prefect's links to its server; nbflow has none).

Each is also readable as a function, ``get_name()`` etc., as in Prefect.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from nbflow.context import task_run_var
from nbflow.runtime._fields import read

_FIELDS = {
    "id": lambda run: str(run.id),
    "name": lambda run: run.name,
    "task_name": lambda run: run.task.name,
    "parameters": lambda run: dict(run.current_parameters),
    "run_count": lambda run: run.run_count,
    "tags": lambda run: sorted(run.tags),
    "map_index": lambda run: run.map_index,
    "api_url": lambda run: None,
    "ui_url": lambda run: None,
}


#: The task run whose code called the flow running here, if one did (set by the flow's lifecycle).
calling_task_run_var: ContextVar[Any] = ContextVar("nbflow_calling_task_run", default=None)


def __getattr__(name: str) -> Any:
    run = task_run_var.get()
    return read(run if run is not None else calling_task_run_var.get(), _FIELDS, name, __name__)


__all__ = list(_FIELDS)
