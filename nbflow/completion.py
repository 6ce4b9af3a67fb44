"""Things that end once: waiting for them, and being called back when they do.

A :class:`Completion` is the part of a task run record that futures, ``wait``,
``as_completed`` and runners' scheduling rely on. Waiting blocks on a private
lock (interruptible by Ctrl-C) and never polls; a thread of a worker pool that
blocks lends its execution slot to a stand-in thread meanwhile (see
:func:`blocking_wait`), so a task that waits on tasks never deadlocks its pool.
From a coroutine, ``await completion.wait_async()`` waits without blocking the
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Protocol


class BlockingListener(Protocol):
    """What a worker pool provides so that a worker that blocks can lend its slot."""

    def blocking(self) -> None: ...

    def unblocking(self) -> None: ...


_worker = threading.local()

#: Seconds between two calls of the wait hook while the main thread blocks.
WAIT_HOOK_INTERVAL = 0.05
_wait_hook: Callable[[], Any] | None = None


def set_wait_hook(hook: Callable[[], Any] | None) -> None:
    """Call ``hook()`` every ``WAIT_HOOK_INTERVAL`` s while the main thread blocks in a wait (None: never).

    The notebook layer installs one that handles the kernel's widget messages,
    so a view's Cancel button works while a plain flow call in a cell waits
    for its task runs. With no hook (scripts) a wait is one blocking acquire.
    """
    global _wait_hook
    _wait_hook = hook


_hook_called = 0.0  # when the main thread last called the wait hook (time.monotonic)


def wait_step(attempt: Callable[[float | None], bool], timeout: float | None) -> bool:
    """Block in ``attempt(seconds)`` (None: no limit) until it returns True or ``timeout`` passes.

    On the main thread with a wait hook set, the wait is cut into short
    attempts with ``hook()`` called between them; it also begins with a call
    when the last one is ``WAIT_HOOK_INTERVAL`` old, so a loop of short waits
    (``.result()`` of a map's futures, one by one) calls it as often as one
    long wait does.
    """
    global _hook_called
    hook = _wait_hook
    if hook is None or threading.current_thread() is not threading.main_thread():
        return attempt(None if timeout is None else max(timeout, 0))
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
    due = time.monotonic() - _hook_called >= WAIT_HOOK_INTERVAL
    while True:
        if due:
            _hook_called = time.monotonic()
            try:
                hook()
            except Exception:  # the hook serves a front end: a failure there must not break the wait
                logging.getLogger("nbflow").exception("nbflow: the wait hook failed; it is removed")
                set_wait_hook(None)
                hook = _no_hook
        due = True
        step = WAIT_HOOK_INTERVAL if deadline is None else min(WAIT_HOOK_INTERVAL, max(0.0, deadline - time.monotonic()))
        if attempt(step):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


def _lock_attempt(lock: threading.Lock) -> Callable[[float | None], bool]:
    return lambda seconds: lock.acquire(timeout=-1 if seconds is None else seconds)


def _no_hook() -> None:
    return None


def set_thread_pool(pool: BlockingListener | None) -> None:
    """Declare that this thread is a worker of ``pool`` (``None``: of no pool)."""
    _worker.pool = pool


@contextlib.contextmanager
def blocking_wait() -> Iterator[None]:
    """Wrap a blocking wait: inside a pool worker, the pool starts a stand-in thread."""
    pool = getattr(_worker, "pool", None)
    if pool is None:
        yield
        return
    pool.blocking()
    try:
        yield
    finally:
        pool.unblocking()


_ENDING = "ending"  # _done while a completion's end is published: taken, not yet seen by readers
_STRIPES = tuple(threading.Lock() for _ in range(1021))  # a prime: runs' addresses spread over all of them


class Completion:
    """Something that ends once: waiters block on it, callbacks run when it ends.

    A lock guards the done flag, the waiter list and the callback list; it is
    held for a few bytecodes. Completions share a few dozen locks, picked by
    address: no lock object per run (a big map has a million runs), and so
    many that worker threads seldom meet on one (when they do, the one that
    waits gives up the GIL and a convoy forms: one lock tripled the per-task
    cost of a 32-thread pool, 61 still doubled it at a million runs). Subclasses use it (``self._lock``) to
    make their own transitions atomic with the end; none is held while
    another completion's is taken.
    """

    __slots__ = ("_done", "_waiters", "_callbacks")

    @property
    def _lock(self) -> threading.Lock:
        return _STRIPES[(id(self) >> 4) % len(_STRIPES)]

    def __init__(self) -> None:
        self._done = False
        self._waiters: list[threading.Lock] | None = None
        self._callbacks: list[Callable[[Any], Any]] | None = None

    @property
    def done(self) -> bool:
        """True once it has ended."""
        return self._done is True

    @property
    def ended(self) -> bool:
        """True from the moment its end is taken: while that end is published (``done`` still False), and after."""
        return self._done is not False

    def _end(self, before: Callable[[], Any] | None = None) -> bool:
        """End it, calling ``before()`` under the lock first; False (and no call) if it had ended.

        It is ending (no other end is taken) while :meth:`_ended` runs, and
        done for readers only after: whoever sees it done, or is woken by
        it, also sees what ``_ended`` published (a run's final event).
        """
        with self._lock:
            if self._done:
                return False
            if before is not None:
                before()
            self._done = _ENDING
        try:
            self._ended()
        finally:  # even if publishing failed (a RecursionError deep down): no waiter waits forever
            with self._lock:
                self._done = True
                waiters, self._waiters = self._waiters, None
                callbacks, self._callbacks = self._callbacks, None
            if waiters:
                for lock in waiters:
                    lock.release()
            if callbacks:
                for callback in callbacks:
                    callback(self)
        return True

    def _ended(self) -> None:
        """Called once its end is taken, before readers see it done, waiters wake and callbacks run."""

    def add_done_callback(self, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(self)`` once it has ended (at once if it already has)."""
        with self._lock:
            if self._done is not True:
                if self._callbacks is None:
                    self._callbacks = [callback]
                else:
                    self._callbacks.append(callback)
                return
        callback(self)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until it has ended or ``timeout`` seconds pass; True if it has ended."""
        if self._done is True:
            return True
        lock = threading.Lock()
        lock.acquire()
        with self._lock:
            if self._done is True:
                return True
            if self._waiters is None:
                self._waiters = [lock]
            else:
                self._waiters.append(lock)
        try:
            with blocking_wait():
                finished = wait_step(_lock_attempt(lock), timeout)
        finally:
            if self._done is not True:
                with self._lock:
                    if self._waiters is not None and lock in self._waiters:
                        self._waiters.remove(lock)
        return finished or self._done is True

    async def wait_async(self) -> None:
        """Wait on the running event loop until it has ended (the loop goes on meanwhile)."""
        if self._done is True:
            return
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def wake(_: Any) -> None:
            loop.call_soon_threadsafe(_resolve, ended)

        self.add_done_callback(wake)
        await ended


def _resolve(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


class Countdown(Completion):
    """Ends when :meth:`tick` has been called ``n`` times (at once for ``n == 0``)."""

    __slots__ = ("_left",)

    def __init__(self, n: int) -> None:
        super().__init__()
        self._left = n
        if n <= 0:
            self._end()

    def tick(self, _: Any = None) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._end()


def when_all_done(completions: Iterable[Completion], then: Callable[[], Any]) -> None:
    """Call ``then()`` once every one of ``completions`` has ended; no thread waits meanwhile."""
    pending = [c for c in completions if not c.done]
    if not pending:
        then()
        return
    gate = Countdown(len(pending))
    gate.add_done_callback(lambda _: then())
    for completion in pending:
        completion.add_done_callback(gate.tick)


async def wait_all_async(completions: Iterable[Completion]) -> None:
    """Await every one of ``completions`` without blocking the event loop."""
    pending = [c for c in completions if not c.done]
    if pending:
        gate = Countdown(len(pending))
        for completion in pending:
            completion.add_done_callback(gate.tick)
        await gate.wait_async()


__all__ = [
    "BlockingListener",
    "Completion",
    "Countdown",
    "WAIT_HOOK_INTERVAL",
    "blocking_wait",
    "set_thread_pool",
    "set_wait_hook",
    "wait_step",
    "wait_all_async",
    "when_all_done",
]
