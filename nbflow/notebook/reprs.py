"""nbflow's objects in a notebook: IPython's ``text/html`` formatters, the tables of runs and cache entries.

The pictures themselves are drawn by :mod:`nbflow.report.html` (the offline
report uses them too); its names are available here as well. Every name,
parameter, message and result is HTML-escaped, and results are summarised.
Imports neither IPython nor ipywidgets.
"""

from __future__ import annotations

import time
from typing import Any

from nbflow.futures import PrefectFuture, PrefectFutureList
from nbflow.records import FlowRun, TaskRun, flow_runs
from nbflow.report.html import *  # noqa: F403 -- the pictures, where the notebook layer has them
from nbflow.report.html import (
    FONT,
    chips,
    duration_text,
    esc,
    flow_run_html,
    future_html,
    future_list_html,
    state_badge,
    state_html,
    task_run_html,
    volatile,
)
from nbflow.report.html import __all__ as _html_names
from nbflow.report.model import CATEGORIES, counts_dict, state_code
from nbflow.states import State


# -- the table of recent runs ------------------------------------------------------------------
def html_of(value: Any) -> str | None:
    """The HTML picture of a future, future list, state, task run or flow run (None for anything else)."""
    for kind, draw in _DRAWERS:
        if isinstance(value, kind):
            return draw(value)
    return None


def register(ipython: Any) -> None:
    """Show nbflow's objects as HTML in this shell (IPython's ``text/html`` formatter)."""
    formatter = ipython.display_formatter.formatters["text/html"]
    for kind, draw in _DRAWERS:
        formatter.for_type(kind, draw)


def unregister(ipython: Any) -> None:
    """Undo :func:`register`."""
    formatter = ipython.display_formatter.formatters["text/html"]
    for kind, _ in _DRAWERS:
        formatter.type_printers.pop(kind, None)


class RunsTable:
    """Recent top-level flow runs (newest first): name, state, counts per state, duration.

    From the run history (so runs of earlier kernels are listed too) when it is on,
    else from this process's records; ``flow`` and ``state`` filter by flow name and
    by state name.
    """

    def __init__(self, limit: int = 20, flow: str | None = None, state: str | None = None) -> None:
        self.runs = _recent_runs(limit, flow, state)

    def _rows(self) -> list[tuple[Any, list[int]]]:
        rows = []
        for run in self.runs:
            counts = [0] * len(CATEGORIES)
            for task_run in list(run.task_runs):
                counts[state_code(task_run.state)] += 1
            rows.append((run, counts))
        return rows

    def _repr_html_(self) -> str:
        if not self.runs:
            return f'<div style="{FONT}">No flow runs yet.</div>'
        head = "".join(
            f'<th style="text-align:left;padding:2px 10px 2px 0">{h}</th>'
            for h in ("flow", "run", "state", "task runs", "duration", "started")
        )
        body = []
        for run, counts in self._rows():
            start = run.start_time
            started = time.strftime("%H:%M:%S", time.localtime(start)) if start else ""
            cells = (
                f"<code>{esc(run.flow_name)}</code>",
                volatile(run.name),
                state_badge(run.state),
                chips(counts),
                volatile(duration_text(run.duration)),
                volatile(started),
            )
            body.append(
                "<tr>" + "".join(f'<td style="text-align:left;padding:2px 10px 2px 0">{c}</td>' for c in cells) + "</tr>"
            )
        return f'<table class="nbflow-runs" style="{FONT};border-collapse:collapse"><tr>{head}</tr>{"".join(body)}</table>'

    def __repr__(self) -> str:
        if not self.runs:
            return "No flow runs yet."
        lines = []
        for run, counts in self._rows():
            summary = ", ".join(f"{k} {v}" for k, v in counts_dict(counts).items()) or "no task runs"
            lines.append(
                f"{run.flow_name:<20} {run.name:<16} {run.state.name:<10} {summary:<40} {duration_text(run.duration)}"
            )
        return "\n".join(lines)


class CacheTable:
    """What the result store holds per task: entries, size, last used (``%nbflow cache``)."""

    def __init__(self, summaries: list[Any], on: bool) -> None:
        self.summaries = sorted(summaries, key=lambda s: -s.bytes)
        self.on = on

    def _lines(self) -> list[tuple[str, str, str, str]]:
        return [
            (s.name, f"{s.entries:,}", size_text(s.bytes),
             time.strftime("%Y-%m-%d %H:%M", time.localtime(s.last_used)) if s.last_used else "")
            for s in self.summaries
        ]

    def _status(self) -> str:
        total = sum(s.bytes for s in self.summaries)
        entries = sum(s.entries for s in self.summaries)
        mode = "on: tasks without a policy cache on their inputs and code" if self.on else "off"
        return f"Notebook cache {mode}. {entries:,} entries, {size_text(total)}."

    def _repr_html_(self) -> str:
        head = "".join(f'<th style="text-align:left;padding:2px 10px 2px 0">{h}</th>'
                       for h in ("task", "entries", "size", "last used"))
        body = "".join(
            "<tr>" + "".join(f'<td style="text-align:left;padding:2px 10px 2px 0">{esc(c)}</td>' for c in line) + "</tr>"
            for line in self._lines()
        )
        table = f'<table class="nbflow-cache" style="border-collapse:collapse"><tr>{head}</tr>{body}</table>' if body else ""
        return f'<div style="{FONT}"><div>{esc(self._status())}</div>{table}</div>'

    def __repr__(self) -> str:
        lines = [self._status()]
        lines += [f"{name:<30} {entries:>8} {size:>10}  {used}" for name, entries, size, used in self._lines()]
        return "\n".join(lines)


def size_text(n: int) -> str:
    """``n`` bytes for people: 512 B, 1.5 KB, 20.3 MB, 4.0 GB."""
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _recent_runs(limit: int, flow: str | None, state: str | None) -> list[Any]:
    from nbflow import settings

    if settings.current.history:
        from nbflow import history

        return history.flow_runs(name=flow, state=state, limit=limit)
    wanted = state.lower() if state else None
    runs = [r for r in reversed(flow_runs()) if r.parent is None
            and (flow is None or r.flow_name == flow) and (wanted is None or r.state.name.lower() == wanted)]
    return runs[:limit]


# Most specific first: a PrefectFutureList is a list, a RemoteState a State.
_DRAWERS: tuple[tuple[type, Any], ...] = (
    (PrefectFutureList, future_list_html),
    (PrefectFuture, future_html),
    (State, state_html),
    (TaskRun, task_run_html),
    (FlowRun, flow_run_html),
)


__all__ = [*_html_names, "CacheTable", "RunsTable", "html_of", "register", "size_text", "unregister"]
