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
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from nbflow.futures import PrefectFuture
from nbflow.records import TaskRun, new_id
from nbflow.runners import cluster
from nbflow.runners.wire import driver, worker
from nbflow.runners.wire.payload import Record, dumps


class PrefectDaskFuture(PrefectFuture):
    """The future of a task run on Dask: the same methods and semantics as every nbflow future."""

    __slots__ = ()


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
            client.close()
        finally:
            if cluster is not None:
                cluster.close()

    def _on_event(self, event: tuple[float, bytes]) -> None:
        # On the client's event loop: apply live messages; keep a record that
        # arrives ahead of its future's completion for the done callback.
        for message in driver.receive(event[1]):
            entry = driver.tracked(message[1], message[2])
            if entry is not None:
                entry.final = message[3]

    def _submit(self, batch: list[cluster.Outgoing]) -> list[Any]:
        # A fresh key each time: a run handed over again (after an upstream crash) is new work.
        keys = [f"{o.run.task.name}-{new_id():032x}" for o in batch]
        if len(batch) == 1:
            return [self._client.submit(
                _run_on_worker, batch[0].payload, batch[0].handles, key=keys[0], pure=False
            )]
        return self._client.map(  # one message to the scheduler for a whole .map
            _run_on_worker, [o.payload for o in batch], [o.handles for o in batch], key=keys, pure=False
        )

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
        for outgoing, handle in batch:
            handle.add_done_callback(functools.partial(self._done, outgoing))

    def _done(self, outgoing: cluster.Outgoing, future: Any) -> None:
        """Dask's done callback (in its callback thread): end the run."""
        run = outgoing.run
        if future.status == "finished":
            entry = driver.tracked(run.int_id)
            record = entry.final if entry is not None else None
            if record is None:  # the live record was lost or late: read the one the task returned
                try:
                    record = future.result()[0]
                except Exception as exc:
                    self.engine_failed(outgoing, exc, future)
                    return
            self.finish_run(run, record, future)
            return
        try:
            error = future.exception()
        except BaseException as exc:  # cancelled, or the client is gone
            error = exc
        self.engine_failed(outgoing, error, future)

    def _gather(self, handles: list[Any]) -> list[bytes]:
        return [outcome[1] for outcome in self._client.gather(handles)]

    def _stop_work(self, run: TaskRun, handle: Any) -> None:
        # A task that has not started leaves the cluster. One that executes cannot be stopped
        # (Dask does not kill worker threads): its thread ends when the code returns, and what
        # it reports then is ignored.
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
        worker.send_final(self, record._replace(output=None), None, base)


def _run_on_worker(payload: bytes, upstream: list[tuple[bytes, bytes | None]]) -> tuple:
    """The Dask task of one run: its outcome (record, value) stays on the cluster for downstream runs.

    Dask replaces the upstream futures by their outcomes before calling it.
    """
    record, value = worker.run_payload(payload, upstream)
    return dumps(record), value


__all__ = ["DaskTaskRunner", "PrefectDaskFuture"]
