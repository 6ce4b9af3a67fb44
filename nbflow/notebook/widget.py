"""The live run view: a widget of core ipywidgets mirroring a :class:`RunModel`.

The view never reacts to run events. A :class:`RedrawClock` (one daemon
thread for all views) calls :meth:`RunView.redraw` at most ``redraw_hz``
times a second; a redraw refreshes the model from the run records and, under
``hold_sync``, sends only what changed: the header (with the progress bar),
the DAG when counts moved, the grids (one PNG per task, redrawn only for the
tasks whose runs moved), the rows list when it changed. So a 10,000-task map
costs a few dozen messages, not one per event.

Only core widgets (HTML, Button, Select, Tab, boxes) are used, so the view
works in JupyterLab, Notebook 7, VS Code and Colab with no front-end
extension; its display bundle also carries a stable ``text/plain`` and a
static ``text/html`` picture for nbval, nbconvert and GitHub.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Callable, Protocol

import ipywidgets as widgets
import traitlets
from ipywidgets.widgets.widget_string import HTMLStyle

from nbflow.notebook import reprs
from nbflow.notebook.dag import Dag
from nbflow.notebook.grid import GridImage, grid_png
from nbflow.notebook.viewmodel import (
    CANCELLED,
    COMPLETED,
    CRASHED,
    DONE_CODES,
    FAILED,
    RUNNING,
    RunModel,
    counts_dict,
    state_code,
)
from nbflow.records import TaskRun

logger = logging.getLogger("nbflow.notebook")

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_ROW_GLYPHS = {FAILED: "✗", CRASHED: "✗", CANCELLED: "⊘", RUNNING: "▶", COMPLETED: "✓"}
_HINT = (
    '<div style="color:#6a6a6a;font-size:12px;padding:4px">Select a task run to see its '
    "parameters, result, traceback and output.</div>"
)


class _Shared:
    """One Layout and one HTML style for every widget of a view that needs no other.

    A widget makes its own Layout (and Style) widget unless given one, and that
    is most of what creating it costs: sharing them makes a view 3x cheaper.
    """

    def __init__(self) -> None:
        self.layout = widgets.Layout()
        self.html_style = HTMLStyle()

    def html(self, value: str = "", **kwargs: Any) -> widgets.HTML:
        kwargs.setdefault("layout", self.layout)
        return widgets.HTML(value, style=self.html_style, **kwargs)


class RunView(widgets.VBox):
    """The live view of one flow run: header and progress, Cancel, DAG, state grids, runs.

    Few widgets (each costs a comm): an HTML header with the progress bar, a
    Cancel button, and three tabs -- the DAG (HTML with inline SVG), the
    state grids (HTML with one PNG per task), and the task runs (a Select,
    failed and running first, beside an HTML panel with the selected run).

    Its Python side can be read in tests without a browser: ``state``,
    ``counts`` (category name -> task runs), ``task_run_count``, ``progress``,
    ``dag_svg``, ``groups`` and ``rows`` mirror the last redraw.
    """

    state = traitlets.Unicode("", help="The flow run's state name at the last redraw.")
    counts = traitlets.Dict(help="Task runs per state category (non-zero only).")
    task_run_count = traitlets.Int(0, help="How many task runs the flow run has.")
    progress = traitlets.Float(0.0, help="Share of task runs that have ended.")
    dag_svg = traitlets.Unicode("", help="The DAG picture (SVG) shown in the view.")
    groups = traitlets.List(traitlets.Dict(), help="Per task: name, number of runs and counts per category.")
    rows = traitlets.List(traitlets.Unicode(), help="Names of the task runs listed for selection, in order.")
    finished = traitlets.Bool(False, help="True once the flow run ended and the view drew it.")

    def __init__(self, model: RunModel, cancel: Callable[[], Any] | None = None, max_rows: int = 100, **kwargs: Any) -> None:
        self.model = model
        self.max_rows = max_rows
        self._cancel_callback = cancel
        self._lock = threading.RLock()
        self._drawn_key: tuple | None = None
        self._cancel_requested = False
        self._selected: TaskRun | None = None
        self._selected_key: tuple | None = None
        self._updating_rows = False
        self._pictures: dict[int, tuple[bytes, GridImage]] = {}  # group index -> codes drawn, image
        self._row_runs: list[TaskRun] = []
        self._row_labels: list[str] = []
        self._pending_output: list[tuple[str, str]] = []
        self._output: widgets.Output | None = None
        self._live_box: widgets.Box | None = None

        # CSS classes (stable selectors for browser tests) are given at creation: adding
        # them later would cost a message each.
        shared = self._shared = _Shared()
        self._header = shared.html(layout=widgets.Layout(flex="1 1 auto"), _dom_classes=["nbflow-header"])
        self._cancel = widgets.Button(
            description="Cancel",
            icon="stop",
            button_style="warning",
            tooltip="Cancel the task runs that have not finished",
            _dom_classes=["nbflow-cancel"],
        )
        self._cancel.on_click(lambda _button: self.cancel())
        self._dag = shared.html(_dom_classes=["nbflow-dag"])
        self._grid = shared.html(_dom_classes=["nbflow-grid"])
        self._rows = widgets.Select(
            options=[], rows=12, layout=widgets.Layout(width="38%", min_width="220px"), _dom_classes=["nbflow-rows"]
        )
        self._rows.observe(self._on_select, names="value")
        self._detail = shared.html(_HINT, layout=widgets.Layout(width="62%"), _dom_classes=["nbflow-detail"])
        tabs = widgets.Tab(
            children=[self._dag, self._grid, widgets.HBox([self._rows, self._detail], layout=shared.layout)],
            titles=("Graph", "Task runs", "Details"),
            layout=shared.layout,
        )
        top = widgets.HBox([self._header, self._cancel], layout=widgets.Layout(align_items="center"))
        kwargs.setdefault("_dom_classes", ["nbflow-view"])
        kwargs.setdefault("layout", shared.layout)
        super().__init__([top, tabs], **kwargs)
        self.redraw()

    # -- drawing ---------------------------------------------------------------------------
    def redraw(self, final: bool = False) -> None:
        """Bring the widgets up to date with the model, sending only what changed.

        ``final`` reads every run's upstream for the DAG and marks the view finished.
        """
        with self._lock:
            model = self.model
            # The picture changes with the records and, while the run goes on, with the clock.
            key = (model.refresh(), reprs.duration_text(model.elapsed()))
            if not final and key == self._drawn_key and not self._pending_output:
                return
            self._drawn_key = key
            counts = model.counts()
            held = [self, self._header, self._dag, self._grid, self._rows, self._detail, self._cancel]
            with contextlib.ExitStack() as stack:
                for widget in held:
                    stack.enter_context(widget.hold_sync())
                self._header.value = reprs.header_html(model, counts)
                self._draw_groups()
                self._draw_dag(final)
                self._draw_rows()
                self._draw_detail()
                self._flush_output()
                done = model.flow_run.state.is_final()
                self._cancel.disabled = done or self._cancel_requested
                self.state = model.state.name
                self.counts = counts_dict(counts)
                total = sum(counts)
                self.task_run_count = total
                self.progress = sum(n for code, n in enumerate(counts) if code in DONE_CODES) / total if total else 0.0
                if final:
                    self.finished = True

    def _draw_groups(self) -> None:
        summary = []
        for group in list(self.model.groups):
            codes = bytes(group.codes)
            summary.append({"name": group.name, "count": len(codes), "counts": counts_dict(group.counts())})
            drawn = self._pictures.get(group.index)
            if drawn is None or drawn[0] != codes:  # only groups whose runs moved are drawn again
                self._pictures[group.index] = (codes, grid_png(codes))
        self.groups = summary
        self._grid.value = reprs.grids_html(self._grids())

    def _grids(self) -> list[tuple[str, list[int], GridImage]]:
        """What the grids show: ``(task name, counts, image)`` per group, as last drawn."""
        return [(g.name, g.counts(), self._pictures[g.index][1]) for g in list(self.model.groups) if g.index in self._pictures]

    def _draw_dag(self, final: bool) -> None:
        try:
            svg = Dag.from_model(self.model, complete=final).svg()
        except Exception as exc:  # the rest of the view goes on without its picture
            logger.exception("nbflow run view: drawing the DAG failed")
            svg = f'<div style="color:#6a6a6a">The graph could not be drawn: {reprs.esc(repr(exc))}</div>'
        if svg != self.dag_svg:
            self.dag_svg = svg
            self._dag.value = f'<div style="overflow-x:auto">{svg}</div>'

    def _draw_rows(self) -> None:
        runs = self.model.rows(self.max_rows)
        labels = [self._row_label(run) for run in runs]
        if runs == self._row_runs and labels == self._row_labels:
            return
        self._row_runs, self._row_labels = runs, labels
        options = list(zip(labels, runs))
        self._updating_rows = True
        try:
            self._rows.options = options
            if self._selected is not None and self._selected in runs:
                self._rows.value = self._selected
            elif self._rows.index is not None:
                self._rows.index = None
        finally:
            self._updating_rows = False
        self.rows = [run.name for run in runs]

    @staticmethod
    def _row_label(run: TaskRun) -> str:
        state = run.states[-1]
        code = state_code(state)
        glyph = _ROW_GLYPHS.get(code, "·")
        return f"{glyph} {run.name} — {state.name}"

    def _on_select(self, change: dict) -> None:
        if self._updating_rows:
            return
        with self._lock:
            self._selected = change["new"]
            self._selected_key = None
            self._draw_detail()

    def _draw_detail(self) -> None:
        run = self._selected
        if run is None:
            self._detail.value = _HINT
            return
        output: Any = run.output  # an OutputBuffer
        key = (run, len(run.states), 0 if output is None else output.size + output.dropped)
        if key != self._selected_key:
            self._selected_key = key
            self._detail.value = reprs.task_run_html(run)

    def select(self, run: TaskRun | None) -> None:
        """Show ``run``'s details (what clicking it in the list does)."""
        with self._lock:
            self._selected = run
            self._selected_key = None
            if run in self._row_runs:
                self._updating_rows = True
                try:
                    self._rows.value = run
                finally:
                    self._updating_rows = False
            self._draw_detail()

    @property
    def detail_html(self) -> str:
        """The details panel's HTML (the selected run's parameters, result, traceback, output)."""
        return self._detail.value

    # -- output when the kernel cannot route it to the cell ---------------------------------
    def append_output(self, stream: str, text: str) -> None:
        """Queue task output for the view's output area (shown at the next redraw)."""
        self._pending_output.append((stream, text))

    def _flush_output(self) -> None:
        if not self._pending_output:
            return
        pending, self._pending_output = self._pending_output, []
        if self._output is None:
            self._output = widgets.Output(layout=self._shared.layout)
            self.children = tuple(self.children) + (self._output,)
        # One append per stream and redraw: each append re-sends the whole output list.
        out = "".join(text for stream, text in pending if stream != "stderr")
        err = "".join(text for stream, text in pending if stream == "stderr")
        if out:
            self._output.append_stdout(out)
        if err:
            self._output.append_stderr(err)

    # -- actions ----------------------------------------------------------------------------
    def cancel(self) -> None:
        """Cancel the flow run's unfinished task runs (the Cancel button)."""
        with self._lock:  # the clock may be redrawing the button
            self._cancel_requested = True
            with self._cancel.hold_sync():
                self._cancel.disabled = True
                self._cancel.description = "Cancelling…"
        if self._cancel_callback is not None:
            self._cancel_callback()
        else:
            from nbflow.flows import cancel_flow_run

            cancel_flow_run(self.model.flow_run)

    # -- display ----------------------------------------------------------------------------
    def text(self) -> str:
        """The stable ``text/plain`` of the view (flow name, state, number of task runs)."""
        return reprs.run_text(self.model)

    def snapshot_html(self) -> str:
        """A static HTML picture of the view as it is now."""
        with self._lock:
            return reprs.run_html(self.model, self.dag_svg or None, self._grids() or None)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = self.text()
        bundle["text/html"] = self.snapshot_html()
        return bundle

    def live_bundle(self) -> dict[str, Any]:
        """A bundle holding only the widget (in a box :meth:`end_live` can hide).

        Static renderers and nbval see nothing of it: the final picture comes
        with the view's own bundle once the run ends.
        """
        if self._live_box is None:
            self._live_box = widgets.Box([self])
        return {WIDGET_MIME: {"version_major": 2, "version_minor": 0, "model_id": self._live_box.model_id}}

    def end_live(self) -> None:
        """Hide the live display (the final display takes its place)."""
        box = self._live_box
        if box is not None:
            with box.hold_sync():
                box.children = ()
                box.layout.display = "none"

    def __repr__(self) -> str:
        return self.text()


class Tickable(Protocol):
    def tick(self) -> bool:
        """Redraw; False once there is nothing left to redraw."""


class RedrawClock:
    """One daemon thread that ticks every live view at most ``hz`` times a second.

    Idle (blocked, no wake-ups) while nothing is live. A tick that took much
    CPU stretches the interval (up to ``slowest`` seconds), so drawing takes at
    most about ``duty`` of a core whatever the size of the runs. CPU time, not
    wall time, is what counts: waiting for the GIL while tasks run is no reason
    to draw less often. With ``thread=False`` nothing ticks on its own: tests
    call :meth:`tick`.
    """

    def __init__(self, hz: float = 10.0, duty: float = 0.05, thread: bool = True, slowest: float = 1.0) -> None:
        self.interval = 1.0 / hz
        self.duty = duty
        self.slowest = slowest
        self.threaded = thread
        self._items: list[Tickable] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def add(self, item: Tickable) -> None:
        """Tick ``item`` until its ``tick()`` returns False."""
        with self._cond:
            if item not in self._items:
                self._items.append(item)
            self._stopped = False
            if self._thread is None and self.threaded:
                self._thread = threading.Thread(target=self._run, name="nbflow-redraw", daemon=True)
                self._thread.start()
            self._cond.notify()

    def discard(self, item: Tickable) -> None:
        with self._cond:
            if item in self._items:
                self._items.remove(item)

    def tick(self) -> float:
        """Tick every item once (tests call this instead of running the thread); returns the CPU seconds it took."""
        start = time.thread_time()
        with self._cond:
            items = list(self._items)
        for item in items:
            try:
                live = item.tick()
            except Exception:
                logger.exception("nbflow run view: redraw failed")
                live = False
            if not live:
                self.discard(item)
        return time.thread_time() - start

    def stop(self) -> None:
        """Stop the thread (it exits at its next wake-up)."""
        with self._cond:
            self._stopped = True
            self._items.clear()
            self._cond.notify()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
            started = time.monotonic()
            cpu = self.tick()
            with self._cond:
                if self._stopped:
                    return
                pause = min(max(self.interval, cpu / self.duty), self.slowest)
                self._cond.wait(max(0.0, pause - (time.monotonic() - started)))


__all__ = ["RedrawClock", "RunView", "WIDGET_MIME"]
