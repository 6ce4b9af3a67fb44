"""What the Dask and Ray runners share: runs handed to a cluster engine with their upstream futures.

A run goes to the engine as soon as its upstream runs on the same engine
have been *submitted*: their engine futures are passed as dependencies, so the
engine orders the runs and moves their data between workers. Values stay on
the cluster until read (:mod:`nbflow.runners.wire.results`).
"""

from __future__ import annotations

import abc
import importlib
import logging
import threading
import time
from typing import Any, NamedTuple

from nbflow import events
from nbflow.completion import when_all_done
from nbflow.context import current_flow_run
from nbflow.exceptions import MissingDependencyError, SerializationError
from nbflow.futures import PrefectFuture
from nbflow.records import TaskRun
from nbflow.runners.base import TaskRunner
from nbflow.runners.chunks import Slot
from nbflow.runners.wire.driver import Remote, complete, crash, fail, track, untrack
from nbflow.runners.wire.payload import Payloads
from nbflow.runners.wire.results import Fetcher
from nbflow.runners.wire.worker import Channel

logger = logging.getLogger("nbflow.runners")


def require(module: str, extra: str, runner: str) -> Any:
    """Import an optional engine, or raise MissingDependencyError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{runner} needs the {module!r} package, which is not installed. "
            f'Install it with: pip install "nbflow[{extra}]"'
        ) from exc





class Outgoing(NamedTuple):
    """A run on its way to the engine."""

    run: TaskRun
    payload: tuple
    upstream: list[TaskRun]  # its upstream runs on the engine...
    handles: list[Any]  # ...and their engine futures


class ClusterTaskRunner(TaskRunner):
    """Base of the runners whose task runs execute on a cluster engine (Dask, Ray).

    A run goes to the engine as soon as its upstream runs on the same engine
    have been *submitted*: their engine futures are passed as dependencies, so
    the engine orders the runs and moves their data between workers. Upstream
    runs elsewhere (a parent flow's threads, another runner) are waited for on
    the driver first. The engine's completion callback ends each run; there is
    no polling loop. Subclasses say how to start and stop the engine, submit a
    payload, watch its outcome and gather values. The runs one ``.map`` call
    dispatches go to the engine together.
    """

    #: The future class ``submit`` returns.
    future_class: type[PrefectFuture] = PrefectFuture
    # A map's runs go to the engine in parts: the engine starts on the first ones while the driver
    # builds the rest, and the driver never holds the payloads of a whole million-item map at once.
    map_part = 10_000

    def __init__(self) -> None:
        super().__init__()
        self._payloads: Payloads | None = None  # made when the engine starts
        self._handles: dict[TaskRun, Any] = {}  # runs on the engine -> engine future(s)
        self._remotes: dict[TaskRun, Remote] = {}  # the driver's hold on each run sent to the engine
        self._consumed: set[TaskRun] = set()  # runs whose value a downstream run on the engine uses
        self._fetcher: Fetcher | None = None
        self._start_lock = threading.Lock()
        self._flow_run: Any = None  # the flow run the engine was started for (cluster events name it)

    # -- what each engine provides ----------------------------------------------------
    @abc.abstractmethod
    def _start(self) -> tuple[str, Channel]:
        """Start or connect to the engine; return a description of it for messages, and the
        channel its workers send live messages on."""

    @abc.abstractmethod
    def _submit(self, batch: list[Outgoing]) -> list[Any]:
        """Hand each payload to the engine with its upstream engine futures; return their handles."""

    @abc.abstractmethod
    def _watch(self, outgoing: Outgoing, handle: Any) -> None:
        """Arrange for :meth:`finish_run` or :meth:`engine_failed` when ``handle`` is done."""

    @abc.abstractmethod
    def _gather(self, handles: list[Any]) -> list[bytes]:
        """The pickled values held under ``handles`` on the cluster."""

    @abc.abstractmethod
    def _stop_work(self, run: TaskRun, handle: Any) -> None:
        """Stop ``handle``'s work on the engine (``run`` ended on the driver): drop it if it has not
        started, cancel it if it executes."""

    @abc.abstractmethod
    def _stop(self) -> None:
        """Disconnect, and stop what :meth:`_start` started (only that)."""

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> ClusterTaskRunner:
        super().__enter__()
        self._ensure_started()
        return self

    @property
    def engine_name(self) -> str:
        """How watchers name the engine: ``Dask cluster``, ``Ray cluster``."""
        return f"{type(self).__name__.removesuffix('TaskRunner')} cluster"

    def _phase(self, phase: str) -> None:
        # Watchers show and time the engine's start and stop (events.ClusterEvent).
        events.publish_cluster(self, phase, self.engine_name, self._flow_run, time.time())

    def _ensure_started(self) -> None:
        if self._fetcher is None:
            with self._start_lock:
                if self._fetcher is None:
                    self._flow_run = current_flow_run()
                    self._phase("starting")
                    try:
                        where, channel = self._start()
                    except BaseException:
                        self._phase("stopped")  # it never came up: nothing is starting any more
                        raise
                    self._phase("started")
                    self._payloads = Payloads(type(self).__name__, channel)
                    self._fetcher = Fetcher(self._gather, where, self._consumed)

    def shutdown(self) -> None:
        """Fetch the unconsumed values still on the cluster (one batch), then stop what was started."""
        with self._start_lock:
            fetcher, self._fetcher = self._fetcher, None
        if fetcher is None:
            return
        try:
            fetcher.release()
        except Exception:
            logger.warning("%r: results left on the cluster could not be fetched", self, exc_info=True)
        self._handles.clear()
        self._remotes.clear()
        self._consumed.clear()
        self._phase("stopping")
        try:
            self._stop()
        except Exception:
            logger.warning("%r: stopping the engine failed", self, exc_info=True)
        finally:
            self._phase("stopped")
        for run in self._runs:  # nothing is left unfinished silently
            if not run.done:
                crash(run, f"{type(self).__name__} shut down before the run finished.")

    # -- scheduling -------------------------------------------------------------------------
    def _future(self, run: TaskRun) -> PrefectFuture:
        return self.future_class(run)

    def _pending_upstream(self, run: TaskRun) -> list[TaskRun]:
        handles = self._handles
        return [dep for dep in run.pending_upstream() if dep not in handles]

    def _dispatch(self, run: TaskRun) -> None:
        if run.done:  # cancelled while it waited for upstream runs
            return
        self._ensure_started()
        run.take_context()  # context variables stay on the driver
        deps = run.dependencies
        upstream: dict[TaskRun, Any] = {}
        for dep, _ in deps or ():
            handle = self._handles.get(dep)
            if handle is not None:
                upstream[dep] = handle
        try:
            payload = self._payloads.build(  # type: ignore[union-attr]
                run, run.parameters, deps, list(upstream), self._consumed
            )
        except SerializationError as exc:
            fail(run, exc)
            return
        outgoing = Outgoing(run, payload, list(upstream), list(upstream.values()))
        if not self._add_to_map(outgoing):
            self._send([outgoing])

    def _hand_over(self, batch: list[Outgoing]) -> None:
        self._send(batch)

    def _send(self, batch: list[Outgoing]) -> None:
        remotes = []
        for outgoing in batch:
            run = outgoing.run
            remote = self._remotes.get(run)
            if remote is None:
                remote = self._remotes[run] = Remote(run, self, run)
                run.add_done_callback(self._forget_remote)  # an ended run is not handed out again
            remotes.append(remote)
            track(run, remote)
        try:
            handles = self._submit(batch)
        except Exception as exc:
            for outgoing in batch:
                crash(outgoing.run, f"{type(self).__name__} could not hand it to the engine ({exc!r}).", exc)
            return
        for outgoing, handle, remote in zip(batch, handles, remotes):
            run = outgoing.run
            self._handles[run] = handle
            self._watch(outgoing, handle)
            # A run cancelled before it started ends here (TaskRun.cancel); one that started, through
            # its remote hold (TaskRun.interrupt). Either way its work stops (Remote).
            remote.attach()

    def _forget_remote(self, run: TaskRun) -> None:
        self._remotes.pop(run, None)

    def stop_remote(self, run: TaskRun) -> None:
        """Stop ``run``'s work on the engine (its :class:`Remote` hold asks, as it ends here)."""
        # Given up first: the engine's report of the stopped work (cancelled, or late) is then ignored.
        handle = self._handles.pop(run, None)
        if handle is not None:
            self._stop_work(run, handle)

    def retry_remote(self, run: TaskRun) -> None:
        """Hand ``run`` to the engine again for its next attempt (the driver stopped the last one)."""
        self._handles.pop(run, None)
        self._dispatch(run)

    # -- outcomes (called from the engine's callback threads) ---------------------------------
    def finish_run(self, run: TaskRun, record_blob: bytes, handle: Any) -> None:
        """End ``run`` with the record its engine task returned (called from the engine's callbacks)."""
        if self._handles.get(run) is not handle and self._fetcher is not None:
            return  # an attempt the driver gave up on
        fetcher = self._fetcher
        if fetcher is None:  # the runner shut down meanwhile: the value is out of reach
            crash(run, f"{type(self).__name__} shut down before its result was fetched.")
        else:
            complete(run, record_blob, fetcher=fetcher, handle=handle)

    def engine_failed(self, outgoing: Outgoing, error: BaseException, handle: Any) -> None:
        """The engine failed ``outgoing``'s run without a record: its worker died, it was cancelled,
        or an upstream engine future failed (engines fail dependents without running them).
        A run of a failed chunk that had not started is handed over again, alone.

        In the last case the run goes back through scheduling once that
        upstream run has ended on the driver (or was handed to the engine
        again, for a retry): NotReady or ``allow_failure`` apply as for any
        failed upstream.
        """
        run = outgoing.run
        if self._handles.get(run) is not handle:
            return  # an attempt the driver gave up on
        self._handles.pop(run, None)
        if run.done:
            untrack(run)
            return
        if type(handle) is Slot and not run.state.is_running():
            # Its chunk failed (its worker died) before this run was seen starting there: it goes again,
            # on its own, so a run that kills its worker is found out alone and the others complete.
            self._dispatch(run)
            return

        def decide() -> None:
            given = zip(outgoing.upstream, outgoing.handles)
            if any(self._handles.get(dep) is not dep_handle for dep, dep_handle in given):
                self._schedule(run)
            else:
                crash(run, f"the engine lost it ({type(error).__name__}: {error})", error)

        when_all_done(outgoing.upstream, decide)


__all__ = ["ClusterTaskRunner", "Outgoing", "require"]
