"""The current flow run: ``id``, ``name``, ``flow_name``, ``flow_version``, ``parameters``,
``run_count``, ``tags``, ``parent_flow_run_id``, ``root_flow_run_id``.

Each is also readable as a function, ``get_name()`` etc., as in Prefect. Ids
are strings, as in Prefect; ``root_flow_run_id`` is the id of the top-level
flow run (the run's own id when it is not a subflow).
"""

from __future__ import annotations

from typing import Any

from nbflow.context import current_flow_run
from nbflow.runtime._fields import read

_FIELDS = {
    "id": lambda run: str(run.id),
    "name": lambda run: run.name,
    "flow_name": lambda run: run.flow_name,
    "flow_version": lambda run: run.flow.version,
    "parameters": lambda run: dict(run.parameters),
    "run_count": lambda run: run.run_count,
    "tags": lambda run: sorted(run.tags),
    "parent_flow_run_id": lambda run: str(run.parent.id) if run.parent is not None else None,
    "root_flow_run_id": lambda run: str(run.root.id),
}


def __getattr__(name: str) -> Any:
    return read(current_flow_run(), _FIELDS, name, __name__)


__all__ = list(_FIELDS)
