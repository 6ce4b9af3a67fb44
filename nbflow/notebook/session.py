"""What ``%load_ext nbflow`` switches on: run tracking, live views, output routing.

A :class:`NotebookSession` owns the one :class:`~nbflow.notebook.viewmodel.Tracker`
on the event seam, the one :class:`~nbflow.notebook.widget.RedrawClock`, and
the output router. When a top-level flow run starts in a kernel it notes
the cell that started it; if the run lasts longer than ``settings.view_delay``
its live view appears in that cell, and when it ends the final view (widget,
stable text, static HTML) is displayed there before control returns, so the
saved notebook holds the final picture without ``update_display_data``.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from nbflow.notebook import output
from nbflow.notebook.viewmodel import RunModel, Tracker
from nbflow.records import FlowRun
from nbflow.states import State, StateType


@dataclass
class NotebookSettings:
    """Settings of the notebook layer (``nbflow.notebook.settings``)."""

    #: Show the live view for flow runs started in a notebook (``%nbflow view off`` turns it off).
    auto_view: bool = True
    #: Seconds a flow run runs before its live view appears (quicker runs show only the final view).
    view_delay: float = 0.25
    #: Highest redraw rate of the live views.
    redraw_hz: float = 10.0
    #: Task runs listed in a view's Details tab (failed and running first).
    max_rows: int = 100
    #: ``%%flow`` cells await their run in a kernel, so the view's buttons work while it runs.
    async_cells: bool = True
    #: Seconds an interrupted ``%%flow`` cell waits for its run to stop before returning.
    interrupt_grace: float = 2.0


settings = NotebookSettings()


@dataclass
class CellOptions:
    """What a ``%%flow`` cell asked of its flow's view."""

    view: bool = True
    cancel: Callable[[], Any] | None = None


class LiveRun:
    """One top-level flow run being shown: creates, redraws and finishes its view."""

    def __init__(self, session: "NotebookSession", model: RunModel, parent: Any, auto_display: bool, cancel: Callable[[], Any] | None) -> None:
        self.session = session
        self.model = model
        self.parent = parent
        self.auto_display = auto_display
        self.cancel = cancel
        self.started = time.monotonic()
        self.view: Any = None
        self.shown_live = False
        self.ended = model.flow_run.state.is_final()  # a view asked for after the run
        self._lock = threading.Lock()

    def get_view(self) -> Any:
        """The run's view, made now if it was not yet."""
        with self._lock:
            if self.view is None and self.ended:
                self._ensure_view().redraw(final=True)
            return self._ensure_view()

    def _ensure_view(self) -> Any:
        if self.view is None:
            from nbflow.notebook.widget import RunView

            self.view = RunView(self.model, cancel=self.cancel, max_rows=settings.max_rows)
        return self.view

    def tick(self) -> bool:
        """Clock tick: show the live view once the run has lasted, then redraw it."""
        with self._lock:
            if self.ended:  # stragglers of an interrupted run still end
                if self.view is not None:
                    self.view.redraw()
                else:
                    self.model.refresh()
                return not self.model.settled() and time.monotonic() - self.started < 60
            if self.auto_display and not self.shown_live and time.monotonic() - self.started >= settings.view_delay:
                view = self._ensure_view()  # a new view has just drawn itself
                with output.thread_parent(self.session.shell, self.parent):
                    self.session.display(view.live_bundle(), raw=True)
                self.shown_live = True
            elif self.view is not None:
                self.view.redraw()
            return True

    def end(self) -> None:
        """The flow run ended: final redraw, then the final display in the run's cell."""
        self.model.refresh()
        deadline = time.monotonic() + 0.5  # interrupted runs stop at their next bytecode
        for run in self.model.unfinished():
            run.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self.ended = True
            if not self.auto_display and self.view is None:
                return
            view = self._ensure_view()
            view.redraw(final=True)
            if self.auto_display:
                with output.thread_parent(self.session.shell, self.parent):
                    if self.shown_live:
                        view.end_live()
                    self.session.display(view)


class NotebookSession:
    """The notebook layer's live state for one IPython shell."""

    def __init__(
        self, shell: Any, display: Callable[..., Any] | None = None, widgets: bool | None = None, clock: Any = None
    ) -> None:
        from nbflow.notebook.widget import RedrawClock

        self.shell = shell
        if display is None:
            from IPython.display import display as ipython_display

            display = ipython_display
        self.display: Callable[..., Any] = display
        #: Whether a front end can show widgets (a kernel); tests may set it.
        self.widgets = getattr(shell, "kernel", None) is not None if widgets is None else widgets
        self.tracker = Tracker(on_flow_state=self._flow_state)
        self.clock = clock or RedrawClock(settings.redraw_hz)
        self.router = output.OutputRouter(shell, fallback=self._view_output)
        self.live: dict[FlowRun, LiveRun] = {}
        self.cells: weakref.WeakKeyDictionary[Any, CellOptions] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Watch flow runs and route their output."""
        self.tracker.start()
        self.router.install()

    def stop(self) -> None:
        """Stop watching, routing and redrawing."""
        self.tracker.stop()
        self.router.uninstall()
        self.clock.stop()

    # -- flow runs starting and ending -----------------------------------------------------
    def _flow_state(self, flow_run: FlowRun, state: State) -> None:
        if state.type is StateType.RUNNING and flow_run not in self.live:
            self._started(flow_run)
        elif state.is_final():
            live = self.live.get(flow_run)
            if live is not None:
                live.end()

    def _started(self, flow_run: FlowRun) -> None:
        parent = output.current_parent(self.shell)
        if parent is not None:
            self.router.remember(flow_run, parent)
        options = self.cells.get(flow_run.flow) or CellOptions()
        if not (settings.auto_view and self.widgets and options.view):
            return
        self._watch(flow_run, parent, auto_display=True, cancel=options.cancel)

    def _watch(self, flow_run: FlowRun, parent: Any, auto_display: bool, cancel: Callable[[], Any] | None) -> LiveRun:
        with self._lock:
            live = self.live.get(flow_run)
            if live is None:
                live = LiveRun(self, self.tracker.track(flow_run), parent, auto_display, cancel)
                self.live[flow_run] = live
                ended = [run for run, other in self.live.items() if other.ended]
                for run in ended[: max(0, len(ended) - 16)]:  # keep the views of recent runs
                    del self.live[run]
        self.clock.interval = 1.0 / settings.redraw_hz
        self.clock.add(live)
        return live

    # -- views on request --------------------------------------------------------------------
    def view(self, flow_run: FlowRun) -> Any:
        """The run view of ``flow_run``'s top-level run (live if it still runs)."""
        root = flow_run.root
        live = self.live.get(root)
        if live is None:
            live = self._watch(root, None, auto_display=False, cancel=None)
        return live.get_view()

    def _view_output(self, root: FlowRun, stream: str, text: str) -> bool:
        live = self.live.get(root)
        if live is None or live.view is None:
            return False
        live.view.append_output(stream, text)
        return True


_session: NotebookSession | None = None
_session_lock = threading.Lock()


def active() -> NotebookSession | None:
    """The session of the loaded extension, if any."""
    return _session


def get() -> NotebookSession:
    """The loaded extension's session, or a quiet one (no automatic views) for use without it."""
    global _session
    with _session_lock:
        if _session is None:
            from IPython import get_ipython

            session = NotebookSession(get_ipython())
            session.widgets = False  # no automatic views unless the extension is loaded
            session.tracker.start()
            _session = session
        return _session


def install(session: NotebookSession) -> None:
    """Make ``session`` the active one (stopping the previous) and start it."""
    global _session
    with _session_lock:
        if _session is not None:
            _session.stop()
        _session = session
        session.start()


def uninstall() -> None:
    """Stop and forget the active session."""
    global _session
    with _session_lock:
        if _session is not None:
            _session.stop()
            _session = None


__all__ = ["CellOptions", "LiveRun", "NotebookSession", "NotebookSettings", "active", "get", "settings"]
