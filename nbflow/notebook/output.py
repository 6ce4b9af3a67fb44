"""What tasks print lands in the cell that started their flow.

ipykernel sends a thread's output to the cell that is executing *now*, so a
pool thread printing after its cell finished writes into a later cell. The
core captures each task run's output and publishes it as ``output`` and
``log`` events; the :class:`OutputRouter` installed here subscribes to them
in place of the core's console echo and writes each chunk under the parent
message of the cell that started the run's flow (``set_thread_parent``,
ipykernel >= 7.4), so it lands there whichever thread printed it and whenever. Where the kernel lacks that call, the output
goes to the run view's output area instead.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from nbflow import events
from nbflow import logging as nb_logging
from nbflow.records import FlowRun, TaskRun


def can_route(shell: Any) -> bool:
    """True if ``shell`` is a kernel shell that can set a thread's parent message."""
    return shell is not None and hasattr(shell, "set_thread_parent") and hasattr(shell, "get_parent")


def current_parent(shell: Any) -> Any:
    """The parent message of the cell executing in this thread (None outside a kernel)."""
    return shell.get_parent() if can_route(shell) else None


@contextlib.contextmanager
def thread_parent(shell: Any, parent: Any) -> Iterator[None]:
    """Within the block, this thread's output and displays go to ``parent``'s cell."""
    if parent is None or not can_route(shell):
        yield
        return
    tokens = shell.set_thread_parent(parent)
    try:
        yield
    finally:
        shell.reset_thread_parent(tokens)


class OutputRouter:
    """A subscriber to output events: routes a task run's output to the cell that started its flow.

    ``fallback(root_flow_run, stream, text)`` is tried when the kernel cannot
    route by parent (it returns True if it took the text, e.g. into a view).
    """

    def __init__(self, shell: Any, fallback: Callable[[FlowRun, str, str], bool] | None = None, keep: int = 64) -> None:
        self.shell = shell
        self.fallback = fallback
        self._parents: collections.OrderedDict[FlowRun, Any] = collections.OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()
        self._subscription: events.Subscription | None = None

    def remember(self, flow_run: FlowRun, parent: Any) -> None:
        """Route the output of ``flow_run``'s task runs (and its subflows') to ``parent``'s cell."""
        with self._lock:
            self._parents[flow_run] = parent
            while len(self._parents) > self._keep:
                self._parents.popitem(last=False)

    def install(self) -> None:
        """Take over from the core's console echo."""
        if self._subscription is None:
            self._subscription = events.subscribe(self, ("output", "log"))
            nb_logging.console_echo(False)
            nb_logging.info_lines_to("stdout")  # an INFO line in a cell is not an error

    def uninstall(self) -> None:
        """Give the echo back to the core."""
        if self._subscription is not None:
            self._subscription.unsubscribe()
            self._subscription = None
            nb_logging.console_echo(True)
            nb_logging.info_lines_to("stderr")

    def __call__(self, event: events.OutputEvent) -> None:
        run = event.run
        flow_run = run.flow_run if isinstance(run, TaskRun) else run
        root = flow_run.root if flow_run is not None else None
        parent = self._parents.get(root) if root is not None else None
        if parent is not None and can_route(self.shell):
            with thread_parent(self.shell, parent):
                nb_logging.echo_to_console(event)
            return
        if root is not None and self.fallback is not None and event.kind == "output" and self.fallback(root, event.stream, event.text):
            return
        nb_logging.echo_to_console(event)


__all__ = ["OutputRouter", "can_route", "current_parent", "thread_parent"]
