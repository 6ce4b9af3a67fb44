"""DaskTaskRunner: task runs on a Dask cluster (``dask.distributed``), configured as in prefect-dask.

By default each flow run starts a temporary ``distributed.LocalCluster`` and
closes it when the flow run ends; ``address=`` connects to a running
scheduler instead, and ``cluster_class=`` starts another kind of cluster.
Only what the runner started is shut down.

A run is submitted with the Dask futures of its upstream runs as arguments,
so Dask orders the runs and moves their data between workers; the driver
fetches a value when it is read, and at the end of the flow run the values
no other run consumed (``nbflow.runners.wire.results.Fetcher``). Transitions and printed lines reach the driver
through a scheduler event topic of the runner (``Worker.log_event`` and
``Client.subscribe_topic``); the Dask future's done callback ends each run.

The runs of a large ``.map`` of small tasks go in chunks (:mod:`nbflow.runners.chunks`):
one Dask task executes several runs in turn, each its own, so Dask's per-task
cost (about a millisecond) is paid once per chunk. A chunk's records reach
the driver in one event as it ends; a downstream run on Dask gets the
chunk's outcomes as a dependency and picks the one it consumes.
"""

from __future__ import annotations

import functools
import importlib
import logging
import pickle
import threading
from collections.abc import Callable
from typing import Any

from nbflow.futures import PrefectFuture
from nbflow.records import TaskRun, new_id
from nbflow.runners import chunks, cluster, sizing
from nbflow.runners.chunks import Chunk, Slot
from nbflow.runners.wire import driver, worker
from nbflow.runners.wire.payload import Record, dumps


class PrefectDaskFuture(PrefectFuture):
    """The future of a task run on Dask: the same methods and semantics as every nbflow future."""

    __slots__ = ()


logger = logging.getLogger("nbflow.runners")

#: Chunks after which the scheduler forgets the runner's delivered live messages.
FORGET_EVERY = 64


def _as_dependency(handle: Any) -> Any:
    # Dask replaces the future inside the tuple by the chunk's outcomes; the worker picks its own.
    return (handle.chunk.future, handle.index) if type(handle) is Slot else handle


def _chunk_upstreams(group: list[cluster.Outgoing]) -> list[list[Any]] | None:
    # None when no run of the chunk waits on an engine future (a plain .map): no empty list per run.
    if not any(o.handles for o in group):
        return None
    return [[_as_dependency(h) for h in o.handles] for o in group]


class DaskTaskRunner(cluster.ClusterTaskRunner):
    """Runs task runs on a Dask cluster: a temporary local one by default.

    ``cluster_class`` (a class or its import path) and ``cluster_kwargs``
    choose the cluster to start (``distributed.LocalCluster`` by default),
    ``adapt_kwargs`` make it adaptive, ``address`` connects to an existing
    scheduler instead, and ``client_kwargs`` go to ``distributed.Client``.
    """

    future_class = PrefectDaskFuture

    def __init__(
        self,
        cluster_class: str | Callable[..., Any] | None = None,
        cluster_kwargs: dict[str, Any] | None = None,
        address: str | None = None,
        client_kwargs: dict[str, Any] | None = None,
        adapt_kwargs: dict[str, Any] | None = None,
    ) -> None:
        cluster.require("distributed", "dask", "DaskTaskRunner")
        super().__init__()
        if address is not None and (cluster_class is not None or cluster_kwargs or adapt_kwargs):
            raise ValueError(
                "DaskTaskRunner: give either address= (an existing scheduler) or cluster_class= / "
                "cluster_kwargs= / adapt_kwargs= (a cluster to start), not both."
            )
        for name, kwargs in (("client_kwargs", client_kwargs), ("cluster_kwargs", cluster_kwargs)):
            if kwargs and "asynchronous" in kwargs:
                raise ValueError(f"DaskTaskRunner: {name} cannot set 'asynchronous'; nbflow manages it.")
        self.cluster_class = cluster_class
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.address = address
        self.client_kwargs = {"set_as_default": False, **(client_kwargs or {})}
        self.adapt_kwargs = dict(adapt_kwargs or {})
        self._cluster: Any = None
        self._client: Any = None
        self._channel = _DaskChannel(f"nbflow-{new_id():032x}")  # the runner's event topic
        self._unwatched: list[tuple] = []  # futures whose done callback is not registered yet
        self._unwatched_lock = threading.Lock()
        self._chunks_done = 0

    def duplicate(self) -> DaskTaskRunner:
        return type(self)(
            self.cluster_class, self.cluster_kwargs, self.address, self.client_kwargs, self.adapt_kwargs
        )

    # -- the engine -----------------------------------------------------------------------
    def _start(self) -> tuple[str, worker.Channel]:
        import distributed

        if self.address is not None:
            self._client = distributed.Client(self.address, **self.client_kwargs)
            where = f"the Dask scheduler at {self.address}"
        else:
            cluster_class = _cluster_class(self.cluster_class) or distributed.LocalCluster
            kwargs = dict(self.cluster_kwargs)
            if cluster_class is distributed.LocalCluster:
                kwargs.setdefault("silence_logs", logging.CRITICAL)  # runs report their own failures
            self._cluster = cluster_class(**kwargs)
            if self.adapt_kwargs:
                self._cluster.adapt(**self.adapt_kwargs)
            self._client = distributed.Client(self._cluster, **self.client_kwargs)
            where = f"the Dask cluster {self._cluster!r}"
        self._client.subscribe_topic(self._channel.key, self._on_event)
        return where, self._channel

    def _stop(self) -> None:
        client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
        try:
            client.unsubscribe_topic(self._channel.key)
            self._forget_events(client)
            client.close()
        finally:
            if cluster is not None:
                cluster.close()

    def _on_event(self, event: tuple[float, bytes]) -> None:
        # On the client's event loop: apply live messages; keep a record that
        # arrives ahead of its future's completion for the done callback.
        for message in driver.receive(event[1]):
            for final in message[1] if message[0] == "finals" else (message,):
                entry = driver.tracked(final[1], final[2])
                if entry is not None:
                    entry.final = final[3]

    def _submit(self, batch: list[cluster.Outgoing]) -> list[Any]:
        # A fresh key each time: a run handed over again (after an upstream crash) is new work.
        client = self._client
        if len(batch) == 1:
            o = batch[0]
            return [client.submit(_run_on_worker, o.payload, [_as_dependency(h) for h in o.handles],
                                  key=f"{o.run.task.name}-{new_id():032x}", pure=False)]
        groups = chunks.split(batch, sum(client.nthreads().values()))
        chunked = len(groups[0]) > 1
        futures = client.map(  # one message to the scheduler for a whole .map
            _run_chunk_on_worker if chunked else _run_on_worker,
            [chunks.pack(g) if chunked else g[0].payload for g in groups],
            [_chunk_upstreams(g) if chunked else [_as_dependency(h) for h in g[0].handles] for g in groups],
            key=[f"{g[0].run.task.name}-{new_id():032x}" for g in groups], pure=False,
        )
        if not chunked:
            return futures
        return [slot for group, future in zip(groups, futures) for slot in chunks.slots(future, group)]

    def _watch(self, outgoing: cluster.Outgoing, handle: Any) -> None:
        # Done callbacks are registered from the client's event loop, a burst of
        # submits at a time: waking the loop once per submit costs more than Dask's submit.
        with self._unwatched_lock:
            first = not self._unwatched
            self._unwatched.append((outgoing, handle))
        if first:
            self._client.loop.add_callback(self._register_done_callbacks)

    def _register_done_callbacks(self) -> None:
        with self._unwatched_lock:
            batch, self._unwatched = self._unwatched, []
        by_chunk: dict[Chunk, list[tuple[cluster.Outgoing, Slot]]] = {}
        for outgoing, handle in batch:
            if type(handle) is Slot:
                by_chunk.setdefault(handle.chunk, []).append((outgoing, handle))
            else:
                handle.add_done_callback(functools.partial(self._done, [(outgoing, handle)]))
        for chunk, members in by_chunk.items():
            chunk.future.add_done_callback(functools.partial(self._done, members))

    def _done(self, members: list[tuple[cluster.Outgoing, Any]], future: Any) -> None:
        """Dask's done callback (in its callback thread): end the runs the Dask task executed."""
        if future.status != "finished":
            try:
                error = future.exception()
            except BaseException as exc:  # cancelled, or the client is gone
                error = exc
            for outgoing, handle in members:
                self.engine_failed(outgoing, error, handle)
            return
        outcomes: Any = None
        for outgoing, handle in members:
            entry = driver.tracked(outgoing.run.int_id)
            record = entry.final if entry is not None else None
            if record is None:  # the live record was lost or late: read the one the task returned
                try:
                    if outcomes is None:
                        outcomes = future.result()
                        if type(handle) is Slot:
                            outcomes = pickle.loads(outcomes)
                    record = (outcomes[handle.index] if type(handle) is Slot else outcomes)[0]
                except Exception as exc:
                    self.engine_failed(outgoing, exc, handle)
                    continue
            self.finish_run(outgoing.run, record, handle)
        if type(members[0][1]) is Slot:
            sizing.measure([outgoing.run for outgoing, _ in members])
            self._chunks_done += 1
            if self._chunks_done % FORGET_EVERY == 0 and self._client is not None:
                self._forget_events(self._client)

    def _forget_events(self, client: Any) -> None:
        # The scheduler keeps every event of a topic (up to 100,000 batches): the records of a
        # million runs would stay in its memory (the driver's, for a LocalCluster) until it stops.
        try:
            client.run_on_scheduler(_drop_topic, self._channel.key)
        except Exception:  # a scheduler going away keeps its events; nothing of the runs is lost
            logger.debug("the events of %s stay on the scheduler", self._channel.key, exc_info=True)

    def _gather(self, handles: list[Any]) -> list[bytes]:
        return chunks.gather(handles, self._client.gather, lambda handle: handle, lambda outcome: outcome[1])

    def _stop_work(self, run: TaskRun, handle: Any) -> None:
        # A task that has not started leaves the cluster. One that executes cannot be stopped
        # (Dask does not kill worker threads): its thread ends when the code returns, and what
        # it reports then is ignored. A chunk goes once none of its runs needs it.
        if type(handle) is Slot:
            if handle.chunk.finished():
                handle.chunk.future.cancel()
            return
        handle.cancel()

    def __repr__(self) -> str:
        if self.address is not None:
            return f"DaskTaskRunner(address={self.address!r})"
        return f"DaskTaskRunner(cluster_class={self.cluster_class!r}, cluster_kwargs={self.cluster_kwargs!r})"


def _cluster_class(value: str | Callable[..., Any] | None) -> Callable[..., Any] | None:
    if isinstance(value, str):  # "dask_jobqueue.SLURMCluster"
        module, _, name = value.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return value


class _DaskChannel(worker.Channel):
    """Live messages go to the scheduler as events of the runner's topic."""

    __slots__ = ()

    def open(self) -> Callable[[bytes], Any]:
        import distributed

        return functools.partial(distributed.get_worker().log_event, self.key)

    def report(self, record: Record, value: bytes | None, base: int) -> None:
        # Ahead of the task's completion, so its done callback need not fetch
        # the result; the printed lines went ahead already, on this channel.
        # A chunk's records go together, as it ends (_run_chunk_on_worker).
        record = record._replace(output=None)
        finals = getattr(_chunk, "finals", None)
        if finals is None:
            worker.send_final(self, record, None, base)
        else:
            finals.append(worker.final_message(record, None, base))
            _chunk.channel = self


_chunk = threading.local()  # .finals: the records of the runs of the chunk this thread executes; .channel: theirs


def _drop_topic(topic: str, dask_scheduler: Any = None) -> None:
    """On the scheduler: forget the events of ``topic`` (they were delivered)."""
    broker = getattr(dask_scheduler, "_broker", None)  # where recent releases keep events (no public way)
    if broker is not None:
        broker.truncate(topic)
    else:
        dask_scheduler.events.pop(topic, None)


def _run_on_worker(payload: bytes, upstream: list[Any]) -> tuple:
    """The Dask task of one run: its outcome (record, value) stays on the cluster for downstream runs.

    Dask replaces the upstream futures by their outcomes before calling it.
    """
    record, value = worker.run_payload(payload, chunks.picked(upstream))
    return dumps(record), value


def _run_chunk_on_worker(blob: bytes, upstreams: list[list[Any]] | None) -> bytes:
    """The Dask task of a chunk of mapped runs (:func:`nbflow.runners.chunks.run_chunk`).

    The records reach the driver in one message as the chunk ends, not one per run.
    """
    _chunk.finals = finals = []
    try:
        return chunks.run_chunk(blob, upstreams, _run_on_worker)
    finally:
        _chunk.finals = None
        if finals:
            worker.send(_chunk.channel, ("finals", finals))


__all__ = ["DaskTaskRunner", "PrefectDaskFuture"]
