"""A task run's dealings with the result store: its key, the lookup, and storing its result.

The task lifecycle calls :func:`open_entry` before the first attempt and
:meth:`Entry.close` with the final state. In between, the run is either
served from the store (``Entry.cached``, a ``Cached`` state) or computes and
has its result stored under its key. Every run with a key gets a
:class:`CacheOutcome` on ``task_run.cache``; on a miss where the same run of
the same task was keyed before, ``why`` says what changed.

The store is a convenience, never a risk to the work: a key that cannot be
computed, an entry that cannot be read and a result that cannot be written
each log a warning naming the task, and the run goes on with its value.
"""

from __future__ import annotations

import collections
import datetime
import logging
import threading
import time
from pathlib import Path
from collections.abc import Iterable
from typing import Any, NamedTuple

from nbflow import cache_policies, settings
from nbflow.context import TaskRunContext
from nbflow.exceptions import InvalidCacheKey
from nbflow.logging import get_run_logger
from nbflow import states as S
from nbflow.store.results import ResultStore, StoreError

logger = logging.getLogger("nbflow")


class CacheOutcome(NamedTuple):
    """What the cache did for one task run: its ``key``, whether it was a ``hit``, and on a miss ``why``."""

    key: str
    hit: bool
    why: str | None = None

    def __str__(self) -> str:
        if self.hit:
            return "from cache"
        return f"computed: {self.why}" if self.why else "computed (first run with this key)"


# -- which policy a run uses ---------------------------------------------------------------------
def policy_of(task: Any, flow_run: Any = None) -> tuple[Any, bool]:
    """``(policy or None, persist)`` for a run of ``task`` in ``flow_run`` under the settings in force.

    A task's own ``persist_result`` wins; without one, its flow run's (its
    flow's, or a parent flow's: Prefect's rule), else results are persisted
    when the notebook cache is on (which also gives a task with no policy of
    its own ``INPUTS + CODE``). Results kept for a retry only are not looked
    up or stored while their run executes (see :func:`keep_for_retry`).
    """
    policy = task.cache_policy
    persist = task.persist_result
    if persist is None and flow_run is not None:
        persist = flow_run.persist_result
    if persist is None and policy is cache_policies.DEFAULT and settings.current.cache:
        return cache_policies.NOTEBOOK, True
    return policy, bool(persist)


# -- the stores ------------------------------------------------------------------------------------
_stores: dict[Path, ResultStore] = {}
_stores_lock = threading.Lock()
_default: tuple[Path, ResultStore] | None = None  # (home, its store): the common case, found at once


def store_at(root: Path | str | None = None) -> ResultStore:
    """The result store in ``root`` (by default ``settings.current.results``), opened once."""
    global _default
    if root is None:
        home = settings.current.home
        known = _default
        if known is not None and known[0] is home:
            return known[1]
        path = settings.current.results
    else:
        path = Path(root).expanduser()
    found = _stores.get(path)
    if found is None:
        with _stores_lock:
            found = _stores.get(path)
            if found is None:
                found = _stores[path] = ResultStore(path, settings.current.results_max_mb * 1024 * 1024)
    if root is None:
        _default = (home, found)
    return found


def flush_stores(timeout: float | None = None) -> None:
    """Wait until what this process wrote to its stores is committed, for other processes to see."""
    with _stores_lock:
        stores = list(_stores.values())
    for store in stores:
        store.flush(timeout)


def close_stores() -> None:
    """Flush and close every open store (tests; the stores also flush at exit)."""
    global _default
    with _stores_lock:
        stores = list(_stores.values())
        _stores.clear()
        _default = None
    _recent.clear()
    for store in stores:
        store.close()


class _Recent:
    """Small results written lately, by store and key: a hit in the same kernel reads no file.

    As Prefect's in-memory result cache, a hit returns the object itself. Bounded by
    count and by bytes (as written); an entry past its expiry is a miss.
    """

    MAX_ITEM = 64 * 1024
    MAX_BYTES = 256 * 1024 * 1024
    MAX_ITEMS = 200_000

    def __init__(self) -> None:
        # (id of the store, key) -> (value, expires, bytes, task name), oldest first
        self._items: collections.OrderedDict[tuple[int, str], tuple[Any, float | None, int, str]] = (
            collections.OrderedDict())
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, store: ResultStore, key: str) -> tuple[Any] | None:
        """``(value,)`` if held and unexpired, else None."""
        found = self._items.get((id(store), key))
        if found is None or (found[1] is not None and found[1] < time.time()):
            return None
        return (found[0],)

    def put(self, store: ResultStore, key: str, value: Any, expires: float | None, size: int, task: str) -> None:
        if size > self.MAX_ITEM:
            return
        with self._lock:
            self._drop((id(store), key))
            self._items[(id(store), key)] = (value, expires, size, task)
            self._bytes += size
            while self._bytes > self.MAX_BYTES or len(self._items) > self.MAX_ITEMS:
                self._drop(next(iter(self._items)))

    def forget(self, store: ResultStore, task: str | None = None) -> None:
        """Let go of what is held for ``store`` (only the results of ``task``, if given)."""
        with self._lock:
            for item in [k for k, v in self._items.items() if k[0] == id(store) and task in (None, v[3])]:
                self._drop(item)

    def _drop(self, item: tuple[int, str]) -> None:
        old = self._items.pop(item, None)
        if old is not None:
            self._bytes -= old[2]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


_recent = _Recent()


# -- one run's entry -------------------------------------------------------------------------------
class Entry:
    """A run's place in the store: its key, the value found there (``cached``), the lock it holds."""

    __slots__ = ("_lock", "cached", "key", "persist", "run", "store", "task")

    def __init__(self, task: Any, run: Any, store: ResultStore, key: str, persist: bool) -> None:
        self.task = task
        self.run = run
        self.store = store
        self.key = key
        self.persist = persist
        self.cached: S.State | None = None
        self._lock: Any = None

    def close(self, state: S.State | None) -> None:
        """Store the result of a run that completed (``state``), then release the key's lock."""
        try:
            if state is not None and self.cached is None and self.persist and state.is_completed():
                self._write(state.data)
        finally:
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.__exit__(None, None, None)

    def _write(self, value: Any) -> None:
        task = self.task
        expiration: datetime.timedelta | None = task.cache_expiration
        expires = time.time() + expiration.total_seconds() if expiration is not None else None
        try:
            size = self.store.write(self.key, value, task=task.name, expires=expires)
        except StoreError as exc:
            logger.warning(
                "Task %r: result not stored (%s). The run keeps its result; it will be computed "
                "again next time.", task.name, exc
            )
            return
        _recent.put(self.store, self.key, value, expires, size, task.name)
        self.run.result_key = self.key


def open_entry(task: Any, run: Any, parameters: dict[str, Any], policy: Any, persist: bool) -> Entry | None:
    """The run's entry, with ``cached`` set on a hit; None when the run has no key.

    Raises what fails the run: InvalidCacheKey, or what formatting its ``result_storage_key`` raised.
    """
    flow_run = run.flow_run
    try:
        parts = key_parts(task, run, parameters, policy, flow_run.parameters if flow_run is not None else {})
    except InvalidCacheKey:
        raise  # the run fails (task_lifecycle), as in Prefect
    except Exception as exc:
        if policy is None:  # a result_storage_key that does not format fails the run, as in Prefect
            raise
        get_run_logger(run).error(  # Prefect's words, on the run's logger, and what went wrong
            "Error encountered when computing cache key - result will not be persisted. %s",
            exc, exc_info=not isinstance(exc, ValueError),
        )
        parts = None
    if parts is None:  # nothing to look up; a result kept for a retry is stored by keep_for_retry
        return None
    key = cache_policies.digest_parts(parts)
    store = store_at(getattr(policy, "key_storage", None))
    entry = Entry(task, run, store, key, persist)
    if getattr(policy, "isolation_level", None) == "SERIALIZABLE":
        entry._lock = store.lock(key)
        entry._lock.__enter__()  # released by close(): concurrent runs with this key compute once
    refresh = bool(task.refresh_cache)
    found = None if refresh else read(store, key)
    slot = f"{task.name}#{run.dynamic_key}"
    if found is not None:
        run.cache = CacheOutcome(key, True)
        entry.cached = S.Cached(data=found[0])
        run.result_key = key
        return entry  # the parts it was stored with are remembered already
    run.cache = CacheOutcome(key, False, "refresh_cache=True" if refresh else _why(store, slot, parts))
    store.remember(slot, parts)
    return entry


def keep_for_retry(task_runs: Iterable[Any]) -> int:
    """Store the results of the completed ``task_runs`` that are not stored yet, each under
    its run's id, so that a retry reuses them (after a kernel restart too); how many were stored.

    Called as a flow run that did not complete ends (see ``nbflow.flows``) and by
    a worker as its run ends: a run that only a retry would read costs nothing
    while its flow runs, and nothing at all when its flow run completes.
    """
    store = None
    kept = 0
    for run in task_runs:
        state = run.state
        if run.result_key is not None or run.cache is not None or not state.is_completed():
            continue  # stored (or looked up) already, or nothing to keep
        task = run.task
        store = store or store_at()
        key = f"run-{run.id}"
        expiration: datetime.timedelta | None = task.cache_expiration
        try:
            store.write(key, state.data, task=task.name,
                        expires=time.time() + expiration.total_seconds() if expiration is not None else None)
        except StoreError as exc:
            logger.warning("Task run %r: result not kept for a retry (%s); a retry computes it again.",
                           run.name, exc)
            continue
        run.result_key = key
        kept += 1
    return kept


def read(store: ResultStore, key: str) -> tuple[Any] | None:
    """``(value,)`` stored under ``key`` (from memory if it was stored lately), or None."""
    found = _recent.get(store, key)
    if found is not None:
        return found
    entry = store.read(key)
    return None if entry is None else (entry.value,)


def key_parts(task: Any, run: Any, parameters: dict[str, Any], policy: Any, flow_parameters: dict[str, Any],
              names: dict[str, Any] | None = None) -> dict[str, str] | None:
    """The labelled pieces of a run's cache key (None: the run has no key); raises what its policy raises.

    ``names`` are what a ``result_storage_key`` template may name besides ``parameters``
    (by default the runtime's ``flow_run`` and ``task_run``).
    """
    if policy is None:  # result_storage_key names where the result goes, and so its key
        template = task.result_storage_key
        if template is None:
            return None
        if names is None:
            from nbflow import runtime

            names = {name: getattr(runtime, name) for name in ("flow_run", "task_run")}
        return {"result_storage_key": template.format(**names, parameters=parameters)}
    return policy.key_parts(TaskRunContext(run, parameters), parameters, flow_parameters)


def _why(store: ResultStore, slot: str, parts: dict[str, str]) -> str | None:
    """What changed since this run of this task was last keyed, or None if it never was."""
    from nbflow.store.code import describe_change

    before = store.recall(slot)
    if before is None:
        return None
    if before == parts:
        return "its stored result is gone (expired, evicted or cleared)"
    return describe_change(before, parts)


def clear(task: str | None = None) -> int:
    """Remove the stored entries (of the task named ``task``); the number removed."""
    store = store_at()
    _recent.forget(store, task)
    return store.clear(task)


__all__ = ["CacheOutcome", "Entry", "clear", "close_stores", "flush_stores", "keep_for_retry", "key_parts", "open_entry", "policy_of", "read", "store_at"]
