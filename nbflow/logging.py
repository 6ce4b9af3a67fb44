"""Run loggers and per-run capture of what tasks print and log.

``get_run_logger()`` returns a standard ``logging`` logger adapter whose
records carry the run's names and propagate to the root logger. While a flow
runs, ``sys.stdout``/``sys.stderr`` are wrapped by a router that, inside a
task run, records each write in the run's ``output`` and publishes it on the
event seam (:mod:`nbflow.events`). A default subscriber echoes it to the real
stream; the notebook layer turns that off (:func:`console_echo`) and puts a
run's output in the cell that started its flow, whatever thread printed it.

With ``log_prints`` (Prefect's option), each ``print()`` call in a run is one
INFO record on that run's logger instead: ``print`` itself is replaced (see
:func:`_print_as_log`), since a stream only sees the pieces a call writes.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import sys
import threading
from collections import deque
from typing import Any, Iterable, Iterator

from nbflow import events, settings
from nbflow.context import EngineContext, TaskRunContext, current_flow_run, flow_run_var, task_run_var
from nbflow.exceptions import MissingContextError

logger = logging.getLogger("nbflow")
logger.setLevel(logging.INFO)
flow_run_logger = logging.getLogger("nbflow.flow_runs")
task_run_logger = logging.getLogger("nbflow.task_runs")


class OutputBuffer:
    """What one run printed or logged: ``(stream, text)`` chunks, the newest kept.

    At most ``settings.current.max_output_chars`` characters are kept (the
    tail); ``dropped`` counts the characters let go. An append costs the same
    however much was printed before, and readers (the notebook view, on its
    own thread) get a consistent snapshot.
    """

    __slots__ = ("_chunks", "size", "dropped", "_lock")

    def __init__(self, chunks: Iterable[tuple[str, str]] = (), size: int = 0, dropped: int = 0) -> None:
        self._chunks: deque[tuple[str, str]] = deque(chunks)
        self.size = size
        self.dropped = dropped
        self._lock = threading.Lock()

    def append(self, stream: str, text: str) -> None:
        """Add one chunk, letting the oldest go once the cap is passed."""
        limit = settings.current.max_output_chars
        with self._lock:
            chunks = self._chunks
            # Every chunk is one published write, even when cut: remote runs count them.
            chunks.append((stream, text))
            size = self.size + len(text)
            while size > limit and len(chunks) > 1:
                old = chunks.popleft()[1]
                size -= len(old)
                self.dropped += len(old)
            self.size = size
            if size > limit:
                self._cut(limit)

    def _cut(self, limit: int) -> None:
        """Keep only the tail of the one chunk left, which alone passes the cap."""
        keep = max(limit, 1)
        stream, text = self._chunks[0]
        if len(text) > keep:
            self._chunks[0] = (stream, text[-keep:])
            self.dropped += len(text) - keep
            self.size = keep

    @property
    def chunks(self) -> list[tuple[str, str]]:
        """A copy of the kept ``(stream, text)`` chunks, oldest first."""
        with self._lock:
            return list(self._chunks)

    def text(self, streams: tuple[str, ...] = ("stdout", "stderr", "log")) -> str:
        """The captured text of the given streams, in the order it was written."""
        with self._lock:
            body = "".join(t for s, t in self._chunks if s in streams)
            dropped = self.dropped
        head = f"[... {dropped} characters dropped ...]\n" if dropped else ""
        return head + body

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self._chunks)

    def __reduce__(self):
        with self._lock:
            return (_rebuild_buffer, (list(self._chunks), self.size, self.dropped))


def _rebuild_buffer(chunks: list, size: int, dropped: int) -> OutputBuffer:
    return OutputBuffer(chunks, size, dropped)


def record_output(run: Any, stream: str, text: str) -> None:
    """Record ``text`` in ``run``'s output and publish it (an ``output`` or ``log`` event)."""
    if run.output is None:
        run.output = OutputBuffer()
    run.output.append(stream, text)
    events.publish_output(run, stream, text)


# -- echo: a subscriber that shows captured output on the console -----------------------
def log_level(line: str) -> str:
    """The level name of a log line in Prefect's format (``12:00:01.234 | WARNING | ...``), or ""."""
    head = line.split(" | ", 2)
    return head[1].strip() if len(head) == 3 else ""


_info_lines = "stderr"  # where INFO and DEBUG lines are echoed: see info_lines_to


def info_lines_to(stream: str) -> None:
    """Where echoed INFO and DEBUG log lines go: ``"stderr"``, as Prefect's console has every
    log line (the default: a script's stdout stays its data), or ``"stdout"``, as the notebook
    extension sets it so that they do not look like errors in a cell. Warnings and worse go
    to stderr either way."""
    global _info_lines
    if stream not in ("stdout", "stderr"):
        raise ValueError(f"info_lines_to({stream!r}): give 'stdout' or 'stderr'")
    _info_lines = stream


def _log_stream(line: str) -> str:
    """Where a log line is echoed: warnings and worse to stderr, the rest as :func:`info_lines_to` says."""
    return "stderr" if log_level(line) in ("WARNING", "ERROR", "CRITICAL") else _info_lines


def echo_to_console(event: events.OutputEvent) -> None:
    """Write a captured chunk to the real stdout/stderr (a log record only if no root handler shows it)."""
    stream = event.stream
    if stream == "log":
        if logging.root.handlers:  # a root handler already shows the record
            return
        stream = _log_stream(event.text)
    target = _real_stream(stream)
    if target is not None:
        target.write(event.text)


_console: events.Subscription | None = events.subscribe(echo_to_console, ("output", "log"))
_console_lock = threading.Lock()


def console_echo(enabled: bool) -> None:
    """Turn the default echo of captured output to the console on or off.

    Whatever routes output elsewhere (the notebook layer, a process worker)
    turns it off and subscribes to ``output`` / ``log`` events itself.
    """
    global _console
    with _console_lock:
        if enabled and _console is None:
            _console = events.subscribe(echo_to_console, ("output", "log"))
        elif not enabled and _console is not None:
            _console.unsubscribe()
            _console = None


# -- the stdout/stderr router ------------------------------------------------------
class _Router(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: task-run writes are captured, others pass."""

    def __init__(self, inner: Any, stream: str) -> None:
        self.inner = inner
        self.stream = stream

    def write(self, text: str) -> int:
        run = task_run_var.get()
        if run is None or events.delivering():  # a subscriber's output is not the run's
            return self.inner.write(text)
        if text:  # an empty write is not a chunk (print("", end="") makes one)
            record_output(run, self.stream, text)
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return getattr(self.inner, "isatty", lambda: False)()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# -- log_prints ---------------------------------------------------------------------
def should_log_prints(run: Any) -> bool:
    """Whether ``print`` in ``run`` (a task run or flow run) becomes a log record.

    The run's own ``log_prints`` decides; ``None`` inherits it: a task run
    from its flow run, a subflow run from its parent flow run; a top-level
    run inherits nothing (False), as in Prefect.
    """
    task = getattr(run, "task", None)
    if task is not None:
        if task.log_prints is not None:
            return bool(task.log_prints)
        run = run.flow_run
    return bool(run is not None and run.inherited("log_prints"))


def _to_console(file: Any) -> bool:
    """Whether ``print(..., file=file)`` targets stdout/stderr (whatever wraps them)."""
    if file is None or file is sys.stdout or file is sys.stderr:
        return True
    return file is _real_stream("stdout") or file is _real_stream("stderr")


def _print_as_log(*args: Any, **kwargs: Any) -> None:
    """``print``; in a run with ``log_prints``, one INFO record on the run logger instead.

    The record's message is exactly what ``print`` would have written (``sep``,
    ``end``), trailing whitespace stripped, as Prefect's ``print_as_log``. A
    ``file=`` other than stdout/stderr is printed to as usual.
    """
    run = task_run_var.get()
    if run is not None:
        base = task_run_logger
    else:
        run = flow_run_var.get()
        if run is None:
            return _builtin_print(*args, **kwargs)
        base = flow_run_logger
    file = kwargs.get("file")
    if should_log_prints(run) and _to_console(file):
        _adapter(base, run).info(_printed(args, kwargs).rstrip(), stacklevel=2)
        return None
    target = sys.stdout if file is None else file
    if base is task_run_logger and isinstance(target, _Router):
        # One write per call: the run's output gets whole prints, at a fraction
        # of the cost of capturing each piece print writes.
        target.write(_printed(args, kwargs))
        if kwargs.get("flush"):
            target.flush()
        return None
    return _builtin_print(*args, **kwargs)


def _printed(args: tuple, kwargs: dict[str, Any]) -> str:
    """What ``print(*args, **kwargs)`` would write."""
    if not kwargs:  # the common call, formatted as print does, at a third of the cost
        return " ".join([str(arg) for arg in args]) + "\n"
    buffer = io.StringIO()
    _builtin_print(*args, **{**kwargs, "file": buffer, "flush": False})
    return buffer.getvalue()


# ``print`` is replaced once, at import: the replacement checks the running
# run itself, so log_prints starts and stops with each run, in every thread,
# and code that saved ``print`` before a run finds it unchanged after.
_builtin_print = getattr(builtins.print, "_nbflow_builtin", builtins.print)
_print_as_log._nbflow_builtin = _builtin_print  # type: ignore[attr-defined]
_print_as_log.__wrapped__ = _builtin_print  # type: ignore[attr-defined]
builtins.print = _print_as_log


_install_lock = threading.Lock()


def install_capture() -> None:
    """Wrap sys.stdout and sys.stderr with routers (idempotent, cheap when done)."""
    if not settings.current.capture_output:
        return
    if isinstance(sys.stdout, _Router) and isinstance(sys.stderr, _Router):
        return
    with _install_lock:
        if not isinstance(sys.stdout, _Router):
            sys.stdout = _Router(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _Router):
            sys.stderr = _Router(sys.stderr, "stderr")


def _real_stream(stream: str) -> Any:
    current = sys.stdout if stream == "stdout" else sys.stderr
    while isinstance(current, _Router):
        current = current.inner
    return current


# -- run loggers -----------------------------------------------------------------
class RunLoggerAdapter(logging.LoggerAdapter):
    """A logger adapter that tags records with the run's names."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def _adapter(base: logging.Logger, run: Any) -> RunLoggerAdapter:
    from nbflow.records import TaskRun

    if isinstance(run, TaskRun):
        extra = {
            "task_run_name": run.name,
            "task_run_id": str(run.id),
            "task_name": run.task.name,
            "flow_run_name": run.flow_run.name if run.flow_run is not None else None,
            "flow_run_id": str(run.flow_run.id) if run.flow_run is not None else None,
            "flow_name": run.flow_run.flow_name if run.flow_run is not None else None,
        }
    else:
        extra = {"flow_run_name": run.name, "flow_run_id": str(run.id), "flow_name": run.flow_name,
                 "deployment_name": None}  # Prefect's key; nbflow has no deployments
    return RunLoggerAdapter(base, extra)


def get_run_logger(context: Any = None, **extra: Any) -> logging.LoggerAdapter:
    """The logger of the task run or flow run executing here (or of ``context``: a run context or record).

    Records go through the standard ``logging`` module (to the root logger's
    handlers) and, inside a task run, into the run's captured output. Their
    ``extra`` names the run as Prefect's do (``task_run_name``, ``task_run_id``,
    ``task_name``, ``flow_run_name``, ``flow_run_id``, ``flow_name``), plus ``extra``.
    """
    from nbflow.records import TaskRun

    if isinstance(context, TaskRunContext):
        context = context.task_run
    elif isinstance(context, EngineContext):
        context = context.flow_run
    run = context if context is not None else task_run_var.get()
    if run is None:
        run = current_flow_run()
    if run is None and flow_run_logger.disabled and task_run_logger.disabled:
        quiet = logging.getLogger("null")  # inside disable_run_logger(): a task's .fn() logs nowhere
        quiet.disabled = True
        return logging.LoggerAdapter(quiet, extra)
    if run is None:
        raise MissingContextError(
            "There is no active flow or task run context: get_run_logger() was called "
            "outside a flow or task run. Call it inside a "
            "function decorated with @flow or @task, or use logging.getLogger(...) here."
        )
    adapter = _adapter(task_run_logger if isinstance(run, TaskRun) else flow_run_logger, run)
    adapter.extra = {**(adapter.extra or {}), **extra}
    return adapter


class RunFormatter(logging.Formatter):
    """Prefect's log format: a task run's records name the task run, a flow run's the flow run.

    ``12:00:01.234 | INFO    | Task run 'clean-86e' - message``; other nbflow
    records name their logger. Formatting happens only for records that are emitted.
    """

    BASE = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s"
    TASK_RUN = "%(asctime)s.%(msecs)03d | %(levelname)-7s | Task run %(task_run_name)r - %(message)s"
    FLOW_RUN = "%(asctime)s.%(msecs)03d | %(levelname)-7s | Flow run %(flow_run_name)r - %(message)s"

    def __init__(self) -> None:
        super().__init__(self.BASE, "%H:%M:%S")
        self._task_run = logging.PercentStyle(self.TASK_RUN)
        self._flow_run = logging.PercentStyle(self.FLOW_RUN)

    def formatMessage(self, record: logging.LogRecord) -> str:
        names = record.__dict__
        if "task_run_name" in names:
            return self._task_run.format(record)
        if names.get("flow_run_name") is not None and record.name == flow_run_logger.name:
            return self._flow_run.format(record)
        return self._style.format(record)


class _CaptureHandler(logging.Handler):
    """Puts nbflow run-logger records into the run's captured output."""

    def emit(self, record: logging.LogRecord) -> None:
        if _LIFECYCLE in record.__dict__:  # for the logging tree's handlers only (see lifecycle)
            return
        run = task_run_var.get()
        if run is None:
            if not logging.root.handlers:
                line = self.format(record) + "\n"
                stream = _real_stream(_log_stream(line))
                if stream is not None:
                    stream.write(line)
            return
        record_output(run, "log", self.format(record) + "\n")


_capture_handler = _CaptureHandler()
_capture_handler.setFormatter(RunFormatter())
logger.addHandler(_capture_handler)

_LIFECYCLE = "nbflow_lifecycle"


def lifecycle(run: Any, level: int, message: str, *args: Any, exc_info: Any = None) -> None:
    """Log one of Prefect's engine records about ``run`` on its logger ("Finished in state Completed()").

    They are for the logging tree's handlers (a script's ``logging.basicConfig``,
    pytest's caplog, a handler on ``nbflow``): with none they are not made, and
    nbflow's capture and console echo leave them out, so a notebook cell does
    not fill with a line per task run (its view shows every run's state).
    """
    if isinstance(exc_info, RecursionError):  # a thousand frames, logged again at every level it unwinds
        exc_info = None
    target: logging.Logger | None = task_run_logger if hasattr(run, "task") else flow_run_logger
    while target is not None:  # is there a handler, other than nbflow's capture, to take it?
        if any(handler is not _capture_handler for handler in target.handlers):
            get_run_logger(run).log(level, message, *args, exc_info=exc_info, extra={_LIFECYCLE: True})
            return
        target = target.parent if target.propagate else None


def get_logger(name: str | None = None) -> logging.Logger:
    """The ``nbflow`` logger, or its child ``name`` (a full ``"nbflow.x"`` name is taken as is)."""
    if not name:
        return logger
    return logging.getLogger(name) if name.startswith("nbflow.") else logger.getChild(name)


@contextlib.contextmanager
def disable_logger(name: str) -> Iterator[None]:
    """Disable the logger ``name`` inside the block; it is restored as it was after it."""
    target = logging.getLogger(name)
    before = target.disabled
    target.disabled = True
    try:
        yield
    finally:
        target.disabled = before


@contextlib.contextmanager
def disable_run_logger() -> Iterator[None]:
    """Silence run loggers inside the block, as for testing a task's ``.fn()``: there,
    ``get_run_logger()`` outside any run returns a disabled logger instead of raising."""
    with disable_logger(flow_run_logger.name), disable_logger(task_run_logger.name):
        yield


__all__ = [
    "get_run_logger", "get_logger", "disable_logger", "disable_run_logger", "lifecycle", "info_lines_to", "install_capture", "record_output", "echo_to_console", "console_echo", "OutputBuffer",
    "RunFormatter", "log_level", "should_log_prints",
]
