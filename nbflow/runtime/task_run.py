"""The current task run: ``id``, ``name``, ``task_name``, ``parameters``, ``run_count``, ``tags``."""

from __future__ import annotations

from typing import Any

from nbflow.context import task_run_var


def _attribute(name: str) -> Any:
    run = task_run_var.get()
    if name == "id":
        return str(run.id) if run is not None else None
    if name == "name":
        return run.name if run is not None else None
    if name == "task_name":
        return run.task.name if run is not None else None
    if name == "parameters":
        return dict(run.parameters) if run is not None else {}
    if name == "run_count":
        return run.run_count if run is not None else 0
    if name == "tags":
        return sorted(run.tags) if run is not None else []
    if name == "map_index":
        return run.map_index if run is not None else None
    raise AttributeError(f"nbflow.runtime.task_run has no attribute {name!r}")


def __getattr__(name: str) -> Any:
    return _attribute(name)


def get_id() -> str | None:
    return _attribute("id")


def get_name() -> str | None:
    return _attribute("name")


def get_task_name() -> str | None:
    return _attribute("task_name")


def get_parameters() -> dict[str, Any]:
    return _attribute("parameters")


def get_run_count() -> int:
    return _attribute("run_count")


__all__ = ["id", "name", "task_name", "parameters", "run_count", "tags", "map_index"]
