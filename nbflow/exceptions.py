"""Exceptions raised by nbflow, named as Prefect 3 names them."""

from __future__ import annotations

import inspect
import traceback
from typing import Any, Callable


def exception_traceback(exc: BaseException) -> str:
    """``exc`` with its traceback, as Python prints it."""
    return "".join(traceback.TracebackException.from_exception(exc).format())


class PrefectException(Exception):
    """Base class of every exception nbflow raises for its own reasons."""


class UnfinishedRun(PrefectException):
    """The result of a run was asked for, but the run did not finish.

    Raised by ``.result()`` for a run that never started because an upstream
    run failed (state ``Pending('NotReady')``) or that is still pending.
    """


class PausedRun(PrefectException):
    """The result of a paused run was asked for; ``state`` is the Paused state."""

    def __init__(self, *args: object, state: object = None) -> None:
        super().__init__(*args)
        self.state = state


class CancelledRun(PrefectException):
    """The result of a cancelled run was asked for."""


class CrashedRun(PrefectException):
    """The run ended abnormally: its worker died, it was interrupted, or its code raised a BaseException.

    For a task whose own code raised ``SystemExit``, ``KeyboardInterrupt`` or
    another ``BaseException``, ``.result()`` raises a CrashedRun naming the run,
    with the original as its ``__cause__``: only that run ended.
    """


class KernelInterrupt(KeyboardInterrupt):
    """A real interrupt of the kernel or process, as opposed to a ``KeyboardInterrupt`` raised by a task's code.

    nbflow raises it for SIGINT to the main thread while a flow or task runs
    there (Ctrl-C, a notebook's "interrupt kernel"); the notebook view's Cancel
    raises it into a cell's thread. It cancels the flow run (what has not
    finished is cancelled, what completed is kept), whereas a KeyboardInterrupt
    a task's own code raises only crashes that task. It is a KeyboardInterrupt,
    and it leaves the outermost flow or task call as a plain one.
    """


class FailedRun(PrefectException):
    """A run failed without an exception of its own (e.g. it returned a Failed state)."""


class InvalidNameError(PrefectException, ValueError):
    """A flow name holds a character Prefect does not allow (``/ % & > <``)."""


class MissingResult(PrefectException):
    """A state holds no result (e.g. a cache entry that expired)."""


class MappingLengthMismatch(PrefectException):
    """``Task.map`` got iterables of different lengths."""


class MappingMissingIterable(PrefectException):
    """``Task.map`` got no iterable argument to map over."""


class ReservedArgumentError(PrefectException, TypeError):
    """A task function has a parameter whose name nbflow reserves."""


class ParameterBindError(TypeError, PrefectException):
    """Arguments do not fit the signature of the task or flow."""

    @classmethod
    def from_bind_failure(cls, fn: Callable[..., Any], exc: TypeError, call_args: tuple[Any, ...],
                          call_kwargs: dict[str, Any]) -> ParameterBindError:
        """The error for ``fn`` called with ``call_args`` and ``call_kwargs``, in Prefect's words."""
        return cls.for_signature(fn.__name__, inspect.signature(fn), exc, call_args, call_kwargs)

    @classmethod
    def for_signature(cls, name: str, signature: inspect.Signature, exc: TypeError, call_args: tuple[Any, ...],
                      call_kwargs: dict[str, Any]) -> ParameterBindError:
        """The error for the function ``name`` of ``signature``: the problem, the signature, what came."""
        return cls(
            f"Error binding parameters for function '{name}': {exc}.\n"
            f"Function '{name}' has signature '{str(signature).strip('()')}' but received args: {call_args} "
            f"and kwargs: {list(call_kwargs)}."
        )


class ParameterTypeError(PrefectException):
    """A flow parameter failed validation against its type hint."""

    @classmethod
    def from_validation_error(cls, exc: Any) -> ParameterTypeError:
        """The error for a pydantic ``ValidationError``, one line per problem, in Prefect's words."""
        problems = [f"{'.'.join(str(item) for item in err['loc'])}: {err['msg']}" for err in exc.errors()]
        return cls("Flow run received invalid parameters:\n - " + "\n - ".join(problems))


class SignatureMismatchError(PrefectException, TypeError):
    """Parameters given to a function do not match its signature (e.g. to ``Flow.validate_parameters``)."""

    @classmethod
    def from_bad_params(cls, expected_params: list[str], provided_params: list[str]) -> SignatureMismatchError:
        """The error for parameters ``provided_params`` given to a function of ``expected_params``, in Prefect's words."""
        return cls(f"Function expects parameters {expected_params} but was provided with parameters {provided_params}")


class UpstreamTaskError(PrefectException):
    """A run depends on the result of an upstream run that did not complete."""


class InvalidCacheKey(PrefectException, ValueError):
    """A ``cache_key_fn`` returned something that is neither a ``str`` nor None: the run fails without running."""


class HashError(PrefectException):
    """Inputs could not be hashed into a cache key."""


class ConfigurationError(PrefectException):
    """A setting or option is not valid."""


class MissingFlowError(PrefectException):
    """No flow of the given name was found."""


class ObjectNotFound(PrefectException):
    """A run, flow or record that was asked for does not exist (Prefect's signature: the HTTP error, a message)."""

    def __init__(self, http_exc: Exception | None = None, help_message: str | None = None, *args: Any) -> None:
        self.http_exc = http_exc
        self.help_message = help_message
        super().__init__(help_message, *args)


class ObjectAlreadyExists(PrefectException):
    """Prefect's conflict error (409 from its API); kept for code that catches it."""

    def __init__(self, http_exc: Exception | None = None, *args: Any) -> None:
        self.http_exc = http_exc
        super().__init__(*args)


class UnspecifiedFlowError(PrefectException):
    """Several flows were found where one was expected, and none was named."""


class ScriptError(PrefectException):
    """A script raised while it was loaded to find a flow in it."""

    def __init__(self, user_exc: Exception, path: str) -> None:
        super().__init__(f"Script at {str(path)!r} encountered an exception: {user_exc!r}")
        self.user_exc = user_exc


class MissingProfileError(PrefectException, ValueError):
    """A settings profile that does not exist was asked for."""


class InfrastructureError(PrefectException):
    """Prefect's base of errors from infrastructure; kept for code that catches it."""


class NotPausedError(PrefectException):
    """A run that is not paused was asked to resume."""


class FlowPauseTimeout(PrefectException):
    """A paused flow run was not resumed in time."""


class FlowRunWaitTimeout(PrefectException):
    """A flow run took longer than a wait for it allowed."""


class PrefectImportError(ImportError):
    """An object was imported from where it no longer lives."""


class MissingContextError(PrefectException, RuntimeError):
    """Something that needs a running flow or task was used outside one."""


class TaskRunTimeoutError(PrefectException, TimeoutError):
    """A task run ran longer than its ``timeout_seconds``."""


class FlowRunTimeoutError(PrefectException, TimeoutError):
    """A flow run ran longer than its ``timeout_seconds``."""


class SerializationError(PrefectException):
    """An argument or result could not be pickled for a process or cluster runner."""


class MissingDependencyError(PrefectException, ImportError):
    """An optional dependency (an extra) is needed but not installed."""


class TaskRunNameError(PrefectException, KeyError):
    """A ``task_run_name`` template names a field that is not a parameter of the task."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class PrefectSignal(BaseException):
    """Base of the signal-like exceptions that end a run and are not meant to be caught."""


class Abort(PrefectSignal):
    """Raised to end a run at once."""


class Pause(PrefectSignal):
    """Raised when a flow run is paused; ``state`` is the Paused state."""

    def __init__(self, *args: object, state: object = None) -> None:
        super().__init__(*args)
        self.state = state


class ExternalSignal(BaseException):
    """Base of the exceptions that stand for a signal from outside the process."""


class TerminationSignal(ExternalSignal):
    """The process received a termination signal; ``signal`` is its number."""

    def __init__(self, signal: int) -> None:
        super().__init__(signal)
        self.signal = signal


class UnfinishedTaskRunsWarning(UserWarning):
    """A flow returned while task runs nobody waited for were still unfinished."""
