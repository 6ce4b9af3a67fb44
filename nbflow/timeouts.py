"""Deadlines for sync code: ``with deadline(seconds, on_expiry):``.

In the main thread (with no alarm already set) a SIGALRM interrupts the
block even inside ``time.sleep``. In other threads one shared timer thread
raises the exception in the late thread between two bytecodes (CPython's
``PyThreadState_SetAsyncExc``): code blocked in C is interrupted when it
returns to Python, so a late run never completes as if it were on time.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import itertools
import signal
import threading
import time
from typing import Iterator


class DeadlineExceeded(BaseException):
    """Raised into a block that overran its deadline; callers turn it into their own error.

    A BaseException so that ``except Exception`` in user code does not swallow it.
    """


def _set_async_exc(ident: int, exc: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))


def absorb_pending(exc: type[BaseException]) -> None:
    """Let an ``exc`` that was raised into this thread but not delivered yet land here, and drop it.

    Clearing it instead (``PyThreadState_SetAsyncExc`` with NULL) leaves the
    interpreter's eval breaker set for good in CPython 3.11, which slows every
    thread of the process from then on; delivering it on a backward jump
    clears the breaker as CPython intends.
    """
    try:
        for _ in range(3):  # each backward jump checks for a pending asynchronous exception
            pass
    except exc:
        pass


class _Timer:
    """One daemon thread holding a heap of (when, entry) deadlines."""

    def __init__(self) -> None:
        self._heap: list = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._seq = itertools.count()

    def add(self, when: float, entry: "_Entry") -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), entry))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="nbflow-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].finished:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                when, _, entry = self._heap[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                entry.fire()


class _Entry:
    __slots__ = ("ident", "finished", "fired", "lock")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.finished = False
        self.fired = False
        self.lock = threading.Lock()

    def fire(self) -> None:
        with self.lock:
            if not self.finished:
                self.fired = True
                _set_async_exc(self.ident, DeadlineExceeded)

    def finish(self) -> None:
        """The block ended (called in its thread): a deadline that fired too late is absorbed here."""
        with self.lock:
            self.finished = True
            fired = self.fired
        if fired:
            absorb_pending(DeadlineExceeded)


_timer = _Timer()


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`DeadlineExceeded` in the block if it runs longer than ``seconds``."""
    if seconds is None:
        yield
        return
    if threading.current_thread() is threading.main_thread() and _alarm_free():
        with _alarm(seconds):
            yield
        return
    entry = _Entry(threading.get_ident())
    _timer.add(time.monotonic() + seconds, entry)
    try:
        yield
    finally:
        entry.finish()


def _alarm_free() -> bool:
    return hasattr(signal, "setitimer") and signal.getitimer(signal.ITIMER_REAL)[0] == 0


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: object) -> None:
        raise DeadlineExceeded()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-6))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def interrupt_thread(ident: int, exc: type[BaseException]) -> None:
    """Raise ``exc`` in thread ``ident`` at its next bytecode (used to cancel running runs)."""
    _set_async_exc(ident, exc)


__all__ = ["deadline", "DeadlineExceeded", "interrupt_thread", "absorb_pending"]
