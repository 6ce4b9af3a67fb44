"""Cache policies: how a task run's cache key is formed (Prefect 3's ``prefect.cache_policies``).

>>> from nbflow import task
>>> from nbflow.cache_policies import INPUTS, TASK_SOURCE, CODE
>>> @task(cache_policy=INPUTS + TASK_SOURCE)
... def load(path: str) -> bytes: ...

A run whose key matches a stored, unexpired entry returns the stored value in
state ``Cached`` without running. Setting a policy persists results (under
``NBFLOW_HOME``, see :mod:`nbflow.store.results`). As in Prefect 3.9:

- ``DEFAULT`` is ``INPUTS + TASK_SOURCE + RUN_ID``; a task without a policy uses
  it but persists nothing unless asked (``persist_result=True``), so nothing
  is cached by default;
- ``INPUTS`` alone keys on the inputs only, so two tasks called with the
  same inputs share an entry; a task with no inputs gets no key from it;
- ``policy + policy`` combines keys, ``INPUTS - "name"`` leaves a parameter out;
- ``.configure(key_storage=PATH)`` keeps the entries in ``PATH``;
  ``.configure(isolation_level="SERIALIZABLE")`` makes concurrent runs with
  one key compute once (the others wait and read its result).

nbflow adds ``CODE``: the task's code and, transitively, every user function
it calls, the values of the globals and closure variables it reads and the
versions of the packages it reaches (see :mod:`nbflow.store.code`).
``INPUTS + CODE`` is what ``%nbflow cache on`` (or
``nbflow.settings.current.cache = True``) gives every task without a policy.

Besides ``compute_key`` (a key, or None for "no caching"), each policy gives
``key_parts``: the labelled pieces its key is made of, which is how a miss
explains itself ("the parameter x changed").
"""

from __future__ import annotations

import hashlib
import inspect
import marshal
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

IsolationLevel = Literal["READ_COMMITTED", "SERIALIZABLE"]
ISOLATION_LEVELS = ("READ_COMMITTED", "SERIALIZABLE")


def digest_parts(parts: dict[str, str]) -> str:
    """The key made of ``parts`` (labels and their digests, in any order)."""
    h = hashlib.sha1()
    for label in sorted(parts):
        h.update(label.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
        h.update(parts[label].encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class CachePolicy:
    """Base class of cache policies: subclass it and implement ``compute_key``.

    ``compute_key(task_ctx, inputs, flow_parameters, **kwargs)`` returns a
    string key, or None for "do not cache this run".
    """

    key_storage: str | Path | None = None
    isolation_level: IsolationLevel | None = None
    lock_manager: Any | None = None

    @classmethod
    def from_cache_key_fn(cls, cache_key_fn: Callable[[Any, dict[str, Any]], str | None]) -> CacheKeyFnPolicy:
        """A policy whose key is ``cache_key_fn(task_ctx, inputs)``."""
        return CacheKeyFnPolicy(cache_key_fn=cache_key_fn)

    def configure(
        self,
        key_storage: str | Path | None = None,
        lock_manager: Any | None = None,
        isolation_level: IsolationLevel | None = None,
    ) -> CachePolicy:
        """A copy with the given key storage (a folder), lock manager or isolation level.

        nbflow's store has its own cross-process locks, so ``SERIALIZABLE`` needs
        no lock manager; one given is kept (Prefect code that passes one ports).
        """
        if isolation_level is not None and str(isolation_level) not in ISOLATION_LEVELS:
            raise ValueError(
                f"isolation_level must be one of {', '.join(ISOLATION_LEVELS)}, got {isolation_level!r}."
            )
        changes: dict[str, Any] = {}
        if key_storage is not None:
            changes["key_storage"] = key_storage
        if lock_manager is not None:
            changes["lock_manager"] = lock_manager
        if isolation_level is not None:
            changes["isolation_level"] = isolation_level
        return replace(self, **changes)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # The module's policies (DEFAULT, INPUTS...) unpickle as themselves, on a worker too:
        # "has the task no policy of its own" is an identity test.
        name = _CONSTANTS.get(id(self))
        return name if name is not None else super().__reduce_ex__(protocol)

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        """This run's cache key, or None for no caching."""
        parts = self.key_parts(task_ctx, inputs, flow_parameters, **kwargs)
        return None if parts is None else digest_parts(parts)

    def key_parts(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> dict[str, str] | None:
        """The labelled pieces of the key (label -> digest), or None for no caching.

        A policy that only implements ``compute_key`` is one piece, labelled by its class.
        """
        if type(self).compute_key is CachePolicy.compute_key:
            raise NotImplementedError(f"{type(self).__name__} must implement compute_key")
        key = self.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        return None if key is None else {f"key of {type(self).__name__}": str(key)}

    def __sub__(self, other: str) -> CachePolicy:
        """Leave the parameter ``other`` out of the key (only policies on inputs have it)."""
        if not isinstance(other, str):
            raise TypeError("Can only subtract strings from key policies.")
        return self

    def __add__(self, other: CachePolicy) -> CachePolicy:
        """A policy whose key combines both keys."""
        if isinstance(other, _None):
            return self
        _check_compatible(self, other)
        return CompoundCachePolicy(
            policies=[self, other],
            key_storage=self.key_storage or other.key_storage,
            isolation_level=self.isolation_level or other.isolation_level,
            lock_manager=self.lock_manager or other.lock_manager,
        )


def _check_compatible(a: CachePolicy, b: CachePolicy) -> None:
    if not isinstance(b, CachePolicy):
        raise TypeError(f"Can only add cache policies together, not {type(b).__name__}.")
    for attribute, what in (("key_storage", "storage locations"), ("isolation_level", "isolation levels"),
                            ("lock_manager", "lock implementations")):
        mine, theirs = getattr(a, attribute), getattr(b, attribute)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(f"Cannot add CachePolicies with different {what}.")


@dataclass
class CacheKeyFnPolicy(CachePolicy):
    """The key is ``cache_key_fn(task_ctx, inputs)`` (what ``@task(cache_key_fn=...)`` makes)."""

    cache_key_fn: Callable[[Any, dict[str, Any]], str | None] | None = None

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        if self.cache_key_fn is None:
            return None
        return self.cache_key_fn(task_ctx, inputs)

    def key_parts(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> dict[str, str] | None:
        key = self.compute_key(task_ctx, inputs, flow_parameters)
        if key is None:
            return None
        if not isinstance(key, str):  # as in Prefect, a run whose key is no string fails
            from nbflow.exceptions import InvalidCacheKey

            raise InvalidCacheKey(
                f"cache_key_fn {getattr(self.cache_key_fn, '__name__', self.cache_key_fn)!r} returned "
                f"{key!r} ({type(key).__name__}): a cache key must be a str (or None for no caching)."
            )
        return {"key from cache_key_fn": key}


@dataclass
class CompoundCachePolicy(CachePolicy):
    """Several policies at once: the key combines theirs (those giving None are left out)."""

    policies: list[CachePolicy] = field(default_factory=list)

    def __post_init__(self) -> None:
        flat = [q for p in self.policies for q in (p.policies if isinstance(p, CompoundCachePolicy) else [p])]
        # One Inputs policy, excluding what any of them excluded.
        inputs = [p for p in flat if isinstance(p, Inputs)]
        self.policies = [p for p in flat if not isinstance(p, Inputs)]
        if inputs:
            excluded = sorted({name for p in inputs for name in p.exclude})
            self.policies.append(Inputs(exclude=excluded))

    def key_parts(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> dict[str, str] | None:
        merged: dict[str, str] | None = None
        for policy in self.policies:
            parts = policy.key_parts(task_ctx, inputs, flow_parameters, **kwargs)
            if parts is not None:
                merged = parts if merged is None else {**merged, **parts}
        return merged

    def __add__(self, other: CachePolicy) -> CachePolicy:
        if isinstance(other, _None):
            return self
        _check_compatible(self, other)
        more = other.policies if isinstance(other, CompoundCachePolicy) else [other]
        return CompoundCachePolicy(
            policies=[*self.policies, *more],
            key_storage=self.key_storage or other.key_storage,
            isolation_level=self.isolation_level or other.isolation_level,
            lock_manager=self.lock_manager or other.lock_manager,
        )

    def __sub__(self, other: str) -> CachePolicy:
        if not isinstance(other, str):
            raise TypeError("Can only subtract strings from key policies.")
        if not any(isinstance(p, Inputs) for p in self.policies):
            return self  # no inputs in the key: nothing to leave out
        return replace(self, policies=[*self.policies, Inputs(exclude=[other])])


@dataclass
class _None(CachePolicy):
    """No key: the run is neither cached nor looked up (``NO_CACHE``, ``NONE``)."""

    def key_parts(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> dict[str, str] | None:
        return None

    def __add__(self, other: CachePolicy) -> CachePolicy:
        return other


# Source digests per function object: reading and hashing source is done once.
_sources: weakref.WeakKeyDictionary[Any, tuple[Any, str]] = weakref.WeakKeyDictionary()


def _source_digest(fn: Any) -> str:
    code = getattr(fn, "__code__", None)
    known = _sources.get(fn) if _weakrefable(fn) else None
    if known is not None and known[0] is code:
        return known[1]
    try:
        text = inspect.getsource(fn)
        digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()
    except (OSError, TypeError):  # no source (a REPL, exec): the code itself, without its location
        if code is None:
            raise
        digest = hashlib.sha1(marshal.dumps(_without_location(code))).hexdigest()
    if _weakrefable(fn):
        _sources[fn] = (code, digest)
    return digest


def _without_location(code: types.CodeType) -> types.CodeType:
    return code.replace(
        co_filename="",
        co_firstlineno=1,
        co_linetable=b"",
        co_consts=tuple(_without_location(c) if isinstance(c, types.CodeType) else c for c in code.co_consts),
    )


def _weakrefable(fn: Any) -> bool:
    try:
        weakref.ref(fn)
    except TypeError:
        return False
    return True


@dataclass
class TaskSource(CachePolicy):
    """The key is the task's own source text (not what it calls: see ``CODE`` for that)."""

    def key_parts(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> dict[str, str] | None:
        if not task_ctx:
            return None
        task = task_ctx.task
        return {f"source of task {task.name}": _source_digest(task.fn)}


@dataclass
class Code(CachePolicy):
    """The key is all the code the task runs: its own, its helpers', the globals they read, package versions."""

    def key_parts(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> dict[str, str] | None:
        if not task_ctx:
            return None
        from nbflow.store.code import code_fingerprint

        return dict(code_fingerprint(task_ctx.task.fn).parts)


@dataclass
class FlowParameters(CachePolicy):
    """The key is the parameters of the flow run the task runs in."""

    def key_parts(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> dict[str, str] | None:
        if not flow_parameters:
            return None
        return {f"flow parameter {name}": _input_digest(task_ctx, name, value) for name, value in flow_parameters.items()}


@dataclass
class RunId(CachePolicy):
    """The key is the id of the flow run (or of the task run, outside a flow)."""

    def key_parts(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> dict[str, str] | None:
        if not task_ctx:
            return None
        run = task_ctx.task_run
        run_id = run.flow_run_id
        return {"run id": str(run_id if run_id is not None else run.id)}


@dataclass
class Inputs(CachePolicy):
    """The key is the task run's inputs, but those named in ``exclude``."""

    exclude: list[str] = field(default_factory=list)

    def key_parts(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> dict[str, str] | None:
        if not inputs:
            return None
        exclude = self.exclude
        return {
            f"parameter {name}": _input_digest(task_ctx, name, value)
            for name, value in inputs.items()
            if name not in exclude
        }

    def __sub__(self, other: str) -> CachePolicy:
        if not isinstance(other, str):
            raise TypeError("Can only subtract strings from key policies.")
        return replace(self, exclude=[*self.exclude, other])


def _input_digest(task_ctx: Any, name: str, value: Any) -> str:
    from nbflow.store.fingerprint import UnhashableInput, fingerprint

    try:
        return fingerprint(value)
    except UnhashableInput as exc:
        task = getattr(task_ctx, "task", None)
        owner = f"task {task.name!r}" if task is not None else "this task"
        raise ValueError(
            f"The parameter {name!r} of {owner} cannot be hashed for its cache key ({exc}). "
            f"Leave it out of the key with cache_policy=INPUTS - {name!r} "
            f"(or Inputs(exclude=[{name!r}])), or turn caching off with cache_policy=NO_CACHE."
        ) from exc


INPUTS = Inputs()
NONE = _None()
NO_CACHE = _None()
TASK_SOURCE = TaskSource()
CODE = Code()
FLOW_PARAMETERS = FlowParameters()
RUN_ID = RunId()
DEFAULT = INPUTS + TASK_SOURCE + RUN_ID
#: What ``%nbflow cache on`` gives every task that has no policy of its own.
NOTEBOOK = INPUTS + CODE
_CONSTANTS = {id(value): name for name, value in list(globals().items())
              if name.isupper() and isinstance(value, CachePolicy)}

__all__ = [
    "CODE",
    "DEFAULT",
    "FLOW_PARAMETERS",
    "INPUTS",
    "NONE",
    "NOTEBOOK",
    "NO_CACHE",
    "RUN_ID",
    "TASK_SOURCE",
    "CacheKeyFnPolicy",
    "CachePolicy",
    "Code",
    "CompoundCachePolicy",
    "FlowParameters",
    "Inputs",
    "RunId",
    "TaskSource",
    "digest_parts",
]
