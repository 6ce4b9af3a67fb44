"""nbflow in Jupyter: ``%load_ext nbflow``, the ``%%flow`` magic and the live run view.

After ``%load_ext nbflow``:

- ``%%flow [NAME] [--runner thread|process|dask|ray] [--max-workers N] [--no-view]``
  runs a cell as a flow run;
- every top-level flow run started in the notebook shows a live view (the
  DAG, a state grid, the task runs with their results, tracebacks and
  output; a Cancel button) -- ``%nbflow view off`` or
  ``nbflow.notebook.settings.auto_view = False`` turns that off;
- what tasks print lands in the cell that started their flow;
- ``%nbflow runs``, ``%nbflow view [RUN]``, ``%nbflow dag [RUN] [--save PATH]``.

From Python: :func:`view`, :func:`dag_of`, :func:`runs`, :class:`RunView`,
:data:`settings`. Importing this package is cheap: ipywidgets is imported
only when a view is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nbflow.notebook.session import NotebookSettings, settings

if TYPE_CHECKING:
    from nbflow.notebook.dag import Dag
    from nbflow.notebook.reprs import RunsTable
    from nbflow.notebook.widget import RunView
    from nbflow.records import FlowRun


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbflow``: magics, live views, output routing, awaitable ``%%flow`` cells."""
    from nbflow.notebook import reprs
    from nbflow.notebook import session as sessions
    from nbflow.notebook.magics import NbflowMagics, flow_cell_transformer

    reprs.register(ipython)
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
    cleanup = ipython.input_transformers_cleanup
    while flow_cell_transformer in cleanup:
        cleanup.remove(flow_cell_transformer)
    manager = ipython.magics_manager
    manager.magics["cell"].pop("flow", None)
    manager.magics["line"].pop("nbflow", None)
    manager.registry.pop("NbflowMagics", None)


def _run(run: "FlowRun | str | int | None") -> "FlowRun":
    from nbflow.records import FlowRun, find_flow_run, last_flow_run

    if isinstance(run, FlowRun):
        return run
    found = last_flow_run() if run is None else find_flow_run(run)
    if found is None:
        raise LookupError("no flow run yet: run a flow first")
    return found


def view(run: "FlowRun | str | int | None" = None) -> "RunView":
    """The run view (a widget) of a flow run: the last one, or one given by record, name, id or index."""
    from nbflow.notebook import session as sessions

    return sessions.get().view(_run(run))


def dag_of(run: "FlowRun | str | int | None" = None) -> "Dag":
    """The DAG of a flow run (``.svg()``, ``.source``, ``.save(path)``), as it is now."""
    from nbflow.notebook.dag import Dag
    
    return Dag.from_flow_run(_run(run).root)


def runs(limit: int = 20) -> "RunsTable":
    """Recent top-level flow runs: name, state, counts per state, duration."""
    from nbflow.notebook.reprs import RunsTable

    return RunsTable(limit)


def __getattr__(name: str) -> Any:
    if name == "RunView":
        from nbflow.notebook.widget import RunView

        return RunView
    if name == "Dag":
        from nbflow.notebook.dag import Dag

        return Dag
    raise AttributeError(f"module 'nbflow.notebook' has no attribute {name!r}")


__all__ = [
    "Dag",
    "NotebookSettings",
    "RunView",
    "dag_of",
    "load_ipython_extension",
    "runs",
    "settings",
    "unload_ipython_extension",
    "view",
]
