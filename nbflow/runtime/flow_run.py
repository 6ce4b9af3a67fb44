"""The current flow run: ``id``, ``name``, ``flow_name``, ``parameters``, ``run_count``, ``tags``, ``parent_flow_run_id``.

Each is also readable as a function, ``get_name()`` etc., as in Prefect.
"""

from __future__ import annotations

from typing import Any

from nbflow.context import current_flow_run
from nbflow.runtime._fields import read

_FIELDS = {
    "id": lambda run: str(run.id),
    "name": lambda run: run.name,
    "flow_name": lambda run: run.flow_name,
    "parameters": lambda run: dict(run.parameters),
    "run_count": lambda run: run.run_count,
    "tags": lambda run: sorted(run.tags),
    "parent_flow_run_id": lambda run: str(run.parent.id) if run.parent is not None else None,
}


def __getattr__(name: str) -> Any:
    return read(current_flow_run(), _FIELDS, name, __name__)


__all__ = list(_FIELDS)
