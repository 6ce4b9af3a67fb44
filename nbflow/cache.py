"""The local result store behind ``cache_key_fn`` / ``cache_expiration``.

A completed run whose ``cache_key_fn`` returned a key stores its result on
disk (cloudpickle, one file per key, under ``settings.current.storage``,
by default ``~/.nbflow/storage``). A later run of the same task with the same
key, in this flow run or another process, returns the stored value without
running, in state ``Cached``, until ``cache_expiration`` has passed;
``refresh_cache=True`` runs anyway and replaces the stored value.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from nbflow import settings
from nbflow import states as S
from nbflow.states import State


class CacheContext(NamedTuple):
    """What ``cache_key_fn(context, parameters)`` receives as ``context``."""

    task: Any
    task_run: Any
    parameters: dict[str, Any]


def _path(key: str) -> Path:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return settings.current.storage / digest[:2] / digest


def lookup(task: Any, run: Any, parameters: dict[str, Any]) -> tuple[str | None, State | None]:
    """``(key, Cached state or None)`` for this run."""
    key = task.cache_key_fn(CacheContext(task, run, parameters), parameters)
    if key is None or task.refresh_cache:
        return key, None
    path = _path(str(key))
    try:
        data = path.read_bytes()
    except OSError:
        return key, None
    import cloudpickle

    try:
        expires, value = cloudpickle.loads(data)
    except Exception:
        return key, None  # an unreadable entry is a miss; storing replaces it
    if expires is not None and expires < time.time():
        return key, None
    return key, S.Cached(data=value, message=f"Result from cache key {key!r}.")


def store(task: Any, key: str, value: Any) -> None:
    """Store ``value`` under ``key``; a value that cannot be pickled is not cached (logged)."""
    import cloudpickle

    expiration = task.cache_expiration
    expires = time.time() + expiration.total_seconds() if expiration is not None else None
    try:
        data = cloudpickle.dumps((expires, value))
    except Exception as exc:
        import logging

        logging.getLogger("nbflow").warning(
            "Task %r: result not cached, it cannot be pickled (%s).", task.name, exc
        )
        return
    path = _path(str(key))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


__all__ = ["CacheContext", "lookup", "store"]
