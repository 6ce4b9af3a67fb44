"""RayTaskRunner: task runs on Ray, configured as in prefect-ray.

By default the runner starts a local Ray (``ray.init(**init_kwargs)``) for
the flow run and shuts it down afterwards; ``address=`` connects to an
existing cluster. A Ray that was already initialised is reused and left
running.

Each run is one Ray task with two results: a small record (states, run
count, name, output) that the driver fetches when the task ends, and the
run's value, which stays in the object store: downstream runs receive it as
an ObjectRef argument, and the driver fetches it when it is read, or at the
end of the flow run if no other run consumed it (``nbflow.runners.wire.results.Fetcher``). Transitions and
printed lines reach the driver through a small actor that workers send
batches to and a driver thread drains (blocking, not polling).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import queue
import threading
from typing import Any, Callable

from nbflow.futures import PrefectFuture
from nbflow.records import TaskRun, new_id
from nbflow.runners import cluster
from nbflow.runners.wire import driver, worker
from nbflow.runners.wire.payload import dumps

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

    def duplicate(self) -> "RayTaskRunner":
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
        return where, _RayChannel(_sink().name)

    def _stop(self) -> None:
        if self._started_ray:
            import ray

            self._started_ray = False
            _close_sink()
            ray.shutdown()

    def _submit(self, batch: list[cluster.Outgoing]) -> list[Any]:
        run = _remote_run().remote
        return [tuple(run(o.payload, *itertools.chain.from_iterable(o.handles))) for o in batch]

    def _watch(self, run: TaskRun, handle: Any, upstream: list[TaskRun]) -> None:
        # ObjectRef._on_completed is what ObjectRef.future() wraps, minus a
        # concurrent Future per run. Ray calls back in its own thread: the
        # outcome goes to nbflow's, where ending a run may call into Ray.
        handle[0]._on_completed(lambda outcome: _outcomes.put((self, run, upstream, handle, outcome)))

    def _gather(self, handles: list[Any]) -> list[bytes]:
        import ray

        return ray.get([handle[1] for handle in handles])

    def _cancel(self, handle: Any) -> None:
        import ray

        ray.cancel(handle[0])

    def __repr__(self) -> str:
        return f"RayTaskRunner(address={self.address!r})"


# -- outcomes: one driver thread ends runs whose record arrived ----------------------------
_outcomes: queue.SimpleQueue = queue.SimpleQueue()


def _end_runs() -> None:
    while True:
        runner, run, upstream, handle, outcome = _outcomes.get()
        try:
            if isinstance(outcome, BaseException):  # the worker died, the task was cancelled, or an upstream failed
                handle[1]._on_completed(_ignore)  # the run reports it; Ray need not log it again
                runner.engine_failed(run, outcome, upstream)
            else:
                runner.finish_run(run, outcome, handle)
        except Exception as exc:  # a bug here must not stop every later run from ending
            logger.exception("ending task run %r failed", run.name)
            driver.crash(run, f"nbflow could not read its outcome ({exc!r}).", exc)


def _ignore(_outcome: Any) -> None:
    pass


@functools.cache
def _start_ending_runs() -> None:
    threading.Thread(target=_end_runs, name="nbflow-ray-outcomes", daemon=True).start()


@functools.cache
def _remote_run() -> Any:
    import ray

    return ray.remote(num_returns=2)(_run_on_worker)


def _run_on_worker(payload: bytes, *upstream: bytes | None) -> tuple:
    """The Ray task of one run; ``upstream`` holds each upstream run's record and value, in turn."""
    record, value = worker.run_payload(payload, list(zip(upstream[::2], upstream[1::2])))
    return dumps(record), value


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
    """The collecting actor of one Ray session and the driver thread draining it."""

    def __init__(self) -> None:
        import ray

        self.job = ray.get_runtime_context().get_job_id()
        self.name = f"nbflow-live-{new_id():032x}"
        self.actor = _sink_class().options(name=self.name, namespace=_NAMESPACE).remote()
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
        import ray

        try:
            ray.get(self.actor.close.remote())
            self.thread.join(timeout=10)
            ray.kill(self.actor)
        except Exception:
            logger.debug("closing the live-message actor failed", exc_info=True)


_sink_lock = threading.Lock()
_current_sink: _Sink | None = None


def _sink() -> _Sink:
    """The collecting actor of the running Ray session (started on first use)."""
    global _current_sink
    import ray

    with _sink_lock:
        sink = _current_sink
        if sink is None or sink.job != ray.get_runtime_context().get_job_id() or not sink.thread.is_alive():
            sink = _current_sink = _Sink()
        return sink


def _close_sink() -> None:
    global _current_sink
    with _sink_lock:
        sink, _current_sink = _current_sink, None
    if sink is not None:
        sink.close()


__all__ = ["RayTaskRunner", "PrefectRayFuture"]
