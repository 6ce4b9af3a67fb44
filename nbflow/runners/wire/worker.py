"""The worker side: executing a payload where the work runs, and sending live messages home.

A worker (a process of the process runner, a Dask worker, a Ray worker)
rebuilds a :class:`~nbflow.records.TaskRun` shell from a payload, captures
what the run prints, and executes it with the same engine as the thread
runner (``engine.run_here``). While it runs, its transitions and printed
lines go to the driver as *live messages*, in batches, over the runner's
:class:`Channel`; when it ends, the worker returns its :class:`Record` and
pickled value (``run_payload``).

::

    driver                                    worker
    Payloads.build(run) ----- payload ------> run_payload(payload, upstream, channel)
    driver.receive(blob) <-- live messages --  Running / Retrying, printed lines (batched)
    driver.complete(run, record, ...) <------  Record + the pickled value
    driver.crash(run, reason)                  (the worker died: Crashed, never a hang)
"""

from __future__ import annotations

import abc
import functools
import logging
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from nbflow import engine, events, settings
from nbflow import logging as run_logging
from nbflow import states as S
from nbflow.exceptions import SerializationError
from nbflow.records import TaskRun
from nbflow.runners.wire.payload import Record, decode, dumps, loading_upstream
from nbflow.states import State, StateType

logger = logging.getLogger("nbflow.runners")

#: Seconds between a worker's batches of live messages (a message waits one to two of them).
LIVE_INTERVAL = 0.02


class Channel:
    """The worker end of a runner's live link to the driver.

    Subclasses say how a batch of messages (bytes) reaches the driver.
    Channels with the same key lead to the same place, so a worker batches
    the messages of all payloads that name it. A channel that is cheap to
    send on (``eager``) carries a run's transitions at once: the driver then
    knows when each attempt started (for its deadline) before the task's
    code runs, and that it was Running if its worker dies.
    """

    __slots__ = ("key",)

    eager = False

    def __init__(self, key: Any) -> None:
        self.key = key

    @abc.abstractmethod
    def open(self) -> Callable[[bytes], Any]:
        """A function sending one batch; called in the task's thread on first use."""

    def report(self, record: Record, value: bytes | None, base: int) -> None:
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
    __slots__ = ("base", "channel", "run_id", "sent")

    def __init__(self, channel: Channel, run_id: int, base: int) -> None:
        self.channel = channel
        self.run_id = run_id
        self.base = base  # attempts made before this payload was sent: its messages carry it
        self.sent = 0


# Shells executing in this worker process, and where their live messages go.
_active: dict[TaskRun, _Active] = {}


def _forward(event: events.RunEvent) -> None:
    """Subscriber in a worker: sends a shell's transitions and printed lines to its driver.

    Output of other runs (tasks called inline inside a shell's task) is echoed here.
    """
    run = event.run
    active = _active.get(run)  # type: ignore[arg-type]
    if active is None:
        if isinstance(event, events.OutputEvent):
            run_logging.echo_to_console(event)
        return
    message: tuple
    if isinstance(event, events.StateEvent):
        if run.ended:  # the final state travels in the run's record
            return
        message = ("state", active.run_id, active.base, len(run.states) - 1, event.state, run.name,
                   run.run_count)
        if active.channel.eager:
            _outbox.send_now(active.channel, message)
            return
    else:
        message = ("output", active.run_id, active.base, active.sent, event.stream, event.text)
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
        run_logging.console_echo(False)  # the driver echoes what shells print
        events.subscribe(_forward, ("task-state", "output", "log"))
        _prepared = True


def run_payload(
    payload: tuple | bytes, upstream: Sequence[Sequence[bytes | None]], channel: Channel | None = None
) -> tuple[Record, bytes | None]:
    """Execute a payload here; return its record and its pickled value (None unless Completed).

    ``upstream`` holds the ``(record blob, value blob)`` outcomes the engine
    delivered for the payload's upstream runs, in the order the driver listed
    them; live messages go to ``channel``, or to the payload's.
    """
    _prepare_worker()
    task_blob, flow_blob, arguments, run_id, name, map_index, dynamic_key, tags, sent_with, history = (
        decode(payload))
    channel = channel or sent_with
    base = history[1] if history is not None else 0
    try:
        task = _load_task(task_blob)
        flow_run = pickle.loads(flow_blob) if flow_blob is not None else None
        with loading_upstream(upstream):
            parameters, deps = pickle.loads(arguments)
    except Exception as exc:
        error = SerializationError(
            f"Task run {name!r} could not be unpickled on the worker ({type(exc).__name__}: {exc}). "
            "Modules the task or its arguments come from must be importable there too: install "
            "them on the workers, or define what they need in the notebook or script itself."
        )
        record = Record(run_id, (S.Failed(message=str(error), data=error),), base, name, 0, None)
        if channel is not None:
            channel.report(record, None, base)
        return record, None
    if flow_run is not None and flow_run.settings != settings.current:
        settings.current = flow_run.settings
    run = TaskRun(task, flow_run, parameters, tags, map_index, name, dependencies=deps, id=run_id,
                  dynamic_key=dynamic_key)
    if history is not None:  # earlier attempts ended on the driver's watch: this one is a retry
        run.resume(*history)
    active = _Active(channel, run_id, base) if channel is not None else None
    if active is not None:
        _active[run] = active
    try:
        state = engine.run_here(run)
        if run.cache is not None or run.result_key is not None or settings.current.persist_results:
            # Stored or keyed here: the driver or another worker may look it up next, so the
            # store's queued writes are committed before the run is reported. A result only a
            # retry reads is kept here and now (the driver has no value of a run that stays remote).
            from nbflow.store import cache

            if settings.current.persist_results:
                cache.keep_for_retry([run])
            cache.flush_stores()
    finally:
        if active is not None:
            del _active[run]
            _outbox.discard_states(active.channel, run_id)  # the record has them all
    record, value = _report(run, state, active.sent if active is not None else 0)
    if channel is not None:
        channel.report(record, value, base)
    return record, value


def send_final(channel: Channel, record: Record, value: bytes | None, base: int) -> None:
    """Send a run's record (and value, if given) to the driver after its pending live messages.

    ``base`` is the number of attempts made before the payload was sent (the driver ignores
    a record of an attempt it gave up on).
    """
    send(channel, final_message(record, value, base))


def final_message(record: Record, value: bytes | None, base: int) -> tuple:
    """The message carrying a run's record (and value, if given) to the driver (see :func:`send_final`)."""
    return ("final", record.run_id, base, dumps(record), value)


def send(channel: Channel, message: tuple) -> None:
    """Send one message to the driver now, after the channel's pending live messages."""
    _outbox.send_now(channel, message)


def post(channel: Channel, message: tuple) -> None:
    """Send one message to the driver with the channel's next batch of live messages."""
    _outbox.post(channel, message)


@functools.lru_cache(maxsize=64)
def _load_task(blob: bytes) -> Any:
    # Runs of one task share its pickle: unpickle it once per worker.
    return pickle.loads(blob)


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
            state = state.with_data(None)
    if isinstance(state.data, BaseException):
        state = state.with_data(_portable(run, state.data))
    earlier = tuple(run.states[1:-1])  # the shell ended in ``state``: it is last
    return Record(run.int_id, earlier + (state,), run.run_count, run.name, sent, run.output,
                  run.cache, run.result_key), value


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


__all__ = ["LIVE_INTERVAL", "Channel", "run_payload", "final_message", "post", "send", "send_final"]
