"""Running task runs outside the driver's threads: what the process, Dask and Ray runners share.

A run crosses to a worker as a *payload*: the task (cloudpickled once per
runner), a stand-in for its flow run, its arguments and its id, name, map
index and tags. The worker rebuilds a :class:`~nbflow.runs.TaskRun` shell
from it, captures what the run prints, and runs the same engine as the
thread runner (``engine.resolve_inputs`` and ``engine.execute``). Futures in
the arguments travel as stand-ins: a run on the same engine is replaced by
the outcome the engine hands the worker (its data never passes through the
driver); any other run by its final state. So the NotReady and
``allow_failure`` rules are applied where the run executes.

::

    driver                                    worker
    Payloads.build(run) ----- payload ------> run_payload(payload, upstream, channel)
    receive(blob)  <--- live messages -------  Running / Retrying, printed lines (batched)
    complete(run, record, ...) <- outcome ---  Record + the pickled value
    crash(run, reason)                         (the worker died: Crashed, never a hang)

Live messages are a preview: the record a worker returns carries every state
and printed line, and the driver publishes whatever the live messages missed
before it finishes the run. Cluster runners leave a completed run's value on
the cluster (:class:`RemoteState`) until someone reads it; see :class:`Fetcher`
for which values come back, and when.
"""

from __future__ import annotations

import abc
import functools
import importlib
import io
import logging
import pickle
import threading
import time
import traceback
from typing import Any, Callable, NamedTuple, Sequence

import cloudpickle

from nbflow import engine, runs, settings
from nbflow import logging as run_logging
from nbflow import states as S
from nbflow.exceptions import (
    CrashedRun,
    MissingDependencyError,
    MissingResult,
    SerializationError,
    TaskRunTimeoutError,
)
from nbflow.futures import PrefectFuture
from nbflow.runs import FlowRun, RunEvent, TaskRun, _done_lock
from nbflow.states import State, StateType
from nbflow.task_runners import TaskRunner, when_done

logger = logging.getLogger("nbflow.remote")

#: Seconds between a worker's batches of live messages (a message waits one to two of them).
LIVE_INTERVAL = 0.02


def require(module: str, extra: str, runner: str) -> Any:
    """Import an optional engine, or raise MissingDependencyError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{runner} needs the {module!r} package, which is not installed. "
            f'Install it with: pip install "nbflow[{extra}]"'
        ) from exc


# == the payload (driver side) ==================================================
class FlowRunStandIn:
    """What a worker knows of the flow run its task run belongs to.

    ``nbflow.runtime.flow_run`` and run loggers read it; the driver's
    settings come along so the worker stores caches and captures output as
    the driver would. Tasks cannot be submitted from a task on a worker
    (``task_runner`` is None), but they can be called.
    """

    __slots__ = ("_id", "name", "flow_name", "log_prints", "parameters", "run_count", "tags",
                 "settings", "task_runs", "subflow_runs")

    task_runner = None
    parent = None

    def __init__(self, id_: int, name: str, flow_name: str, log_prints: bool | None,
                 parameters: dict[str, Any], run_count: int, tags: frozenset[str],
                 settings_: settings.Settings) -> None:
        self._id = id_
        self.name = name
        self.flow_name = flow_name
        self.log_prints = log_prints
        self.parameters = parameters
        self.run_count = run_count
        self.tags = tags
        self.settings = settings_
        self.task_runs: list[TaskRun] = []  # runs of tasks called inline in the remote task
        self.subflow_runs: list[FlowRun] = []

    @classmethod
    def of(cls, flow_run: FlowRun) -> "FlowRunStandIn":
        return cls(flow_run._id, flow_run.name, flow_run.flow_name, flow_run.flow.log_prints,
                   flow_run.parameters, flow_run.run_count, flow_run.tags, settings.current)

    @property
    def id(self) -> Any:
        return runs._uuid(self._id)

    @property
    def flow(self) -> "FlowRunStandIn":
        return self  # logging reads flow_run.flow.log_prints

    def __reduce__(self) -> tuple:
        return (FlowRunStandIn, (self._id, self.name, self.flow_name, self.log_prints,
                                 self.parameters, self.run_count, self.tags, self.settings))


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
            if obj._run in self._upstream:
                self._consumed.add(obj._run)
            return PrefectFuture, (obj._run,)
        if isinstance(obj, TaskRun):
            index = self._upstream.get(obj)
            if index is not None:
                return _upstream_run, (index,)
            return _finished_run, (obj.name, obj.states[-1])
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

    def __init__(self, runner: str, channel: "Channel | None" = None) -> None:
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
    ) -> bytes:
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
        return pickle.dumps(
            (self._task(run.task), self._flow_run(run.flow_run), arguments, run._id, run.name,
             run.map_index, run.tags, self._channel),
            protocol=pickle.HIGHEST_PROTOCOL,
        )

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
            except Exception:
                stand_in.parameters = {}  # the flow's own parameters need not reach workers
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


# == the worker side ===============================================================
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


def dump_record(record: Record) -> bytes:
    return dumps(record)


class Channel:
    """The worker end of a runner's live link to the driver.

    Subclasses say how a batch of messages (bytes) reaches the driver.
    Channels with the same key lead to the same place, so a worker batches
    the messages of all payloads that name it.
    """

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    @abc.abstractmethod
    def open(self) -> Callable[[bytes], Any]:
        """A function sending one batch; called in the task's thread on first use."""

    def report(self, record: "Record", value: bytes | None) -> None:
        """Deliver a finished run's record, if this transport carries it (see :func:`send_final`).

        By default it does not: the engine returns the record as the task's result.
        """

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.key == self.key  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.key))

    def __reduce__(self) -> tuple:
        return (type(self), (self.key,))


class _Outbox:
    """Holds a worker's live messages per channel; one thread sends them in batches.

    A message waits one to two LIVE_INTERVALs: the thread sends what has
    waited a whole interval, every interval. A short run ends (and its
    transitions are dropped, :meth:`discard_states`) before any of them is
    sent, so many small runs cost the channel nothing, while a long run
    shows Running within about two intervals. Live messages are a preview
    (the record a run returns has it all), so a channel that fails loses its
    messages and nothing else.
    """

    def __init__(self) -> None:
        self._young: dict[Channel, list] = {}  # posted during the current interval
        self._aged: dict[Channel, list] = {}  # waited a whole interval: sent at the next tick
        self._senders: dict[Channel, Callable[[bytes], Any]] = {}
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()  # keeps each channel's batches in order
        self._thread: threading.Thread | None = None

    def post(self, channel: Channel, message: tuple) -> None:
        if channel not in self._senders:
            try:
                self._senders[channel] = channel.open()
            except Exception:
                logger.debug("channel %r could not be opened", channel, exc_info=True)
                return
        with self._cond:
            self._young.setdefault(channel, []).append(message)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nbflow-outbox", daemon=True)
                self._thread.start()
            self._cond.notify()

    def discard_states(self, channel: Channel, run_id: int) -> None:
        """Drop the run's transitions not sent yet: a run that ended reports them in its record."""
        with self._cond:
            for generation in (self._young, self._aged):
                batch = generation.get(channel)
                if batch:
                    batch[:] = [m for m in batch if m[0] != "state" or m[1] != run_id]
                    if not batch:
                        del generation[channel]

    def send_now(self, channel: Channel, message: tuple) -> None:
        """Send ``message`` after the channel's pending ones, from this thread."""
        with self._send_lock:
            with self._cond:
                batch = self._aged.pop(channel, []) + self._young.pop(channel, [])
            batch.append(message)
            self._deliver(channel, batch)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._young or self._aged):
                    self._cond.wait()
            time.sleep(LIVE_INTERVAL)
            with self._send_lock:
                with self._cond:
                    due, self._aged, self._young = self._aged, self._young, {}
                for channel, batch in due.items():
                    self._deliver(channel, batch)

    def _deliver(self, channel: Channel, batch: list) -> None:
        try:
            sender = self._senders.get(channel) or self._senders.setdefault(channel, channel.open())
            sender(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:
            logger.debug("live messages for %r were lost", channel, exc_info=True)


_outbox = _Outbox()


class _Active:
    __slots__ = ("channel", "run_id", "sent")

    def __init__(self, channel: Channel, run_id: int) -> None:
        self.channel = channel
        self.run_id = run_id
        self.sent = 0


# Shells executing in this worker process, and where their live messages go.
_active: dict[TaskRun, _Active] = {}


def _forward(event: RunEvent) -> None:
    """Subscriber in a worker: sends a shell's transitions and printed lines to its driver."""
    run = event.run
    active = _active.get(run)  # type: ignore[arg-type]
    if active is None:
        return
    message: tuple
    if event.kind == "state":
        message = ("state", active.run_id, len(run.states) - 1, event.state, run.name, run.run_count)
    else:
        message = ("output", active.run_id, active.sent, event.stream, event.text)
        active.sent += 1
    _outbox.post(active.channel, message)


_prepare_lock = threading.Lock()
_prepared = False


def _prepare_worker() -> None:
    """Once per worker process: capture output, forward events, and leave echoing to the driver."""
    global _prepared
    with _prepare_lock:
        if _prepared:
            return
        run_logging.install_capture()
        console = run_logging.set_echo(None)

        def echo(run: Any, stream: str, text: str) -> None:
            if run not in _active:
                console(run, stream, text)

        run_logging.set_echo(echo)
        runs.subscribe(_forward)
        _prepared = True


_loading = threading.local()


def _upstream_run(index: int) -> TaskRun:
    return _loading.upstream[index]


def _finished_run(name: str, state: State) -> TaskRun:
    """A stand-in for a run that ended before dispatch (or a snapshot of one that had not)."""
    run = TaskRun(None, None, {}, name=name)  # type: ignore[arg-type]
    run.finish(state)
    return run


def _outcome_run(outcome: Sequence[bytes | None]) -> TaskRun:
    """A stand-in for an upstream run on the same engine, from the outcome the engine delivered."""
    record_blob, value_blob = outcome
    record: Record = pickle.loads(record_blob)  # type: ignore[arg-type]
    final = record.states[-1]
    if final.type is StateType.COMPLETED:
        final = _with_data(final, pickle.loads(value_blob))  # type: ignore[arg-type]
    return _finished_run(record.name, final)


def _with_data(state: State, data: Any) -> State:
    return State(state.type, state.name, state.message, data, state._ts)


def run_payload(
    payload: bytes, upstream: Sequence[Sequence[bytes | None]], channel: Channel | None = None
) -> tuple[Record, bytes | None]:
    """Execute a payload here; return its record and its pickled value (None unless Completed).

    ``upstream`` holds the ``(record blob, value blob)`` outcomes the engine
    delivered for the payload's upstream runs, in the order the driver listed
    them; live messages go to ``channel``, or to the payload's.
    """
    _prepare_worker()
    task_blob, flow_blob, arguments, run_id, name, map_index, tags, sent_with = pickle.loads(payload)
    channel = channel or sent_with
    try:
        task = _load_task(task_blob)
        flow_run = pickle.loads(flow_blob) if flow_blob is not None else None
        _loading.upstream = [_outcome_run(o) for o in upstream]
        try:
            parameters, deps = pickle.loads(arguments)
        finally:
            _loading.upstream = None
    except Exception as exc:
        error = SerializationError(
            f"Task run {name!r} could not be unpickled on the worker ({type(exc).__name__}: {exc}). "
            "Modules the task or its arguments come from must be importable there too: install "
            "them on the workers, or define what they need in the notebook or script itself."
        )
        record = Record(run_id, (S.Failed(message=str(error), data=error),), 0, name, 0, None)
        if channel is not None:
            channel.report(record, None)
        return record, None
    if flow_run is not None and flow_run.settings != settings.current:
        settings.current = flow_run.settings
    run = TaskRun(task, None, parameters, tags, map_index, name)
    run._id = run_id
    run.flow_run = flow_run  # set after creation: the stand-in does not list its task runs
    run._dependencies = deps
    active = _Active(channel, run_id) if channel is not None else None
    if active is not None:
        _active[run] = active
    try:
        state = _execute(run)
    finally:
        if active is not None:
            del _active[run]
            _outbox.discard_states(active.channel, run_id)  # the record has them all
    record, value = _report(run, state, active.sent if active is not None else 0)
    if channel is not None:
        channel.report(record, value)
    return record, value


def send_final(channel: Channel, record: Record, value: bytes | None) -> None:
    """Send a run's record (and value, if given) to the driver after its pending live messages."""
    _outbox.send_now(channel, ("final", record.run_id, dump_record(record), value))


@functools.lru_cache(maxsize=64)
def _load_task(blob: bytes) -> Any:
    # Runs of one task share its pickle: unpickle it once per worker.
    return pickle.loads(blob)


def _execute(run: TaskRun) -> State:
    try:
        inputs = engine.resolve_inputs(run)
        if isinstance(inputs, State):
            return inputs
        run.parameters = inputs  # nbflow.runtime.task_run.parameters shows the values
        return engine.execute(run, inputs)
    except BaseException as exc:  # an engine bug or an interrupt must still end the run
        state = engine.outcome_state(False, exc, f"Task run {run.name!r}", None, TaskRunTimeoutError)
        return S.Crashed(message=state.message, data=exc) if state.type is StateType.FAILED else state


def _report(run: TaskRun, state: State, sent: int) -> tuple[Record, bytes | None]:
    value = None
    if state.type is StateType.COMPLETED:
        try:
            value = dumps(state.data)
        except Exception as exc:
            error = SerializationError(
                f"Task run {run.name!r} returned a {type(state.data).__name__}, which cannot be "
                f"pickled to leave the worker ({type(exc).__name__}: {exc}). Return picklable data "
                "(plain values, arrays, data frames), or run the task on ThreadPoolTaskRunner."
            )
            state = S.Failed(message=str(error), data=error)
        else:
            state = State(state.type, state.name, state.message, None, state._ts)
    if isinstance(state.data, BaseException):
        state = _with_data(state, _portable(run, state.data))
    return Record(run._id, tuple(run.states[1:]) + (state,), run.run_count, run.name, sent, run.output), value


def _portable(run: TaskRun, exc: BaseException) -> BaseException:
    """``exc`` with the worker's traceback as a note, or a stand-in if it cannot cross to the driver."""
    if exc.__traceback__ is not None:
        text = "".join(traceback.format_exception(exc)).rstrip()
        try:
            exc.add_note(f"Traceback on the worker:\n{text}")
        except Exception:
            pass
    try:
        pickle.loads(dumps(exc))
        return exc
    except Exception as why:
        return SerializationError(
            f"Task run {run.name!r} raised {type(exc).__name__}: {exc} -- that exception cannot be "
            f"pickled to leave the worker ({type(why).__name__}: {why}), so this stands in for it."
        )


# == the driver side ===============================================================
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
    _tracked[run._id] = Tracked(run)


def tracked(run_id: int) -> Tracked | None:
    return _tracked.get(run_id)


def untrack(run: TaskRun) -> None:
    """Stop taking live messages for ``run`` (it ended on the driver)."""
    _tracked.pop(run._id, None)


def receive(blob: bytes) -> list[tuple]:
    """Apply a batch of live messages; returns the messages that are not live (e.g. ``final``)."""
    others = []
    for message in pickle.loads(blob):
        kind = message[0]
        if kind == "state":
            entry = _tracked.get(message[1])
            if entry is not None:
                _apply_state(entry.run, *message[2:])
        elif kind == "output":
            entry = _tracked.get(message[1])
            if entry is not None:
                _apply_output(entry, *message[2:])
        else:
            others.append(message)
    return others


def _apply_state(run: TaskRun, index: int, state: State, name: str, run_count: int) -> None:
    # Messages can repeat (an engine re-ran the payload) or come late (after
    # the record): a state is taken only as the next one of a running run.
    with _done_lock:
        if run._done or len(run.states) != index:
            return
        run._started = True
        run.name = name
        run.run_count = run_count
        run.states.append(state)
    if runs._subscribers:
        runs._publish(RunEvent("state", run, state))


def _apply_output(entry: Tracked, seq: int, stream: str, text: str) -> None:
    with _done_lock:
        if entry.run._done or seq != entry.output_seen:
            return
        entry.output_seen = seq + 1
    run_logging.record_output(entry.run, stream, text)


def complete(run: TaskRun, record_blob: bytes, value_blob: bytes | None = None,
             fetcher: "Fetcher | None" = None, handle: Any = None) -> bool:
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
    entry = _tracked.pop(run._id, None) or Tracked(run)
    if run._done:  # cancelled meanwhile: it keeps that outcome
        return False
    run.name = record.name
    run.run_count = record.run_count
    for index, state in enumerate(record.states[:-1], 1):
        _apply_state(run, index, state, record.name, record.run_count)
    with _done_lock:
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
            final = _with_data(final, value)
    return run.finish(final)


def crash(run: TaskRun, reason: str, error: BaseException | None = None) -> bool:
    """End ``run`` Crashed because its worker or engine failed it; False if it had ended."""
    _tracked.pop(run._id, None)
    message = f"Task run {run.name!r} crashed: {reason}"
    exc = CrashedRun(message)
    exc.__cause__ = error
    return run.finish(S.Crashed(message=message, data=exc))


def fail(run: TaskRun, exc: BaseException) -> bool:
    """End ``run`` Failed for a problem found on the driver (e.g. SerializationError); Crashed for an interrupt."""
    _tracked.pop(run._id, None)
    if isinstance(exc, Exception):
        return run.finish(S.Failed(message=str(exc), data=exc))
    return run.finish(S.Crashed(message=f"Task run {run.name!r} was interrupted: {exc!r}", data=exc))


def loads_value(run_name: str, blob: bytes) -> Any:
    """Unpickle a run's value on the driver, with an error naming the run if that fails."""
    try:
        return pickle.loads(blob)
    except Exception as exc:
        raise SerializationError(
            f"The result of task run {run_name!r} could not be unpickled on the driver "
            f"({type(exc).__name__}: {exc}). Its type must be importable here as on the worker."
        ) from exc


# -- values left on the cluster ---------------------------------------------------------
_DATA = State.__dict__["data"]  # the slot behind State.data


class RemoteState(State):
    """A Completed state whose value is still on the cluster: reading ``data`` fetches it."""

    __slots__ = ("_fetcher",)

    def __init__(self, state: State) -> None:
        self._fetcher: Fetcher | _Unloadable | None = None
        State.__init__(self, state.type, state.name, state.message, None, state._ts)

    @property  # type: ignore[override]
    def data(self) -> Any:
        fetcher = self._fetcher
        if fetcher is not None:
            fetcher.fetch(self)
        return _DATA.__get__(self, State)

    @data.setter
    def data(self, value: Any) -> None:
        _DATA.__set__(self, value)

    @property
    def on_cluster(self) -> bool:
        """True while the value has not been brought to the driver (reading ``data`` would)."""
        return self._fetcher is not None

    def __repr__(self) -> str:
        if self.on_cluster:  # a repr never fetches
            return f"{self.name}(message={self.message!r}, type={self.type.value}, result=<on the cluster>)"
        return super().__repr__()

    def __reduce__(self) -> tuple:
        return (State, (self.type,), self.__getstate__())  # crosses as a plain state, value in


class _Unloadable:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def fetch(self, state: RemoteState) -> None:
        raise self.error


class Fetcher:
    """Brings values left on the cluster to the driver, in batches.

    Reading a value fetches it together with every waiting value no other
    run on the cluster consumed (the results a flow reads, e.g. a whole
    ``.map``), in one ``gather(handles)`` call that returns pickled values.
    Values other runs consumed stay on the cluster until read: when the
    runner shuts down, :meth:`release` brings the unconsumed ones back and
    lets the others go. ``consumed`` is the runner's set of such runs;
    ``where`` names the cluster in messages.
    """

    def __init__(self, gather: Callable[[list], list[bytes]], where: str, consumed: set[TaskRun]) -> None:
        self._gather = gather
        self._where = where
        self._consumed = consumed
        self._waiting: dict[RemoteState, tuple[Any, TaskRun]] = {}
        self._lock = threading.Lock()

    def add(self, state: RemoteState, handle: Any, run: TaskRun) -> RemoteState:
        with self._lock:
            state._fetcher = self
            self._waiting[state] = (handle, run)
        return state

    def fetch(self, state: RemoteState | None = None) -> None:
        """Fetch ``state``'s value (unless it arrived meanwhile) and every waiting unconsumed one."""
        with self._lock:
            if state is not None and state._fetcher is not self:
                return
            batch = {
                waiting: entry for waiting, entry in self._waiting.items()
                if waiting is state or entry[1] not in self._consumed
            }
            if not batch:
                return
            for waiting in batch:
                del self._waiting[waiting]
            try:
                blobs = self._gather([handle for handle, _ in batch.values()])
            except Exception as exc:
                self._waiting.update(batch)
                raise CrashedRun(
                    f"{len(batch)} task run result(s) could not be fetched from {self._where} "
                    f"({type(exc).__name__}: {exc})."
                ) from exc
            for (remote_state, (_, run)), blob in zip(batch.items(), blobs):
                try:
                    _DATA.__set__(remote_state, loads_value(run.name, blob))
                    remote_state._fetcher = None
                except SerializationError as exc:
                    remote_state._fetcher = _Unloadable(exc)

    def release(self) -> None:
        """The cluster is going away: fetch the unconsumed values; the others become unreadable."""
        try:
            self.fetch()
        finally:
            with self._lock:
                left, self._waiting = self._waiting, {}
            for remote_state, (_, run) in left.items():
                remote_state._fetcher = _Unloadable(MissingResult(
                    f"The result of task run {run.name!r} stayed on {self._where}, which was "
                    "released when its flow run ended (results that other task runs consumed are "
                    "not brought back). Read it with .result() inside the flow to keep it."
                ))


# == the base of cluster runners ===========================================================
class Outgoing(NamedTuple):
    """A run on its way to the engine."""

    run: TaskRun
    payload: bytes
    upstream: list[TaskRun]  # its upstream runs on the engine...
    handles: list[Any]  # ...and their engine futures


class ClusterTaskRunner(TaskRunner):
    """Base of the runners whose task runs execute on a cluster engine (Dask, Ray).

    A run goes to the engine as soon as its upstream runs on the same engine
    have been *submitted*: their engine futures are passed as dependencies, so
    the engine orders the runs and moves their data between workers. Upstream
    runs elsewhere (a parent flow's threads, another runner) are waited for on
    the driver first. The engine's completion callback ends each run; there is
    no polling loop. Subclasses say how to start and stop the engine, submit a
    payload, watch its outcome and gather values. The runs one ``.map`` call
    dispatches go to the engine together.
    """

    #: The future class ``submit`` returns.
    future_class: type[PrefectFuture] = PrefectFuture

    def __init__(self) -> None:
        super().__init__()
        self._payloads: Payloads | None = None  # made when the engine starts
        self._handles: dict[TaskRun, Any] = {}  # runs on the engine -> engine future(s)
        self._consumed: set[TaskRun] = set()  # runs whose value a downstream run on the engine uses
        self._fetcher: Fetcher | None = None
        self._start_lock = threading.Lock()
        self._batch = threading.local()  # .runs: where this thread's map collects its runs

    # -- what each engine provides ----------------------------------------------------
    @abc.abstractmethod
    def _start(self) -> tuple[str, Channel]:
        """Start or connect to the engine; return a description of it for messages, and the
        channel its workers send live messages on."""

    @abc.abstractmethod
    def _submit(self, batch: list[Outgoing]) -> list[Any]:
        """Hand each payload to the engine with its upstream engine futures; return their handles."""

    @abc.abstractmethod
    def _watch(self, run: TaskRun, handle: Any, upstream: list[TaskRun]) -> None:
        """Arrange for :meth:`_finished` or :meth:`_engine_failed` when ``handle`` is done."""

    @abc.abstractmethod
    def _gather(self, handles: list[Any]) -> list[bytes]:
        """The pickled values held under ``handles`` on the cluster."""

    @abc.abstractmethod
    def _cancel(self, handle: Any) -> None:
        """Drop ``handle``'s work from the engine if it has not started."""

    @abc.abstractmethod
    def _stop(self) -> None:
        """Disconnect, and stop what :meth:`_start` started (only that)."""

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> "ClusterTaskRunner":
        super().__enter__()
        self._ensure_started()
        return self

    def _ensure_started(self) -> None:
        if self._fetcher is None:
            with self._start_lock:
                if self._fetcher is None:
                    where, channel = self._start()
                    self._payloads = Payloads(type(self).__name__, channel)
                    self._fetcher = Fetcher(self._gather, where, self._consumed)

    def shutdown(self) -> None:
        """Fetch the unconsumed values still on the cluster (one batch), then stop what was started."""
        with self._start_lock:
            fetcher, self._fetcher = self._fetcher, None
        if fetcher is None:
            return
        try:
            fetcher.release()
        except Exception:
            logger.warning("%r: results left on the cluster could not be fetched", self, exc_info=True)
        self._handles.clear()
        self._consumed.clear()
        try:
            self._stop()
        except Exception:
            logger.warning("%r: stopping the engine failed", self, exc_info=True)
        for run in self._runs:  # nothing is left unfinished silently
            if not run._done:
                crash(run, f"{type(self).__name__} shut down before the run finished.")

    # -- scheduling -------------------------------------------------------------------------
    def _future(self, run: TaskRun) -> PrefectFuture:
        return self.future_class(run)

    def map(self, task: Any, parameters: dict[str, Any], wait_for: Any = None) -> Any:
        batch: list[Outgoing] = []
        self._batch.runs = batch
        try:
            return super().map(task, parameters, wait_for)
        finally:
            self._batch.runs = None
            if batch:
                self._send(batch)

    map.__doc__ = TaskRunner.map.__doc__

    def _pending_upstream(self, run: TaskRun) -> list[TaskRun]:
        deps = run._dependencies
        if not deps:
            return []
        handles = self._handles
        return [dep for dep, _ in deps if not dep._done and dep not in handles]

    def _dispatch(self, run: TaskRun) -> None:
        if run._done:  # cancelled while it waited for upstream runs
            return
        self._ensure_started()
        run._context = None  # context variables stay on the driver
        deps = run._dependencies
        upstream: dict[TaskRun, Any] = {}
        for dep, _ in deps or ():
            handle = self._handles.get(dep)
            if handle is not None:
                upstream[dep] = handle
        try:
            payload = self._payloads.build(  # type: ignore[union-attr]
                run, run.parameters, deps, list(upstream), self._consumed
            )
        except SerializationError as exc:
            fail(run, exc)
            return
        outgoing = Outgoing(run, payload, list(upstream), list(upstream.values()))
        batch = getattr(self._batch, "runs", None)
        if batch is None:
            self._send([outgoing])
        else:
            batch.append(outgoing)

    def _send(self, batch: list[Outgoing]) -> None:
        for outgoing in batch:
            track(outgoing.run)
        try:
            handles = self._submit(batch)
        except Exception as exc:
            for outgoing in batch:
                crash(outgoing.run, f"{type(self).__name__} could not hand it to the engine ({exc!r}).", exc)
            return
        for outgoing, handle in zip(batch, handles):
            self._handles[outgoing.run] = handle
            self._watch(outgoing.run, handle, outgoing.upstream)
            outgoing.run.add_done_callback(self._withdraw_if_cancelled)

    def _withdraw_if_cancelled(self, run: TaskRun) -> None:
        # A run cancelled on the driver before it started leaves the engine too.
        if run.states[-1].type is StateType.CANCELLED:
            handle = self._handles.get(run)
            if handle is not None:
                self._cancel(handle)

    # -- outcomes (called from the engine's callback threads) ---------------------------------
    def _finished(self, run: TaskRun, record_blob: bytes, handle: Any) -> None:
        fetcher = self._fetcher
        if fetcher is None:  # the runner shut down meanwhile: the value is out of reach
            crash(run, f"{type(self).__name__} shut down before its result was fetched.")
        else:
            complete(run, record_blob, fetcher=fetcher, handle=handle)

    def _engine_failed(self, run: TaskRun, error: BaseException, upstream: list[TaskRun]) -> None:
        """The engine failed ``run`` without a record: its worker died, it was cancelled, or an
        upstream engine future failed (engines fail dependents without running them).

        In the last case the run goes back through scheduling, now with that
        upstream run ended on the driver, so NotReady or ``allow_failure``
        apply as for any failed upstream.
        """
        self._handles.pop(run, None)
        if run._done:
            untrack(run)
            return

        def decide(_run: TaskRun) -> None:
            if any(dep not in self._handles for dep in upstream):
                self._schedule(run)
            else:
                crash(run, f"the engine lost it ({type(error).__name__}: {error})", error)

        pending = [dep for dep in upstream if not dep._done]
        if pending:
            when_done(run, pending, decide)
        else:
            decide(run)


__all__ = [
    "require",
    "FlowRunStandIn",
    "Payloads",
    "Record",
    "Channel",
    "run_payload",
    "send_final",
    "dump_record",
    "track",
    "tracked",
    "untrack",
    "receive",
    "complete",
    "crash",
    "fail",
    "loads_value",
    "RemoteState",
    "Fetcher",
    "Outgoing",
    "ClusterTaskRunner",
]
