"""Deadlines and interrupts for code running in a thread, and what to do when it does not react.

A :class:`Watch` stands for one call running in one thread. Other threads may
interrupt it (:meth:`Watch.interrupt`): the exception is raised in the call's
thread at its next bytecode (CPython's ``PyThreadState_SetAsyncExc``), which
stops code running Python at once. Code blocked in C (``time.sleep``, I/O, a
C extension) only sees it when it returns to Python, so a watch that can be
*abandoned* gives up on such a call :data:`ABANDON_AFTER` seconds later: its
owner carries on without it (nbflow ends the task run and its worker thread
is replaced) and what the call returns later is discarded.

A deadline (:meth:`Watch.arm`, or ``with deadline(seconds):``) is an
interrupt at a set time: in the main thread a SIGALRM interrupts even
``time.sleep``; in other threads one shared timer thread raises
:class:`DeadlineExceeded`. Code that swallows it still overran: the call
counts as timed out.

While a flow or task runs code in the main thread, SIGINT raises
:class:`~nbflow.exceptions.KernelInterrupt` (:func:`mark_real_interrupts`), so
that a real interrupt is told from a ``KeyboardInterrupt`` that code raises.
"""

from __future__ import annotations

import _signal  # signal's C functions: the public wrappers convert numbers to enums (~5 us a call)
import contextlib
import ctypes
import heapq
import itertools
import logging
import signal
import threading
import time
from typing import Any, Callable, Iterator, Protocol

from nbflow.exceptions import KernelInterrupt

logger = logging.getLogger("nbflow.timeouts")

#: Seconds an interrupted call may take to react before an abandonable watch gives up on it.
ABANDON_AFTER = 0.2

MAIN_THREAD = threading.main_thread().ident


class DeadlineExceeded(BaseException):
    """Raised into a block that overran its deadline; callers turn it into their own error.

    A BaseException so that ``except Exception`` in user code does not swallow it.
    """


def _set_async_exc(ident: int, exc: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))


def absorb_pending(exc: type[BaseException] | tuple[type[BaseException], ...]) -> None:
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


def interrupt_thread(ident: int, exc: type[BaseException]) -> None:
    """Raise ``exc`` in thread ``ident`` at its next bytecode (the notebook layer stops a cell's body with it)."""
    _set_async_exc(ident, exc)


# -- the timer thread -------------------------------------------------------------------
class _Timer:
    """One daemon thread calling functions at set times: deadlines of calls (dropped once the
    watched call has ended), and of remote attempts and retry delays (``call_later``)."""

    def __init__(self) -> None:
        self._heap: list = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._seq = itertools.count()

    def add(self, when: float, watch: "Watch | None", action: Callable[..., Any], *args: Any) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), watch, action, args))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="nbflow-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2] is not None and self._heap[0][2].claims:
                        heapq.heappop(self._heap)  # its call has ended
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay > 0:
                        self._cond.wait(delay)
                        continue
                    _, _, _, action, args = heapq.heappop(self._heap)
                    break
            try:  # outside the lock: an action may arm deadlines of its own
                action(*args)
            except Exception:
                logger.exception("nbflow's deadline timer: %r failed", action)


_timer = _Timer()


def call_later(delay: float, fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn(*args)`` on nbflow's timer thread after ``delay`` seconds (it must return at once)."""
    _timer.add(time.monotonic() + delay, None, fn, *args)


_interrupt_lock = threading.Lock()  # interrupters of every watch take turns; the watched thread never waits long


# -- watches ------------------------------------------------------------------------------------
class Watch:
    """One call running in the thread that created the watch, which others may interrupt.

    The watched thread ends the watch in two steps, in this order:
    ``watch.claims.append(True)`` as the first statement of a ``finally``
    around the call (a list append cannot be cut short by an interrupt landing,
    unlike a method call), then :meth:`settle` (repeat it if an interrupt of
    this watch lands inside it); ``settle`` is needed only if ``raised`` (the
    interrupts raised into the call) is not empty then, or a deadline was
    armed. The first item of ``claims`` says who ended the call: ``True`` the
    call itself, ``False`` someone who abandoned it.

    A subclass that sets ``abandonable = True`` and defines :meth:`abandoned`
    gives up on a call that has not reacted to an interrupt
    :data:`ABANDON_AFTER` seconds later.
    """

    __slots__ = ("ident", "claims", "raised", "_alarm", "_then")

    abandonable = False

    def __init__(self) -> None:
        self.ident = threading.get_ident()
        self.claims: list[bool] = []
        self.raised: tuple[type[BaseException], ...] = ()  # the interrupts raised into the call
        self._alarm: tuple | None = None  # (the SIGALRM handler to restore,) when a deadline set an alarm
        self._then: Callable[[], Any] | None = None  # what else to stop at the deadline (held here, not by the timer)

    def arm(self, seconds: float, then: Callable[[], Any] | None = None) -> None:
        """Interrupt the call with DeadlineExceeded ``seconds`` from now; then call ``then()``.

        In the main thread a SIGALRM interrupts it even in ``time.sleep`` (and
        ``then`` is not needed: the call unwinds). An alarm already set (an
        outer deadline, pytest-timeout's) is set aside while this one is
        sooner, and set again, for what is left of it, once the call ends.
        Elsewhere the timer thread raises it, and calls ``then``: what else
        should stop.
        """
        if self.ident == MAIN_THREAD and hasattr(signal, "setitimer"):
            left, interval = signal.getitimer(signal.ITIMER_REAL)
            if left == 0 or left > seconds:
                self._alarm = (signal.signal(signal.SIGALRM, self._on_alarm), left, interval, time.monotonic())
                signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-6))
                return
        self._then = then
        _timer.add(time.monotonic() + seconds, self, self._expire, None)

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if not self.claims:
            self.raised += (DeadlineExceeded,)
            raise DeadlineExceeded()

    def _expire(self, _: Any) -> None:
        then = self._then
        if self.interrupt(DeadlineExceeded) and then is not None:
            then()

    def interrupt(self, exc: type[BaseException]) -> bool:
        """Raise ``exc`` in the call's thread at its next bytecode; False if the call has ended.

        An abandonable watch gives up on the call if it has not ended
        :data:`ABANDON_AFTER` seconds later.
        """
        with _interrupt_lock:
            # Noted before looking: the watched thread, once it has claimed its end, reads
            # ``raised`` without the lock, and settles if anything may have been raised.
            self.raised += (exc,)
            if self.claims:
                self.raised = self.raised[:-1]
                return False
            _set_async_exc(self.ident, exc)
        if self.abandonable:
            _timer.add(time.monotonic() + ABANDON_AFTER, self, self._abandon, exc)
        return True

    def _abandon(self, exc: type[BaseException]) -> None:
        claims = self.claims
        claims.append(False)
        if claims[0] is False:
            self.abandoned(exc)

    def abandoned(self, exc: type[BaseException]) -> None:
        """Called (in the timer thread) when the call did not react to ``exc`` in time."""

    def settle(self) -> None:
        """Once the call claimed its end: disarm its alarm; let an interrupt in flight land, and drop it."""
        self._then = None
        if self._alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            previous, left, interval, armed = self._alarm  # previous None: set outside Python
            signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
            if left:  # the alarm set aside, for what is left of it (at once, if that has passed)
                signal.setitimer(signal.ITIMER_REAL, max(left - (time.monotonic() - armed), 1e-6), interval)
            self._alarm = None
        if self.raised:
            with _interrupt_lock:  # an interrupter that saw the call running has raised by now
                pass
            absorb_pending(self.raised)


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`DeadlineExceeded` in the block if it runs longer than ``seconds``.

    A block that swallows it still raises it as it exits: it overran.
    """
    if seconds is None:
        yield
        return
    watch = Watch()
    try:
        watch.arm(seconds)
        yield
    finally:
        watch.claims.append(True)
        settle(watch)
    if watch.raised:
        raise DeadlineExceeded()


def settle(watch: Watch) -> BaseException | None:
    """Run ``watch.settle()`` to its end; return an interrupt of the watch that landed meanwhile (else None)."""
    landed = None
    while True:
        try:
            watch.settle()
            return landed
        except BaseException as exc:
            if not isinstance(exc, watch.raised):
                raise
            landed = exc


# -- who carries on when a call is abandoned ---------------------------------------------
class ThreadHost(Protocol):
    """What owns a thread (a worker pool) and takes over when a call in it is abandoned."""

    def abandon(self, ident: int, continuation: Callable[[], Any]) -> None:
        """Thread ``ident`` is stuck in an abandoned call: let it go, run ``continuation()`` in its place."""


_hosts: dict[int, ThreadHost] = {}


def set_thread_host(host: ThreadHost | None) -> None:
    """Declare that ``host`` owns the calling thread (``None``: nobody does)."""
    if host is None:
        _hosts.pop(threading.get_ident(), None)
    else:
        _hosts[threading.get_ident()] = host


def hand_over(ident: int, continuation: Callable[[], Any]) -> None:
    """Run ``continuation()`` instead of the stuck thread ``ident``: by its host, or in a new thread."""
    host = _hosts.get(ident)
    if host is not None:
        host.abandon(ident, continuation)
    else:
        threading.Thread(target=continuation, name="nbflow-continuation", daemon=True).start()


# -- telling a real interrupt from a KeyboardInterrupt raised by code --------------------------
def _real_interrupt(signum: int, frame: Any) -> None:
    raise KernelInterrupt()


_marked = False  # our SIGINT handler is installed (touched by the main thread only)


def mark_real_interrupts() -> bool:
    """In the main thread, make SIGINT raise KernelInterrupt; True if this call installed the handler.

    Only over Python's default handler: one someone else installed (asyncio,
    a ``%%flow`` cell, the application) is left alone, as is our own (nested
    runs). Undo with :func:`restore_interrupts`.
    """
    global _marked
    if _marked or threading.get_ident() != MAIN_THREAD:
        return False
    if _signal.getsignal(_signal.SIGINT) is not _signal.default_int_handler:
        return False
    _signal.signal(_signal.SIGINT, _real_interrupt)
    _marked = True
    return True


def restore_interrupts(installed: bool) -> None:
    """Put Python's default SIGINT handler back if :func:`mark_real_interrupts` installed ours.

    Not if someone replaced ours meanwhile.
    """
    global _marked
    if installed:
        _marked = False
        if _signal.getsignal(_signal.SIGINT) is _real_interrupt:
            _signal.signal(_signal.SIGINT, _signal.default_int_handler)


__all__ = [
    "ABANDON_AFTER",
    "DeadlineExceeded",
    "ThreadHost",
    "Watch",
    "absorb_pending",
    "call_later",
    "deadline",
    "hand_over",
    "interrupt_thread",
    "mark_real_interrupts",
    "restore_interrupts",
    "set_thread_host",
    "settle",
]
