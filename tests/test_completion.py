"""nbflow.completion: things that end once, waiting on them, callbacks, and waiting without blocking a loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from nbflow.completion import Completion, Countdown, blocking_wait, set_thread_pool, wait_all_async, when_all_done

SAFETY = 10.0


class Done(Completion):
    """A completion anyone can end (subclasses end theirs in their own transitions)."""

    __slots__ = ()

    def end(self, before=None) -> bool:
        return self._end(before)


def test_wait_returns_once_it_ends_and_callbacks_run_once():
    done = Done()
    calls = []
    done.add_done_callback(calls.append)
    assert not done.done and not done.wait(timeout=0)
    threading.Thread(target=done.end).start()
    assert done.wait(timeout=SAFETY) and done.done
    assert calls == [done]
    assert not done.end()  # ending twice changes nothing
    assert calls == [done]


def test_callback_added_after_the_end_runs_at_once():
    done = Done()
    done.end()
    calls = []
    done.add_done_callback(calls.append)
    assert calls == [done]


def test_wait_with_timeout_on_an_unfinished_completion_returns_false():
    assert Done().wait(timeout=0.01) is False


def test_end_runs_its_before_step_under_the_lock_exactly_once():
    done = Done()
    steps = []
    assert done.end(lambda: steps.append(1))
    assert not done.end(lambda: steps.append(2))
    assert steps == [1]


def test_countdown_ends_after_n_ticks_and_at_once_for_zero():
    gate = Countdown(3)
    gate.tick()
    gate.tick()
    assert not gate.done
    gate.tick()
    assert gate.done
    assert Countdown(0).done


def test_when_all_done_calls_once_after_the_last_one():
    items = [Done() for _ in range(3)]
    calls = []
    when_all_done(items, lambda: calls.append("go"))
    items[0].end()
    items[2].end()
    assert calls == []
    items[1].end()
    assert calls == ["go"]


def test_when_all_done_with_nothing_pending_calls_at_once():
    finished = Done()
    finished.end()
    calls = []
    when_all_done([finished], lambda: calls.append("go"))
    when_all_done([], lambda: calls.append("empty"))
    assert calls == ["go", "empty"]


def test_wait_async_does_not_block_the_event_loop():
    done = Done()

    async def main() -> list[str]:
        order = []

        async def other() -> None:
            order.append("loop ran")
            done.end()  # ended by another coroutine on the same loop: only possible if not blocked

        waiter = asyncio.ensure_future(done.wait_async())
        await asyncio.gather(other(), asyncio.wait_for(waiter, SAFETY))
        order.append("waited")
        return order

    assert asyncio.run(main()) == ["loop ran", "waited"]


def test_wait_all_async_wakes_when_ended_from_another_thread():
    items = [Done() for _ in range(4)]

    async def main() -> None:
        threading.Thread(target=lambda: [c.end() for c in items]).start()
        await asyncio.wait_for(wait_all_async(items), SAFETY)

    asyncio.run(main())
    assert all(c.done for c in items)


class _Listener:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def blocking(self) -> None:
        self.calls.append("blocking")

    def unblocking(self) -> None:
        self.calls.append("unblocking")


def test_a_wait_in_a_pool_worker_tells_its_pool_around_the_block():
    listener = _Listener()
    done = Done()

    def worker() -> None:
        set_thread_pool(listener)
        try:
            done.wait(timeout=0.01)
            with blocking_wait():
                listener.calls.append("inside")
        finally:
            set_thread_pool(None)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(SAFETY)
    assert listener.calls == ["blocking", "unblocking", "blocking", "inside", "unblocking"]


def test_a_wait_outside_a_pool_tells_nobody():
    listener = _Listener()
    set_thread_pool(None)
    Done().wait(timeout=0)
    assert listener.calls == []


@pytest.mark.parametrize("n", [1, 50])
def test_many_waiters_all_wake(n):
    done = Done()
    woke = []
    threads = [threading.Thread(target=lambda: woke.append(done.wait(SAFETY))) for _ in range(n)]
    for t in threads:
        t.start()
    done.end()
    for t in threads:
        t.join(SAFETY)
    assert woke == [True] * n
