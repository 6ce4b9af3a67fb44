"""The driver side: applying what workers report to the driver's run records.

A runner tracks a run before its payload leaves (:func:`track`); the live
messages its worker sends are applied as they arrive (:func:`receive`), and
the worker's record ends the run (:func:`complete`): whatever the live
messages missed is published first, then the final state. A run whose worker
or engine failed it ends Crashed (:func:`crash`), never hangs.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

from nbflow import logging as run_logging
from nbflow import states as S
from nbflow.exceptions import CrashedRun, SerializationError
from nbflow.records import TaskRun
from nbflow.runners.wire.payload import Record
from nbflow.runners.wire.results import Fetcher, RemoteState, loads_value
from nbflow.states import StateType

_lock = threading.Lock()  # guards the output counters of tracked runs


class Tracked:
    """The driver's bookkeeping for a run executing remotely."""

    __slots__ = ("run", "output_seen", "final")

    def __init__(self, run: TaskRun) -> None:
        self.run = run
        self.output_seen = 0
        self.final: bytes | None = None  # a record that arrived live, before the engine's outcome


# Runs executing remotely, by id: live messages name runs by id.
_tracked: dict[int, Tracked] = {}


def track(run: TaskRun) -> None:
    """Start taking live messages for ``run`` (before its payload leaves)."""
    _tracked[run.int_id] = Tracked(run)


def tracked(run_id: int) -> Tracked | None:
    """The bookkeeping of the tracked run with this id, if it is still tracked."""
    return _tracked.get(run_id)


def untrack(run: TaskRun) -> None:
    """Stop taking live messages for ``run`` (it ended on the driver)."""
    _tracked.pop(run.int_id, None)


def receive(blob: bytes) -> list[tuple]:
    """Apply a batch of live messages; returns the messages that are not live (e.g. ``final``)."""
    others = []
    for message in pickle.loads(blob):
        kind = message[0]
        if kind == "state":
            entry = _tracked.get(message[1])
            if entry is not None:
                entry.run.apply_reported(*message[2:])
        elif kind == "output":
            entry = _tracked.get(message[1])
            if entry is not None:
                _apply_output(entry, *message[2:])
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
    entry = _tracked.pop(run.int_id, None) or Tracked(run)
    if run.done:  # cancelled meanwhile: it keeps that outcome
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
    return run.finish_reported(final, record.name, record.run_count)


def crash(run: TaskRun, reason: str, error: BaseException | None = None) -> bool:
    """End ``run`` Crashed because its worker or engine failed it; False if it had ended."""
    _tracked.pop(run.int_id, None)
    message = f"Task run {run.name!r} crashed: {reason}"
    exc = CrashedRun(message)
    exc.__cause__ = error
    return run.finish(S.Crashed(message=message, data=exc))


def fail(run: TaskRun, exc: BaseException) -> bool:
    """End ``run`` Failed for a problem found on the driver (e.g. SerializationError); Crashed for an interrupt."""
    _tracked.pop(run.int_id, None)
    if isinstance(exc, Exception):
        return run.finish(S.Failed(message=str(exc), data=exc))
    return run.finish(S.Crashed(message=f"Task run {run.name!r} was interrupted: {exc!r}", data=exc))


__all__ = ["Tracked", "track", "tracked", "untrack", "receive", "complete", "crash", "fail"]
