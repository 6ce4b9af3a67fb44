"""The current flow run: ``id``, ``name``, ``flow_name``, ``parameters``, ``run_count``, ``tags``."""

from __future__ import annotations

from typing import Any

from nbflow.context import current_flow_run


def _attribute(name: str) -> Any:
    run = current_flow_run()
    if name == "id":
        return str(run.id) if run is not None else None
    if name == "name":
        return run.name if run is not None else None
    if name == "flow_name":
        return run.flow_name if run is not None else None
    if name == "parameters":
        return dict(run.parameters) if run is not None else {}
    if name == "run_count":
        return run.run_count if run is not None else 0
    if name == "tags":
        return sorted(run.tags) if run is not None else []
    if name == "parent_flow_run_id":
        return str(run.parent.id) if run is not None and run.parent is not None else None
    raise AttributeError(f"nbflow.runtime.flow_run has no attribute {name!r}")


def __getattr__(name: str) -> Any:
    return _attribute(name)


def get_id() -> str | None:
    return _attribute("id")


def get_name() -> str | None:
    return _attribute("name")


def get_flow_name() -> str | None:
    return _attribute("flow_name")


def get_parameters() -> dict[str, Any]:
    return _attribute("parameters")


def get_run_count() -> int:
    return _attribute("run_count")


__all__ = ["id", "name", "flow_name", "parameters", "run_count", "tags", "parent_flow_run_id"]
