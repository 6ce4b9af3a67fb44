"""What ``%load_ext nbflow`` switches on: run tracking, live views, output routing.

A :class:`NotebookSession` owns the one :class:`~nbflow.notebook.viewmodel.Tracker`
on the event seam, the one :class:`~nbflow.notebook.widget.RedrawClock`, and
the output router. When a top-level flow run starts in a kernel it notes
the cell that started it; if the run lasts longer than ``settings.view_delay``
its live view appears in that cell (one display id per run), and when it ends
that output is replaced by the final static picture (stable text and HTML, no
widget), so a notebook saved and reopened anywhere -- no kernel, nbconvert,
GitHub -- shows it. The front end that drew the live view keeps it interactive
in the picture's place. A run quicker than ``view_delay`` shows its final view
(widget and picture) at once, replaced by the picture once a front end drew it.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nbflow import completion
from nbflow.notebook import output
from nbflow.notebook.viewmodel import Tracker
from nbflow.report.model import RunModel
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

    def __init__(self, session: NotebookSession, model: RunModel, parent: Any, auto_display: bool, cancel: Callable[[], Any] | None) -> None:
        self.session = session
        self.model = model
        self.parent = parent
        self.auto_display = auto_display
        self.cancel = cancel
        self.started = time.monotonic()
        self.view: Any = None
        self.shown_live = False
        self.ended = model.flow_run.state.is_final()  # a view asked for after the run
        self.display_id = uuid.uuid4().hex
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

            self.view = RunView(self.model, cancel=self.cancel)
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
                    self.session.show(view.live_bundle(), self.display_id)
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
            if not self.auto_display:
                return
            session, display_id = self.session, self.display_id

            def replace() -> None:  # the picture takes the widget's place, in the same output
                session.replace(view.static_bundle(), display_id)

            with output.thread_parent(session.shell, self.parent):
                if self.shown_live:
                    replace()
                else:
                    session.show(view, display_id)
                    view.when_rendered(replace)


class WidgetMessagePump:
    """Handles the kernel's widget messages while the main thread waits for task runs (a wait hook).

    A plain flow call in a cell (``analysis(10000)``) blocks the kernel's main
    thread, whose event loop then reads no message: a click on the view's
    Cancel button would be handled after the run. Installed as
    :func:`nbflow.completion.set_wait_hook`, the pump reads the messages
    queued for the main shell without blocking, as jupyter-ui-poll does:
    comm messages are handled at once (with the cell's parent restored after,
    so the cell's own output and status stay its own); any other request
    (the next cell, a kernel-info request) is handed back to the kernel's loop,
    in order, to be handled once the cell ends. Knows ipykernel 7 (its shell
    channel thread) and a kernel reading its shell socket itself.
    """

    COMM_MESSAGES = frozenset({"comm_open", "comm_msg", "comm_close"})

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self._busy = False

    def _socket(self) -> Any:
        import zmq

        channel = getattr(self.kernel, "shell_channel_thread", None)
        pair = getattr(getattr(channel, "manager", None), "_shell_channel_to_main", None) if channel else None
        socket = pair.to_socket if pair is not None else getattr(getattr(self.kernel, "shell_stream", None), "socket", None)
        return socket if isinstance(socket, zmq.Socket) else None

    def __call__(self) -> None:
        if self._busy:  # a handler that itself waits must not pump again
            return
        self._busy = True
        try:
            self._pump()
        finally:
            self._busy = False

    def _pump(self) -> None:
        import asyncio

        import zmq

        kernel, socket = self.kernel, self._socket()
        if socket is None or kernel.session is None:
            return
        while True:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                _, parts = kernel.session.feed_identities(frames, copy=False)
                kind = kernel.session.deserialize(parts, content=False, copy=False)["header"]["msg_type"]
            except Exception:  # not ours to judge: the kernel's loop reports it
                kind = None
            if kind in self.COMM_MESSAGES:
                self._handle_now(frames)
            else:  # handled by the kernel's loop, in order, once the cell ends
                asyncio.get_event_loop().call_soon(
                    lambda frames=frames: asyncio.ensure_future(kernel.shell_main(None, frames))
                )

    def _handle_now(self, frames: list) -> None:
        import signal

        kernel = self.kernel
        parent = kernel.get_parent("shell")
        ident = kernel._get_shell_context_var(kernel._shell_parent_ident)
        # ipykernel logs and drops a KeyboardInterrupt raised in a message handler: a Ctrl-C that
        # lands meanwhile is held, then delivered to the waiting cell once the handler returned.
        held: list[Any] = []
        previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
        handling = kernel.dispatch_shell(frames, subshell_id=None, concurrent=True)
        try:
            handling.send(None)  # comm handlers are synchronous: it ends without suspending
        except StopIteration:
            pass
        else:
            handling.close()
        finally:
            signal.signal(signal.SIGINT, previous)
            kernel.set_parent(ident, parent, channel="shell")
        if held and callable(previous):
            previous(signal.SIGINT, held[0])


class NotebookSession:
    """The notebook layer's live state for one IPython shell."""

    def __init__(
        self,
        shell: Any,
        display: Callable[..., Any] | None = None,
        widgets: bool | None = None,
        clock: Any = None,
        update: Callable[[dict, str], Any] | None = None,
    ) -> None:
        """``display(obj, raw=...)`` and ``update(bundle, display_id)`` stand in for IPython's (tests, benchmarks).

        With IPython's own, each run's output has a display id; a ``display``
        given without ``update`` shows replacements as new displays.
        """
        from nbflow.notebook.widget import RedrawClock

        self.shell = shell
        self._display_ids = display is None
        if display is None:
            from IPython.display import display as ipython_display
            from IPython.display import update_display

            display = ipython_display
            update = update or (lambda bundle, display_id: update_display(bundle, raw=True, display_id=display_id))
        self.display: Callable[..., Any] = display
        self.update: Callable[[dict, str], Any] = update or (lambda bundle, _id: self.display(bundle, raw=True))
        #: Whether a front end can show widgets (a kernel); tests may set it.
        self.widgets = getattr(shell, "kernel", None) is not None if widgets is None else widgets
        self.tracker = Tracker(on_flow_state=self._flow_state, on_cluster=self._cluster)
        self.clock = clock or RedrawClock(settings.redraw_hz)
        self.router = output.OutputRouter(shell, fallback=self._view_output)
        self.live: dict[FlowRun, LiveRun] = {}
        self.cells: weakref.WeakKeyDictionary[Any, CellOptions] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Watch flow runs and route their output; in a kernel, pump widget messages while the main thread waits."""
        self.tracker.start()
        self.router.install()
        kernel = getattr(self.shell, "kernel", None)
        if self.widgets and kernel is not None and hasattr(kernel, "dispatch_shell"):
            completion.set_wait_hook(WidgetMessagePump(kernel))

    def stop(self) -> None:
        """Stop watching, routing, redrawing and pumping."""
        self.tracker.stop()
        self.router.uninstall()
        self.clock.stop()
        completion.set_wait_hook(None)

    # -- flow runs starting and ending -----------------------------------------------------
    def _flow_state(self, flow_run: FlowRun, state: State) -> None:
        if state.type is StateType.RUNNING and flow_run not in self.live:
            self._started(flow_run)
        elif state.is_final():
            live = self.live.get(flow_run)
            if live is not None:
                live.end()

    def _cluster(self, root: FlowRun, event: Any) -> None:
        # A runner starting its cluster comes before Running: the view shows "starting Dask cluster…".
        if event.phase == "starting" and root not in self.live and not root.state.is_final():
            self._started(root)

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

    def show(self, obj: Any, display_id: str) -> None:
        """Display ``obj`` (a view, or a raw bundle) as the output ``display_id``."""
        raw = isinstance(obj, dict)
        if self._display_ids:
            self.display(obj, raw=raw, display_id=display_id)
        else:
            self.display(obj, raw=raw)

    def replace(self, bundle: dict, display_id: str) -> None:
        """Replace the output ``display_id`` by ``bundle`` (from any thread, even after its cell ended)."""
        self.update(bundle, display_id)

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


__all__ = ["CellOptions", "LiveRun", "NotebookSession", "NotebookSettings", "WidgetMessagePump", "active", "get", "settings"]
