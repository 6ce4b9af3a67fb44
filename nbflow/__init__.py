"""nbflow: Prefect 3's flows, tasks and futures, with no server, and a live run view in Jupyter.

>>> from nbflow import flow, task
>>> @task
... def square(x):
...     return x * x
>>> @flow
... def squares(n):
...     return square.map(range(n)).result()
>>> squares(4)
[0, 1, 4, 9]

In a notebook, ``%load_ext nbflow`` adds the ``%%flow`` cell magic and the live run view.
"""

from typing import Any

from nbflow import runs  # noqa: F401  (nbflow.runs: the records of recent runs)
from nbflow.annotations import allow_failure, opaque, quote, unmapped
from nbflow.context import tags
from nbflow.flows import Flow, flow
from nbflow.futures import PrefectFuture, PrefectFutureList, as_completed, wait
from nbflow.logging import get_run_logger
from nbflow.states import State
from nbflow.tasks import Task, task

__version__ = "0.1.0"


def retry(run: Any = None, **parameters: Any) -> Any:
    """Run a flow run's flow again, re-executing only the task runs that did not complete.

    ``run``: a FlowRun, a run-history record, a run id or name, or a flow name (its
    latest run); by default the latest run. See :mod:`nbflow.store.retry`.
    """
    from nbflow.store.retry import retry as retry_run

    return retry_run(run, **parameters)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbflow``: register the magics and the live run view."""
    from nbflow.notebook import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbflow`` (and ``%reload_ext``): remove what loading added."""
    from nbflow.notebook import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "flow",
    "task",
    "Flow",
    "Task",
    "unmapped",
    "allow_failure",
    "quote",
    "opaque",
    "tags",
    "get_run_logger",
    "wait",
    "as_completed",
    "PrefectFuture",
    "PrefectFutureList",
    "State",
    "retry",
    "load_ipython_extension",
    "unload_ipython_extension",
]
