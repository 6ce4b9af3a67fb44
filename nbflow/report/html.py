"""HTML pictures of futures, future lists, states, task runs and flow runs.

Used by the notebook layer (its ``text/html`` formatters and the run view)
and by the offline report (:mod:`nbflow.report.export`). Every name, parameter, message and result is HTML-escaped here, and
results are summarised (type, shape or length, a short repr), never shipped
whole. Parts that change from one execution to the next (generated run
names, durations) are wrapped in ``<span class="nbflow-v">`` so a notebook
test can mask them with one regex. Imports neither IPython nor ipywidgets.
"""

from __future__ import annotations

import base64
import html
import os
import sys
import traceback
from collections.abc import Iterable
from typing import Any

from nbflow.futures import PrefectFuture
from nbflow.logging import log_level
from nbflow.report.grid import GridImage, grid_png
from nbflow.report.model import (
    CACHED,
    CANCELLED,
    CATEGORIES,
    COMPLETED,
    CRASHED,
    DONE_CODES,
    FAILED,
    NOT_READY,
    Category,
    RunModel,
    category,
    run_exception,
    short_repr,
    state_code,
    summarize,
)
from nbflow.records import FlowRun, TaskRun
from nbflow.states import State

FONT = "font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;font-size:13px;line-height:1.45"
_MUTED = "color:#6a6a6a"
_PRE = (
    "margin:2px 0 6px;padding:6px 8px;background:rgba(127,127,127,.08);border-radius:3px;"
    "max-height:18em;overflow:auto;white-space:pre-wrap;font-size:12px"
)
VOLATILE = "nbflow-v"


def esc(value: Any) -> str:
    """HTML-escape text (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def volatile(text: str) -> str:
    """Escaped text marked as changing between executions (run names, durations)."""
    return f'<span class="{VOLATILE}">{esc(text)}</span>'


def _text_colour(background: str) -> str:
    r, g, b = (int(background[i : i + 2], 16) for i in (1, 3, 5))
    return "#222" if 0.299 * r + 0.587 * g + 0.114 * b > 160 else "#fff"


def badge(cat: Category, label: str | None = None) -> str:
    """A small coloured label naming a state."""
    return (
        f'<span style="background:{cat.colour};color:{_text_colour(cat.colour)};border-radius:3px;'
        f'padding:0 6px;font-size:11.5px;white-space:nowrap">{esc(label or cat.name)}</span>'
    )


def state_badge(state: State) -> str:
    """A badge for a state, under the state's own name (``Cached``, ``TimedOut``, ...)."""
    return badge(category(state), state.name)


def chips(counts: Iterable[int]) -> str:
    """``Completed 9 · Failed 1`` with coloured dots, for non-zero counts.

    Each count is an element with ``data-state`` and ``data-count``, for tests
    and scripts reading the page.
    """
    parts = []
    for code, n in enumerate(counts):
        if n:
            cat = CATEGORIES[code]
            parts.append(
                f'<span data-state="{cat.name}" data-count="{n}" style="white-space:nowrap">'
                f'<span style="color:{cat.colour}">&#9632;</span> {cat.name} {n:,}</span>'
            )
    return " &middot; ".join(parts) or f'<span style="{_MUTED}">no task runs yet</span>'


def duration_text(seconds: float | None) -> str:
    """``0.42 s``, ``12 s``, ``3 min 05 s``."""
    if seconds is None:
        return "not started"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def grid_img(image: GridImage, title: str = "") -> str:
    """An ``<img>`` of a grid PNG, inline as a data URI."""
    data = base64.b64encode(image.png).decode()
    return (
        f'<img src="data:image/png;base64,{data}" width="{image.width}" height="{image.height}" '
        f'alt="{esc(title)}" title="{esc(title)}" style="image-rendering:pixelated;max-width:100%">'
    )


# -- values and states --------------------------------------------------------------------
def value_html(value: Any) -> str:
    """A summary of a result: type, shape or length, and a short repr."""
    s = summarize(value)
    facts = [f"<code>{esc(s.type)}</code>"]
    if s.shape is not None:
        facts.append(f"shape {esc(s.shape)}")
    if s.length is not None:
        facts.append(f"len {s.length:,}")
    return " &middot; ".join(facts) + f'<pre style="{_PRE}">{esc(s.text)}</pre>'


def _exception_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def state_html(state: State) -> str:
    """A state: badge, message, and its result or exception."""
    parts = [f'<div class="nbflow-state-card" style="{FONT}">{state_badge(state)}']
    if state.message:
        parts.append(f" {esc(state.message)}")
    exc = run_exception(state)
    if state.is_completed():
        parts.append(f"<div>{value_html(state.data)}</div>")
    elif exc is not None:
        parts.append(f'<pre style="{_PRE}">{esc(_exception_line(exc))}</pre>')
    parts.append("</div>")
    return "".join(parts)


# -- task runs and futures ------------------------------------------------------------------
class _Upstream:
    """Stands for a future in a run's parameters: shown as the value its run produced."""

    __slots__ = ("run",)

    def __init__(self, run: TaskRun) -> None:
        self.run = run

    def __repr__(self) -> str:
        state = self.run.states[-1]
        if state.is_completed():
            return short_repr(state.data, 100)
        return f"<{state.name} {self.run.name}>"


def resolved(value: Any, depth: int = 2) -> Any:
    """``value`` with its futures replaced by what their runs produced (for showing, never for use).

    Lists, tuples, sets and dicts are looked into ``depth`` levels deep;
    anything else is shown as it is.
    """
    if isinstance(value, PrefectFuture):
        return _Upstream(value.task_run)
    if depth <= 0:
        return value
    if isinstance(value, dict):
        return {k: resolved(v, depth - 1) for k, v in list(value.items())[:50]}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [resolved(v, depth - 1) for v in list(value)[:50]]
        return items if isinstance(value, list) else tuple(items)
    return value


def inputs_text(parameters: dict[str, Any], limit: int = 160) -> str:
    """``x=3, values=[1, 4, 9, …]``: a run's inputs in one line, futures shown as their results."""
    text = ", ".join(f"{k}={short_repr(resolved(v), 80)}" for k, v in list(parameters.items())[:12])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failure_line(run: TaskRun) -> str:
    """``ValueError: bad item`` for a run that failed (its state's message otherwise, or "")."""
    state = run.states[-1]
    exc = run_exception(state)
    return _exception_line(exc) if exc is not None else (state.message or "")


def _parameters_html(parameters: dict[str, Any]) -> str:
    if not parameters:
        return f'<span style="{_MUTED}">no parameters</span>'
    rows = "".join(
        f'<tr><td style="text-align:left;padding:0 8px 0 0;vertical-align:top"><code>{esc(k)}</code></td>'
        f'<td style="text-align:left"><code>{esc(short_repr(resolved(v), 160))}</code></td></tr>'
        for k, v in list(parameters.items())[:30]
    )
    more = f'<div style="{_MUTED}">… {len(parameters) - 30} more</div>' if len(parameters) > 30 else ""
    return f'<table class="nbflow-params" style="border-collapse:collapse">{rows}</table>{more}'


_NBFLOW_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cell_name(filename: str) -> str | None:
    """``Cell In[3]`` for code IPython compiled from a cell, as IPython's own tracebacks say it."""
    ipython_module = sys.modules.get("IPython")  # never imported here: only asked if loaded
    shell = ipython_module.get_ipython() if ipython_module is not None else None
    compiler = getattr(shell, "compile", None)
    label = compiler.format_code_name(filename) if hasattr(compiler, "format_code_name") else None
    return f"{label[0]} {label[1]}" if label else None


class _UserStack(traceback.StackSummary):
    """The user's frames only (nbflow's hidden), cells named ``Cell In[n], line k``."""

    def format_frame_summary(self, frame_summary: traceback.FrameSummary) -> str:
        cell = _cell_name(frame_summary.filename)
        if cell is None:
            return super().format_frame_summary(frame_summary)
        line = f"  {cell}, line {frame_summary.lineno}, in {frame_summary.name}\n"
        if frame_summary.line:
            line += f"    {frame_summary.line.strip()}\n"
        return line


def traceback_text(exc: BaseException, limit: int = 6000) -> str:
    """The traceback of an exception as the user wants it: their frames, cells as IPython names them.

    nbflow's own frames (the engine, ``.result()`` re-raises) are left out
    unless nothing else is left; chained exceptions are kept. Long ones keep their end.
    """
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
    pending, seen = [report], set()
    while pending:
        part = pending.pop()
        if id(part) in seen:
            continue
        seen.add(id(part))
        mine = [f for f in part.stack if not f.filename.startswith(_NBFLOW_DIR)]
        part.stack = _UserStack(mine or list(part.stack))
        pending.extend(p for p in (part.__cause__, part.__context__) if p is not None)
    text = "".join(report.format())
    return text if len(text) <= limit else "…" + text[-limit:]


# How a log line of each level looks: warnings amber, errors red and bold, the rest as printed text.
_LEVEL_STYLES = {
    "WARNING": "color:#8a5a00;background:rgba(232,163,61,.14)",
    "ERROR": "color:#b3261e;font-weight:600",
    "CRITICAL": "color:#b3261e;font-weight:600",
}


def output_html(output: Any, tail: int = 8000) -> str:
    """What a run printed and logged, in order, its last ``tail`` characters.

    Log lines carry their level (``data-level``): warnings are amber, errors
    red; an INFO line looks like printed text. ``stderr`` writes are dark red,
    never the notebook's pink.
    """
    picked: list[tuple[str, str]] = []
    size = 0
    for stream, text in reversed(output.chunks):
        if size + len(text) > tail:
            picked.append((stream, "…" + text[len(text) - (tail - size):]))
            break
        picked.append((stream, text))
        size += len(text)
    dropped = getattr(output, "dropped", 0)
    lines = [f'<span style="{_MUTED}">[… {dropped:,} characters dropped …]</span>\n'] if dropped else []
    for stream, text in reversed(picked):
        if stream == "log":
            level = log_level(text)
            style = _LEVEL_STYLES.get(level, "")
            lines.append(f'<span class="nbflow-log" data-level="{esc(level)}" style="{style}">{esc(text)}</span>')
        elif stream == "stderr":
            lines.append(f'<span class="nbflow-stderr" style="color:#8b1e3f">{esc(text)}</span>')
        else:
            lines.append(esc(text))
    return f'<pre class="nbflow-output" style="{_PRE}">{"".join(lines)}</pre>'


def task_run_html(run: TaskRun) -> str:
    """One task run: state, parameters, result summary, traceback, and what it printed."""
    state = run.states[-1]
    duration = run.duration
    where = f"task <code>{esc(run.task.name)}</code>"
    if run.map_index is not None:
        where += f", map index {run.map_index}"
    if duration is not None:
        where += f", {volatile(duration_text(duration))}"
    if run.run_count > 1:
        where += f", {run.run_count} attempts"
    parts = [
        f'<div class="nbflow-task-run" style="{FONT}">',
        f"<div><b>{volatile(run.name)}</b> {state_badge(state)} <span style=\"{_MUTED}\">{where}</span></div>",
    ]
    exc = run_exception(state)
    if state.message and exc is None:
        parts.append(f"<div>{esc(state.message)}</div>")
    parts.append(f"<div><b>Parameters</b></div>{_parameters_html(run.parameters)}")
    cache = run.cache
    if cache is not None:  # what the cache did, and on a miss why
        parts.append(f'<div class="nbflow-cache" data-hit="{str(cache.hit).lower()}"><b>Cache</b> {esc(str(cache))}'
                     f' <span style="{_MUTED}">key {esc(cache.key[:12])}</span></div>')
    # A run read back from the run history holds summaries, not the objects themselves.
    summary, trace = getattr(run, "result_summary", None), getattr(run, "traceback", None)
    if state.is_completed():
        result = value_html(state.data) if summary is None else f"<code>{esc(summary)}</code>"
        parts.append(f"<div><b>Result</b> {result}</div>")
    if exc is not None or trace:
        text = traceback_text(exc) if exc is not None else trace
        parts.append(f'<div><b>Traceback</b></div><pre class="nbflow-traceback" style="{_PRE}">{esc(text)}</pre>')
    output: Any = run.output  # an OutputBuffer
    if output is not None and len(output):
        parts.append(f"<div><b>Output and logs</b></div>{output_html(output)}")
    parts.append("</div>")
    return "".join(parts)


def future_html(future: Any) -> str:
    """A future: its run's state, name, and result summary or error."""
    run: TaskRun = future.task_run
    state = run.states[-1]
    line = f"{state_badge(state)} <code>{volatile(run.name)}</code>"
    exc = run_exception(state)
    if state.is_completed():
        s = summarize(state.data)
        line += f" &rarr; <code>{esc(s.text)}</code>"
    elif exc is not None:
        line += f" <span style=\"color:{CATEGORIES[FAILED].colour}\">{esc(_exception_line(exc))}</span>"
    elif state.message:
        line += f' <span style="{_MUTED}">{esc(state.message)}</span>'
    return f'<div class="nbflow-future" style="{FONT}">{line}</div>'


def future_list_html(futures: Iterable[Any]) -> str:
    """A list of futures as a strip of coloured squares (one per future, in order) and counts."""
    runs = [f.task_run for f in futures]
    codes = bytes(state_code(r.states[-1]) for r in runs)
    counts = [codes.count(c) for c in range(len(CATEGORIES))]
    head = f"<b>{len(runs):,} future{'s' if len(runs) != 1 else ''}</b> &middot; {chips(counts)}"
    body = grid_img(grid_png(codes, max_width=480, target_height=48), "task run states") if runs else ""
    failed = next((r for r in runs if state_code(r.states[-1]) in (FAILED, CRASHED)), None)
    note = ""
    if failed is not None:
        exc = run_exception(failed.states[-1])
        why = _exception_line(exc) if exc is not None else (failed.states[-1].message or "")
        note = (
            f'<div style="{_MUTED}">first failure: <code>{volatile(failed.name)}</code> '
            f"<span style=\"color:{CATEGORIES[FAILED].colour}\">{esc(why)}</span></div>"
        )
    return f'<div class="nbflow-futures" style="{FONT}"><div>{head}</div>{body}{note}</div>'


# -- flow runs ---------------------------------------------------------------------------
def run_text(model: RunModel) -> str:
    """The stable one-line text of a run view: flow name, state, number of task runs."""
    n = model.task_run_count()
    return f"<nbflow run {model.flow_run.flow_name!r}: {model.state.name}, {n} task run{'s' if n != 1 else ''}>"


def rate_text(done: int, total: int, elapsed: float | None, running: bool) -> str:
    """``120 runs/s · ETA 8 s`` while a run goes on (rate only once it ended; "" before a run ended)."""
    if not done or not elapsed:
        return ""
    rate = done / elapsed
    text = f"{rate:,.0f} runs/s" if rate >= 10 else f"{rate:.2g} runs/s"
    if running and total > done:
        text += f" &middot; ETA {duration_text((total - done) / rate)}"
    return text


# The order of a progress bar's segments: what ended well, then failures on their own, then the rest.
_BAR_ORDER = (COMPLETED, CACHED, FAILED, CRASHED, CANCELLED, NOT_READY)


def progress_bar(counts: list[int]) -> str:
    """A bar with one segment per ended category, each as wide as its share of all runs.

    Failures are a segment of their own (1 % of failures is 1 % of the bar, at
    least 2 px so it is seen); runs not yet ended are the empty rest.
    """
    total = sum(counts)
    segments = "".join(
        f'<div class="nbflow-bar-part" data-state="{CATEGORIES[code].name}" style="width:{100 * counts[code] / total:.2f}%;'
        f'min-width:2px;background:{CATEGORIES[code].colour}"></div>'
        for code in _BAR_ORDER
        if total and counts[code]
    )
    return (
        '<div class="nbflow-progress-bar" style="display:flex;height:6px;background:rgba(127,127,127,.2);'
        f'border-radius:3px;overflow:hidden;margin:4px 0 6px">{segments}</div>'
    )


def header_html(model: RunModel, counts: list[int] | None = None) -> str:
    """Flow name, run name, state, cluster start or stop, elapsed time, task runs done and per state, rate and ETA, a progress bar.

    Page readers find the state in ``.nbflow-state[data-state]``, a cluster
    starting or stopping in ``.nbflow-cluster[data-phase]``, progress in
    ``.nbflow-progress[data-done][data-total]``, the counts in
    ``.nbflow-counts [data-state][data-count]`` and the bar's segments in
    ``.nbflow-bar-part[data-state]``. The total counts the runs a ``.map``
    announced and has not created yet (as Pending).
    """
    flow_run = model.flow_run
    counts = model.counts() if counts is None else counts
    total = sum(counts)
    done = sum(n for code, n in enumerate(counts) if code in DONE_CODES)
    state = flow_run.state
    elapsed = model.elapsed()
    rate = rate_text(done, total, elapsed, not state.is_final())
    note = model.cluster_note()
    phase = model.cluster[0] if note and model.cluster else ""
    return (
        f'<div style="{FONT}"><b style="font-size:14px">{esc(flow_run.flow_name)}</b> '
        f'{volatile(flow_run.name)} <span class="nbflow-state" data-state="{esc(state.name)}">{state_badge(state)}</span> '
        + (f'<span class="nbflow-cluster" data-phase="{esc(phase)}" style="{_MUTED}">{esc(note)}</span> ' if note else "")
        + f'<span class="nbflow-elapsed" style="{_MUTED}">{volatile(duration_text(elapsed))}</span>'
        f'<div><span class="nbflow-progress" data-done="{done}" data-total="{total}">{done:,} of {total:,} '
        f"task run{'s' if total != 1 else ''} done</span> &middot; "
        + (f'<span class="nbflow-cached" data-count="{counts[CACHED]}">{counts[CACHED]:,} from cache</span> &middot; '
           if counts[CACHED] else "")
        + (f'<span class="nbflow-rate {VOLATILE}" style="{_MUTED}">{rate}</span> &middot; ' if rate else "")
        + f'<span class="nbflow-counts">{chips(counts)}</span></div>{progress_bar(counts)}</div>'
    )


def grids_html(grids: list[tuple[str, list[int], GridImage]]) -> str:
    """Every group's state grid under a caption: ``(task name, counts, image)`` per group."""
    return "".join(
        f'<div style="margin-top:6px"><div><code>{esc(name)}</code> <span style="{_MUTED}">x{sum(counts):,}</span> '
        f"&middot; {chips(counts)}</div>{grid_img(image, name)}</div>"
        for name, counts, image in grids
    )


def run_html(
    model: RunModel,
    dag_svg: str | None = None,
    grids: list[tuple[str, list[int], GridImage]] | None = None,
    failures: int = 10,
) -> str:
    """A static picture of a flow run: header, progress, DAG, state grids, first failures.

    ``dag_svg`` and ``grids`` (``(task name, counts, image)`` per group of
    the run's own; subflows are nodes of the DAG) are computed here unless a caller that already has them passes them.
    """
    from nbflow.report.dag import Dag

    if dag_svg is None:
        dag_svg = Dag.from_model(model, complete=model.flow_run.state.is_final()).svg()
    if grids is None:
        grids = [(g.name, g.counts(), grid_png(g.codes)) for g in model.groups_of()]
    parts = [f'<div class="nbflow-run" style="{FONT}">', header_html(model)]
    if model.groups or model.subflows:
        parts.append(f'<div style="overflow-x:auto">{dag_svg}</div>{grids_html(grids)}')
    failed = [r for r in model.rows(failures) if state_code(r.states[-1]) in (FAILED, CRASHED)]
    if failed:
        parts.append("<div style=\"margin-top:6px\"><b>Failed task runs</b></div><ul style=\"margin:2px 0\">")
        for run in failed:
            exc = run_exception(run.states[-1])
            why = _exception_line(exc) if exc is not None else (run.states[-1].message or "")
            parts.append(f"<li><code>{volatile(run.name)}</code> {esc(why)}</li>")
        parts.append("</ul>")
    parts.append("</div>")
    return "".join(parts)


def flow_run_html(flow_run: FlowRun) -> str:
    """A flow run's static picture, from its records."""
    return run_html(RunModel.of(flow_run))


__all__ = [
    "FONT",
    "VOLATILE",
    "badge",
    "chips",
    "duration_text",
    "esc",
    "failure_line",
    "flow_run_html",
    "future_html",
    "future_list_html",
    "grid_img",
    "grids_html",
    "header_html",
    "inputs_text",
    "output_html",
    "progress_bar",
    "rate_text",
    "resolved",
    "run_html",
    "run_text",
    "state_badge",
    "state_html",
    "task_run_html",
    "traceback_text",
    "value_html",
    "volatile",
]
