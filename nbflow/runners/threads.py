"""ThreadPoolTaskRunner: task runs in threads of this process (the default runner)."""

from __future__ import annotations

import os
import sys
import threading

from nbflow import engine, settings
from nbflow.records import TaskRun
from nbflow.runners.base import TaskRunner
from nbflow.runners.worker_pool import WorkerPool


class ThreadPoolTaskRunner(TaskRunner):
    """Runs task runs in threads of this process (the default runner).

    ``max_workers`` caps how many run at once (default: no small cap, as
    Prefect). A task that waits on tasks it submitted never deadlocks: its
    thread lends its slot while it waits.
    """

    def __init__(self, max_workers: int | None = None) -> None:
        super().__init__()
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"ThreadPoolTaskRunner(max_workers={max_workers}): need at least 1 worker")
        self.max_workers = max_workers
        self._pool: WorkerPool | None = None
        self._pool_lock = threading.Lock()

    def duplicate(self) -> ThreadPoolTaskRunner:
        return type(self)(max_workers=self.max_workers)

    def _dispatch(self, run: TaskRun) -> None:
        pool = self._pool
        if pool is None:
            pool = self._start_pool()
        pool.submit(run)

    def _start_pool(self) -> WorkerPool:
        with self._pool_lock:
            if self._pool is None:
                limit = self.max_workers or settings.current.thread_pool_max_workers
                # No cap given (as Prefect, no small one): start threads as concurrent.futures
                # would by default, and more only as the work waits (see WorkerPool._ramp).
                eager = None if limit else min(32, (os.cpu_count() or 1) + 4)
                self._pool = WorkerPool(engine.run_here, limit or sys.maxsize, "nbflow-worker", eager)
            return self._pool

    def shutdown(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()

    def __repr__(self) -> str:
        return f"ThreadPoolTaskRunner(max_workers={self.max_workers})"

    def __eq__(self, other: object) -> bool:  # as Prefect's: the same kind of runner with as many workers
        return isinstance(other, ThreadPoolTaskRunner) and other.max_workers == self.max_workers

    def __hash__(self) -> int:
        return hash((type(self), self.max_workers))


__all__ = ["ThreadPoolTaskRunner"]
