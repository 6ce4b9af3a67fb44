"""The live run view: an anywidget whose small ES module (``static/view.js``) draws a :class:`RunModel`.

The Python side is a few synced traits (the header and DAG pictures, one
summary per task group, the state of the Cancel and Retry buttons) plus
custom messages. A :class:`RedrawClock` (one daemon thread for all views)
calls :meth:`RunView.redraw` at most ``redraw_hz`` times a second; a redraw
refreshes the model, sets the traits that changed (one message) and sends
the state grid as a diff: per group whose runs moved, the range of category
codes (one byte per run) that changed, as a binary buffer. The front end
draws the grid on a canvas from those bytes. Everything about one run --
hover summary, details, the filtered list -- is computed when the front end
asks for it, so 10,000 runs cost nothing until one is looked at.

Its display bundle also carries a stable ``text/plain`` and a static
``text/html`` picture (nbval, nbconvert, GitHub, a notebook reopened
without a kernel); when a run has ended, the session replaces the widget's
output by that picture and the front end keeps the view interactive in
its place (see :meth:`RunView.static_bundle`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import anywidget
import traitlets

from nbflow.report import html as reprs
from nbflow.report.dag import Dag
from nbflow.report.model import (
    CANCELLED,
    CATEGORIES,
    CRASHED,
    DONE_CODES,
    FAILED,
    NOT_READY,
    ROW_ORDER,
    RunModel,
    counts_dict,
)
from nbflow.records import TaskRun

logger = logging.getLogger("nbflow.notebook")

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
RETRYABLE = (FAILED, CRASHED, CANCELLED, NOT_READY)  # a finished run with these shows Retry
_CODE_OF_NAME = {c.name: c.code for c in CATEGORIES}
PAGE = 200  # rows the list asks for at once


def changed_range(old: bytes, new: bytes) -> tuple[int, int] | None:
    """``(start, end)`` of the bytes of ``new`` that differ from ``old`` (``new`` only grows), or None.

    Bisection over slice comparisons: C-speed, about 2 log2(n) compares of a
    100,000-run group, instead of a Python loop over its bytes.
    """
    if old == new:
        return None
    n = min(len(old), len(new))
    lo, hi = 0, n
    while lo < hi:  # old[:lo] == new[:lo]; find the first index that differs
        mid = (lo + hi) // 2
        if old[lo : mid + 1] == new[lo : mid + 1]:
            lo = mid + 1
        else:
            hi = mid
    first = lo
    if len(new) != len(old):
        return first, len(new)
    lo, hi = first + 1, n
    while lo < hi:  # the smallest end with old[end:] == new[end:]
        mid = (lo + hi) // 2
        if old[mid:] == new[mid:]:
            hi = mid
        else:
            lo = mid + 1
    return first, lo


def run_summary(run: TaskRun) -> dict[str, Any]:
    """What hovering a grid cell shows: task, map index, state, duration and an input summary."""
    state = run.states[-1]
    duration = run.duration
    return {
        "name": run.name,
        "task": run.task.name,
        "map_index": run.map_index,
        "state": state.name,
        "duration": None if duration is None else reprs.duration_text(duration),
        "inputs": reprs.inputs_text(run.parameters),
        "message": reprs.failure_line(run),
    }


def _matches(run: TaskRun, query: str) -> bool:
    """``query`` is a map index (exact) or part of the run's name (any case)."""
    if query.isdigit() and run.map_index == int(query):
        return True
    return query.lower() in run.name.lower()


class RunView(anywidget.AnyWidget):
    """The live view of one flow run: header and progress, Cancel/Retry, DAG, state grid, runs, details.

    Synced traits: ``header`` and ``dag`` (HTML and SVG, escaped), ``groups``
    (per task group: ``name``, ``count``, ``counts``, and ``flow``, the name of
    the subflow it belongs to, None for the run's own tasks), ``cancel`` (``"ready"``,
    ``"cancelling"`` or ``"hidden"`` once the run ended), ``retry``
    (``"hidden"``, ``"offered"``, ``"retrying"``), ``retry_ref`` (the retry's
    own view), ``output`` (task output the kernel could not route to the
    cell) and ``finished``. The state grid travels as ``codes`` messages
    (see :meth:`handle`); the front end's requests are answered by
    :meth:`answer`, which tests call directly.

    ``state``, ``counts``, ``task_run_count`` and ``progress`` read the last redraw.
    """

    _esm = Path(__file__).parent / "static" / "view.js"

    header = traitlets.Unicode("", help="The header: flow, run, state, time, progress and counts (HTML).").tag(sync=True)
    dag = traitlets.Unicode("", help="The DAG picture (SVG); nodes carry data-group.").tag(sync=True)
    groups = traitlets.List(traitlets.Dict(), help="Per task group: name, number of runs, counts per state.").tag(sync=True)
    cancel_state = traitlets.Unicode("ready", help="The Cancel button: ready, cancelling or hidden.").tag(sync=True)
    retry_state = traitlets.Unicode("hidden", help="The Retry button: hidden, offered or retrying.").tag(sync=True)
    retry_ref = traitlets.Unicode("", help="anywidget reference of the retry's live view, shown below.").tag(sync=True)
    output = traitlets.List(traitlets.List(), help="[stream, text] the kernel could not route to the cell.").tag(sync=True)
    finished = traitlets.Bool(False, help="True once the flow run ended and the view drew it.").tag(sync=True)
    categories = traitlets.List(
        [[c.name, c.colour] for c in CATEGORIES], help="[name, colour] of each state category, by code."
    ).tag(sync=True)
    view_id = traitlets.Unicode("", help="This model's id: the static picture it is mounted in again says it.").tag(sync=True)

    def __init__(self, model: RunModel, cancel: Callable[[], Any] | None = None, **kwargs: Any) -> None:
        self.model = model
        self._cancel_callback = cancel
        self._lock = threading.RLock()
        self._drawn_key: tuple | None = None
        self._sent: dict[int, bytes] = {}  # group index -> the codes the front end has
        self._counts: list[int] = [0] * len(CATEGORIES)
        self._pending_output: list[list[str]] = []
        self._retry_view: RunView | None = None
        self._expanded: set[int] = set()  # subflows drawn open in the DAG
        self._ready: list[Callable[[], Any]] = []  # called once a front end has drawn the view
        self.rendered = False
        super().__init__(**kwargs)
        self.view_id = self.model_id
        self.on_msg(self._on_msg)
        self.redraw()

    # -- what the Python side reads -----------------------------------------------------------
    @property
    def state(self) -> str:
        """The flow run's state name."""
        return self.model.state.name

    @property
    def counts(self) -> dict[str, int]:
        """Task runs per state category (non-zero only), as last drawn."""
        return counts_dict(self._counts)

    @property
    def task_run_count(self) -> int:
        """How many task runs the view has drawn."""
        return sum(self._counts)

    @property
    def progress(self) -> float:
        """Share of the drawn task runs that have ended."""
        total = sum(self._counts)
        return sum(n for code, n in enumerate(self._counts) if code in DONE_CODES) / total if total else 0.0

    # -- drawing ---------------------------------------------------------------------------
    def redraw(self, final: bool = False) -> None:
        """Bring the front end up to date with the model, sending only what changed.

        ``final`` reads every run's upstream for the DAG and marks the view finished.
        """
        with self._lock:
            model = self.model
            # The picture changes with the records and, while the run goes on, with the clock.
            key = (model.refresh(), reprs.duration_text(model.elapsed()))
            if not final and key == self._drawn_key and not self._pending_output:
                return
            self._drawn_key = key
            counts = self._counts = model.counts()
            done = model.flow_run.state.is_final()
            with self.hold_sync():  # the traits that changed go in one message
                self.header = reprs.header_html(model, counts)
                self.groups = [self._group_summary(g) for g in list(model.groups)]
                self._draw_dag(final)
                if self._pending_output:
                    pending, self._pending_output = self._pending_output, []
                    self.output = (self.output + pending)[-200:]
                if done:
                    self.cancel_state = "hidden"  # a finished run is never "Cancelling…"
                retryable = done and any(counts[c] for c in RETRYABLE) and self._retry_view is None
                if retryable and self.retry_state == "hidden":
                    self.retry_state = "offered"
                if final:
                    self.finished = True
            self._send_codes(full=False)

    def _group_summary(self, group: Any) -> dict[str, Any]:
        # a subflow's group names its flow; the grid shows it only when its node is picked
        flow = None if group.flow is None else self.model.subflows[group.flow].flow_run.flow_name
        return {"name": group.name, "count": len(group.codes), "counts": counts_dict(group.counts()), "flow": flow}

    def expand(self, flow: int, expanded: bool = True) -> None:
        """Draw subflow ``flow``'s own tasks in the DAG (``expanded=False``: one node again)."""
        with self._lock:
            if expanded:
                self._expanded.add(flow)
            else:
                self._expanded.discard(flow)
            self._draw_dag(self.model.settled())

    @property
    def expanded(self) -> frozenset[int]:
        """The subflows whose tasks the DAG draws."""
        return frozenset(self._expanded)

    def _draw_dag(self, final: bool) -> None:
        try:
            svg = Dag.from_model(self.model, complete=final, expanded=self._expanded).svg()
        except Exception as exc:  # the rest of the view goes on without its picture
            logger.exception("nbflow run view: drawing the DAG failed")
            svg = f'<div style="color:#6a6a6a">The graph could not be drawn: {reprs.esc(repr(exc))}</div>'
        self.dag = svg

    def _send_codes(self, full: bool) -> None:
        """Send the grid's changes: per group, ``[group, start, total]`` and the bytes from ``start``."""
        heads, buffers = [], []
        for group in list(self.model.groups):
            codes = bytes(group.codes)
            old = b"" if full else self._sent.get(group.index, b"")
            span = changed_range(old, codes)
            if span is None:
                continue
            start, end = span
            heads.append([group.index, start, len(codes)])
            buffers.append(codes[start:end])
            self._sent[group.index] = codes
        if heads:
            self.send({"type": "codes", "groups": heads}, buffers)

    # -- the front end's requests ------------------------------------------------------------
    def _on_msg(self, _widget: Any, content: dict, _buffers: list) -> None:
        try:
            reply = self.answer(content)
        except Exception:  # a bad request must not break the kernel's message loop
            logger.exception("nbflow run view: answering %r failed", content)
            return
        if reply is not None:
            self.send(reply)

    def answer(self, request: dict) -> dict | None:
        """Answer one front-end request (``sync``, ``hover``, ``details``, ``list``, ``expand``, ``cancel``, ``retry``, ``ready``)."""
        kind = request.get("type")
        if kind == "sync":  # a view was drawn: it needs the whole grid
            with self._lock:
                self._send_codes(full=True)
            return None
        if kind == "ready":
            self._on_ready()
            return None
        if kind == "cancel":
            self.cancel()
            return None
        if kind == "retry":
            self.retry()
            return None
        if kind == "expand":
            self.expand(int(request.get("flow", -1)), bool(request.get("open", True)))
            return None
        if kind == "list":
            return self.list_rows(
                state=request.get("state") or None,
                query=str(request.get("query") or "").strip(),
                group=request.get("group"),
                offset=int(request.get("offset") or 0),
                limit=int(request.get("limit") or PAGE),
            ) | {"seq": request.get("seq")}
        run = self.run_at(int(request.get("group", -1)), int(request.get("index", -1)))
        where = {"group": request.get("group"), "index": request.get("index"), "seq": request.get("seq")}
        if kind == "hover":
            return {"type": "hover", **where, **(run_summary(run) if run else {})}
        if kind == "details":
            body = reprs.task_run_html(run) if run else "<div>That task run is not known.</div>"
            return {"type": "details", **where, "html": body}
        return None

    def run_at(self, group: int, index: int) -> TaskRun | None:
        """The task run drawn at ``index`` in group ``group`` (None if there is none)."""
        groups = self.model.groups
        if not 0 <= group < len(groups) or not 0 <= index < len(groups[group].runs):
            return None
        return groups[group].runs[index]

    def list_rows(
        self, state: str | None = None, query: str = "", group: int | None = None, offset: int = 0, limit: int = PAGE
    ) -> dict[str, Any]:
        """One page of the run list: failed and running first, filtered by state name, group, name or map index.

        Without ``group``, the flow run's own task runs (a subflow's are listed when its group is picked).
        Returns ``{"type": "list", "total", "offset", "rows": [[group, index, name, map index, state], ...]}``.
        """
        wanted = ROW_ORDER if state is None else (_CODE_OF_NAME.get(state, -1),)
        groups = self.model.groups_of() if group is None else [g for g in list(self.model.groups) if g.index == group]
        snapshots = [(g, bytes(g.codes)) for g in groups]
        picked: list[tuple[Any, int]] = []  # the page's runs
        total = 0
        for code in wanted:
            for g, codes in snapshots:
                if not query:  # counted in C; only the page's runs are looked at (a live list asks every second)
                    n = codes.count(code)
                    if total + n <= offset or total >= offset + limit:
                        total += n
                        continue
                i = codes.find(code)
                while i != -1:
                    if not query and total >= offset + limit:  # past the page: the rest counted in C
                        total += codes.count(code, i)
                        break
                    if not query or _matches(g.runs[i], query):
                        if offset <= total < offset + limit:
                            picked.append((g, i))
                        total += 1
                    i = codes.find(code, i + 1)
        rows = []
        for g, i in picked:
            run = g.runs[i]
            rows.append([g.index, i, run.name, run.map_index, run.states[-1].name])
        return {"type": "list", "total": total, "offset": offset, "rows": rows}

    def details_html(self, run: TaskRun) -> str:
        """The details panel of ``run`` (what clicking its cell or row shows)."""
        return reprs.task_run_html(run)

    def when_rendered(self, callback: Callable[[], Any]) -> None:
        """Call ``callback`` once a front end has drawn this view (at once if one has)."""
        with self._lock:
            if not self.rendered:
                self._ready.append(callback)
                return
        callback()

    def _on_ready(self) -> None:
        with self._lock:
            self.rendered = True
            callbacks, self._ready = self._ready, []
        for callback in callbacks:
            callback()

    # -- output when the kernel cannot route it to the cell ---------------------------------
    def append_output(self, stream: str, text: str) -> None:
        """Queue task output for the view's output area (shown at the next redraw)."""
        self._pending_output.append([stream, text])

    # -- actions ----------------------------------------------------------------------------
    def cancel(self) -> None:
        """Cancel the flow run's unfinished task runs (the Cancel button)."""
        with self._lock:
            if self.model.flow_run.state.is_final():
                return
            self.cancel_state = "cancelling"
        if self._cancel_callback is not None:
            self._cancel_callback()
        else:
            from nbflow.flows import cancel_flow_run

            cancel_flow_run(self.model.flow_run)

    def retry(self) -> threading.Thread:
        """Retry the flow run in the background (the Retry button); its live view appears below this one.

        The retry re-executes only what did not complete (see :func:`nbflow.retry`).
        Returns the thread it runs in.
        """
        import nbflow
        from nbflow import events
        from nbflow.notebook import session as sessions

        original = self.model.flow_run
        self.retry_state = "retrying"

        def found(event: Any) -> None:  # in the retry's thread, as its flow run is made
            run = event.run
            if run.retry_of is not original or self._retry_view is not None:
                return
            subscription.unsubscribe()
            session = sessions.active()
            view = session.view(run) if session is not None else RunView(RunModel(run))
            with self._lock:
                self._retry_view = view
                self.retry_ref = f"anywidget:{view.model_id}"

        def target() -> None:
            try:
                nbflow.retry(original)
            except Exception as exc:  # noqa: BLE001 -- the retry's own view shows a failed run; this is for the rest
                logger.warning("Retry of flow run %r failed to start: %s", original.name, exc)
            finally:
                subscription.unsubscribe()
                self.retry_state = "hidden"

        subscription = events.subscribe(found, kinds=("flow-state",))
        thread = threading.Thread(target=target, name=f"nbflow-retry-{original.name}", daemon=True)
        thread.start()
        return thread

    @property
    def retry_view(self) -> RunView | None:
        """The live view of the retry this view started, if any."""
        return self._retry_view

    # -- display ----------------------------------------------------------------------------
    def text(self) -> str:
        """The stable ``text/plain`` of the view (flow name, state, number of task runs)."""
        return reprs.run_text(self.model)

    def snapshot_html(self) -> str:
        """A static HTML picture of the view as it is now.

        Marked with this view's model id: a front end that drew the live view
        mounts it there again when the session replaces the widget output by it.
        """
        with self._lock:
            return f'<div class="nbflow-static" data-view="{self.model_id}">{reprs.run_html(self.model, self.dag or None)}</div>'

    def static_bundle(self) -> dict[str, str]:
        """The final picture with no widget in it: what a run's output becomes once it ended."""
        return {"text/plain": self.text(), "text/html": self.snapshot_html()}

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        return {**bundle, **self.static_bundle()}

    def live_bundle(self) -> dict[str, Any]:
        """A bundle holding only the widget: static renderers and nbval see nothing of a live view."""
        return {WIDGET_MIME: {"version_major": 2, "version_minor": 1, "model_id": self.model_id}}

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


__all__ = ["WIDGET_MIME", "RedrawClock", "RunView"]
