"""The current task run: ``id``, ``name``, ``task_name``, ``parameters``, ``run_count``, ``tags``, ``map_index``.

Each is also readable as a function, ``get_name()`` etc., as in Prefect.
"""

from __future__ import annotations

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
}


def __getattr__(name: str) -> Any:
    return read(task_run_var.get(), _FIELDS, name, __name__)


__all__ = list(_FIELDS)
