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
