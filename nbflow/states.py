"""States of flow runs and task runs, and their constructors.

A state is a small immutable record: its type, a display name (``Completed``,
``Cached``, ``NotReady``, ``TimedOut``, ...), an optional message, the time it
was entered, and its data (the result, or the exception of a failed run).
"""

from __future__ import annotations

import collections
import datetime
import enum
import inspect
import sys
import time
import types
import uuid
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nbflow.annotations import BaseAnnotation
from nbflow.context import flow_run_var, task_run_var
from nbflow.exceptions import CancelledRun, CrashedRun, FailedRun, MissingResult, PausedRun, UnfinishedRun

R = TypeVar("R")


class StateType(str, enum.Enum):
    """The kind of a state; its name is what Prefect calls it."""

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"

    def __repr__(self) -> str:  # Prefect's form, in str(), repr() and f-strings alike
        return f"StateType.{self.name}"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)


TERMINAL_STATES = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}
)

_DEFAULT_NAMES = {t: t.value.title() for t in StateType}

_NAMES = {name: name for name in (*_DEFAULT_NAMES.values(), "Cached", "Retrying", "AwaitingRetry", "TimedOut",
                                   "NotReady", "Late", "Suspended", "AwaitingConcurrencySlot")}

#: ``State._of`` of a flow run's state (a task run's holds its flow run's id, or this outside a flow).
_FLOW_RUN, _NO_FLOW = object(), object()


@dataclass
class StateDetails:
    """Prefect's ``state.state_details``: which runs a state belongs to, and the rest of Prefect's fields.

    Runs execute in this process, so the fields about deployments, pauses and
    the server's transitions keep their defaults.
    """

    flow_run_id: uuid.UUID | None = None
    task_run_id: uuid.UUID | None = None
    child_flow_run_id: uuid.UUID | None = None
    scheduled_time: datetime.datetime | None = None
    cache_key: str | None = None
    cache_expiration: datetime.datetime | None = None
    deferred: bool | None = None
    untrackable_result: bool = False
    pause_timeout: datetime.datetime | None = None
    pause_reschedule: bool = False
    pause_key: str | None = None
    run_input_keyset: dict[str, str] | None = None
    refresh_cache: bool | None = None
    retriable: bool | None = None
    transition_id: uuid.UUID | None = None
    task_parameters_id: uuid.UUID | None = None
    traceparent: str | None = None
    deployment_concurrency_lease_id: uuid.UUID | None = None

    def __str__(self) -> str:  # pydantic's form, as Prefect prints it
        return " ".join(f"{name}={value!r}" for name, value in vars(self).items())



def _in_async_code() -> bool:
    """Whether ``State.result()`` is called from async code, by Prefect's rule: the run executing
    here is an async task or flow; outside runs, the caller is a coroutine (Prefect: any running
    loop, which would make a plain ``state.result()`` in a Jupyter cell a coroutine)."""
    run = task_run_var.get() or flow_run_var.get()
    if run is not None:
        return (run.task if hasattr(run, "task") else run.flow).isasync
    return bool(sys._getframe(2).f_code.co_flags & inspect.CO_COROUTINE)

class State(Generic[R]):
    """The state of a run at one moment.

    ``result()`` gives the run's value, raises its exception, or raises
    :class:`~nbflow.exceptions.UnfinishedRun` when the run has no result yet.
    """

    # _run_id: the id of the run that ended in this state (None for a state
    # made by hand), so a run can tell a returned run state from a state it
    # should take as its own. _returned: ``data`` is exactly what the run's
    # function returned (see return_value_to_state), which a flow call hands
    # back as is. _of: which flow run that run belongs to (see mark_run), until
    # state_details is asked for, then the StateDetails. _id: the UUID, made when asked for.
    __slots__ = ("type", "name", "message", "data", "_ts", "_run_id", "_returned", "_of", "_id")

    def __init__(
        self,
        type: StateType,
        name: str | None = None,
        message: str | None = None,
        data: Any = None,
        timestamp: float | None = None,
    ) -> None:
        if type.__class__ is not StateType:  # "FAILED", as Prefect's model takes it
            type = StateType(type)
        self.type = type
        self.name = name or _DEFAULT_NAMES[type]
        self.message = message
        self.data = data
        self._ts = time.time() if timestamp is None else timestamp
        self._run_id: int | None = None
        self._returned = False
        self._of: Any = None
        self._id: uuid.UUID | None = None

    # -- pickling (slots, and states cross process boundaries) --------------
    def __getstate__(self) -> tuple:
        return (self.type, self.name, self.message, self.data, self._ts, self._run_id, self._returned, self._id)

    def __setstate__(self, s: tuple) -> None:
        self.type, name, self.message, self.data, self._ts, self._run_id, self._returned, self._id = s
        self.name = _NAMES.get(name, name)  # one string per common name, not one per state read
        self._of = None  # the driver's record marks it again when it takes it

    @property
    def id(self) -> uuid.UUID:
        """The state's own id (as Prefect's ``State.id``), made the first time it is asked for."""
        if self._id is None:
            self._id = uuid.uuid4()
        return self._id

    @property
    def id_seen(self) -> bool:
        """Whether :attr:`id` was asked for already (a state whose id was seen must keep it)."""
        return self._id is not None

    @property
    def state_details(self) -> StateDetails:
        """The ids of the flow run and task run this state belongs to (empty for a state made by hand)."""
        of = self._of
        if type(of) is StateDetails:
            return of
        details = StateDetails()
        run_id = self._run_id
        if run_id is not None:
            details.untrackable_result = True  # as Prefect's for results it does not persist
            if of is _FLOW_RUN:
                details.flow_run_id = _uuid_of(run_id)
            elif of is not None:
                details.task_run_id = _uuid_of(run_id)
                details.flow_run_id = None if of is _NO_FLOW else _uuid_of(of)
        self._of = details
        return details

    @property
    def timestamp(self) -> datetime.datetime:
        """When the run entered this state (timezone-aware, UTC)."""
        return datetime.datetime.fromtimestamp(self._ts, datetime.timezone.utc)

    @property
    def timestamp_seconds(self) -> float:
        """When the run entered this state, in seconds since the epoch (``time.time()``)."""
        return self._ts

    @property
    def run_id(self) -> int | None:
        """The id of the task run or flow run that ended in this state; None for a state made by hand."""
        return self._run_id

    @property
    def data_returned(self) -> bool:
        """True when ``data`` is exactly what the run's function returned (a flow call hands it back)."""
        return self._returned

    def mark_run(self, run_id: int, flow_run_id: int | None = None, *, task: bool = True) -> None:
        """Note that the run ``run_id`` ended in this state (its records and flow calls call this).

        A task run passes its flow run's id (None outside a flow); a flow run passes ``task=False``.
        """
        self._run_id = run_id
        retriable = self._of.retriable if type(self._of) is StateDetails else None  # see not_retriable
        self._of = (flow_run_id if flow_run_id is not None else _NO_FLOW) if task else _FLOW_RUN
        if retriable is not None:
            self.state_details.retriable = retriable

    def with_data(self, data: Any) -> "State[Any]":
        """A copy holding ``data``, entered at the same time (and by the same run)."""
        copy = State(self.type, self.name, self.message, data, self._ts)
        copy._run_id, copy._of = self._run_id, self._of
        copy._returned = self._returned
        return copy

    def is_scheduled(self) -> bool:
        return self.type is StateType.SCHEDULED

    def is_pending(self) -> bool:
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        return self.type is StateType.RUNNING

    def is_completed(self) -> bool:
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        return self.type is StateType.FAILED

    def is_crashed(self) -> bool:
        return self.type is StateType.CRASHED

    def is_cancelled(self) -> bool:
        return self.type is StateType.CANCELLED

    def is_cancelling(self) -> bool:
        return self.type is StateType.CANCELLING

    def is_paused(self) -> bool:
        return self.type is StateType.PAUSED

    def is_final(self) -> bool:
        """True for Completed, Failed, Cancelled and Crashed."""
        return self.type in TERMINAL_STATES

    def result(self, raise_on_failure: bool = True, _sync: bool | None = None) -> R:
        """The run's value; for a failed, crashed or cancelled run its exception.

        The exception is raised, or with ``raise_on_failure=False`` the state's
        data is returned (the exception itself when the data is None). As in
        Prefect, a run that has not ended raises
        :class:`~nbflow.exceptions.UnfinishedRun`, a paused one
        :class:`~nbflow.exceptions.PausedRun`, and a Completed state made by
        hand without data (``Completed()``) :class:`~nbflow.exceptions.MissingResult`.

        In async code it is awaited, as in Prefect: inside an async task or flow,
        and in a coroutine outside runs, it returns a coroutine (``await
        state.result()``); ``_sync=True`` returns the value anywhere.
        """
        if not (_sync if _sync is not None else not _in_async_code()):
            return self._aresult(raise_on_failure)
        t = self.type
        if t is StateType.PAUSED:  # not an end: a paused run has no result (raise_on_failure aside)
            raise PausedRun("Run is paused, its result is not available.", state=self)
        if t is StateType.COMPLETED:
            data = self.data
            if data is None and self._run_id is None:  # a run that returned None has its run id
                raise MissingResult(
                    "State data is missing: this Completed state holds no result. It was made "
                    "without data (pass data=... to Completed), or read back from the run history."
                )
            return data
        if t not in TERMINAL_STATES:
            detail = f" {self.message}" if self.message else ""
            raise UnfinishedRun(f"Run is in {t.value} state, its result is not available.{detail}")
        if raise_on_failure:
            raise _state_exception(self)
        return _state_exception(self) if self.data is None else self.data

    async def _aresult(self, raise_on_failure: bool) -> R:
        return self.result(raise_on_failure, _sync=True)

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> "State[R]":
        """Prefect's (pydantic's) copy: ``update`` changes ``name``, ``message``, ``data`` or ``type``."""
        import copy as copying

        changed = self.copy(**(update or {}))
        if deep:
            changed.data = copying.deepcopy(changed.data)
        return changed

    def fresh_copy(self) -> "State[R]":
        """A copy as a new state: a new id and the time now (Prefect's, to enter the same state again)."""
        return State(self.type, self.name, self.message, self.data)

    def copy(self, **changes: Any) -> "State[R]":
        """A copy with some fields changed (``name``, ``message``, ``data``)."""
        fields = dict(type=self.type, name=self.name, message=self.message, data=self.data)
        fields.update(changes)
        copy = State(**fields)
        copy._run_id, copy._of = self._run_id, self._of  # still a run's state: one that returned None has the result None
        return copy

    def __repr__(self) -> str:
        """Prefect's form: ``Name(message=..., type=TYPE, result=...)``, a long result shortened."""
        return f"{self.name}(message={self.message!r}, type={self.type.value}, result={_short_repr(self.data)})"

    def __str__(self) -> str:
        """Prefect's short form for logs: ``Name('message', type=TYPE)``, the type only when the name differs."""
        parts = [repr(self.message)] if self.message else []
        if self.name.lower() != self.type.value.lower():
            parts.append(f"type={self.type.value}")
        return f"{self.name}({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return (self.type, self.name, self.message, self._ts) == (
            other.type,
            other.name,
            other.message,
            other._ts,
        )

    __hash__ = object.__hash__


def _uuid_of(run_id: int) -> uuid.UUID:
    return uuid.UUID(int=run_id, version=4)  # as nbflow.records.as_uuid (which imports this module)


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _constructor(state_type: StateType, default_name: str | None = None):
    name_default = default_name or _DEFAULT_NAMES[state_type]

    def make(
        message: str | None = None,
        data: Any = None,
        name: str | None = None,
        scheduled_time: datetime.datetime | None = None,
        **_: Any,
    ) -> State:
        state = State(state_type, name or name_default, message, data)
        if state_type is StateType.SCHEDULED:  # when it is due: now unless given, as Prefect's
            state._of = StateDetails(scheduled_time=scheduled_time or datetime.datetime.now(datetime.timezone.utc))
        return state

    make.__name__ = name_default
    make.__qualname__ = name_default
    make.__doc__ = f"A new ``{state_type.value}`` state named ``{name_default}``."
    return make


Scheduled = _constructor(StateType.SCHEDULED)
Pending = _constructor(StateType.PENDING)
Running = _constructor(StateType.RUNNING)
Completed = _constructor(StateType.COMPLETED)
Failed = _constructor(StateType.FAILED)
Cancelled = _constructor(StateType.CANCELLED)
Cancelling = _constructor(StateType.CANCELLING)
Crashed = _constructor(StateType.CRASHED)
Paused = _constructor(StateType.PAUSED)
AwaitingRetry = _constructor(StateType.SCHEDULED, "AwaitingRetry")
Retrying = _constructor(StateType.RUNNING, "Retrying")
Late = _constructor(StateType.SCHEDULED, "Late")
TimedOut = _constructor(StateType.FAILED, "TimedOut")
Cached = _constructor(StateType.COMPLETED, "Cached")
NotReady = _constructor(StateType.PENDING, "NotReady")
Suspended = _constructor(StateType.PAUSED, "Suspended")
AwaitingConcurrencySlot = _constructor(StateType.SCHEDULED, "AwaitingConcurrencySlot")
Submitting = _constructor(StateType.PENDING, "Submitting")
InfrastructurePending = _constructor(StateType.PENDING, "InfrastructurePending")

# The exception type raised for each failure state with no exception of its own, and its default message.
_WRAPPERS = {
    StateType.FAILED: (FailedRun, "Run failed."),
    StateType.CRASHED: (CrashedRun, "Run crashed."),
    StateType.CANCELLED: (CancelledRun, "Run cancelled."),
}


def _state_exception(state: State) -> BaseException:
    """What :func:`get_state_exception` gives, in any code."""
    wrapper, default = _WRAPPERS.get(state.type, (None, None))
    if wrapper is None:
        raise ValueError(f"Expected failed or crashed state got {state!r}.")
    data = state.data
    if data is None:
        return wrapper(state.message or default)
    if isinstance(data, BaseException):
        return data
    if isinstance(data, str):
        return wrapper(data)
    if isinstance(data, State):
        return _state_exception(data)
    if is_state_iterable(data):
        for inner in data:
            if inner.type in _WRAPPERS:
                return _state_exception(inner)
        raise ValueError("Failed state result was an iterable of states but none were failed.")
    raise TypeError(
        f"Unexpected result for failed state: {data!r} —— "
        f"{type(data).__name__} cannot be resolved into an exception"
    )


def format_exception(exc: BaseException, tb: types.TracebackType | None = None) -> str:
    """``Type: message`` for ``exc``, or with ``tb`` the whole traceback (nbflow's classes by short name)."""
    kind = type(exc)
    if tb is None:
        return f"{kind.__name__}: {exc}"
    import traceback

    text = "".join(traceback.format_exception(kind, exc, tb))
    return text.replace(f"{kind.__module__}.{kind.__name__}", kind.__name__) if kind.__module__.startswith("nbflow.") else text


async def exception_to_crashed_state(exc: BaseException, result_store: Any = None) -> State:
    """A Crashed state for ``exc`` raised around the user's code, in Prefect's words (awaited, as Prefect's)."""
    from nbflow.exceptions import TerminationSignal

    if isinstance(exc, KeyboardInterrupt):
        message = "Execution was aborted by an interrupt signal."
    elif isinstance(exc, TerminationSignal):
        message = "Execution was aborted by a termination signal."
    elif isinstance(exc, SystemExit):
        message = "Execution was aborted by Python system exit call."
    else:
        message = f"Execution was interrupted by an unexpected exception: {format_exception(exc)}"
    return Crashed(message=message, data=exc)


async def exception_to_failed_state(exc: BaseException | None = None, result_store: Any = None,
                                    write_result: bool = False, **kwargs: Any) -> State:
    """A Failed state for ``exc`` (by default the exception being handled), not to be retried (awaited, as Prefect's)."""
    if exc is None:
        exc = sys.exc_info()[1]
        if exc is None:
            raise ValueError("Exception was not passed and no active exception could be found.")
    prefix = kwargs.pop("message", "") or ""
    if prefix and not prefix.endswith(" "):
        prefix += " "
    return not_retriable(Failed(message=prefix + format_exception(exc), data=exc, **kwargs))


def not_retriable(state: State) -> State:
    """``state``, marked as Prefect marks the Failed state of an exception: ``state_details.retriable`` False."""
    state._of = StateDetails(retriable=False)
    return state


def get_state_exception(state: State, _sync: bool | None = None) -> BaseException:
    """The exception a failed, crashed or cancelled state stands for (what ``result()`` raises).

    Its data if that is an exception; for a string, a :class:`FailedRun`
    (``CrashedRun``, ``CancelledRun``) with that message; for a state, that
    state's exception; for a list, set or tuple of states, the exception of
    the first that failed; for no data, a wrapper holding the state's message.
    In async code it is awaited, as Prefect's (see :meth:`State.result`).
    """
    if not (_sync if _sync is not None else not _in_async_code()):
        return aget_state_exception(state)  # type: ignore[return-value]
    return _state_exception(state)


async def aget_state_exception(state: State) -> BaseException:
    """:func:`get_state_exception` to await."""
    return _state_exception(state)


def raise_state_exception(state: State, _sync: bool | None = None) -> None:
    """Raise the exception of a failed, crashed or cancelled state; do nothing for any other.

    Awaited in async code, as Prefect's (see :meth:`State.result`).
    """
    if not (_sync if _sync is not None else not _in_async_code()):
        return araise_state_exception(state)  # type: ignore[return-value]
    if state.type in _WRAPPERS:
        raise _state_exception(state)


async def araise_state_exception(state: State) -> None:
    """:func:`raise_state_exception` to await."""
    if state.type in _WRAPPERS:
        raise _state_exception(state)


def is_state_iterable(value: Any) -> bool:
    """True for a non-empty list, set or tuple whose every item is a State (not for annotations)."""
    return (
        isinstance(value, (list, set, tuple))
        and not isinstance(value, BaseAnnotation)
        and bool(value)
        and all(isinstance(item, State) for item in value)
    )


class StateGroup:
    """Counts over a group of states (what a run returning several states is judged by), as Prefect's."""

    def __init__(self, states: list[State]) -> None:
        self.states = states
        self.type_counts = collections.Counter(state.type for state in states)
        self.total_count = len(states)
        self.cancelled_count = self.type_counts[StateType.CANCELLED]
        self.final_count = sum(1 for state in states if state.is_final())
        self.not_final_count = self.total_count - self.final_count
        self.paused_count = self.type_counts[StateType.PAUSED]

    @property
    def fail_count(self) -> int:
        """Failed and crashed states."""
        return self.type_counts[StateType.FAILED] + self.type_counts[StateType.CRASHED]

    def all_completed(self) -> bool:
        return self.type_counts[StateType.COMPLETED] == self.total_count

    def any_cancelled(self) -> bool:
        return self.cancelled_count > 0

    def any_failed(self) -> bool:
        return self.fail_count > 0

    def any_paused(self) -> bool:
        return self.paused_count > 0

    def all_final(self) -> bool:
        return self.final_count == self.total_count

    def counts_message(self) -> str:
        """``total=3, 'COMPLETED'=1, 'FAILED'=2``: the count of each type present (``not_final=k`` after the total
        when some states have not ended)."""
        counts = [f"total={self.total_count}"]
        if self.not_final_count:
            counts.append(f"not_final={self.not_final_count}")
        counts += [f"{t.value!r}={n}" for t, n in self.type_counts.items()]
        return ", ".join(counts)

    def __repr__(self) -> str:
        return f"StateGroup<{self.counts_message()}>"


def return_value_to_state(value: Any) -> State:
    """The final state of a run whose function returned ``value`` (tasks and flows alike).

    - A state made by hand (no run ended in it) is the run's state, as is.
    - A run's state, or a non-empty list, set or tuple holding only states,
      gives an aggregate holding ``value``: Completed if all completed ("All
      states completed."), else Cancelled if any was cancelled ("k/n states
      cancelled."), else Paused if any was paused, else Failed ("k/n states
      failed." counting failed and crashed ones, or "k/n states are not
      final." when the others have not ended).
    - Anything else (a tuple mixing states and values, ``quote(state)``, a
      dict of states) is Completed with ``value`` (a generator as a list).
    """
    if isinstance(value, State) and value._run_id is None:
        return value
    if isinstance(value, State) or is_state_iterable(value):
        state = _aggregate([value] if isinstance(value, State) else list(value), value)
    else:
        state = Completed(data=list(value) if isinstance(value, types.GeneratorType) else value)
    state._returned = True
    return state


def _aggregate(states: list[State], value: Any) -> State:
    group = StateGroup(states)
    total = group.total_count
    if group.all_completed():
        return Completed(message="All states completed.", data=value)
    if group.any_cancelled():
        return Cancelled(message=f"{group.cancelled_count}/{total} states cancelled.", data=value)
    if group.any_paused():
        return Paused(message=f"{group.paused_count}/{total} states paused.", data=value)
    if group.any_failed():
        return Failed(message=f"{group.fail_count}/{total} states failed.", data=value)
    return Failed(message=f"{group.not_final_count}/{total} states are not final.", data=value)


__all__ = [
    "State",
    "StateDetails",
    "StateType",
    "TERMINAL_STATES",
    "Scheduled",
    "Pending",
    "Running",
    "Completed",
    "Failed",
    "Cancelled",
    "Cancelling",
    "Crashed",
    "Paused",
    "AwaitingRetry",
    "Retrying",
    "Late",
    "TimedOut",
    "Cached",
    "NotReady",
    "Suspended",
    "AwaitingConcurrencySlot",
    "Submitting",
    "InfrastructurePending",
    "StateGroup",
    "format_exception",
    "exception_to_crashed_state",
    "exception_to_failed_state",
    "not_retriable",
    "get_state_exception",
    "aget_state_exception",
    "raise_state_exception",
    "araise_state_exception",
    "is_state_iterable",
    "return_value_to_state",
]
