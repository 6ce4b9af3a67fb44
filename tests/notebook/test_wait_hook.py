"""The wait hook the notebook layer installs: called while the main thread waits for a run, never elsewhere."""

from __future__ import annotations

import threading

import pytest

from nbflow import completion
from nbflow.completion import Completion, Countdown


@pytest.fixture
def hook():
    calls: list[str] = []
    done = Countdown(1)

    def record() -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            threading.Thread(target=done.tick).start()  # ends from another thread, as a task run does

    completion.set_wait_hook(record)
    yield calls, done
    completion.set_wait_hook(None)


def test_a_main_thread_wait_calls_the_hook_until_it_ends(hook):
    calls, done = hook
    assert done.wait(timeout=30)
    assert calls[:3] == ["MainThread"] * 3


def test_other_threads_block_without_the_hook(hook):
    calls, done = hook
    waited = threading.Thread(target=done.wait, args=(0.2,))
    waited.start()
    waited.join()
    assert calls == []


def test_a_timed_wait_ends_on_time_and_a_failing_hook_is_removed():
    def broken() -> None:
        raise RuntimeError("front end gone")

    completion.set_wait_hook(broken)
    try:
        assert Completion().wait(timeout=0.2) is False
        assert completion._wait_hook is None
    finally:
        completion.set_wait_hook(None)


def test_there_is_no_hook_by_default():
    assert completion._wait_hook is None


def test_short_waits_in_a_row_call_the_hook_once_its_interval_has_passed(monkeypatch):
    """Each of a map's futures may end within the interval: the hook must not wait for a wait to last."""
    calls: list[int] = []
    completion.set_wait_hook(lambda: calls.append(1))
    try:
        monkeypatch.setattr(completion, "_hook_called", 0.0)  # the last call is long ago
        assert completion.wait_step(lambda seconds: True, None)  # a wait whose run ends at once
        assert calls == [1]
        assert completion.wait_step(lambda seconds: True, None)  # the hook ran a moment ago
        assert calls == [1]
    finally:
        completion.set_wait_hook(None)


def test_as_completed_on_the_main_thread_calls_the_hook(hook):
    """``PrefectFutureList.result()`` waits through as_completed: a Cancel click must reach the kernel then."""
    from nbflow import flow, task

    calls, done = hook

    @task
    def waits_for_the_hook(i: int) -> int:
        assert done.wait(timeout=30)  # ended by the third hook call
        return 1

    @flow
    def mapped() -> list[int]:
        return waits_for_the_hook.map(range(2)).result()

    assert mapped() == [1, 1]
    assert calls[:3] == ["MainThread"] * 3


class _Kernel:
    """Just what the widget pump uses of an ipykernel, with its handler dropping a KeyboardInterrupt as
    ipykernel's ``dispatch_shell`` does ("KeyboardInterrupt caught in kernel")."""

    _shell_parent_ident = "ident"

    def __init__(self) -> None:
        self.handled = 0

    def get_parent(self, channel: str) -> dict:
        return {}

    def _get_shell_context_var(self, var: str) -> str:
        return var

    def set_parent(self, ident: str, parent: dict, channel: str) -> None:
        pass

    async def dispatch_shell(self, frames, subshell_id=None, concurrent=False) -> None:
        import os
        import signal

        try:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the comm message is handled
            self.handled += 1
        except KeyboardInterrupt:
            pass


def test_a_ctrl_c_while_the_pump_handles_a_widget_message_reaches_the_waiting_cell():
    from nbflow.notebook.session import WidgetMessagePump

    kernel = _Kernel()
    with pytest.raises(KeyboardInterrupt):
        WidgetMessagePump(kernel)._handle_now([])
    assert kernel.handled == 1  # the message was handled whole, then the interrupt was raised
