"""Shared lookup for the ``nbflow.runtime`` modules."""

from __future__ import annotations

import datetime
import os
from typing import Any, Callable

# The type of what an attribute reads when no run is executing here (a fresh
# empty value each time); other attributes read None.
EMPTY: dict[str, Callable[[], Any]] = {"parameters": dict, "run_count": int, "tags": list}

# How a value set in the environment is read, by the type of the value it stands in for (Prefect's casts).
_CASTS: dict[type, Callable[[str], Any]] = {
    bool: lambda text: text.lower() == "true",
    int: int,
    float: float,
    str: str,
    datetime.datetime: lambda text: datetime.datetime.fromisoformat(text).astimezone(datetime.timezone.utc),
    type(None): str,
}


def read(
    run: Any, fields: dict[str, Callable[[Any], Any]], name: str, module: str, empty: dict[str, Callable[[], Any]] = EMPTY
) -> Any:
    """``fields[name](run)``, its empty value outside a run; ``get_x`` reads ``x`` (as in Prefect).

    As in Prefect, ``NBFLOW__RUNTIME__{MODULE}__{NAME}`` in the environment
    (``NBFLOW__RUNTIME__FLOW_RUN__NAME``) stands in for the value, read as its type.
    """
    key = name[4:] if name.startswith("get_") else name
    mocked = os.environ.get(f"NBFLOW__RUNTIME__{module.rsplit('.', 1)[-1].upper()}__{key.upper()}")
    if key not in fields:
        if mocked is not None:
            return mocked
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    if run is None:
        value = empty[key]() if key in empty else None
    else:
        value = fields[key](run)
    if mocked is not None:
        cast = _CASTS.get(type(value))
        if cast is None:
            raise ValueError(
                "This runtime context attribute cannot be mocked using an"
                " environment variable. Please use monkeypatch instead."
            )
        value = cast(mocked)
    return (lambda: value) if name.startswith("get_") else value
