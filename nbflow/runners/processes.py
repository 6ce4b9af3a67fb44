"""ProcessPoolTaskRunner: task runs in a warm pool of worker processes on this machine.

Workers are fresh interpreters, as with the spawn start method, but they do
not re-import the caller's ``__main__``: a script needs no ``if __name__ ==
"__main__"`` guard, and tasks and arguments are pickled with cloudpickle, so
tasks defined in a notebook or ``__main__`` run there. Upstream futures are
resolved on the driver before a run is sent. Each worker talks to the driver
over one pipe, which carries the run's live transitions and printed lines and
then its outcome, in order.

A run stopped on the driver while it executes (a cancel, a flow that ends
cancelled or timed out, an interrupt, or an attempt still running past its
deadline because its code blocks in C or swallows the timeout) has its
worker killed; the pool starts another as work arrives, so the next run
never waits for the stuck one. A worker that dies while running a run ends
that attempt Crashed (retried if the task has retries left); a run it had
not taken yet goes to another worker. Unlike Prefect's, whose process pool
breaks when a worker dies and which waits for running tasks on a cancel.

A worker is handed several runs at once when they are measured short (a
queue of up to ``QUEUE_SECONDS`` of work, from the durations of the task):
it starts the next as soon as one ends instead of waiting a round trip to
the driver, while each run keeps its own states, retries and outcome.

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
import queue
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from multiprocessing import Pipe, connection
from typing import Any

import cloudpickle

from nbflow import engine
from nbflow.exceptions import SerializationError
from nbflow.records import TaskRun
from nbflow.runners import sizing
from nbflow.runners.base import TaskRunner
from nbflow.runners.wire import driver
from nbflow.runners.wire.payload import Payloads, Record, resumed
from nbflow.runners.wire.worker import Channel, final_message, post, run_payload, send_final
from nbflow.states import State
from nbflow.timeouts import mark_real_interrupts

#: Seconds of work a worker is handed ahead (runs of a short task queue at the worker).
QUEUE_SECONDS = 0.01
#: Runs a worker is handed ahead at most.
MOST_QUEUED = 64

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

    map_part = 256  # a map's runs reach the pool in parts: the workers start on the first

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

    def duplicate(self) -> ProcessPoolTaskRunner:
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
        if not self._add_to_map((run, payload)):
            pool.submit([(run, payload)])

    def _hand_over(self, batch: list[tuple[TaskRun, tuple]]) -> None:
        _pool_for(self).submit(batch)

    def __repr__(self) -> str:
        return f"ProcessPoolTaskRunner(max_workers={self.max_workers})"

    def __eq__(self, other: object) -> bool:  # as Prefect's: the same kind of runner with as many workers
        return isinstance(other, ProcessPoolTaskRunner) and other.max_workers == self.max_workers

    def __hash__(self) -> int:
        return hash((type(self), self.max_workers))


# -- the pools ------------------------------------------------------------------------
_pools: dict[tuple, _Pool] = {}
_pools_lock = threading.Lock()


def _same(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return ("id", id(value))  # the pool keeps the object alive, so the id stays its own


def _pool_for(runner: ProcessPoolTaskRunner) -> _Pool:
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
    """A worker's pipe to the driver (never pickled: the worker makes it); it carries the outcome too.

    A pipe is cheap, so a run's transitions and outcome go at once
    (``eager``): the driver hears that an attempt started before the task's
    code runs. Not while payloads wait in this worker's inbox (the driver
    queued short runs at it): then they go with its live messages, one write
    every ``LIVE_INTERVAL`` or as the inbox empties, and a short run's
    transitions not at all (its record has them), so the driver reads a few
    messages per batch of runs instead of two per run. Should the worker die
    before they leave, those runs look unstarted to the driver and go to
    another worker (the first of them once only, as for any run not seen
    starting).
    """

    __slots__ = ()

    @property
    def eager(self) -> bool:  # type: ignore[override]
        return _inbox is None or _inbox.empty()

    def open(self) -> Callable[[bytes], Any]:
        return self.key.send_bytes

    def report(self, record: Record, value: bytes | None, base: int) -> None:
        if self.eager:
            send_final(self, record, value, base)
        else:
            post(self, final_message(record, value, base))


class _Job:
    """A run on its way to a worker process, with its payload; ``remote`` once it was claimed.

    The payload stays a tuple until it is sent: the payloads of one task share its pickle, and
    pickling a worker's bundle of them writes it once (a million queued runs of a map would
    otherwise hold a million copies of it).
    """

    __slots__ = ("attempts", "handed_back", "payload", "remote", "run", "worker")

    def __init__(self, run: TaskRun, payload: tuple) -> None:
        self.run = run
        self.payload = payload
        self.remote: driver.Remote | None = None
        self.worker: _Worker | None = None  # the worker that holds it
        self.handed_back = False  # a worker died before it started it
        self.attempts = 0  # the run's attempts when it was sent: one more once its worker started it

    @property
    def started(self) -> bool:
        """The worker reported that it started the run (its Running arrives before its code runs)."""
        return self.run.run_count > self.attempts


class _Worker:
    __slots__ = ("conn", "jobs", "process", "sending")

    def __init__(self, process: subprocess.Popen, conn: connection.Connection) -> None:
        self.process = process
        self.conn = conn
        # Held from choosing a job for it to sending it: its payloads leave in the order of ``jobs``.
        self.sending = threading.Lock()
        # The jobs sent to it, in order: it runs the first, the others wait in its pipe.
        self.jobs: collections.deque[_Job] = collections.deque()


class _Pool:
    """Worker processes started as work arrives, up to ``size``, and one thread reading their pipes.

    A job goes to a live worker: one that died idle is never handed work,
    and a job whose worker died before it reported starting it goes to
    another. Jobs of short tasks queue at a worker (see ``QUEUE_SECONDS``). A job whose worker died while running it ends Crashed, or is
    retried if its task has retries left. A job the driver stops (a cancel,
    an attempt past its deadline) has its worker killed; the pool starts
    another as work arrives.
    """

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
        self._queue: collections.deque[_Job] = collections.deque()
        self._closed = False
        # Wakes the reader when the set of pipes to watch changes.
        self._wake_r, self._wake_w = Pipe(duplex=False)
        self._reader = threading.Thread(target=self._read, name="nbflow-process-pool", daemon=True)
        self._reader.start()

    # -- sending work ---------------------------------------------------------------
    def submit(self, work: list[tuple[TaskRun, tuple]]) -> None:
        """Queue runs with their payloads, and hand out what workers can take."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._queue.extend(_Job(run, blob) for run, blob in work)
        if closed:
            for run, _ in work:
                driver.crash(run, "its process pool was closed.")
        else:
            self._pump()

    def _pump(self) -> None:
        """Hand queued jobs to idle workers, starting workers up to the pool's size; then queue
        jobs of short tasks at the workers, up to about ``QUEUE_SECONDS`` of work each. The jobs
        a worker gets in one pass leave in one message."""
        while True:
            bundles: dict[_Worker, list[_Job]] = {}
            with self._lock:
                while not self._closed and self._queue:
                    job = self._queue[0]
                    worker = self._worker_for(job)
                    if worker is None:
                        break
                    self._queue.popleft()
                    worker.jobs.append(job)
                    job.worker = worker
                    if worker not in bundles:
                        worker.sending.acquire()  # under the pool's lock: the next jobs for it wait their turn
                        bundles[worker] = []
                    bundles[worker].append(job)
            if not bundles:
                return
            freed = False
            for worker, jobs in bundles.items():
                try:
                    unsent = self._send(worker, jobs)
                finally:
                    worker.sending.release()
                for job in unsent:
                    self._free(worker, job)
                    freed = True
            if not freed:
                return

    def _worker_for(self, job: _Job) -> _Worker | None:
        """The worker to hand ``job`` to now, if any (called with the lock held)."""
        if self._idle:
            return self._idle.pop()
        if len(self._workers) < self._size:
            return self._spawn()
        # Queued behind short runs only, so that nothing waits behind a long one while
        # another worker is free: a task not measured yet is not queued at all.
        mean = sizing.mean_duration(job.run.task.task_key)
        if mean is None or mean > QUEUE_SECONDS:
            return None
        depth = sizing.runs_per(QUEUE_SECONDS, mean, 1, MOST_QUEUED)
        room = [w for w in self._workers.values() if len(w.jobs) < depth and _short(w.jobs)]
        return min(room, key=lambda w: len(w.jobs)) if room else None

    def _send(self, worker: _Worker, jobs: list[_Job]) -> list[_Job]:
        """Send ``jobs`` to ``worker`` in one message; those not to run (cancelled first) are returned."""
        unsent, payloads = [], []
        for job in jobs:
            run = job.run
            if job.remote is None:
                if not run.claim():  # cancelled while queued
                    unsent.append(job)
                    continue
                job.remote = driver.Remote(run, self, job)
                job.remote.attach()
            if run.done:  # cancelled since it was claimed, or while it waited to be retried
                unsent.append(job)
                continue
            driver.track(run, job.remote)
            job.attempts = run.run_count
            payloads.append(job.payload)
        if payloads:
            try:
                worker.conn.send_bytes(pickle.dumps(payloads, protocol=pickle.HIGHEST_PROTOCOL))
            except OSError:
                pass  # the worker died: the reader sees its pipe close and hands the jobs on (not taken)
        return unsent

    def _free(self, worker: _Worker, job: _Job) -> None:
        with self._lock:
            if job in worker.jobs:
                worker.jobs.remove(job)
                job.worker = None
                if not worker.jobs and worker.conn in self._workers:
                    self._idle.append(worker)

    def stop_remote(self, job: _Job) -> None:
        """The driver ended the job's run (or its attempt): kill the worker running it, if one is."""
        with self._lock:
            worker = job.worker
            if worker is None or not worker.jobs or worker.jobs[0] is not job:
                # Not started there yet: it is skipped (what it reports is ignored, the run ended here).
                return
            worker.jobs.popleft()  # the worker is done for: nothing it sends about this job counts now
            job.worker = None
        worker.process.kill()  # the reader sees its pipe close, reaps it, hands on its other jobs

    def retry_remote(self, job: _Job) -> None:
        """Send the job's run again for its next attempt (its worker died or overran)."""
        job.payload = resumed(job.payload, job.run)
        with self._lock:
            closed = self._closed
            if not closed:
                self._queue.appendleft(job)
        if closed:
            driver.crash(job.run, "its process pool was closed before it could be retried.")
        else:
            self._pump()

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
                ended = []
                for message in driver.receive(blob):
                    if message[0] == "final":
                        run = self._final(worker, *message[1:])
                        if run is not None:
                            ended.append(run)
                    else:
                        self._init_failed(worker, message[1])
                if ended:  # a worker with a queue of short runs reports them a batch at a time
                    sizing.measure(ended)
                    self._pump()
        self._stop_workers()

    def _final(self, worker: _Worker, run_id: int, _base: int, record: bytes, value: bytes | None) -> TaskRun | None:
        """End the run whose record came; the run, or None if the driver had given up on it."""
        with self._lock:
            jobs = worker.jobs
            if not jobs or jobs[0].run.int_id != run_id:
                return None  # the driver gave up on the job (and killed the worker)
            job = jobs.popleft()
            job.worker = None
            if not jobs:
                self._idle.append(worker)  # free the worker first: the run's downstream may want it
        driver.complete(job.run, record, value)
        return job.run

    def _lost(self, worker: _Worker) -> None:
        lost: list[tuple[_Job, bool]] = []
        with self._lock:
            del self._workers[worker.conn]
            if worker in self._idle:
                self._idle.remove(worker)
            jobs, worker.jobs = list(worker.jobs), collections.deque()
            for job in reversed(jobs):  # handed back in their order
                job.worker = None
                started = job.started
                if not started and job is not jobs[0]:  # waiting behind another: it cannot have killed it
                    self._queue.appendleft(job)
                elif not started and not job.handed_back:  # the worker died before it started the run
                    job.handed_back = job.remote is not None  # it was sent: once only, for a payload that
                    self._queue.appendleft(job)               # kills its worker as it arrives crashes
                else:
                    lost.append((job, started))
        worker.conn.close()
        code = worker.process.wait()
        for job, started in lost:
            if driver.untrack(job.run):
                what = "while running it" if started else "twice, before it could start it"
                job.remote.lost(driver.crashed(  # type: ignore[union-attr]
                    job.run, f"its worker process (pid {worker.process.pid}) died {what} (exit code {code})."
                ))
        self._pump()

    def _init_failed(self, worker: _Worker, text: str) -> None:
        with _pools_lock:  # the next flow run starts a fresh pool
            if _pools.get(self._key) is self:
                del _pools[self._key]
        with self._lock:
            jobs = [*worker.jobs, *self._queue]
            self._queue.clear()
            worker.jobs.clear()
        reason = f"the process pool's initializer failed in a worker:\n{text}"
        for job in jobs:
            driver.crash(job.run, reason)
        self.close()

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers (runs executing end Crashed); runs queued end Crashed too."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            queued = [job.run for job in self._queue]
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
            held = [list(worker.jobs) for worker in workers]
            for worker in workers:
                worker.jobs.clear()
        for worker, jobs in zip(workers, held):
            worker.conn.close()  # an idle worker exits when its pipe closes
            if jobs:
                worker.process.kill()
            for job in jobs:
                driver.crash(job.run, "its process pool was closed while it ran.")
        for worker in workers:
            try:
                worker.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                worker.process.kill()


def _short(jobs: Iterable[_Job]) -> bool:
    """True if every job is of a task measured to run within ``QUEUE_SECONDS``."""
    last = None  # the jobs of a map come in a row: one look per task, not per job
    for job in jobs:
        key = job.run.task.task_key
        if key is last:
            continue
        last = key
        mean = sizing.mean_duration(key)
        if mean is None or mean > QUEUE_SECONDS:
            return False
    return True


# -- the worker process -------------------------------------------------------------------------
_inbox: queue.SimpleQueue | None = None  # in a worker process: the payloads waiting behind the one it runs


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
    global _inbox
    # Marked for the worker's life, not per run (two system calls each): nothing but the driver
    # (which kills a worker to stop it) reaches a worker in its own session.
    mark_real_interrupts()
    channel = _PipeChannel(conn)
    # A thread takes payloads off the pipe as they come, so that the driver's sends never wait on
    # this worker while it runs one (and writes to the driver, whose reader may be sending to it).
    payloads: queue.SimpleQueue = queue.SimpleQueue()
    _inbox = payloads

    def receive() -> None:
        try:
            while True:
                for payload in pickle.loads(conn.recv_bytes()):  # the driver sends them in bundles
                    payloads.put(payload)
        except (EOFError, OSError):
            payloads.put(None)

    threading.Thread(target=receive, name="nbflow-worker-inbox", daemon=True).start()
    while True:
        payload = payloads.get()
        if payload is None:
            return
        run_payload(payload, (), channel)


__all__ = ["ProcessPoolTaskRunner", "close_pools", "serve"]
