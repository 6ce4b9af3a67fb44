"""A thread pool that never deadlocks on tasks waiting for tasks.

Like ``concurrent.futures.ThreadPoolExecutor`` it starts threads lazily, up to
``max_workers``, reusing idle ones. Unlike it, a worker that blocks on a task
run's result (``Completion.wait`` calls :meth:`WorkerPool.blocking`) lends its
slot to a new thread, so at most ``max_workers`` threads *execute* at once
while a task that submits tasks and waits on them always makes progress, even
with ``max_workers=1``. A worker that resumes takes its slot back (it waits
for one to be free), and extra threads leave once the blocked ones resume.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from nbflow.completion import set_thread_pool

_STOP = object()


class WorkerPool:
    """Threads calling ``target(item)`` for every item given to :meth:`submit`."""

    def __init__(self, target: Callable[[Any], Any], max_workers: int, name: str) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self._target = target
        self._max = max_workers
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._slot_free = threading.Condition(self._lock)
        self._threads = 0
        self._idle = 0
        self._blocked = 0
        self._running = 0  # threads executing an item and not blocked
        self._slot_waiters = 0
        self._closed = False

    @property
    def max_workers(self) -> int:
        return self._max

    def submit(self, item: Any) -> None:
        """Queue ``item``; start a thread if no idle one can take it."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name} is shut down; it takes no new work")
            if self._idle:
                self._idle -= 1
                spawn = False
            else:
                spawn = self._threads < self._max + self._blocked
                if spawn:
                    self._threads += 1
        self._queue.put(item)
        if spawn:
            self._spawn()

    def _spawn(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{self._threads}", daemon=True
        )
        thread.start()

    def _work(self) -> None:
        set_thread_pool(self)
        get = self._queue.get
        target = self._target
        lock = self._lock
        while True:
            item = get()
            if item is _STOP:
                return
            with lock:
                self._take_slot()
            target(item)
            item = None
            with lock:
                self._give_slot()
                if self._threads > self._max + self._blocked:
                    self._threads -= 1  # a stand-in for a blocked worker: leave
                    return
                self._idle += 1

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
        with self._lock:
            self._blocked += 1
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
        with self._lock:
            self._blocked -= 1
            self._take_slot()

    def shutdown(self) -> None:
        """Stop taking work; threads finish what they run and leave."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._queue.put(_STOP)
