"""Finding and resolving futures inside task arguments, at any depth.

Arguments may hold futures (and states) inside lists, tuples, sets, dicts
(keys too), dataclasses and pydantic models. At submit time :func:`collect`
finds the task runs they refer to (the run's upstream); when the run starts
:func:`resolve` replaces each by its result. Containers are rebuilt only
where something inside them changed, and plain scalars cost one set lookup.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from nbflow.annotations import BaseAnnotation, allow_failure, opaque, quote
from nbflow.futures import PrefectFuture, PrefectFutureList
from nbflow.states import State

_ATOMIC = frozenset({int, float, str, bytes, bool, type(None), complex, range})
_SEQUENCES = (list, tuple, set)  # not frozenset: Prefect leaves what it holds as it is


def visit(value: Any, on_future: Callable[[Any], Any], on_state: Callable[[Any], Any] | None = None,
          quoted: bool = True) -> Any:
    """Return ``value`` with every future replaced by ``on_future(future)``.

    States are replaced by ``on_state(state)`` when given; annotations are
    looked through (``quote(...)`` only if ``quoted``). Unchanged containers
    are returned as they are.
    """

    def leaf(v: Any) -> Any:
        if isinstance(v, PrefectFuture):
            return on_future(v)
        if on_state is not None and isinstance(v, State):
            return on_state(v)
        if isinstance(v, BaseAnnotation):
            if not quoted and isinstance(v, quote):
                return v
            inner = v.value
            new = _walk(inner, leaf)
            return v if new is inner else v.rewrap(new)
        return _DESCEND

    return _walk(value, leaf)


_DESCEND = object()


def find(value: Any, kind: type) -> list[Any]:
    """Every future (``kind=PrefectFuture``) or state (``kind=State``) inside ``value``."""
    found: list[Any] = []

    def keep(item: Any) -> Any:
        if isinstance(item, kind):
            found.append(item)
        return item

    visit(value, on_future=keep, on_state=keep)
    return found


def _walk(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """Apply ``leaf`` to ``value`` or, where it says ``_DESCEND``, to what it contains."""
    t = type(value)
    if t in _ATOMIC:
        return value
    replaced = leaf(value)
    if replaced is not _DESCEND:
        return replaced
    if t is dict or isinstance(value, dict):
        changed = False
        items = []
        for k, v in value.items():
            nk, nv = _walk(k, leaf), _walk(v, leaf)
            changed = changed or nk is not k or nv is not v
            items.append((nk, nv))
        if not changed:
            return value
        return dict(items) if t is dict else _rebuild(t, items, dict)
    if isinstance(value, _SEQUENCES):
        new = [_walk(v, leaf) for v in value]
        if all(a is b for a, b in zip(new, value)):
            return value
        if t in _SEQUENCES:
            return t(new)
        if hasattr(value, "_fields"):  # namedtuple
            return t._make(new)
        return list(new) if t is PrefectFutureList else _rebuild(t, new, list)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in dataclasses.fields(value):
            if not f.init:
                continue
            old = getattr(value, f.name)
            new = _walk(old, leaf)
            if new is not old:
                changes[f.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    if hasattr(t, "model_fields") and hasattr(value, "model_copy"):  # pydantic v2 model
        changes = {}
        for name in t.model_fields:
            old = getattr(value, name)
            new = _walk(old, leaf)
            if new is not old:
                changes[name] = new
        return value.model_copy(update=changes) if changes else value
    return value


def _rebuild(t: type, items: list, plain: type) -> Any:
    """A container of type ``t`` holding ``items``; ``plain`` if ``t`` cannot be built so."""
    try:
        return t(items)
    except Exception:
        return plain(items)


def wait_for_items(wait_for: Any) -> list | None:
    """``wait_for`` as a list of what to wait for: a collection's items, or one future, state,
    annotated value or other object alone (as Prefect takes ``wait_for=future``); None for None."""
    if wait_for is None:
        return None
    if isinstance(wait_for, (PrefectFuture, State, BaseAnnotation, str, bytes)):
        return [wait_for]
    try:
        return list(wait_for)
    except TypeError:  # not iterable: one thing to wait for
        return [wait_for]


def dependencies(parameters: dict[str, Any], wait_for: Any = None) -> tuple | None:
    """What a run with these arguments waits for before it starts: ``(upstream, failure_allowed)`` pairs.

    None when the arguments hold nothing to resolve (plain values only, and no
    ``wait_for``): such a run starts with its parameters as they are.
    """
    if wait_for is None:
        for value in parameters.values():
            if type(value) not in _ATOMIC:
                break
        else:
            return None
    deps, special = collect(parameters, wait_for)
    return tuple(deps) if deps or special else None


def collect(parameters: dict[str, Any], wait_for: Any = None) -> tuple[list, bool]:
    """The upstream runs of a run's arguments and ``wait_for``.

    Returns ``(dependencies, needs_resolve)``: ``dependencies`` is a list of
    ``(upstream, failure_allowed)`` pairs, where ``upstream`` is the task run
    of a future, or a State given as an argument or in ``wait_for`` (which
    must admit the run as much as a run would); ``needs_resolve`` is True when
    the arguments hold futures, states or annotations that :func:`resolve`
    must replace when the run starts.
    """
    deps: list = []
    special = False
    for value in parameters.values():
        if type(value) in _ATOMIC:
            continue
        special = _collect(value, deps, False) or special
    if wait_for is not None:
        for item in wait_for if type(wait_for) is list else wait_for_items(wait_for):
            allowed = isinstance(item, allow_failure)
            if allowed:
                item = item.value
            if isinstance(item, PrefectFuture):
                deps.append((item.task_run, allowed))
            elif isinstance(item, State):
                deps.append((item, allowed))
            else:
                _collect(item, deps, allowed)
    return deps, special


def _all_futures(value: Any) -> bool:
    """True for a non-empty list or tuple of futures only (a gather of a ``.map``): resolved in one pass."""
    t = type(value)
    if not (t is list or t is tuple or t is PrefectFutureList) or not value:
        return False
    for item in value:
        if not isinstance(item, PrefectFuture):
            return False
    return True


def _collect(value: Any, deps: list, allowed: bool) -> bool:
    if _all_futures(value):
        deps.extend([(future.task_run, allowed) for future in value])
        return True
    found = False

    def leaf(v: Any) -> Any:
        nonlocal found
        if isinstance(v, PrefectFuture):
            found = True
            deps.append((v.task_run, allowed))
            return v
        if isinstance(v, State):
            found = True
            deps.append((v, allowed))
            return v
        if isinstance(v, BaseAnnotation):
            found = True
            if isinstance(v, quote):
                return v
            if isinstance(v, allow_failure):
                _collect(v.value, deps, True)
                return v
            if isinstance(v, opaque):
                if isinstance(v.value, PrefectFuture):
                    deps.append((v.value.task_run, allowed))
                return v
            _walk(v.value, leaf)
            return v
        return _DESCEND

    _walk(value, leaf)
    return found


def resolve(parameters: dict[str, Any], current_run: Any = None) -> dict[str, Any]:
    """A copy of ``parameters`` with futures and states replaced by their results.

    Inside ``allow_failure`` a failed upstream gives its exception and an
    upstream that never ran gives ``None``; ``quote`` passes its value
    untouched; ``opaque`` resolves a top-level future without looking inside.
    """
    return {name: _resolve(value, False, current_run) for name, value in parameters.items()}


def _resolve(value: Any, allowed: bool, current_run: Any) -> Any:
    if type(value) in _ATOMIC:
        return value

    def result_of(state: State) -> Any:
        if state.is_completed():
            return state.data
        if not allowed:
            return state.result(_sync=True)  # raises; upstream checks normally stop this earlier
        if state.is_final():
            return state.result(raise_on_failure=False, _sync=True)
        return None

    if _all_futures(value):
        values = []
        for future in value:
            run = future.task_run
            if run is current_run:
                _depends_on_itself(run)
            run.wait()
            values.append(result_of(run.states[-1]))
        return tuple(values) if type(value) is tuple else values

    def leaf(v: Any) -> Any:
        if isinstance(v, PrefectFuture):
            if v.task_run is current_run:
                _depends_on_itself(v.task_run)
            v.task_run.wait()
            return result_of(v.task_run.states[-1])
        if isinstance(v, State):
            # A state given as it is: a Completed one made by hand with no data raises MissingResult, as in Prefect.
            return v.result(_sync=True) if v.is_completed() else result_of(v)
        if isinstance(v, BaseAnnotation):
            if isinstance(v, quote):
                return v.value
            if isinstance(v, allow_failure):
                return _resolve(v.value, True, current_run)
            if isinstance(v, opaque):
                inner = v.value
                if isinstance(inner, PrefectFuture):
                    inner.task_run.wait()
                    return result_of(inner.task_run.states[-1])
                return inner
            return _resolve(v.value, allowed, current_run)
        return _DESCEND

    return _walk(value, leaf)


def _depends_on_itself(run: Any) -> None:
    raise ValueError(
        f"Discovered a task depending on itself: task run {run.name!r} was given its own future as an argument."
    )


__all__ = ["visit", "find", "dependencies", "collect", "resolve", "wait_for_items"]
