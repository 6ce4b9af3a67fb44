"""Chunks: one engine task executing several runs of a ``.map`` in turn, each run its own.

A cluster engine charges a fixed cost per task (about a millisecond on Dask
and on Ray), many times the work of a small task. The runs of a big map of
such a task go in *chunks*: one engine task executes several runs in turn,
each with its own states, retries, timeout, cache entry and output, and
returns their outcomes pickled together; a run's handle is then its place in
a chunk (:class:`Slot`). Chunks are sized to about ``CHUNK_SECONDS`` of work
from the durations measured for the task so far (:mod:`nbflow.runners.sizing`).

The driver side cuts a batch of runs into chunks (:func:`split`), packs their
payloads (:func:`pack`) and reads values back (:func:`gather`); the worker
side executes a chunk (:func:`run_chunk`) and hands a downstream run the
outcome of the run it consumes (:func:`picked`).
"""

from __future__ import annotations

import collections
import itertools
import math
import pickle
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from nbflow.records import TaskRun
from nbflow.runners import sizing

#: Seconds of work a chunk of mapped runs aims at.
CHUNK_SECONDS = 0.05
#: Runs per chunk of a task whose duration is not known yet.
FIRST_CHUNK = 256
#: Chunks per worker thread a map is cut into at least, so that the work spreads.
CHUNKS_PER_THREAD = 4
#: Engine futures whose outcomes are brought to the driver in one fetch, at most, when values are read.
GATHER_CHUNKS = 16


class Chunk:
    """One engine task executing several runs of a ``.map`` in turn: its engine future and its runs."""

    __slots__ = ("future", "runs")

    def __init__(self, future: Any, runs: list[TaskRun]) -> None:
        self.future = future
        self.runs = runs

    def finished(self) -> bool:
        """True once none of its runs needs it (each ended on the driver)."""
        return all(run.done for run in self.runs)


class Slot(NamedTuple):
    """The handle of a run sent in a chunk: its place in the chunk's list of outcomes."""

    chunk: Chunk
    index: int


def chunk_size(runs: int, threads: int, mean_seconds: float | None) -> int:
    """How many of a map's ``runs`` one engine task executes: about ``CHUNK_SECONDS`` of work,
    ``FIRST_CHUNK`` while the duration is unknown, and never so many that fewer than
    ``CHUNKS_PER_THREAD`` chunks per worker thread are left to spread."""
    spread = math.ceil(runs / (max(threads, 1) * CHUNKS_PER_THREAD))
    return sizing.runs_per(CHUNK_SECONDS, mean_seconds, FIRST_CHUNK, spread)


def split(batch: list[Any], threads: int) -> list[list[Any]]:
    """``batch`` (outgoing runs of one task) cut into chunks for ``threads`` worker threads;
    groups of one run each when the runs are too few or too long to share an engine task."""
    size = 1
    if len(batch) >= 2 * CHUNKS_PER_THREAD:
        size = chunk_size(len(batch), threads, sizing.mean_duration(batch[0].run.task.task_key))
    return [batch[i:i + size] for i in range(0, len(batch), size)]


def pack(group: list[Any]) -> bytes:
    """The payloads of a chunk's runs as one pickle.

    An engine keeps a task's arguments while its future lives (for a local
    cluster, in the driver's memory: a million payload tuples take ~440 bytes
    each) and ships one bytes object far faster than a list of many small ones.
    """
    return pickle.dumps([o.payload for o in group], protocol=pickle.HIGHEST_PROTOCOL)


def slots(future: Any, group: list[Any]) -> list[Slot]:
    """The handles of a chunk's runs, given the engine future of the chunk."""
    chunk = Chunk(future, [o.run for o in group])
    return [Slot(chunk, i) for i in range(len(group))]


def gather(handles: Sequence[Any], fetch: Callable[[list[Any]], list[Any]],
           future_of: Callable[[Any], Any], value_of: Callable[[Any], bytes]) -> list[bytes]:
    """The pickled values under ``handles``: slots of chunks, or the engine's handles of single runs.

    ``fetch(futures)`` brings the outcomes of engine futures; a single run's
    engine future is ``future_of(handle)`` and its value ``value_of(outcome)``.
    A chunk's outcomes come once however many of its runs are read, and
    ``GATHER_CHUNKS`` engine futures at a time, each dropped once its values
    are picked: the driver never holds the outcomes of a whole big map at once.
    """
    by_future: dict[Any, list[int]] = {}
    for k, handle in enumerate(handles):
        future = handle.chunk.future if type(handle) is Slot else future_of(handle)
        by_future.setdefault(future, []).append(k)
    values: list[Any] = [None] * len(handles)
    futures = list(by_future)
    for start in range(0, len(futures), GATHER_CHUNKS):
        part = futures[start:start + GATHER_CHUNKS]
        for future, outcome in zip(part, fetch(part)):
            members = by_future[future]
            if type(handles[members[0]]) is Slot:
                outcomes = pickle.loads(outcome)
                for k in members:
                    values[k] = outcomes[handles[k].index][1]
            else:
                for k in members:
                    values[k] = value_of(outcome)
    return values


# -- on the worker ------------------------------------------------------------------------
def run_chunk(blob: bytes, upstreams: list[list[Any]] | None,
              run_one: Callable[[Any, list[Any]], tuple[bytes, bytes | None]]) -> bytes:
    """Execute a chunk: ``run_one(payload, upstream)`` for each run in turn; their outcomes, pickled in order.

    ``upstreams`` holds each run's upstream outcomes (None: no run has any).
    """
    payloads = pickle.loads(blob)
    per_run = upstreams if upstreams is not None else itertools.repeat([])
    return pickle.dumps([run_one(payload, upstream) for payload, upstream in zip(payloads, per_run)],
                        protocol=pickle.HIGHEST_PROTOCOL)


def picked(upstream: Sequence[Any]) -> list[Any]:
    """Each upstream run's outcome: one sent in a chunk arrives as (the chunk's outcomes, its index)."""
    return [outcomes(u[0])[u[1]] if type(u[1]) is int else u for u in upstream]


_unpickled: collections.OrderedDict[int, tuple[bytes, list]] = collections.OrderedDict()
_unpickled_lock = threading.Lock()


def outcomes(blob: bytes) -> list:
    """A chunk's outcomes from its pickle, unpickled once for all the downstream runs a worker executes.

    An engine hands every task on a worker the same bytes object for one
    chunk: a few recent ones are kept, by identity (holding the bytes keeps it unique).
    """
    with _unpickled_lock:
        known = _unpickled.get(id(blob))
        if known is not None and known[0] is blob:
            _unpickled.move_to_end(id(blob))
            return known[1]
    unpickled = pickle.loads(blob)
    with _unpickled_lock:
        _unpickled[id(blob)] = (blob, unpickled)
        if len(_unpickled) > 8:
            _unpickled.popitem(last=False)
    return unpickled


__all__ = [
    "CHUNKS_PER_THREAD", "CHUNK_SECONDS", "Chunk", "FIRST_CHUNK", "GATHER_CHUNKS", "Slot", "chunk_size",
    "gather", "outcomes", "pack", "picked", "run_chunk", "slots", "split",
]
