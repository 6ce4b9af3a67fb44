"""Retry only what failed: a new run of a flow that reuses what its original run completed.

>>> import nbflow
>>> nbflow.retry("etl")          # the latest run of the flow "etl", from history
>>> nbflow.retry(run)            # a FlowRun, a history record, a run name or an id

The retry is a new flow run of the same flow (as it is defined now) with the
same parameters, linked to the original (``flow_run.retry_of``). Every task
run that completed in the original, and whose upstream runs were all reused,
ends at once in state ``Cached`` with the original's stored result; the
others (failed, crashed, cancelled, never run) execute with today's code, and
so does whatever depends on them. Runs are matched by task name and by which
run of the task they are in their flow run (Prefect's ``dynamic_key``), so
the flow must make its task runs in the same order, as a flow over the same
parameters does.

Results are there to reuse when the original run kept them: with the
notebook extension loaded (``settings.persist_results``), a flow run that did
not complete stores its completed results as it ends (``cache.keep_for_retry``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from nbflow import states as S
from nbflow.context import retry_var
from nbflow.records import FlowRun, TaskRun
from nbflow.store import cache

logger = logging.getLogger("nbflow")

REUSABLE = ("Completed", "Cached")


class Reuse:
    """Serves the task runs of a retry from the results of the original run."""

    def __init__(self, original_name: str, results: dict[str, str]) -> None:
        self.original_name = original_name
        self.results = results  # "task name#dynamic key" -> result store key
        self.served = 0
        self._lock = threading.Lock()

    def serve(self, run: TaskRun) -> bool:
        """End ``run`` Cached with the original's result if it may be reused; True if it was."""
        key = self.results.get(f"{run.task.name}#{run.dynamic_key}")
        if key is None or any(up.state.name != "Cached" for up in run.upstream):
            return False
        found = cache.read(cache.store_at(), key)
        if found is None:  # evicted or cleared since: compute it again
            return False
        if not run.claim():
            return False
        run.result_key = key
        run.cache = cache.CacheOutcome(key, True)
        run.finish(S.Cached(data=found[0], message=f"Reused from flow run {self.original_name!r}."))
        with self._lock:
            self.served += 1
        return True


def retry(run: Any = None, **parameters: Any) -> Any:
    """Run the flow of ``run`` again, re-executing only the task runs that did not complete.

    ``run`` is a FlowRun, a run-history record, a flow run id or name, or a flow
    name (its latest run); by default the latest flow run. Returns what calling
    the flow returns. ``parameters`` override the original's.
    """
    original = _original(run)
    flow = _flow_of(original)
    values = _parameters_of(original)
    values.update(parameters)
    reuse = Reuse(original.name, _reusable_results(original))
    token = retry_var.set((original, reuse))
    try:
        return flow(**values)
    finally:
        retry_var.reset(token)


def _original(run: Any) -> Any:
    if isinstance(run, FlowRun) or hasattr(run, "task_runs"):
        return run
    from nbflow import history

    if run is None:
        found = history.flow_runs(limit=1)
        if not found:
            raise LookupError("No flow run to retry: run a flow first.")
        return found[0]
    return history.flow_run(str(run))


def _flow_of(original: Any) -> Any:
    from nbflow.flows import flow_named

    flow = flow_named(original.flow_name)
    if flow is None and isinstance(original, FlowRun):
        flow = original.flow
    if flow is None:
        raise LookupError(
            f"Cannot retry flow run {original.name!r}: no flow named {original.flow_name!r} is defined "
            "in this process. Define it again (run the cell or import the module that defines it), then retry."
        )
    return flow


def _parameters_of(original: Any) -> dict[str, Any]:
    if isinstance(original, FlowRun):
        return dict(original.parameters)
    values = original.parameter_values()
    if values is None:
        raise ValueError(
            f"Cannot retry flow run {original.name!r}: its parameters were not stored (they could not be "
            "pickled). Pass them to retry(run, name=value, ...)."
        )
    return values


def _reusable_results(original: Any) -> dict[str, str]:
    """``"task name#dynamic key" -> result key`` for the task runs of ``original`` that completed."""
    results = {}
    for task_run in original.task_runs:
        if task_run.state.name not in REUSABLE:
            continue
        name = task_run.task.name if isinstance(task_run, TaskRun) else task_run.task_name
        # A run executed on a worker stored its result there, under its own id.
        results[f"{name}#{task_run.dynamic_key}"] = task_run.result_key or f"run-{task_run.id}"
    return results


__all__ = ["REUSABLE", "Reuse", "retry"]
