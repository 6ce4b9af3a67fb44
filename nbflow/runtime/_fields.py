"""Shared lookup for the ``nbflow.runtime`` modules."""

from __future__ import annotations

from typing import Any, Callable

# The type of what an attribute reads when no run is executing here (a fresh
# empty value each time); other attributes read None.
EMPTY: dict[str, Callable[[], Any]] = {"parameters": dict, "run_count": int, "tags": list}


def read(
    run: Any, fields: dict[str, Callable[[Any], Any]], name: str, module: str, empty: dict[str, Callable[[], Any]] = EMPTY
) -> Any:
    """``fields[name](run)``, its empty value outside a run; ``get_x`` reads ``x`` (as in Prefect)."""
    key = name[4:] if name.startswith("get_") else name
    if key not in fields:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    if run is None:
        value = empty[key]() if key in empty else None
    else:
        value = fields[key](run)
    return (lambda: value) if name.startswith("get_") else value
