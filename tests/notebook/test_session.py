"""The session: automatic live and final views, and task output routed to the starting cell."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from nbflow import flow, task
from nbflow.notebook import session as sessions
from nbflow.notebook.session import CellOptions, NotebookSession
from nbflow.notebook.widget import RedrawClock, RunView


class FakeKernelShell:
    """The parts of ipykernel's shell the output router uses, recording thread parents."""

    def __init__(self) -> None:
        self.parent: Any = {"header": {"msg_id": "cell-1"}}
        self.local = threading.local()
        self.routed: list[tuple[Any, str]] = []  # (parent in force, text) for every echo

    def get_parent(self) -> Any:
        return getattr(self.local, "parent", None) or self.parent

    def set_thread_parent(self, parent: Any) -> Any:
        token = getattr(self.local, "parent", None)
        self.local.parent = parent
        return token

    def reset_thread_parent(self, token: Any) -> None:
        self.local.parent = token


@pytest.fixture
def kernel_session(displays, view_settings, comms):
    shell = FakeKernelShell()
    session = NotebookSession(shell, display=displays, widgets=True, clock=RedrawClock(thread=False))
    sessions.install(session)
    yield session
    sessions.uninstall()


def test_a_quick_run_shows_only_its_final_view(kernel_session, displays, view_settings):
    view_settings.view_delay = 60

    @task
    def one() -> int:
        return 1

    @flow(name="quick")
    def quick() -> int:
        return one.submit().result()

    assert quick() == 1
    kernel_session.clock.tick()
    (final,) = displays.shown
    assert isinstance(final, RunView)
    bundle = final._repr_mimebundle_()
    assert bundle["text/plain"] == "<nbflow run 'quick': Completed, 1 task run>"
    assert "<svg" in bundle["text/html"]


def test_views_can_be_turned_off(kernel_session, displays, view_settings):
    view_settings.auto_view = False

    @flow
    def silent() -> int:
        return 1

    silent()
    assert displays.shown == []


def test_a_cell_can_ask_for_no_view(kernel_session, displays):
    @flow
    def cell() -> int:
        return 1

    kernel_session.cells[cell] = CellOptions(view=False)
    cell()
    assert displays.shown == []


def test_task_output_goes_to_the_cell_that_started_the_flow(kernel_session, gate, monkeypatch):
    import nbflow.logging

    shell = kernel_session.shell
    routed: list[Any] = []
    # The router writes each chunk with the core's echo, under the parent of the cell it belongs to.
    monkeypatch.setattr(nbflow.logging, "echo_to_console", lambda event: routed.append((shell.get_parent(), event.text)))

    @task
    def late_print() -> None:
        gate.wait()
        print("from a worker")

    @flow
    def printing() -> None:
        future = late_print.submit()
        shell.parent = {"header": {"msg_id": "cell-2"}}  # the user ran another cell meanwhile
        gate.open()
        future.wait()

    printing()
    texts = [(parent["header"]["msg_id"], text) for parent, text in routed]
    assert ("cell-1", "from a worker\n") in texts
    assert all(msg_id == "cell-1" for msg_id, _ in texts)


def test_view_on_request_follows_a_running_flow(kernel_session, gate, view_settings):
    view_settings.auto_view = False
    views: list[RunView] = []

    @task
    def hold() -> None:
        gate.wait()

    @flow
    def watched() -> None:
        held = hold.submit()
        from nbflow.runs import last_flow_run

        views.append(kernel_session.view(last_flow_run()))
        kernel_session.clock.tick()
        assert views[0].counts == {"Running": 1} or views[0].counts == {"Pending": 1}
        gate.open()
        held.wait()

    watched()
    kernel_session.clock.tick()
    assert views[0].finished and views[0].counts == {"Completed": 1}
