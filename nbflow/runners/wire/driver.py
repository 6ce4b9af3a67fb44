"""The driver side: applying what workers report to the driver's records, and holding runs that execute elsewhere.

A runner tracks a run before its payload leaves (:func:`track`) with a
:class:`Remote`, its hold on the run; the live messages its worker sends are
applied as they arrive (:func:`receive`), and the worker's record ends the
run (:func:`complete`): whatever the live messages missed is published
first, then the final state. A run whose worker or engine failed it ends
Crashed (:func:`crash`), never hangs.

The :class:`Remote` lets the driver end a run without its worker: a cancel
ends it Cancelled here at once and stops its work where it runs; an attempt
still running :data:`GRACE` seconds past its deadline (its code blocks in C
or swallows the timeout) is stopped and ends TimedOut; an attempt whose
worker died ends Crashed. Either is retried from the driver if the task has
retries left.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any, Protocol

from nbflow import engine
from nbflow import logging as run_logging
from nbflow import states as S
from nbflow import timeouts
from nbflow.exceptions import CrashedRun, SerializationError, TaskRunTimeoutError
from nbflow.records import TaskRun
from nbflow.runners.wire.payload import Record
from nbflow.runners.wire.results import Fetcher, RemoteState, loads_value
from nbflow.states import State, StateType
from nbflow.timeouts import DeadlineExceeded

_lock = threading.Lock()  # guards the output counters of tracked runs

#: Seconds past an attempt's deadline (counted from when the driver heard it started) before the
#: driver stops it itself; a worker's own timeout normally ends the attempt first.
GRACE = 0.5


class RemoteOwner(Protocol):
    """What a runner holding runs elsewhere provides to its :class:`Remote` holds."""

    def stop_remote(self, key: Any) -> None: ...

    def retry_remote(self, key: Any) -> None: ...


class Remote:
    """The driver's hold on a run that executes elsewhere, attached to its record (``TaskRun.attach_call``).

    Its ``owner`` (the runner) does the work: ``owner.stop_remote(key)``
    stops the run's current work where it runs (kills its worker process,
    cancels its engine task), called whenever the run ends here while its
    worker still has it; ``owner.retry_remote(key)`` hands the run out again
    for its next attempt. ``key`` is what the owner knows the run by.
    """

    __slots__ = ("_attached", "key", "owner", "run")

    abandonable = True  # an interrupted run ends at once (TaskRun.interrupt)

    def __init__(self, run: TaskRun, owner: RemoteOwner, key: Any) -> None:
        self.run = run
        self.owner = owner  # one object per runner, not two bound callables per run: a big map holds many
        self.key = key
        self._attached = False

    def _stop(self) -> None:
        self.owner.stop_remote(self.key)

    def attach(self) -> None:
        """Hold the run from now on, once ``stop()`` can reach its work (the first time it was handed out).

        A run that ended meanwhile (cancelled before its work could be
        reached) has that work stopped at once.
        """
        if self._attached:
            return
        self._attached = True
        stop = self.run.attach_call(self)
        self.run.add_done_callback(self._ended)  # after attach_call: it detaches, even from a run that ended
        if stop is not None:  # interrupted before it could be held
            self.interrupt(stop)

    def interrupt(self, exc: type[BaseException]) -> bool:
        """A cancel (``TaskRun.interrupt`` with ``exc``): end the run here now; its work is stopped where it runs."""
        run = self.run
        return run.finish(engine.outcome_state(False, exc(), f"Task run {run.name!r}", None, TaskRunTimeoutError))

    def _ended(self, run: TaskRun) -> None:
        run.detach_call(self)
        if untrack(run):  # it ended here, not by its worker's report
            self._stop()

    def attempt_started(self) -> None:
        """The worker reported that an attempt started: arm its deadline."""
        timeout = self.run.task.timeout_seconds
        if timeout is not None:
            timeouts.call_later(timeout + GRACE, self._overran, self.run.run_count)

    def _overran(self, attempt: int) -> None:
        run = self.run
        if run.run_count != attempt or run.states[-1].type is not StateType.RUNNING:
            return  # that attempt ended in time
        if not untrack(run):
            return  # its record arrived meanwhile
        self._stop()
        self.lost(engine.outcome_state(False, DeadlineExceeded(), f"Task run {run.name!r}",
                                       run.task.timeout_seconds, TaskRunTimeoutError))

    def lost(self, state: State) -> None:
        """The current attempt ended on the driver in ``state`` (its worker died, or it overran and was
        stopped): retry the run if its task allows, else end it in ``state``."""
        run = self.run
        task = run.task
        # A worker that died before the attempt started (run_count 0) is no attempt to count, nor to repeat.
        as_failure = state if state.is_failed() else S.Failed(message=state.message, data=state.data)
        if not run.run_count or not engine.should_retry(task, run, as_failure):
            run.finish(state)
            return
        if run.done:  # cancelled meanwhile
            return
        run.set_state(S.AwaitingRetry(message=f"Retry {run.run_count} of {task.retries} after: {state.message}"))
        delay = engine.retry_delay(task.retry_delay_seconds, task.retries, run.run_count, task.retry_jitter_factor)
        if delay:
            timeouts.call_later(delay, self._resume)
        else:
            self._resume()

    def _resume(self) -> None:
        run = self.run
        if run.done:  # cancelled while it waited to retry
            return
        reason = run.stop_reason()
        if reason is not None:  # a retry never starts once its flow run is over
            run.finish(S.Cancelled(
                message=f"Task run {run.name!r} was not retried: {reason} while it waited to retry "
                f"(its last attempt: {run.states[-1].message})"
            ))
            return
        self.owner.retry_remote(self.key)


class Tracked:
    """The driver's bookkeeping for a run executing remotely."""

    __slots__ = ("base", "final", "output_seen", "remote", "run")

    def __init__(self, run: TaskRun, remote: Remote | None) -> None:
        self.run = run
        self.remote = remote
        self.base = run.run_count  # attempts made before this payload left: its messages carry it
        self.output_seen = 0
        self.final: bytes | None = None  # a record that arrived live, before the engine's outcome


# Runs executing remotely, by id: live messages name runs by id.
_tracked: dict[int, Tracked] = {}


def track(run: TaskRun, remote: Remote | None = None) -> None:
    """Start taking live messages for ``run`` (before its payload leaves)."""
    _tracked[run.int_id] = Tracked(run, remote)


def tracked(run_id: int, base: int | None = None) -> Tracked | None:
    """The bookkeeping of the tracked run with this id, if it is still tracked (and, given ``base``,
    if the message naming it comes from the payload last sent)."""
    entry = _tracked.get(run_id)
    if entry is None or (base is not None and base != entry.base):
        return None
    return entry


def untrack(run: TaskRun) -> bool:
    """Stop taking live messages for ``run``; True if it was tracked.

    Whoever untracks a run that was tracked ends its current attempt (here, or
    by :meth:`Remote.lost`): its record, if it still comes, is ignored.
    """
    return _tracked.pop(run.int_id, None) is not None


def receive(blob: bytes) -> list[tuple]:
    """Apply a batch of live messages; returns the messages that are not live (e.g. ``final``)."""
    others = []
    for message in pickle.loads(blob):
        kind = message[0]
        if kind == "state":
            entry = tracked(message[1], message[2])
            if entry is not None and entry.run.apply_reported(*message[3:]):
                if message[4].type is StateType.RUNNING and entry.remote is not None:
                    entry.remote.attempt_started()
        elif kind == "output":
            entry = tracked(message[1], message[2])
            if entry is not None:
                _apply_output(entry, *message[3:])
        else:
            others.append(message)
    return others


def _apply_output(entry: Tracked, seq: int, stream: str, text: str) -> None:
    with _lock:
        if entry.run.done or seq != entry.output_seen:
            return
        entry.output_seen = seq + 1
    run_logging.record_output(entry.run, stream, text)


def complete(run: TaskRun, record_blob: bytes, value_blob: bytes | None = None,
             fetcher: Fetcher | None = None, handle: Any = None) -> bool:
    """Finish ``run`` as its worker reported: publish what live messages missed, then the final state.

    A Completed run gets the value in ``value_blob``, or with a ``fetcher`` a
    state whose value stays on the cluster (under ``handle``) until read.
    False if the run had already ended (e.g. it was cancelled meanwhile).
    """
    try:
        record: Record = pickle.loads(record_blob)
        value = None if fetcher is not None or value_blob is None else loads_value(run.name, value_blob)
    except Exception as exc:
        return fail(run, exc if isinstance(exc, SerializationError) else SerializationError(
            f"The outcome of task run {run.name!r} could not be unpickled on the driver "
            f"({type(exc).__name__}: {exc}). What it returns or raises must be importable here."
        ))
    entry = _tracked.pop(run.int_id, None)
    if entry is None or run.done:  # the driver ended (or is retrying) the attempt meanwhile: it keeps that outcome
        return False
    for index, state in enumerate(record.states[:-1], 1):
        run.apply_reported(index, state, record.name, record.run_count)
    with _lock:
        seen, entry.output_seen = entry.output_seen, record.output_sent
    missing = record.output_sent - seen
    if missing > 0 and record.output is not None:
        for stream, text in record.output.chunks[-missing:]:
            run_logging.record_output(run, stream, text)
    final = record.states[-1]
    if final.type is StateType.COMPLETED:
        if fetcher is not None:
            final = fetcher.add(RemoteState(final), handle, run)
        else:
            final = final.with_data(value)
    return run.finish_reported(final, record.name, record.run_count, record.cache, record.result_key)


def crash(run: TaskRun, reason: str, error: BaseException | None = None) -> bool:
    """End ``run`` Crashed because its worker or engine failed it; False if it had ended."""
    _tracked.pop(run.int_id, None)
    return run.finish(crashed(run, reason, error))


def crashed(run: TaskRun, reason: str, error: BaseException | None = None) -> State:
    """The Crashed state of ``run``, whose worker or engine failed it for ``reason``."""
    message = f"Task run {run.name!r} crashed: {reason}"
    exc = CrashedRun(message)
    exc.__cause__ = error
    return S.Crashed(message=message, data=exc)


def fail(run: TaskRun, exc: BaseException) -> bool:
    """End ``run`` Failed for a problem found on the driver (e.g. SerializationError); Crashed for an interrupt."""
    _tracked.pop(run.int_id, None)
    if isinstance(exc, Exception):
        return run.finish(S.Failed(message=str(exc), data=exc))
    return run.finish(S.Crashed(message=f"Task run {run.name!r} was interrupted: {exc!r}", data=exc))




__all__ = [
    "GRACE",
    "Remote",
    "RemoteOwner",
    "Tracked",
    "complete",
    "crash",
    "crashed",
    "fail",
    "receive",
    "track",
    "tracked",
    "untrack",
]
