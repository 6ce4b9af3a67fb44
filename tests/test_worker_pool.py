"""nbflow.runners.worker_pool: a thread pool whose blocked workers lend their slot."""

from __future__ import annotations

import threading

import pytest

from nbflow.completion import blocking_wait
from nbflow.runners.worker_pool import WorkerPool

SAFETY = 10.0


class Probe:
    """Counts how many items execute at once; items wait for a gate before they finish."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.done = threading.Semaphore(0)

    def __call__(self, item) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            item()
        finally:
            with self.lock:
                self.now -= 1
            self.done.release()

    def wait_for(self, n: int) -> None:
        for _ in range(n):
            assert self.done.acquire(timeout=SAFETY)


@pytest.mark.parametrize("limit", [1, 3])
def test_never_more_than_max_workers_execute_at_once(limit):
    probe = Probe()
    pool = WorkerPool(probe, limit, "test-pool")
    gate = threading.Event()
    for _ in range(limit * 4):
        pool.submit(lambda: gate.wait(SAFETY))
    gate.set()
    probe.wait_for(limit * 4)
    pool.shutdown()
    assert probe.peak <= limit


def test_a_blocked_worker_lends_its_slot_so_one_worker_never_deadlocks():
    probe = Probe()
    pool = WorkerPool(probe, 1, "test-pool")
    inner_ran = threading.Event()

    def outer() -> None:
        pool.submit(inner_ran.set)  # queued behind this one: only a stand-in thread can run it
        with blocking_wait():
            assert inner_ran.wait(SAFETY)

    pool.submit(outer)
    probe.wait_for(2)
    pool.shutdown()
    assert inner_ran.is_set()


def test_a_resumed_worker_waits_for_a_free_slot():
    probe = Probe()
    pool = WorkerPool(probe, 1, "test-pool")
    release_inner = threading.Event()
    inner_started = threading.Event()

    def inner() -> None:
        inner_started.set()
        release_inner.wait(SAFETY)

    def outer() -> None:
        pool.submit(inner)
        with blocking_wait():
            assert inner_started.wait(SAFETY)
        # Resuming took the slot back only after inner gave it up.

    pool.submit(outer)
    assert inner_started.wait(SAFETY)
    release_inner.set()
    probe.wait_for(2)
    pool.shutdown()
    assert probe.peak <= 2  # outer blocked (not executing) while inner ran


def test_threads_are_reused_not_started_per_item():
    names = []
    finished = threading.Semaphore(0)

    def record(item) -> None:
        names.append(threading.current_thread().name)
        finished.release()

    pool = WorkerPool(record, 4, "test-pool")
    for _ in range(20):  # one at a time: an idle thread takes each (or one of at most 4)
        pool.submit(None)
        assert finished.acquire(timeout=SAFETY)
    pool.shutdown()
    assert len(names) == 20 and len(set(names)) <= 4


def test_a_shut_down_pool_takes_no_work():
    pool = WorkerPool(lambda item: None, 2, "test-pool")
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(1)


def test_max_workers_must_be_positive():
    with pytest.raises(ValueError):
        WorkerPool(lambda item: None, 0, "test-pool")


# -- a stuck worker is abandoned: it leaves, a replacement takes its slot ------------------------
class Stuck:
    """An item that blocks on a gate, noting its thread; the test abandons it like nbflow's timer does."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.ident: int | None = None

    def __call__(self) -> None:
        self.ident = threading.get_ident()
        self.started.set()
        self.gate.wait(SAFETY)


@pytest.mark.parametrize("blocked", [False, True], ids=["executing", "lending its slot"])
def test_an_abandoned_worker_leaves_and_its_continuation_takes_its_place(blocked):
    probe = Probe()
    pool = WorkerPool(probe, 1, "test-pool")
    stuck = Stuck()
    body = stuck
    if blocked:
        def body() -> None:  # stuck while it waits (its slot lent), like a task waiting on a task
            with blocking_wait():
                stuck()

    pool.submit(body)
    assert stuck.started.wait(SAFETY)
    continued = threading.Event()
    pool.abandon(stuck.ident, continued.set)
    assert continued.wait(SAFETY)  # ran although the stuck worker still holds on
    gate = threading.Event()
    for _ in range(4):
        pool.submit(lambda: gate.wait(SAFETY))
    gate.set()
    probe.wait_for(4)
    assert probe.peak <= 2  # the abandoned one, and one at a time for everything else
    stuck_thread = next(t for t in threading.enumerate() if t.ident == stuck.ident)
    stuck.gate.set()  # the stuck worker returns and leaves the pool (its slot went to the replacement)
    stuck_thread.join(SAFETY)
    assert not stuck_thread.is_alive()
    probe.wait_for(1)
    for _ in range(3):
        pool.submit(lambda: None)
    probe.wait_for(3)
    pool.shutdown()


def test_a_continuation_of_an_abandoned_worker_runs_even_after_shutdown():
    pool = WorkerPool(lambda item: item(), 1, "test-pool")
    stuck = Stuck()
    pool.submit(stuck)
    assert stuck.started.wait(SAFETY)
    pool.shutdown()
    continued = threading.Event()
    pool.abandon(stuck.ident, continued.set)
    assert continued.wait(SAFETY)
    stuck.gate.set()


def _items_waiting_on_each_other(n: int) -> tuple[Probe, WorkerPool, threading.Barrier]:
    """``n`` items that can only end once all of them run at once, on a pool with 2 eager threads; once ended."""
    probe = Probe()
    pool = WorkerPool(probe, 1_000, "test-pool", eager=2)
    barrier = threading.Barrier(n, timeout=SAFETY)
    for _ in range(n):
        pool.submit(barrier.wait)
    probe.wait_for(n)
    return probe, pool, barrier


def test_past_the_eager_threads_work_that_waits_gets_threads_until_all_of_it_runs_at_once():
    # 40 items that all wait for each other: with 2 eager threads they can only finish if
    # the pool adds threads for work that waits (a thread per task, as with no cap).
    probe, pool, barrier = _items_waiting_on_each_other(40)
    pool.shutdown()
    assert probe.peak == 40 and not barrier.broken


def test_the_eager_threads_serve_a_queue_of_small_items_without_more_threads():
    # Items that never wait: one eager thread takes them all, as fast as they come.
    names: set[str] = set()
    probe = Probe()
    pool = WorkerPool(probe, 1_000, "test-pool", eager=1)
    gate = threading.Event()
    pool.submit(lambda: gate.wait(SAFETY))  # holds the one eager thread while the rest queue
    for _ in range(200):
        pool.submit(lambda: names.add(threading.current_thread().name))
    gate.set()
    probe.wait_for(201)
    pool.shutdown()
    assert len(names) < 200  # not a thread per item


def test_max_workers_caps_the_threads_added_for_waiting_work():
    probe = Probe()
    pool = WorkerPool(probe, 3, "test-pool", eager=1)
    gate = threading.Event()
    started = threading.Semaphore(0)

    def item() -> None:
        started.release()
        gate.wait(SAFETY)

    for _ in range(10):
        pool.submit(item)
    for _ in range(3):  # the ramp reaches the cap: three run at once, waiting
        assert started.acquire(timeout=SAFETY)
    gate.set()
    probe.wait_for(10)
    pool.shutdown()
    assert probe.peak == 3


def test_on_a_machine_busy_elsewhere_a_runnable_thread_is_expected_to_get_less_of_a_core(monkeypatch):
    from nbflow.runners import worker_pool

    cores = __import__("os").cpu_count()
    monkeypatch.setattr(worker_pool.os, "getloadavg", lambda: (cores * 4.0, 0.0, 0.0))
    assert worker_pool._cpu_available() == pytest.approx(0.25)
    monkeypatch.setattr(worker_pool.os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert worker_pool._cpu_available() == 1.0


def test_threads_added_for_waiting_work_leave_once_idle(monkeypatch):
    from nbflow.runners import worker_pool

    monkeypatch.setattr(worker_pool, "IDLE_EXIT", 0.05)
    probe, pool, _ = _items_waiting_on_each_other(20)
    assert probe.peak == 20
    left = threading.Event()
    for _ in range(int(SAFETY / 0.01)):  # wait for the condition, not for a time
        if pool._threads == 2:
            left.set()
            break
        left.wait(0.01)
    pool.shutdown()
    assert left.is_set(), pool._threads


class CountingLock:
    """A lock that counts how often it is taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.taken = 0

    def acquire(self, *args, **kwargs) -> bool:
        self.taken += 1
        return self._lock.acquire(*args, **kwargs)

    def release(self) -> None:
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()


def test_a_busy_pool_takes_no_lock_per_item():
    # Issue 12: a big map on threads. One lock taken per item by the submitter and by every
    # worker made worker threads queue on it and for the GIL in turn (a 1.5-2x slower map).
    probe = Probe()
    pool = WorkerPool(probe, 2, "test-pool")
    counting = CountingLock()
    pool._lock, pool._slot_free = counting, threading.Condition(counting)
    gate = threading.Event()
    items = 1000
    for _ in range(items):  # the first two start the threads; the rest queue behind them
        pool.submit(lambda: gate.wait(SAFETY))
    gate.set()
    probe.wait_for(items)
    pool.shutdown()
    assert probe.peak <= 2
    assert counting.taken < 20, counting.taken  # per thread started, woken or idled: not per item
