"""The current flow run: ``id``, ``name``, ``flow_name``, ``flow_version``, ``parameters``,
``run_count``, ``tags``, ``scheduled_start_time``, ``parent_flow_run_id``, ``root_flow_run_id``,
and Prefect's server-side fields ``parent_deployment_id``, ``api_url`` and ``ui_url``, which
are None here (no server, no deployments), and ``job_variables``, ``{}`` in a run as in Prefect.

Each is also readable as a function, ``get_name()`` etc., as in Prefect. Ids
are strings, as in Prefect; ``root_flow_run_id`` is the id of the top-level
flow run (the run's own id when it is not a subflow). ``scheduled_start_time``
is when the run started (now, outside a run, as in Prefect).
"""

from __future__ import annotations

import datetime
from typing import Any

from nbflow.context import current_flow_run
from nbflow.runtime._fields import EMPTY, read

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
    "scheduled_start_time": lambda run: _when(run.start_time),
    "parent_deployment_id": lambda run: None,
    "job_variables": lambda run: {},
    "api_url": lambda run: None,
    "ui_url": lambda run: None,
}


def _when(seconds: float | None) -> datetime.datetime:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now if seconds is None else datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


_EMPTY = {**EMPTY, "scheduled_start_time": lambda: _when(None)}


def __getattr__(name: str) -> Any:
    return read(current_flow_run(), _FIELDS, name, __name__, _EMPTY)


__all__ = list(_FIELDS)
