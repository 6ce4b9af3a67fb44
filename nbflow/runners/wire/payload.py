"""The payload of a task run sent to a worker, and the record a worker sends back.

A run crosses to a worker as a *payload*: the task (cloudpickled once per
runner), a stand-in for its flow run, its arguments and its id, name, map
index and tags, and, for a retry the driver decided, the states and attempts
so far. Futures in the arguments travel as stand-ins: a run on the
same engine is replaced by the outcome the engine hands the worker (its data
never passes through the driver); any other run by its final state. So the
NotReady and ``allow_failure`` rules are applied where the run executes.
A worker answers with a :class:`Record` of the run and its pickled value.

A payload is a tuple of fields whose task and flow run are pickled bytes
shared by all the payloads of a runner, so an engine that pickles several
payloads together (a chunk of mapped runs on Dask) sends them once; a runner
whose transport takes bytes sends :func:`encode` of it.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import cloudpickle

from nbflow import settings
from nbflow.exceptions import SerializationError
from nbflow.futures import PrefectFuture
from nbflow.logging import should_log_prints
from nbflow.records import FlowRun, TaskRun, as_uuid
from nbflow.states import State, StateType

if TYPE_CHECKING:
    from nbflow.runners.wire.worker import Channel


class FlowRunStandIn:
    """What a worker knows of the flow run its task run belongs to (and of that run's parents).

    ``nbflow.runtime.flow_run`` and run loggers read it; ``log_prints`` and
    ``persist_result`` are the settings in force for the run's tasks (inherited as on the driver); the
    driver's settings come along so the worker stores caches and captures
    output as the driver would. Tasks cannot be submitted from a task on a
    worker (``task_runner`` is None), but they can be called.
    """

    __slots__ = (
        "_id",
        "_task_counts",
        "flow_name",
        "log_prints",
        "name",
        "parameters",
        "parent",
        "persist_result",
        "run_count",
        "settings",
        "subflow_runs",
        "tags",
        "task_runs",
        "version",
    )

    task_runner = None
    reuse = None  # a retry serves runs on the driver, before they are dispatched
    count_task_run = FlowRun.count_task_run  # dynamic keys of the runs of tasks called inline
    inherited = FlowRun.inherited  # its own settings already are what is inherited; parents are stand-ins too

    def __init__(self, id_: int, name: str, flow_name: str, version: str | None, log_prints: bool,
                 parameters: dict[str, Any], run_count: int, tags: frozenset[str],
                 parent: FlowRunStandIn | None, settings_: settings.Settings, persist_result: bool | None) -> None:
        self._id = id_
        self.name = name
        self.flow_name = flow_name
        self.version = version
        self.log_prints = log_prints
        self.parameters = parameters
        self.run_count = run_count
        self.tags = tags
        self.parent = parent
        self.settings = settings_
        self.persist_result = persist_result  # in force for its tasks (inherited as on the driver)
        self.task_runs: list[TaskRun] = []  # runs of tasks called inline in the remote task
        self.subflow_runs: list[FlowRun] = []
        self._task_counts: dict[str, int] = {}

    @classmethod
    def of(cls, flow_run: FlowRun) -> FlowRunStandIn:
        parent = cls.of(flow_run.parent) if flow_run.parent is not None else None
        return cls(flow_run.int_id, flow_run.name, flow_run.flow_name, flow_run.flow.version,
                   should_log_prints(flow_run), flow_run.parameters, flow_run.run_count,
                   flow_run.tags, parent, settings.current, flow_run.persist_result)

    @property
    def id(self) -> Any:
        return as_uuid(self._id)

    @property
    def int_id(self) -> int:
        return self._id

    @property
    def root(self) -> FlowRunStandIn:
        run = self
        while run.parent is not None:
            run = run.parent
        return run

    @property
    def flow(self) -> FlowRunStandIn:
        return self  # readers ask flow_run.flow for log_prints and version

    def __reduce__(self) -> tuple:
        return (FlowRunStandIn, (self._id, self.name, self.flow_name, self.version, self.log_prints,
                                 self.parameters, self.run_count, self.tags, self.parent, self.settings,
                                 self.persist_result))


class _ArgumentPickler(cloudpickle.Pickler):
    """Pickles arguments with each task run replaced by a stand-in the worker can resolve.

    ``consumed`` collects the upstream runs whose values the arguments use
    (through futures), as opposed to runs only waited for.
    """

    def __init__(self, file: io.BytesIO, upstream: dict[TaskRun, int], consumed: set[TaskRun]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._upstream = upstream
        self._consumed = consumed

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, PrefectFuture):
            if obj.task_run in self._upstream:
                self._consumed.add(obj.task_run)
            return PrefectFuture, (obj.task_run,)
        if isinstance(obj, TaskRun):
            index = self._upstream.get(obj)
            if index is not None:
                return upstream_stand_in, (index,)
            return finished_stand_in, (obj.name, obj.states[-1])
        return super().reducer_override(obj)


def _dump_arguments(value: Any, upstream: dict[TaskRun, int], consumed: set[TaskRun]) -> bytes:
    buffer = io.BytesIO()
    _ArgumentPickler(buffer, upstream, consumed).dump(value)
    return buffer.getvalue()


class Payloads:
    """Builds the payloads of one runner's runs; each task and flow run is pickled once.

    A payload is bytes (every engine ships bytes fast); ``channel`` is where
    the worker sends live messages, if the runner's transport does not say.
    """

    def __init__(self, runner: str, channel: Channel | None = None) -> None:
        self._runner = runner
        self._channel = channel
        self._tasks: dict[Any, bytes] = {}
        self._flow_runs: dict[FlowRun, bytes] = {}

    def build(
        self,
        run: TaskRun,
        parameters: dict[str, Any],
        dependencies: Sequence[tuple[TaskRun, bool]] | None = None,
        upstream: Sequence[TaskRun] = (),
        consumed: set[TaskRun] | None = None,
    ) -> tuple:
        """The payload of ``run``; ``upstream`` lists the runs whose outcomes the engine delivers.

        Those of them whose values the arguments use are added to ``consumed``.
        Raises SerializationError naming the task and the argument that cannot be pickled.
        """
        index = {dep: i for i, dep in enumerate(upstream)}
        used: set[TaskRun] = set() if consumed is None else consumed
        deps = None if dependencies is None else tuple(dependencies)
        try:
            arguments = _dump_arguments((parameters, deps), index, used)
        except Exception as exc:
            raise self._argument_error(run, parameters, index, exc) from exc
        return (self._task(run.task), self._flow_run(run.flow_run), arguments, run.int_id, run.name,
                run.map_index, run.dynamic_key, run.tags, self._channel, _history(run))

    def _task(self, task: Any) -> bytes:
        blob = self._tasks.get(task)
        if blob is None:
            try:
                blob = self._tasks[task] = cloudpickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise SerializationError(
                    f"Task {task.name!r} cannot be pickled, so {self._runner} cannot send it to a "
                    f"worker ({type(exc).__name__}: {exc}). Its function, options and hooks must be "
                    "picklable: create objects such as locks, clients or connections inside the "
                    "function instead of referring to module-level ones, or run the task on "
                    "ThreadPoolTaskRunner."
                ) from exc
        return blob

    def _flow_run(self, flow_run: FlowRun | None) -> bytes | None:
        if flow_run is None:
            return None
        blob = self._flow_runs.get(flow_run)
        if blob is None:
            stand_in = FlowRunStandIn.of(flow_run)
            try:
                blob = cloudpickle.dumps(stand_in)
            except Exception:  # the flow's own parameters need not reach workers
                run: FlowRunStandIn | None = stand_in
                while run is not None:
                    run.parameters = {}
                    run = run.parent
                blob = cloudpickle.dumps(stand_in)
            self._flow_runs[flow_run] = blob
        return blob

    def _argument_error(self, run: TaskRun, parameters: dict[str, Any],
                        index: dict[TaskRun, int], exc: Exception) -> SerializationError:
        culprit = ""
        for name, value in parameters.items():
            try:
                _dump_arguments(value, index, set())
            except Exception:
                culprit = f" argument {name!r} (a {type(value).__name__})"
                break
        return SerializationError(
            f"Task {run.task.name!r}:{culprit or ' an argument'} cannot be pickled, so "
            f"{self._runner} cannot send it to a worker ({type(exc).__name__}: {exc}). Pass a "
            "picklable value instead (for a connection, client or lock: what is needed to create "
            "it, and create it inside the task), or run the task on ThreadPoolTaskRunner."
        )


def _history(run: TaskRun) -> tuple[tuple[State, ...], int] | None:
    # A run whose earlier attempts ended on the driver's watch goes on from them (TaskRun.resume).
    return (tuple(run.states), run.run_count) if run.run_count else None


def encode(payload: tuple) -> bytes:
    """A payload as bytes, for a transport that takes bytes (the worker's :func:`decode` reverses it)."""
    return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)


def decode(payload: tuple | bytes) -> tuple:
    """A payload's fields, from the payload or from its :func:`encode` bytes."""
    return pickle.loads(payload) if type(payload) is bytes else payload


def resumed(payload: tuple | bytes, run: TaskRun) -> tuple:
    """``payload`` (built by :meth:`Payloads.build`) for the next attempt of ``run``, which goes on from its states so far."""
    return decode(payload)[:-1] + (_history(run),)


class Record(NamedTuple):
    """What a worker reports about a run it executed."""

    run_id: int
    #: Every state after the first Pending, the final one last (a Completed one without its value).
    states: tuple[State, ...]
    run_count: int
    name: str
    #: How many printed or logged chunks the worker sent live.
    output_sent: int
    #: What the run printed or logged (an OutputBuffer), or None.
    output: Any
    #: What the cache did for the run (a CacheOutcome), and where its result is stored.
    cache: Any = None
    result_key: str | None = None


def dumps(value: Any) -> bytes:
    """Pickle ``value`` for the trip back to the driver: plain pickle, else cloudpickle.

    Plain pickle is many times faster and names classes by reference, which
    the driver (where the task was defined) can resolve; cloudpickle takes
    what it cannot, such as classes and functions made inside a task.
    """
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


# -- unpickling on the worker: stand-ins for upstream runs --------------------------------
_loading = threading.local()


@contextlib.contextmanager
def loading_upstream(outcomes: Sequence[Sequence[bytes | None]]) -> Iterator[None]:
    """Within the block, unpickled arguments refer to stand-ins made from these engine outcomes.

    ``outcomes`` holds the ``(record blob, value blob)`` of each upstream run
    on the same engine, in the order the driver listed them.
    """
    _loading.upstream = [outcome_stand_in(o) for o in outcomes]
    try:
        yield
    finally:
        _loading.upstream = None


def upstream_stand_in(index: int) -> TaskRun:
    """The stand-in of the ``index``-th upstream run of the payload being unpickled."""
    return _loading.upstream[index]


def finished_stand_in(name: str, state: State) -> TaskRun:
    """A stand-in for a run that ended before dispatch (or a snapshot of one that had not)."""
    run = TaskRun(None, None, {}, name=name)  # type: ignore[arg-type]
    run.finish(state)
    return run


def outcome_stand_in(outcome: Sequence[bytes | None]) -> TaskRun:
    """A stand-in for an upstream run on the same engine, from the outcome the engine delivered."""
    record_blob, value_blob = outcome
    record: Record = pickle.loads(record_blob)  # type: ignore[arg-type]
    final = record.states[-1]
    if final.type is StateType.COMPLETED:
        final = final.with_data(pickle.loads(value_blob))  # type: ignore[arg-type]
    return finished_stand_in(record.name, final)


__all__ = [
    "FlowRunStandIn",
    "Payloads",
    "Record",
    "decode",
    "dumps",
    "encode",
    "finished_stand_in",
    "loading_upstream",
    "outcome_stand_in",
    "resumed",
    "upstream_stand_in",
]
