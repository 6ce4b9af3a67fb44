"""A flow run as one offline HTML report: ``run.export("report.html")``, ``%nbflow export RUN report.html``.

The file holds everything inline -- CSS in a ``<style>``, the DAG as inline
SVG, the state grids as PNG data URIs -- and makes no request: it opens from
a mail attachment, an archive or a machine with no network. It shows the
header (state, progress, counts), the run's facts, the DAG, the per-task
grids, timings per task and the slowest runs, every failure with its
traceback, and the tail of what runs printed and logged. Everything shown is
escaped (see :mod:`nbflow.report.html`). It reads the live records of this
process or a run history record alike.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from nbflow.report import html as reprs
from nbflow.report.dag import Dag
from nbflow.report.grid import grid_png
from nbflow.report.html import esc
from nbflow.report.model import (
    CRASHED,
    FAILED,
    RunModel,
    run_exception,
    state_code,
)

#: At most this many failures get their traceback in a report (the others are counted).
MAX_FAILURES = 200
#: At most this many runs' output tails are included, each cut to ``OUTPUT_TAIL`` characters.
MAX_OUTPUTS = 200
OUTPUT_TAIL = 4000

_CSS = """
body{margin:24px;font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;font-size:13px;color:#222}
h1{font-size:18px;margin:0 0 8px}h2{font-size:15px;margin:22px 0 6px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{text-align:left;padding:2px 12px 2px 0;vertical-align:top}
th{color:#555;font-weight:600}pre{margin:2px 0 10px;padding:6px 8px;background:#f4f4f4;border-radius:3px;
white-space:pre-wrap;font-size:12px;max-height:30em;overflow:auto}.muted{color:#6a6a6a}
.failure,.output{margin:6px 0 12px}
"""


def _resolve(run: Any) -> Any:
    """The top-level run of ``run``: a FlowRun, a history record, or a name, id or index to look up."""
    if hasattr(run, "task_runs") and hasattr(run, "states"):
        return run.root
    from nbflow.records import find_flow_run

    try:
        return find_flow_run(run).root
    except LookupError as here:
        if isinstance(run, int):
            raise
        from nbflow import history

        try:
            return history.flow_run(str(run)).root
        except LookupError:
            raise LookupError(f"{here} (nor in the run history); pass a flow run, a name or an id") from None


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "—"


def _traceback(run: Any) -> str:
    """A failed run's traceback: from its exception (live records) or as the history kept it."""
    exc = run_exception(run.states[-1])
    if exc is not None:
        return reprs.traceback_text(exc, limit=20_000)
    return getattr(run, "traceback", None) or reprs.failure_line(run) or "(no traceback was kept)"


def _facts(flow_run: Any) -> str:
    rows = [
        ("flow", f"<code>{esc(flow_run.flow_name)}</code>"),
        ("run", f"<code>{esc(flow_run.name)}</code> <span class=\"muted\">{esc(flow_run.id)}</span>"),
        ("state", reprs.state_badge(flow_run.state) + (f" {esc(flow_run.state.message)}" if flow_run.state.message else "")),
        ("started", esc(_when(flow_run.start_time))),
        ("ended", esc(_when(flow_run.end_time))),
        ("duration", esc(reprs.duration_text(flow_run.duration))),
        ("parameters", esc(reprs.inputs_text(flow_run.parameters, limit=600)) or '<span class="muted">none</span>'),
    ]
    return "<table class=\"facts\">" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _timings(model: RunModel, slowest: int = 10) -> str:
    """Per task: runs, total, median and longest duration; then the slowest runs."""
    head = "<tr><th>task</th><th>runs</th><th>total</th><th>median</th><th>longest</th></tr>"
    body, timed = [], []
    for group in list(model.groups):
        pairs = [(d, run) for run in group.runs if (d := run.duration) is not None]
        timed.extend(pairs)
        durations = [d for d, _ in pairs]
        cells = [f"<code>{esc(model.group_title(group))}</code>", f"{len(group.runs):,}"]
        if durations:
            cells += [reprs.duration_text(sum(durations)), reprs.duration_text(statistics.median(durations)),
                      reprs.duration_text(max(durations))]
        else:
            cells += ["—"] * 3
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    timed.sort(key=lambda pair: -pair[0])
    slow = "".join(
        f"<tr><td><code>{esc(run.name)}</code></td><td>{esc(reprs.duration_text(d))}</td>"
        f"<td>{reprs.state_badge(run.states[-1])}</td></tr>"
        for d, run in timed[:slowest]
    )
    table = f'<table class="timings">{head}{"".join(body)}</table>'
    return table + (f'<p class="muted">Slowest task runs</p><table class="slowest">{slow}</table>' if slow else "")


def _failures(model: RunModel) -> str:
    failed = [run for group in list(model.groups) for run in group.runs
              if state_code(run.states[-1]) in (FAILED, CRASHED)]
    if not failed:
        return '<p class="muted">No task run failed.</p>'
    parts = []
    for run in failed[:MAX_FAILURES]:
        where = f"task <code>{esc(run.task.name)}</code>"
        if run.map_index is not None:
            where += f", map index {run.map_index}"
        parts.append(
            f'<div class="failure"><b><code>{esc(run.name)}</code></b> {reprs.state_badge(run.states[-1])} '
            f'<span class="muted">{where}; inputs {esc(reprs.inputs_text(run.parameters))}</span>'
            f'<pre class="traceback">{esc(_traceback(run))}</pre></div>'
        )
    if len(failed) > MAX_FAILURES:
        parts.append(f'<p class="muted">… and {len(failed) - MAX_FAILURES:,} more failed task runs.</p>')
    return "".join(parts)


def _outputs(model: RunModel) -> str:
    shown, parts = 0, []
    for group in list(model.groups):
        for run in group.runs:
            output = run.output
            if output is None or not len(output):
                continue
            shown += 1
            if shown > MAX_OUTPUTS:
                continue
            parts.append(f'<div class="output"><b><code>{esc(run.name)}</code></b>'
                         f"{reprs.output_html(output, OUTPUT_TAIL)}</div>")
    if not shown:
        return '<p class="muted">No task run printed or logged anything.</p>'
    if shown > MAX_OUTPUTS:
        parts.append(f'<p class="muted">… and the output of {shown - MAX_OUTPUTS:,} more task runs.</p>')
    return "".join(parts)


def report_html(run: Any) -> str:
    """The whole offline report of a flow run (see the module docstring), as one HTML document."""
    flow_run = _resolve(run)
    model = RunModel.of(flow_run)
    grids = [(model.group_title(g), g.counts(), grid_png(g.codes)) for g in list(model.groups)]
    every_subflow = range(len(model.subflows))  # a report draws every subflow open
    title = f"nbflow report: {flow_run.flow_name} {flow_run.name}"
    sections = [
        f"<h1>{esc(title)}</h1>",
        reprs.header_html(model),
        _facts(flow_run),
        "<h2>Graph</h2>",
        Dag.from_model(model, complete=True, expanded=every_subflow).svg()
        if model.groups or model.subflows else '<p class="muted">No task runs.</p>',
        "<h2>Task runs</h2>",
        reprs.grids_html(grids),
        "<h2>Timings</h2>",
        _timings(model),
        "<h2>Failures</h2>",
        _failures(model),
        "<h2>Output and logs</h2>",
        _outputs(model),
        f'<p class="muted">Written by nbflow on {esc(_when(time.time()))}.</p>',
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>\n"
    )


def export(run: Any, path: str | Path) -> Path:
    """Write the offline HTML report of ``run`` to ``path``; return the path.

    ``run`` is a flow run record (``nbflow.runs``), a run history record
    (``nbflow.history``), or a run name, id (prefix) or flow name looked up
    in this process's runs and then in the run history. Its top-level run is
    reported, each subflow as a node of the DAG drawn open, its task runs in
    grids of their own.
    """
    target = Path(path).expanduser()
    text = report_html(run)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


__all__ = ["MAX_FAILURES", "MAX_OUTPUTS", "OUTPUT_TAIL", "export", "report_html"]
