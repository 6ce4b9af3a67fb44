"""The local result store behind ``cache_key_fn`` / ``cache_expiration``.

A completed run whose ``cache_key_fn`` returned a key stores its result on
disk (cloudpickle, one file per key, under ``settings.current.storage``,
by default ``~/.nbflow/storage``). A later run of the same task with the same
key, in this flow run or another process, returns the stored value without
running, in state ``Cached``, until ``cache_expiration`` has passed;
``refresh_cache=True`` runs anyway and replaces the stored value.

The store is a convenience, never a risk to the work: a result that cannot
be written (no folder, full disk, unpicklable value) is kept in memory and a
warning names the task and the reason; an entry that cannot be read (missing,
truncated, garbage, the wrong shape) is a miss, and the next store replaces it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from nbflow import settings
from nbflow import states as S
from nbflow.states import State

logger = logging.getLogger("nbflow")


class CacheContext(NamedTuple):
    """What ``cache_key_fn(context, parameters)`` receives as ``context``."""

    task: Any
    task_run: Any
    parameters: dict[str, Any]


def _path(key: str) -> Path:
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return settings.current.storage / digest[:2] / digest


def lookup(task: Any, run: Any, parameters: dict[str, Any]) -> tuple[str | None, State | None]:
    """``(key, Cached state or None)`` for this run.

    Only ``cache_key_fn`` itself can raise here; reading the store never does.
    """
    key = task.cache_key_fn(CacheContext(task, run, parameters), parameters)
    if key is None or task.refresh_cache:
        return key, None
    found = _read(task, str(key))
    if found is None:
        return key, None
    return key, S.Cached(data=found[0], message=f"Result from cache key {key!r}.")


def _read(task: Any, key: str) -> tuple[Any] | None:
    """``(value,)`` stored under ``key`` and not expired, else None (never raises)."""
    try:
        path = _path(key)
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # no entry (or no store folder) yet
        return None
    except Exception as exc:  # a directory in the way, an I/O error: a miss
        _warn_unreadable(task, exc)
        return None
    import cloudpickle

    try:
        entry = cloudpickle.loads(data)
    except Exception as exc:  # empty, truncated, garbage, a class that no longer imports
        _warn_unreadable(task, exc)
        return None
    if not (isinstance(entry, tuple) and len(entry) == 2 and _valid_expiry(entry[0])):
        _warn_unreadable(task, "not an (expiry, value) pair")
        return None
    expires, value = entry
    if expires is not None and expires < time.time():
        return None
    return (value,)


def _valid_expiry(expires: object) -> bool:
    if expires is None:
        return True
    return isinstance(expires, (int, float)) and not isinstance(expires, bool) and math.isfinite(expires)


def _warn_unreadable(task: Any, reason: object) -> None:
    logger.warning(
        "Task %r: its cache entry could not be read (%s); running the task, and its result "
        "will replace the entry.", task.name, reason
    )


def store(task: Any, key: str, value: Any) -> None:
    """Store ``value`` under ``key``; never raises: a failure is a warning and leaves no file behind."""
    import cloudpickle

    expiration = task.cache_expiration
    tmp: str | None = None
    try:
        expires = time.time() + expiration.total_seconds() if expiration is not None else None
        data = cloudpickle.dumps((expires, value))
    except Exception as exc:
        logger.warning(
            "Task %r: result not cached, it cannot be pickled (%s). The run keeps its result; "
            "return a value cloudpickle can pickle to cache it.", task.name, exc
        )
        return
    try:
        path = _path(str(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with open(fd, "wb") as handle:
            handle.write(data)
        if path.is_dir() and not path.is_symlink():  # an entry no file can replace
            shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        tmp = None
    except Exception as exc:
        logger.warning(
            "Task %r: result not cached, writing to the result store failed (%s). The run "
            "keeps its result; make NBFLOW_HOME (%s) a writable folder with free space to "
            "cache it.", task.name, exc, settings.current.home
        )
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


__all__ = ["CacheContext", "lookup", "store"]
