"""ProcessPoolTaskRunner: task runs in a warm pool of worker processes on this machine.

Workers are fresh interpreters, as with the spawn start method, but they do
not re-import the caller's ``__main__``: a script needs no ``if __name__ ==
"__main__"`` guard, and tasks and arguments are pickled with cloudpickle, so
tasks defined in a notebook or ``__main__`` run there. Upstream futures are
resolved on the driver before a run is sent. Each worker talks to the driver
over one pipe, which carries the run's live transitions and printed lines and
then its outcome, in order; a worker that dies ends its run Crashed and is
replaced.

The pool outlives flow runs: runners with the same configuration (all the
``duplicate()`` copies a flow makes among them) share one, started on first
use and closed at interpreter exit or by :func:`close_pools`, so only the
first flow run pays for starting processes.
"""

from __future__ import annotations

import atexit
import collections
import os
import pickle
import subprocess
import sys
import threading
import traceback
from multiprocessing import Pipe, connection
from typing import Any, Callable, Iterable

import cloudpickle

from nbflow import engine
from nbflow.exceptions import SerializationError
from nbflow.records import TaskRun
from nbflow.runners.base import TaskRunner
from nbflow.runners.wire import driver
from nbflow.runners.wire.worker import Channel, run_payload, send_final
from nbflow.runners.wire.payload import Payloads, Record
from nbflow.states import State

# What a worker process runs: python -c _BOOT <fd of its end of the pipe>.
_BOOT = "import sys; from nbflow.runners.processes import serve; serve(int(sys.argv[1]))"


class ProcessPoolTaskRunner(TaskRunner):
    """Runs task runs in worker processes of this machine (true parallelism for CPU-bound tasks).

    ``max_workers`` processes at most (default: the number of CPUs);
    ``initializer(*initargs)`` runs once in each worker as it starts. Task
    functions, arguments and results are pickled with cloudpickle; an
    argument or result that cannot be pickled fails its run with a
    SerializationError naming the task.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
    ) -> None:
        super().__init__()
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"ProcessPoolTaskRunner(max_workers={max_workers}): need at least 1 worker")
        self.max_workers = max_workers
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self._payloads = Payloads(type(self).__name__)

    def duplicate(self) -> "ProcessPoolTaskRunner":
        return type(self)(self.max_workers, self.initializer, self.initargs)

    def _dispatch(self, run: TaskRun) -> None:
        if run.done:  # cancelled while it waited for upstream runs
            return
        run.take_context()  # context variables stay on the driver
        try:
            parameters = engine.resolve_inputs(run)
            if isinstance(parameters, State):
                run.finish(parameters)
                return
            payload = self._payloads.build(run, parameters)
            pool = _pool_for(self)
        except SerializationError as exc:
            driver.fail(run, exc)
            return
        except Exception as exc:
            driver.crash(run, f"it could not be sent to a worker process ({exc!r}).", exc)
            return
        pool.submit(run, payload)

    def __repr__(self) -> str:
        return f"ProcessPoolTaskRunner(max_workers={self.max_workers})"


# -- the pools ------------------------------------------------------------------------
_pools: dict[tuple, "_Pool"] = {}
_pools_lock = threading.Lock()


def _same(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return ("id", id(value))  # the pool keeps the object alive, so the id stays its own


def _pool_for(runner: ProcessPoolTaskRunner) -> "_Pool":
    size = runner.max_workers or os.cpu_count() or 1
    key = (size, _same(runner.initializer), _same(runner.initargs))
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = _Pool(key, size, runner.initializer, runner.initargs)
        return pool


def close_pools() -> None:
    """Close every process pool (runs still executing end Crashed); called at interpreter exit."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


atexit.register(close_pools)


class _PipeChannel(Channel):
    """A worker's pipe to the driver (never pickled: the worker makes it); it carries the outcome too."""

    __slots__ = ()

    def open(self) -> Callable[[bytes], Any]:
        return self.key.send_bytes

    def report(self, record: Record, value: bytes | None) -> None:
        send_final(self, record, value)


class _Worker:
    __slots__ = ("process", "conn", "run")

    def __init__(self, process: subprocess.Popen, conn: connection.Connection) -> None:
        self.process = process
        self.conn = conn
        self.run: TaskRun | None = None


class _Pool:
    """Worker processes started as work arrives, up to ``size``, and one thread reading their pipes."""

    def __init__(self, key: tuple, size: int, initializer: Any, initargs: tuple) -> None:
        self._key = key
        self._size = size
        self._config = (initializer, initargs)  # kept alive: the registry key may hold their ids
        try:
            self._setup = cloudpickle.dumps((initializer, initargs))
        except Exception as exc:
            raise SerializationError(
                f"ProcessPoolTaskRunner: its initializer or initargs cannot be pickled "
                f"({type(exc).__name__}: {exc}); pass a picklable function and arguments."
            ) from exc
        self._lock = threading.Lock()
        self._workers: dict[connection.Connection, _Worker] = {}
        self._idle: list[_Worker] = []
        self._queue: collections.deque[tuple[TaskRun, bytes]] = collections.deque()
        self._closed = False
        # Wakes the reader when the set of pipes to watch changes.
        self._wake_r, self._wake_w = Pipe(duplex=False)
        self._reader = threading.Thread(target=self._read, name="nbflow-process-pool", daemon=True)
        self._reader.start()

    # -- sending work ---------------------------------------------------------------
    def submit(self, run: TaskRun, blob: bytes) -> None:
        with self._lock:
            if self._closed:
                worker = None
            elif self._idle:
                worker = self._idle.pop()
            elif len(self._workers) < self._size:
                worker = self._spawn()
            else:
                self._queue.append((run, blob))
                return
        if worker is None:
            driver.crash(run, "its process pool was closed.")
        else:
            self._send(worker, run, blob)

    def _send(self, worker: _Worker, run: TaskRun, blob: bytes) -> None:
        while not run.claim():  # cancelled while queued: take the next one
            with self._lock:
                if not self._queue:
                    self._idle.append(worker)
                    return
                run, blob = self._queue.popleft()
        driver.track(run)
        with self._lock:
            alive = worker.conn in self._workers
            if alive:
                worker.run = run
        if not alive:
            driver.crash(run, f"its worker process (pid {worker.process.pid}) exited before it started.")
            return
        try:
            worker.conn.send_bytes(blob)
        except OSError:
            pass  # the worker died; the reader sees its pipe close and crashes the run

    def _next(self, worker: _Worker) -> None:
        with self._lock:
            if not self._queue:
                self._idle.append(worker)
                return
            run, blob = self._queue.popleft()
        self._send(worker, run, blob)

    def _spawn(self) -> _Worker:
        """Start a worker process (called with the lock held)."""
        ours, theirs = Pipe()
        process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            start_new_session=True,  # a Ctrl-C in the terminal is the driver's to handle
        )
        theirs.close()
        ours.send_bytes(pickle.dumps((sys.path, self._setup)))
        worker = self._workers[ours] = _Worker(process, ours)
        self._wake_w.send_bytes(b"")
        return worker

    # -- the reader thread --------------------------------------------------------------
    def _read(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    break
                conns = list(self._workers)
            for ready in connection.wait([*conns, self._wake_r]):
                if ready is self._wake_r:
                    self._wake_r.recv_bytes()
                    continue
                worker = self._workers[ready]  # type: ignore[index]
                try:
                    blob = worker.conn.recv_bytes()
                except (EOFError, OSError):
                    self._lost(worker)
                    continue
                for message in driver.receive(blob):
                    if message[0] == "final":
                        self._final(worker, *message[1:])
                    else:
                        self._init_failed(worker, message[1])
        self._stop_workers()

    def _final(self, worker: _Worker, _run_id: int, record: bytes, value: bytes | None) -> None:
        run, worker.run = worker.run, None
        self._next(worker)  # free the worker first: the run's downstream may want it
        if run is not None:
            driver.complete(run, record, value)

    def _lost(self, worker: _Worker) -> None:
        with self._lock:
            del self._workers[worker.conn]
            if worker in self._idle:
                self._idle.remove(worker)
            run, worker.run = worker.run, None
            replacement = self._spawn() if self._queue and not self._closed else None
        worker.conn.close()
        code = worker.process.wait()
        if run is not None:
            driver.crash(
                run,
                f"its worker process (pid {worker.process.pid}) died while running it "
                f"(exit code {code}).",
            )
        if replacement is not None:
            self._next(replacement)

    def _init_failed(self, worker: _Worker, text: str) -> None:
        with _pools_lock:  # the next flow run starts a fresh pool
            if _pools.get(self._key) is self:
                del _pools[self._key]
        with self._lock:
            queued = [run for run, _ in self._queue]
            self._queue.clear()
        reason = f"the process pool's initializer failed in a worker:\n{text}"
        for run in [worker.run, *queued]:
            if run is not None:
                driver.crash(run, reason)
        worker.run = None
        self.close()

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers (runs executing end Crashed); runs queued end Crashed too."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            queued = [run for run, _ in self._queue]
            self._queue.clear()
        self._wake_w.send_bytes(b"")
        for run in queued:
            driver.crash(run, "its process pool was closed.")
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=10)

    def _stop_workers(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.conn.close()  # an idle worker exits when its pipe closes
            if worker.run is not None:
                worker.process.kill()
                driver.crash(worker.run, "its process pool was closed while it ran.")
        for worker in workers:
            try:
                worker.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                worker.process.kill()


# -- the worker process -------------------------------------------------------------------------
def serve(fd: int) -> None:
    """A worker process's life: set up, then execute payloads until the driver closes the pipe."""
    conn = connection.Connection(fd)
    path, setup = pickle.loads(conn.recv_bytes())
    sys.path[:] = path  # modules the driver imports by name are found here too
    try:
        initializer, initargs = pickle.loads(setup)
        if initializer is not None:
            initializer(*initargs)
    except BaseException:
        conn.send_bytes(pickle.dumps([("init-error", traceback.format_exc())]))
        return
    channel = _PipeChannel(conn)
    while True:
        try:
            payload = conn.recv_bytes()
        except EOFError:
            return
        run_payload(payload, (), channel)


__all__ = ["ProcessPoolTaskRunner", "close_pools", "serve"]
