"""RayTaskRunner: task runs on Ray, configured as in prefect-ray.

By default the runner starts a local Ray (``ray.init(**init_kwargs)``) for
the flow run and shuts it down afterwards; ``address=`` connects to an
existing cluster. A Ray that was already initialised is reused and left
running.

Each run is one Ray task with two results: a small record (states, run
count, name, output) that the driver fetches when the task ends, and the
run's value, which stays in the object store: downstream runs receive it as
an ObjectRef argument, and the driver fetches it when it is read, or at the
end of the flow run if no other run consumed it (``nbflow.runners.wire.results.Fetcher``).
The runs of a large ``.map`` of small tasks over plain values go in chunks
(:mod:`nbflow.runners.chunks`): one Ray task executes several runs, each its
own, and returns their outcomes together, so Ray's per-task cost (about a
millisecond) is paid once per chunk; a downstream run receives the chunk's
outcomes and picks the one it consumes. Transitions and
printed lines reach the driver through a small actor that workers send
batches to and a driver thread drains (blocking, not polling) while a
runner uses it.

A run that ends on the driver while Ray still has its task (cancelled, or
past its deadline) has that task stopped: cancelled with force if it
executes; if it may not have started, withdrawn (:class:`_Marks`) or, with
no upstream refs to resolve, cancelled plainly. Ray 2.60 can abort the
driver when a task is cancelled while its upstream refs resolve.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import pickle
import queue
import threading
from collections.abc import Callable
from typing import Any

from nbflow import states as S
from nbflow.futures import PrefectFuture
from nbflow.records import TaskRun, new_id
from nbflow.runners import chunks, cluster, sizing
from nbflow.runners.chunks import Chunk, Slot
from nbflow.runners.wire import driver, worker
from nbflow.runners.wire.payload import Record, dumps

logger = logging.getLogger("nbflow.runners")

_NAMESPACE = "nbflow"


class PrefectRayFuture(PrefectFuture):
    """The future of a task run on Ray: the same methods and semantics as every nbflow future."""

    __slots__ = ()


class RayTaskRunner(cluster.ClusterTaskRunner):
    """Runs task runs on Ray: a local Ray by default, an existing cluster with ``address``.

    ``init_kwargs`` go to ``ray.init``. A Ray initialised before the flow run
    is used as it is and not shut down.
    """

    future_class = PrefectRayFuture

    def __init__(self, address: str | None = None, init_kwargs: dict[str, Any] | None = None) -> None:
        cluster.require("ray", "ray", "RayTaskRunner")
        super().__init__()
        self.address = address
        self.init_kwargs = dict(init_kwargs or {})
        self._started_ray = False
        self._live: _Sink | None = None
        self._marks: _Marks | None = None
        self._threads = 1  # the cluster's CPUs: what a map's chunks spread over
        self._watching: dict[Chunk, list[tuple[cluster.Outgoing, Slot]]] = {}  # chunks being watched

    def duplicate(self) -> RayTaskRunner:
        return type(self)(self.address, self.init_kwargs)

    # -- the engine -----------------------------------------------------------------------
    def _start(self) -> tuple[str, worker.Channel]:
        import ray

        if ray.is_initialized():
            where = "the running Ray instance"
        else:
            kwargs = dict(self.init_kwargs)
            if self.address is not None:
                kwargs["address"] = self.address
            ray.init(**kwargs)
            self._started_ray = True
            where = f"Ray at {self.address}" if self.address else "the local Ray this runner started"
        _start_ending_runs()
        self._threads = int(ray.cluster_resources().get("CPU", 1))
        self._live = _use_sink()
        self._marks = _Marks()
        return where, _RayChannel(self._live.name)

    def _stop(self) -> None:
        # Always let go of the sink: a thread left waiting on Ray ends the process when Ray shuts down.
        live, self._live = self._live, None
        if live is not None:
            live.release()
        if self._marks is not None:
            self._marks.close()
        if self._started_ray:
            import ray

            self._started_ray = False
            ray.shutdown()

    def _submit(self, batch: list[cluster.Outgoing]) -> list[Any]:
        # A handle: the refs of the record and the value, the attempts made before this hand-over,
        # and the key the task marks as it starts (one with upstream refs has one; see _stop_work).
        # A map over plain values goes in chunks (a chunk's task has no upstream refs to resolve).
        if len(batch) > 1 and not any(o.handles for o in batch):
            groups = chunks.split(batch, self._threads)
            if len(groups[0]) > 1:
                run_chunk = _remote_chunk().remote
                return [slot for group in groups for slot in chunks.slots(run_chunk(chunks.pack(group)), group)]
        run = _remote_run().remote
        marks = self._marks
        handles = []
        for o in batch:
            upstream = itertools.chain.from_iterable(_as_arguments(h) for h in o.handles)
            key = marks.key(o.run.int_id) if o.handles else None  # type: ignore[union-attr]
            handles.append((*run(o.payload, key, *upstream), o.run.run_count, key))
        return handles

    def _watch(self, outgoing: cluster.Outgoing, handle: Any) -> None:
        # ObjectRef._on_completed is what ObjectRef.future() wraps, minus a
        # concurrent Future per run. Ray calls back in its own thread: the
        # outcome goes to nbflow's, where ending a run may call into Ray.
        if type(handle) is Slot:  # a chunk is watched once all its runs are (in order, by _send)
            chunk = handle.chunk
            members = self._watching.setdefault(chunk, [])
            members.append((outgoing, handle))
            if len(members) == len(chunk.runs):
                del self._watching[chunk]
                chunk.future._on_completed(
                    lambda outcome: _calls.put(functools.partial(self._chunk_outcome, members, outcome))
                )
            return
        handle[0]._on_completed(
            lambda outcome: _calls.put(functools.partial(self._outcome, outgoing, handle, outcome))
        )

    def _outcome(self, outgoing: cluster.Outgoing, handle: Any, outcome: Any) -> None:
        if handle[3] is not None:
            self._marks.reported(handle)  # type: ignore[union-attr]
        try:
            if isinstance(outcome, BaseException):  # the worker died, the task was cancelled, or an upstream failed
                handle[1]._on_completed(_ignore)  # the run reports it; Ray need not log it again
                self.engine_failed(outgoing, outcome, handle)
            else:
                self.finish_run(outgoing.run, outcome, handle)
        except Exception as exc:  # a bug here must not leave the run unfinished
            logger.exception("ending task run %r failed", outgoing.run.name)
            driver.crash(outgoing.run, f"nbflow could not read its outcome ({exc!r}).", exc)

    def _chunk_outcome(self, members: list[tuple[cluster.Outgoing, Slot]], outcome: Any) -> None:
        if isinstance(outcome, BaseException):  # the worker died, or the chunk was cancelled
            for outgoing, slot in members:
                self.engine_failed(outgoing, outcome, slot)
            return
        try:
            records = [record for record, _ in pickle.loads(outcome)]
        except Exception as exc:  # a bug here must not leave the runs unfinished
            for outgoing, _ in members:
                driver.crash(outgoing.run, f"nbflow could not read its outcome ({exc!r}).", exc)
            return
        for outgoing, slot in members:
            try:
                self.finish_run(outgoing.run, records[slot.index], slot)
            except Exception as exc:
                logger.exception("ending task run %r failed", outgoing.run.name)
                driver.crash(outgoing.run, f"nbflow could not read its outcome ({exc!r}).", exc)
        sizing.measure([outgoing.run for outgoing, _ in members])

    def _gather(self, handles: list[Any]) -> list[bytes]:
        import ray

        return chunks.gather(handles, ray.get, lambda handle: handle[1], lambda value: value)

    def _stop_work(self, run: TaskRun, handle: Any) -> None:
        # ray.cancel of a task whose upstream refs are still resolving can abort this process
        # (Ray 2.60, ray-project/ray#55131). So a task that executes (it reported an attempt) is
        # cancelled with force, which kills its worker; one with upstream refs that may not have
        # started is withdrawn (_Marks), which it checks as it starts; one without any has nothing
        # to resolve and is cancelled (dropped if queued, interrupted if it just started).
        import ray

        if type(handle) is Slot:  # a chunk stops once none of its runs needs it
            if handle.chunk.finished():
                ray.cancel(handle.chunk.future, force=True)
            return
        if run.run_count > handle[2]:
            _force_cancel(handle)
        elif handle[3] is not None:
            self._marks.withdraw(handle)  # type: ignore[union-attr]
        else:
            ray.cancel(handle[0])

    def __repr__(self) -> str:
        return f"RayTaskRunner(address={self.address!r})"


def _force_cancel(handle: Any) -> None:
    import ray

    ray.cancel(handle[0], force=True)


# -- one driver thread carries out what Ray's callbacks hand over ------------------------------
_calls: queue.SimpleQueue = queue.SimpleQueue()


def _carry_out() -> None:
    while True:
        call = _calls.get()
        try:
            call()
        except Exception:  # a bug here must not stop every later run from ending
            logger.exception("nbflow's Ray callback %r failed", call)


def _ignore(_outcome: Any) -> None:
    pass


@functools.cache
def _start_ending_runs() -> None:
    threading.Thread(target=_carry_out, name="nbflow-ray-outcomes", daemon=True).start()


@functools.cache
def _remote_run() -> Any:
    import ray

    return ray.remote(num_returns=2)(_run_on_worker)


@functools.cache
def _remote_chunk() -> Any:
    import ray

    return ray.remote(_run_chunk_on_worker)


def _as_arguments(handle: Any) -> tuple:
    # An upstream run's (record, value) refs, or the ref of its chunk's outcomes and its index there:
    # Ray resolves refs given as arguments, and the worker picks the run's own outcome.
    return (handle.chunk.future, handle.index) if type(handle) is Slot else handle[:2]


def _run_on_worker(payload: tuple, key: bytes | None, *upstream: bytes | None) -> tuple:
    """The Ray task of one run; ``upstream`` holds each upstream run's record and value, in turn.

    Given its start ``key``, it marks it first; if the driver withdrew the run
    meanwhile (cancelled it before it started), it returns at once, Cancelled.
    """
    if key is not None and not _Marks.starts(key):
        run_id, name = payload[3], payload[4]
        state = S.Cancelled(message=f"Task run {name!r} was cancelled before it started.")
        return dumps(Record(run_id, (state,), 0, name, 0, None)), None
    record, value = worker.run_payload(payload, chunks.picked(list(zip(upstream[::2], upstream[1::2]))))
    return dumps(record), value


def _run_chunk_on_worker(blob: bytes) -> bytes:
    """The Ray task of a chunk of mapped runs (:func:`nbflow.runners.chunks.run_chunk`)."""
    return chunks.run_chunk(blob, None, lambda payload, _upstream: _run_on_worker(payload, None))


# -- withdrawing runs that have not started ------------------------------------------------------
class _Marks:
    """Start marks of one runner's tasks that have upstream refs, in Ray's key-value store (one
    round trip to Ray's control store each, much cheaper than one to an actor).

    Such a task marks its key "s" as it starts, unless the key is there: "w"
    means the driver withdrew the run, and it returns at once. The driver
    withdraws a run by marking its key "w", unless it is there: "s" means the
    task executes, and it is cancelled (which is safe once it runs). The
    runner's keys go once it stopped and every withdrawn task has reported.
    The driver's marks are set in nbflow's Ray thread, in order.
    """

    def __init__(self) -> None:
        self.prefix = f"nbflow-starts/{new_id():032x}/".encode()
        self._pending: set[Any] = set()  # withdrawn tasks that have not reported
        self._closed = False
        self._dropped = False
        self._lock = threading.Lock()

    def key(self, run_id: int) -> bytes:
        return self.prefix + f"{run_id:032x}".encode()

    @staticmethod
    def starts(key: bytes) -> bool:
        """In the task: mark it started; False if the driver withdrew its run."""
        from ray.experimental import internal_kv

        existed = internal_kv._internal_kv_put(key, b"s", overwrite=False, namespace=_NAMESPACE)
        # Marked already: withdrawn, unless Ray runs the task again (its worker died).
        return not existed or internal_kv._internal_kv_get(key, namespace=_NAMESPACE) == b"s"

    def withdraw(self, handle: Any) -> None:
        with self._lock:
            self._pending.add(handle[0])
        _calls.put(functools.partial(self._withdraw, handle))

    def _withdraw(self, handle: Any) -> None:
        from ray.experimental import internal_kv

        key = handle[3]
        if self._dropped:  # the task reported before it could be withdrawn
            return
        if internal_kv._internal_kv_put(key, b"w", overwrite=False, namespace=_NAMESPACE) and \
                internal_kv._internal_kv_get(key, namespace=_NAMESPACE) == b"s":
            _force_cancel(handle)

    def reported(self, handle: Any) -> None:
        """The task under ``handle`` ended (in nbflow's Ray thread)."""
        with self._lock:
            self._pending.discard(handle[0])
            last = self._closed and not self._pending
        if last:
            self._drop()

    def close(self) -> None:
        """The runner stopped: its keys go once no withdrawn task may still start."""
        with self._lock:
            self._closed = True
            last = not self._pending
        if last:
            _calls.put(self._drop)

    def _drop(self) -> None:
        from ray.experimental import internal_kv

        self._dropped = True
        try:
            internal_kv._internal_kv_del(self.prefix, del_by_prefix=True, namespace=_NAMESPACE)
        except Exception:  # Ray shut down meanwhile: its store went with it
            logger.debug("dropping the start marks of a RayTaskRunner failed", exc_info=True)


# -- live messages: an actor per Ray session collects them, a driver thread drains it -------
class _RayChannel(worker.Channel):
    """Live messages go to the session's collecting actor, found by name."""

    __slots__ = ()

    def open(self) -> Callable[[bytes], Any]:
        import ray

        return ray.get_actor(self.key, namespace=_NAMESPACE).put.remote


@functools.cache
def _sink_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class LiveMessages:
        """Holds batches of live messages until the driver takes them."""

        def __init__(self) -> None:
            self._batches: list[bytes | None] = []
            self._ready = asyncio.Event()

        async def put(self, batch: bytes) -> None:
            self._batches.append(batch)
            self._ready.set()

        async def take(self) -> list[bytes | None]:
            await self._ready.wait()
            self._ready.clear()
            batches, self._batches = self._batches, []
            return batches

        async def close(self) -> None:
            self._batches.append(None)
            self._ready.set()

    return LiveMessages


class _Sink:
    """The collecting actor of one Ray session and, while runners use it, the driver thread draining it."""

    def __init__(self) -> None:
        import ray

        self.job = ray.get_runtime_context().get_job_id()
        self.name = f"nbflow-live-{new_id():032x}"
        self.actor = _sink_class().options(name=self.name, namespace=_NAMESPACE).remote()
        self.users = 0
        self.thread: threading.Thread | None = None

    def open(self) -> None:
        """Start draining (a runner starts using the sink)."""
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._drain, name="nbflow-ray-live", daemon=True)
            self.thread.start()

    def _drain(self) -> None:
        import ray

        while True:
            try:
                batches = ray.get(self.actor.take.remote())
            except BaseException:  # Ray shut down (waiting threads get SystemExit)
                return
            for batch in batches:
                if batch is None:
                    return
                driver.receive(batch)  # records come with the task's results, not here

    def close(self) -> None:
        """Stop draining (no runner uses the sink); the actor stays for the next runner of this session."""
        import ray

        try:
            ray.get(self.actor.close.remote())
            if self.thread is not None:
                self.thread.join(timeout=10)
        except Exception:
            logger.debug("closing the live-message sink failed", exc_info=True)

    def release(self) -> None:
        """A runner stopped using the sink: the last one stops the draining thread."""
        with _sink_lock:
            self.users -= 1
            if not self.users:
                self.close()


_sink_lock = threading.Lock()
_current_sink: _Sink | None = None


def _use_sink() -> _Sink:
    """The collecting actor of the running Ray session (made on first use), drained while runners use it."""
    global _current_sink
    import ray

    with _sink_lock:
        sink = _current_sink
        if sink is None or sink.job != ray.get_runtime_context().get_job_id():
            sink = _current_sink = _Sink()
        sink.users += 1
        sink.open()
        return sink


__all__ = ["PrefectRayFuture", "RayTaskRunner"]
