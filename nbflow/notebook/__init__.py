"""nbflow in Jupyter: ``%load_ext nbflow``, the ``%%flow`` magic and the live run view.

After ``%load_ext nbflow``:

- ``%%flow [NAME] [--runner thread|process|dask|ray] [--max-workers N] [--no-view]``
  runs a cell as a flow run;
- every top-level flow run started in the notebook shows a live view (the
  DAG, a state grid, the task runs with their results, tracebacks and
  output; a Cancel button) -- ``%nbflow view off`` or
  ``nbflow.notebook.settings.auto_view = False`` turns that off;
- what tasks print lands in the cell that started their flow;
- ``%nbflow runs``, ``%nbflow view [RUN]``, ``%nbflow dag [RUN] [--save PATH]``;
- ``%nbflow cache on`` (or ``%%flow --cache``): tasks without a cache policy
  of their own cache on their inputs and code; ``%nbflow cache`` lists the
  entries, ``%nbflow cache clear [TASK]`` empties it;
- a flow run that did not complete keeps its completed task results as it
  ends (``NBFLOW_PERSIST_RESULTS=0`` turns that off), so ``%nbflow retry
  [RUN]`` re-runs only what did not complete;
- ``%nbflow runs [--flow NAME] [--state STATE]`` lists runs from the run
  history, across kernel restarts; ``%nbflow view RUN`` draws a past run;
- ``%nbflow plan CALL`` shows what a flow call would run and what the cache
  would serve, before it runs.

From Python: :func:`view`, :func:`dag_of`, :func:`runs`, :class:`RunView`,
:data:`settings`. Importing this package is cheap: ipywidgets is imported
only when a view is made.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from nbflow import settings as nbflow_settings
from nbflow.notebook.session import NotebookSettings, settings

if TYPE_CHECKING:
    from pathlib import Path

    from nbflow.notebook.reprs import RunsTable
    from nbflow.report.dag import Dag
    from nbflow.notebook.widget import RunView
    from nbflow.records import FlowRun


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbflow``: magics, live views, output routing, awaitable ``%%flow`` cells."""
    from nbflow.notebook import reprs
    from nbflow.notebook import session as sessions
    from nbflow.notebook.magics import NbflowMagics, flow_cell_transformer

    reprs.register(ipython)
    from nbflow import visualize
    from nbflow.report.dag import Dag

    visualize.drawer = Dag.from_trace  # Flow.visualize() / plan() draw as the live view does
    if os.environ.get("NBFLOW_PERSIST_RESULTS", "") == "":
        # Completed results are kept, so a flow run with failures can be retried (nbflow.retry).
        nbflow_settings.current.persist_results = True
    session = sessions.NotebookSession(ipython)
    sessions.install(session)
    ipython.register_magics(NbflowMagics(ipython, session))
    if session.widgets and settings.async_cells:
        cleanup = ipython.input_transformers_cleanup
        if flow_cell_transformer not in cleanup:
            cleanup.append(flow_cell_transformer)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbflow``: remove everything loading added (``%reload_ext`` works)."""
    from nbflow.notebook import reprs
    from nbflow.notebook import session as sessions
    from nbflow.notebook.magics import flow_cell_transformer

    sessions.uninstall()
    reprs.unregister(ipython)
    from nbflow import visualize

    visualize.drawer = None
    cleanup = ipython.input_transformers_cleanup
    while flow_cell_transformer in cleanup:
        cleanup.remove(flow_cell_transformer)
    manager = ipython.magics_manager
    manager.magics["cell"].pop("flow", None)
    manager.magics["line"].pop("nbflow", None)
    manager.registry.pop("NbflowMagics", None)


def _run(run: FlowRun | str | int | None) -> FlowRun:
    from nbflow.records import FlowRun, find_flow_run, last_flow_run

    if isinstance(run, FlowRun):
        return run
    found = last_flow_run() if run is None else find_flow_run(run)
    if found is None:
        raise LookupError("no flow run yet: run a flow first")
    return found


def view(run: FlowRun | str | int | None = None) -> RunView:
    """The run view (a widget) of a flow run: the last one, or one given by record, name, id or index."""
    from nbflow.notebook import session as sessions

    return sessions.get().view(_run(run))


def dag_of(run: FlowRun | str | int | None = None) -> Dag:
    """The DAG of a flow run (``.svg()``, ``.source``, ``.save(path)``), as it is now."""
    from nbflow.report.dag import Dag

    return Dag.from_flow_run(_run(run).root)


def export(run: Any, path: str | os.PathLike[str]) -> Path:
    """Write one offline HTML report of a flow run (header, DAG, grids, failures, logs, timings); its path.

    ``run``: a flow run, a run history record, or a run name, id or flow name.
    """
    from nbflow.report.export import export as write_report

    return write_report(run, path)


def runs(limit: int = 20) -> RunsTable:
    """Recent top-level flow runs: name, state, counts per state, duration."""
    from nbflow.notebook.reprs import RunsTable

    return RunsTable(limit)


def __getattr__(name: str) -> Any:
    if name == "RunView":
        from nbflow.notebook.widget import RunView

        return RunView
    if name == "Dag":
        from nbflow.report.dag import Dag

        return Dag
    raise AttributeError(f"module 'nbflow.notebook' has no attribute {name!r}")


__all__ = [
    "Dag",
    "NotebookSettings",
    "RunView",
    "dag_of",
    "export",
    "load_ipython_extension",
    "runs",
    "settings",
    "unload_ipython_extension",
    "view",
]
