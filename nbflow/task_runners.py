"""Task runners: where submitted task runs execute (``from nbflow.task_runners import ...``).

``ThreadPoolTaskRunner`` (the default) and ``ProcessPoolTaskRunner`` run on
this machine; ``DaskTaskRunner`` and ``RayTaskRunner`` on a cluster. Their
code lives in :mod:`nbflow.runners`; the heavy ones are imported on first
use, so ``import nbflow`` never imports Dask or Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

from nbflow.runners.base import TaskRunner
from nbflow.runners.threads import ThreadPoolTaskRunner

_LAZY = {
    "ProcessPoolTaskRunner": "nbflow.runners.processes",
    "DaskTaskRunner": "nbflow.runners.dask",
    "RayTaskRunner": "nbflow.runners.ray",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbflow.task_runners' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = ["TaskRunner", "ThreadPoolTaskRunner", *_LAZY]
