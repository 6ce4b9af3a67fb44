"""A thread pool that never deadlocks on tasks waiting for tasks.

Like ``concurrent.futures.ThreadPoolExecutor`` it starts threads lazily, up to
``max_workers``, reusing idle ones; past ``eager`` threads (the default
runner's pool has no small cap) it adds threads only while the queue waits on
workers that are stuck or idle on I/O (see :meth:`WorkerPool._ramp`), so a map
of small tasks does not start a thread per item. Unlike it, a worker that blocks on a task
run's result (``Completion.wait`` calls :meth:`WorkerPool.blocking`) lends its
slot to a new thread, so at most ``max_workers`` threads *execute* at once
while a task that submits tasks and waits on them always makes progress, even
with ``max_workers=1``. A worker that resumes takes its slot back (it waits
for one to be free), and extra threads leave once the blocked ones resume.

A busy pool takes no lock per item: a worker keeps its slot from one item
to the next while the queue has work, and :meth:`WorkerPool.submit` reads
the counters before it locks to claim an idle thread or start one (one
shared lock taken three times per item made a 2-core map 1.5-2x slower:
worker threads queued on it and for the GIL in turn).

A worker stuck in a call that nbflow abandoned (a task run blocked in C past
its deadline or a cancel, see ``nbflow.timeouts``) leaves the pool at once:
a new thread takes its place and its slot, runs the abandoned run's
continuation first, then serves the queue; the stuck thread exits when its
call finally returns.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from nbflow.completion import set_thread_pool
from nbflow.timeouts import call_later, set_thread_host

_STOP = object()

#: Seconds between two looks at a queue that waits for threads past the eager ones.
RAMP_INTERVAL = 0.005
#: Below this share of one core used by the process, queued work waits on threads that wait (on I/O, a sleep).
RAMP_CPU_SHARE = 0.5
#: Seconds a thread beyond the eager ones stays without work before it leaves.
IDLE_EXIT = 2.0


def _cpu_available() -> float:
    """The share of a core a runnable thread gets now: 1, or less while the machine's load exceeds its cores."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return 1.0
    return min(1.0, (os.cpu_count() or 1) / max(load, 1e-9))


class WorkerPool:
    """Threads calling ``target(item)`` for every item given to :meth:`submit`."""

    def __init__(self, target: Callable[[Any], Any], max_workers: int, name: str, eager: int | None = None) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self._target = target
        self._max = max_workers
        self._eager = max_workers if eager is None else max(1, min(eager, max_workers))
        self._finished = 0  # items the workers ended (the ramp's measure of progress)
        self._ramping = False  # a look at the queue is scheduled
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._slot_free = threading.Condition(self._lock)
        self._threads = 0
        self._idle = 0  # threads waiting for an item
        self._claims = 0  # items queued for those idle threads (each wakes one)
        self._blocked = 0
        self._running = 0  # threads executing an item and not blocked
        self._slot_waiters = 0
        self._closed = False
        self._blocked_threads: set[int] = set()  # idents of the workers now lending their slot
        self._abandoned: set[int] = set()  # idents of stuck workers that left the pool

    @property
    def max_workers(self) -> int:
        return self._max

    def submit(self, item: Any) -> None:
        """Queue ``item``; start a thread if no idle one can take it.

        While every thread is busy and no more may start (a big map, submitted
        faster than it runs) this takes no lock: the counters are read first,
        and the lock is taken only to claim an idle thread or to start one.
        """
        if self._closed:
            raise RuntimeError(f"{self._name} is shut down; it takes no new work")
        ramp = spawn = False
        threads, blocked = self._threads, self._blocked
        if self._idle > self._claims or threads < self._eager + blocked or (
                not self._ramping and threads < self._max + blocked):
            with self._lock:
                if self._closed:
                    raise RuntimeError(f"{self._name} is shut down; it takes no new work")
                if self._idle > self._claims:
                    self._claims += 1  # an idle thread will take it
                else:
                    spawn = self._threads < self._eager + self._blocked
                    if spawn:
                        self._threads += 1
                    elif not self._ramping and self._threads < self._max + self._blocked:
                        self._ramping = ramp = True
        self._queue.put(item)
        if spawn:
            self._spawn()
        elif ramp:
            self._look_later()

    def _look_later(self) -> None:
        call_later(RAMP_INTERVAL, self._ramp, time.process_time(), time.monotonic(), self._finished)

    def _ramp(self, cpu: float, wall: float, finished: int) -> None:
        """Past the eager threads: add threads while the queue waits on workers that wait.

        Runs on the timer thread every ``RAMP_INTERVAL`` while items wait. The
        workers wait (on I/O, a sleep, a stuck call) when, since the last look,
        the process used less than ``RAMP_CPU_SHARE`` of the core it can get
        (on a machine busy elsewhere, less than a whole one) and fewer
        items ended than there are workers: then the pool doubles, at most by
        the items waiting. So a thousand sleeping tasks all run within a few
        looks, as with a thread per task, while small tasks keep the eager
        threads, even when they queue for the GIL or the machine is busy
        elsewhere (they keep ending). Threads added so leave after
        ``IDLE_EXIT`` seconds without work.
        """
        share = (time.process_time() - cpu) / max(time.monotonic() - wall, 1e-9)
        threshold = RAMP_CPU_SHARE * _cpu_available()
        with self._lock:
            waiting = self._queue.qsize() - self._idle
            if self._closed or waiting <= 0:
                self._ramping = False
                return
            spawn = 0
            workers = self._threads - self._blocked
            if share < threshold and self._finished - finished < workers:
                spawn = min(max(workers, 1), waiting, self._max + self._blocked - self._threads)
                self._threads += spawn
        for _ in range(spawn):
            self._spawn()
        self._look_later()

    def _spawn(self, first: Callable[[], Any] | None = None, has_slot: bool = False) -> None:
        thread = threading.Thread(
            target=self._work, args=(first, has_slot), name=f"{self._name}-{self._threads}", daemon=True
        )
        thread.start()

    def _work(self, first: Callable[[], Any] | None, has_slot: bool) -> None:
        # A worker holds an execution slot from the item it takes until it finds the queue empty:
        # items taken one after another cost it no lock, unless a resumed worker waits for a slot.
        set_thread_pool(self)
        set_thread_host(self)
        ident = threading.get_ident()
        get_now = self._queue.get_nowait
        target = self._target
        lock = self._lock
        holding = has_slot
        try:
            if first is not None:  # an abandoned worker's continuation, in its place
                if not holding:
                    with lock:
                        self._take_slot()
                    holding = True
                first()
                first = None
                holding, leave = self._after_item(ident)
                if leave:
                    return
            while True:
                try:
                    item = get_now()
                except queue.Empty:
                    item = self._wait_for_item(holding)  # it comes with a slot
                    holding = True
                if item is _STOP:
                    return
                if not holding:
                    with lock:
                        self._take_slot()
                    holding = True
                target(item)
                item = None
                holding, leave = self._after_item(ident)
                if leave:
                    return
        finally:
            set_thread_host(None)

    def _wait_for_item(self, holding: bool) -> Any:
        """Block for the next item as an idle worker and take a slot for it; ``_STOP`` if the pool
        shuts down or this thread leaves it."""
        with self._lock:
            if holding:
                self._give_slot()
            self._idle += 1
        while True:
            try:
                item = self._queue.get(timeout=IDLE_EXIT) if self._eager < self._max else self._queue.get()
            except queue.Empty:
                if self._leave_idle():
                    return _STOP
                continue
            if item is _STOP:
                return item
            with self._lock:
                self._idle -= 1
                if self._claims:
                    self._claims -= 1
                self._take_slot()
            return item

    def _leave_idle(self) -> bool:
        """An idle worker waited ``IDLE_EXIT`` seconds for work: it leaves if it is beyond the eager ones."""
        with self._lock:
            if self._threads > self._eager + self._blocked and not self._closed:
                self._idle -= 1
                self._threads -= 1
                self._claims = min(self._claims, self._idle)
                return True
            return False

    def _after_item(self, ident: int) -> tuple[bool, bool]:
        """The item just done ended: (whether this worker still holds its slot, whether it leaves the pool)."""
        self._finished += 1  # unlocked: an increment lost to a race only delays the ramp's next step
        if not (self._abandoned or self._slot_waiters or self._threads > self._max + self._blocked):
            return True, False  # the common case, read without the lock: keep the slot, take the next item
        with self._lock:
            if self._abandoned and ident in self._abandoned:
                self._abandoned.discard(ident)  # its place and slot went to a replacement
                return False, True
            if self._threads > self._max + self._blocked:
                self._give_slot()
                self._threads -= 1  # a stand-in for a blocked worker: leave
                return False, True
            if self._slot_waiters:  # a resumed worker waits for a slot: it goes first
                self._give_slot()
                return False, False
            return True, False

    # -- execution slots (called with the lock held) ---------------------------
    def _take_slot(self) -> None:
        while self._running >= self._max:
            self._slot_waiters += 1
            self._slot_free.wait()
            self._slot_waiters -= 1
        self._running += 1

    def _give_slot(self) -> None:
        self._running -= 1
        if self._slot_waiters:
            self._slot_free.notify()

    # -- called by Completion.wait from inside a worker----------------------
    def blocking(self) -> None:
        """The calling worker is about to block: let another thread take its slot."""
        ident = threading.get_ident()
        with self._lock:
            if ident in self._abandoned:
                return
            self._blocked += 1
            self._blocked_threads.add(ident)
            self._give_slot()
            spawn = (
                not self._closed
                and not self._queue.empty()
                and self._threads < self._max + self._blocked
            )
            if spawn:
                self._threads += 1
        if spawn:
            self._spawn()

    def unblocking(self) -> None:
        """The calling worker resumes: it waits for a free slot first."""
        ident = threading.get_ident()
        with self._lock:
            if ident in self._abandoned:
                return
            self._blocked -= 1
            self._blocked_threads.discard(ident)
            self._take_slot()

    # -- called by nbflow.timeouts (the timer thread) when a call in a worker is abandoned ---------
    def abandon(self, ident: int, continuation: Callable[[], Any]) -> None:
        """Worker ``ident`` is stuck in an abandoned call: a new thread takes its place and runs ``continuation``.

        The new thread inherits the stuck one's slot (if it held one: a
        blocked worker had lent it), so ``max_workers`` still holds, then
        serves the queue like any worker. The stuck one exits once its call
        returns, giving back nothing.
        """
        with self._lock:
            self._abandoned.add(ident)
            has_slot = ident not in self._blocked_threads
            if not has_slot:
                self._blocked_threads.discard(ident)
                self._blocked -= 1
        self._spawn(continuation, has_slot)

    def shutdown(self) -> None:
        """Stop taking work; threads finish what they run and leave."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._queue.put(_STOP)
