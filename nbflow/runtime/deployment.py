"""The current deployment, as Prefect's ``prefect.runtime.deployment``: ``id``, ``flow_run_id``,
``parameters``, ``name``, ``version``.

nbflow runs flows in the calling process and has no deployments: ``id``,
``name`` and ``version`` are None and ``parameters`` is ``{}``; ``flow_run_id``
is the id of the flow run executing here (None outside one).
"""

from __future__ import annotations

from typing import Any

from nbflow.context import current_flow_run
from nbflow.runtime._fields import read

_FIELDS = {
    "id": lambda run: None,
    "flow_run_id": lambda run: str(run.id),
    "parameters": lambda run: {},
    "name": lambda run: None,
    "version": lambda run: None,
}


def __getattr__(name: str) -> Any:
    return read(current_flow_run(), _FIELDS, name, __name__, {"parameters": dict})


__all__ = list(_FIELDS)
