"""Run loggers and per-run capture of what tasks print and log.

``get_run_logger()`` returns a standard ``logging`` logger adapter whose
records carry the run's names and propagate to the root logger. While a flow
runs, ``sys.stdout``/``sys.stderr`` are wrapped by a router that, inside a
task run, records each write in the run's ``output`` and publishes it on the
event seam, then *echoes* it (by default to the real stream). The notebook
layer replaces the echo with :func:`set_echo` to put a run's output in the
cell that started its flow, whatever thread printed it.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import Any, Callable

from nbflow import settings
from nbflow.context import current_flow_run, flow_run_var, task_run_var
from nbflow.exceptions import MissingContextError
from nbflow.runs import publish_output

logger = logging.getLogger("nbflow")
logger.setLevel(logging.INFO)
flow_run_logger = logging.getLogger("nbflow.flow_runs")
task_run_logger = logging.getLogger("nbflow.task_runs")


class OutputBuffer:
    """What one run printed or logged: ``(stream, text)`` chunks, the newest kept."""

    __slots__ = ("chunks", "size", "dropped")

    def __init__(self) -> None:
        self.chunks: list[tuple[str, str]] = []
        self.size = 0
        self.dropped = 0

    def append(self, stream: str, text: str) -> None:
        self.chunks.append((stream, text))
        self.size += len(text)
        limit = settings.current.max_output_chars
        while self.size > limit and len(self.chunks) > 1:
            _, old = self.chunks.pop(0)
            self.size -= len(old)
            self.dropped += len(old)

    def text(self, streams: tuple[str, ...] = ("stdout", "stderr", "log")) -> str:
        """The captured text of the given streams, in the order it was written."""
        head = f"[... {self.dropped} characters dropped ...]\n" if self.dropped else ""
        return head + "".join(t for s, t in self.chunks if s in streams)

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def __reduce__(self):
        return (_rebuild_buffer, (self.chunks, self.size, self.dropped))


def _rebuild_buffer(chunks: list, size: int, dropped: int) -> OutputBuffer:
    buf = OutputBuffer()
    buf.chunks, buf.size, buf.dropped = chunks, size, dropped
    return buf


def record_output(run: Any, stream: str, text: str) -> None:
    """Record ``text`` in ``run``'s output, publish it, and echo it."""
    if run.output is None:
        run.output = OutputBuffer()
    run.output.append(stream, text)
    publish_output(run, stream, text)
    _echo(run, stream, text)


# -- echo ------------------------------------------------------------------------
def _echo_to_console(run: Any, stream: str, text: str) -> None:
    if stream == "log":
        if logging.root.handlers:  # a root handler already shows the record
            return
        stream = "stderr"
    target = _real_stream(stream)
    if target is not None:
        target.write(text)


_echo: Callable[[Any, str, str], None] = _echo_to_console


def set_echo(echo: Callable[[Any, str, str], None] | None) -> Callable[[Any, str, str], None]:
    """Route captured task-run output through ``echo(run, stream, text)``.

    ``None`` restores the default (write to the real stdout/stderr). Returns
    the previous echo so it can be restored.
    """
    global _echo
    previous = _echo
    _echo = echo or _echo_to_console
    return previous


# -- the stdout/stderr router ------------------------------------------------------
class _Router(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: task-run writes are captured, others pass."""

    def __init__(self, inner: Any, stream: str) -> None:
        self.inner = inner
        self.stream = stream

    def write(self, text: str) -> int:
        run = task_run_var.get()
        if run is None:
            flow_run = flow_run_var.get()
            if flow_run is not None and self.stream == "stdout" and flow_run.flow.log_prints:
                _log_print(flow_run_logger, flow_run, text)
                return len(text)
            return self.inner.write(text)
        if self.stream == "stdout" and _log_prints(run):
            _log_print(task_run_logger, run, text)
        else:
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


def _log_prints(run: Any) -> bool:
    value = run.task.log_prints
    if value is None and run.flow_run is not None:
        value = run.flow_run.flow.log_prints
    return bool(value)


def _log_print(base: logging.Logger, run: Any, text: str) -> None:
    text = text.rstrip("\n")
    if text.strip():
        _adapter(base, run).info(text)


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
    from nbflow.runs import TaskRun

    if isinstance(run, TaskRun):
        extra = {
            "task_run_name": run.name,
            "task_run_id": str(run.id),
            "task_name": run.task.name,
            "flow_run_name": run.flow_run.name if run.flow_run is not None else None,
        }
    else:
        extra = {"flow_run_name": run.name, "flow_run_id": str(run.id), "flow_name": run.flow_name}
    return RunLoggerAdapter(base, extra)


def get_run_logger(**extra: Any) -> logging.LoggerAdapter:
    """The logger of the task run or flow run executing here.

    Records go through the standard ``logging`` module (to the root logger's
    handlers) and, inside a task run, into the run's captured output.
    """
    run = task_run_var.get()
    if run is not None:
        adapter = _adapter(task_run_logger, run)
    else:
        flow_run = current_flow_run()
        if flow_run is None:
            raise MissingContextError(
                "get_run_logger() was called outside a flow or task run. Call it inside a "
                "function decorated with @flow or @task, or use logging.getLogger(...) here."
            )
        adapter = _adapter(flow_run_logger, flow_run)
    adapter.extra = {**(adapter.extra or {}), **extra}
    return adapter


class _CaptureHandler(logging.Handler):
    """Puts nbflow run-logger records into the run's captured output."""

    def emit(self, record: logging.LogRecord) -> None:
        run = task_run_var.get()
        if run is None:
            if not logging.root.handlers:
                stream = _real_stream("stderr")
                if stream is not None:
                    stream.write(self.format(record) + "\n")
            return
        record_output(run, "log", self.format(record) + "\n")


_capture_handler = _CaptureHandler()
_capture_handler.setFormatter(
    logging.Formatter("%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s", "%H:%M:%S")
)
logger.addHandler(_capture_handler)

__all__ = ["get_run_logger", "set_echo", "install_capture", "record_output", "OutputBuffer"]
