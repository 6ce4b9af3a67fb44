"""Flows: the ``@flow`` decorator and the flow-run lifecycle (subflows, retries, timeouts, hooks).

A flow call runs its body in the calling thread, with a fresh copy of the
flow's task runner for the tasks it submits. When the body returns, task runs
nobody waited for are waited for (and named in a warning), returned futures
become their final states, and the runner is shut down. A KeyboardInterrupt
(a notebook's "interrupt kernel") cancels what has not started and what is
running, keeps what completed, and is re-raised.
"""

from __future__ import annotations

import inspect
import logging
import typing
import warnings
from typing import Any, Callable, Generator, Generic, Iterable, ParamSpec, TypeVar, overload

from nbflow import engine
from nbflow import states as S
from nbflow.context import current_flow_run, flow_run_var, tags_var, task_run_var
from nbflow.exceptions import (
    FlowRunTimeoutError,
    ParameterTypeError,
    ReservedArgumentError,
    UnfinishedTaskRunsWarning,
)
from nbflow.futures import PrefectFuture
from nbflow.resolve import find
from nbflow.runs import FlowRun, iter_task_runs
from nbflow.signature import CallSignature, render_run_name
from nbflow.states import State, StateType
from nbflow.task_runners import TaskRunner, ThreadPoolTaskRunner

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("nbflow.flow_runs")

_ACCEPTED_OPTIONS = (
    "persist_result",
    "result_storage",
    "result_serializer",
    "cache_result_in_memory",
)


class Flow(Generic[P, R]):
    """A function whose calls are flow runs. Create with the :func:`flow` decorator."""

    def __init__(
        self,
        fn: Callable[P, R],
        name: str | None = None,
        version: str | None = None,
        flow_run_name: str | Callable[..., str] | None = None,
        retries: int | None = None,
        retry_delay_seconds: float | None = None,
        task_runner: TaskRunner | type[TaskRunner] | None = None,
        description: str | None = None,
        timeout_seconds: float | None = None,
        validate_parameters: bool = True,
        log_prints: bool | None = None,
        on_completion: list[Callable] | None = None,
        on_failure: list[Callable] | None = None,
        on_cancellation: list[Callable] | None = None,
        on_crashed: list[Callable] | None = None,
        on_running: list[Callable] | None = None,
        **accepted: Any,
    ) -> None:
        from nbflow.tasks import _hook_list

        if not callable(fn):
            raise TypeError(f"@flow must decorate a function, got {fn!r}")
        unknown = set(accepted) - set(_ACCEPTED_OPTIONS)
        if unknown:
            raise TypeError(f"@flow got unknown option(s): {', '.join(sorted(unknown))}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "flow").replace("_", "-")
        self.version = version
        self.description = description or inspect.getdoc(fn)
        self.flow_run_name = flow_run_name
        self.retries = int(retries or 0)
        self.retry_delay_seconds = retry_delay_seconds or 0
        if isinstance(task_runner, type):
            task_runner = task_runner()
        if task_runner is not None and not isinstance(task_runner, TaskRunner):
            raise TypeError(
                f"Flow {self.name!r}: task_runner must be a TaskRunner (e.g. ThreadPoolTaskRunner()), "
                f"got {task_runner!r}"
            )
        self.task_runner = task_runner or ThreadPoolTaskRunner()
        self.timeout_seconds = float(timeout_seconds) if timeout_seconds else None
        self.validate_parameters = validate_parameters
        self.log_prints = log_prints
        self.isasync = inspect.iscoroutinefunction(fn)
        self.signature = CallSignature(fn, f"flow {self.name!r}")
        for reserved in ("wait_for", "return_state"):
            if reserved in self.signature.names:
                raise ReservedArgumentError(
                    f"{reserved!r} is a reserved argument name and cannot be used in flow "
                    f"functions (flow {self.name!r}); rename the parameter."
                )
        self.on_completion_hooks = _hook_list(on_completion, "on_completion")
        self.on_failure_hooks = _hook_list(on_failure, "on_failure")
        self.on_cancellation_hooks = _hook_list(on_cancellation, "on_cancellation")
        self.on_crashed_hooks = _hook_list(on_crashed, "on_crashed")
        self.on_running_hooks = _hook_list(on_running, "on_running")
        self._accepted = accepted
        self._adapters: dict[str, Any] | None = None

    retry_condition_fn = None

    def _hook_decorator(kind: str) -> Callable:  # type: ignore[misc]
        def add(self: "Flow", fn: Callable) -> Callable:
            getattr(self, f"on_{kind}_hooks").append(fn)
            return fn

        add.__name__ = f"on_{kind}"
        add.__doc__ = f"Decorator adding an on_{kind} hook ``fn(flow, flow_run, state)``."
        return add

    on_completion = _hook_decorator("completion")
    on_failure = _hook_decorator("failure")
    on_cancellation = _hook_decorator("cancellation")
    on_crashed = _hook_decorator("crashed")
    on_running = _hook_decorator("running")
    del _hook_decorator

    def with_options(self, **options: Any) -> "Flow[P, R]":
        """A new flow with some options changed; the original is unchanged."""
        merged = dict(
            name=self.name,
            version=self.version,
            flow_run_name=self.flow_run_name,
            retries=self.retries,
            retry_delay_seconds=self.retry_delay_seconds,
            task_runner=self.task_runner,
            description=self.description,
            timeout_seconds=self.timeout_seconds,
            validate_parameters=self.validate_parameters,
            log_prints=self.log_prints,
            on_completion=self.on_completion_hooks,
            on_failure=self.on_failure_hooks,
            on_cancellation=self.on_cancellation_hooks,
            on_crashed=self.on_crashed_hooks,
            on_running=self.on_running_hooks,
            **self._accepted,
        )
        merged.update(options)
        return type(self)(self.fn, **merged)

    # -- parameters --------------------------------------------------------------------
    def validate(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """Parameters coerced to the function's type hints (pydantic, lax mode)."""
        if not self.validate_parameters:
            return parameters
        adapters = self._type_adapters()
        if not adapters:
            return parameters
        import pydantic

        validated = dict(parameters)
        problems = []
        for name, adapter in adapters.items():
            if name not in parameters or isinstance(parameters[name], (PrefectFuture, State)):
                continue
            try:
                validated[name] = adapter.validate_python(parameters[name])
            except pydantic.ValidationError as exc:
                first = exc.errors()[0]
                problems.append(f"{name}={parameters[name]!r}: {first['msg']}")
        if problems:
            raise ParameterTypeError(
                f"Flow {self.name!r} got invalid parameters: {'; '.join(problems)}. Pass values "
                "that fit the type hints, or use @flow(validate_parameters=False)."
            )
        return validated

    def _type_adapters(self) -> dict[str, Any]:
        if self._adapters is None:
            self._adapters = {}
            try:
                hints = typing.get_type_hints(self.fn)
            except Exception:
                hints = getattr(self.fn, "__annotations__", {})
            hints = {k: v for k, v in hints.items() if k != "return" and k in self.signature.names}
            if hints and not (self.signature.var_positional or self.signature.var_keyword):
                import pydantic

                for name, hint in hints.items():
                    try:
                        self._adapters[name] = pydantic.TypeAdapter(
                            hint, config=pydantic.ConfigDict(arbitrary_types_allowed=True)
                        )
                    except Exception:
                        try:
                            self._adapters[name] = pydantic.TypeAdapter(hint)
                        except Exception:
                            continue  # a hint pydantic cannot check is not checked
        return self._adapters

    # -- calling ---------------------------------------------------------------------------
    def __call__(self, *args: Any, return_state: bool = False, wait_for: Iterable[Any] | None = None, **kwargs: Any) -> Any:
        """Run the flow now, in this thread; returns its value (or final State).

        An async flow returns a coroutine to await.
        """
        parameters = self.validate(self.signature.bind(args, kwargs))
        flow_run = FlowRun(self, parameters, current_flow_run(), tags_var.get())
        blocked = _wait_for_upstream(wait_for)
        if blocked is not None:  # a failed upstream: the subflow never runs, as a task would not
            flow_run.set_state(blocked)
            return blocked if return_state else blocked.result()
        if self.isasync:
            return self._call_async(flow_run, return_state)
        return _outcome(engine.drive(flow_lifecycle(self, flow_run)), return_state)

    async def _call_async(self, flow_run: FlowRun, return_state: bool) -> Any:
        return _outcome(await engine.drive_async(flow_lifecycle(self, flow_run)), return_state)

    def __repr__(self) -> str:
        return f"Flow(name={self.name!r})"


def _wait_for_upstream(wait_for: Iterable[Any] | None) -> State | None:
    """Wait for ``wait_for``; ``NotReady`` if an upstream without allow_failure did not complete."""
    if not wait_for:
        return None
    from nbflow.engine import _upstream_message
    from nbflow.resolve import collect

    deps, _ = collect({}, list(wait_for))
    for dep, allowed in deps:
        dep._resolved = True
        dep.wait()
        if not allowed and not dep.states[-1].is_completed():
            return S.NotReady(message=_upstream_message(dep, dep.states[-1]))
    return None


def _outcome(state: State, return_state: bool) -> Any:
    if isinstance(state.data, (KeyboardInterrupt, SystemExit)):
        raise state.data
    return state if return_state else state.result()


def flow_lifecycle(flow: Flow, flow_run: FlowRun) -> Generator[Any, Any, State]:
    """The life of one flow run: attempts, waiting for its task runs, hooks, final state."""
    from nbflow.logging import install_capture

    install_capture()
    flow_token = flow_run_var.set(flow_run)
    task_token = task_run_var.set(None)  # a subflow called in a task owns its body's runs
    try:
        if flow.flow_run_name is not None:
            flow_run.name = render_run_name(
                flow.flow_run_name, flow_run.parameters, f"flow {flow.name!r}", "flow_run_name"
            )
        args, kwargs = flow.signature.call_arguments(flow_run.parameters)
        what = f"Flow run {flow_run.name!r}"
        while True:
            flow_run.run_count += 1
            runner = flow.task_runner.duplicate()
            flow_run.task_runner = runner
            runner.__enter__()
            flow_run.set_state(S.Running() if flow_run.run_count == 1 else S.Retrying())
            engine.call_hooks(flow.on_running_hooks, flow, flow_run, flow_run.states[-1])
            try:
                ok, value = yield (engine.CALL, flow.fn, args, kwargs, flow.timeout_seconds, None)
                if ok:
                    value = _settle(flow_run, value)
            except KeyboardInterrupt as interrupt:
                ok, value = False, interrupt
            state = _body_state(flow_run, ok, value, what, flow.timeout_seconds)
            if not state.is_completed():
                _cancel_unfinished(
                    flow_run,
                    f"{what} ended {state.name}: {state.message}",
                    interrupt=state.is_cancelled() or state.name == "TimedOut",
                )
            runner.shutdown()
            if engine.should_retry(flow, flow_run, state):
                flow_run.set_state(S.AwaitingRetry(message=f"Retry {flow_run.run_count} of {flow.retries}"))
                if flow.retry_delay_seconds:
                    yield (engine.SLEEP, float(flow.retry_delay_seconds))
                continue
            break
        flow_run.set_state(state)
        hooks = {
            StateType.COMPLETED: flow.on_completion_hooks,
            StateType.FAILED: flow.on_failure_hooks,
            StateType.CANCELLED: flow.on_cancellation_hooks,
            StateType.CRASHED: flow.on_crashed_hooks,
        }.get(state.type)
        engine.call_hooks(hooks, flow, flow_run, state)
        return state
    finally:
        task_run_var.reset(task_token)
        flow_run_var.reset(flow_token)


def _body_state(flow_run: FlowRun, ok: bool, value: Any, what: str, timeout: float | None) -> State:
    if not ok and isinstance(value, KeyboardInterrupt):
        return S.Cancelled(
            message=f"{what} was interrupted: runs not started were cancelled, completed runs kept.",
            data=value,
        )
    if ok and isinstance(value, State) and value._run_id is None:
        return value  # a state made by the body is the flow's state
    state = engine.outcome_state(ok, value, what, timeout, FlowRunTimeoutError)
    if ok:
        # Returned task-run states (futures became states): the flow fails if one did not complete.
        returned = find(value, State)
        failed = [s for s in returned if not s.is_completed()]
        if failed:
            first = failed[0]
            exc = first.data if isinstance(first.data, BaseException) else first._exception()
            return S.Failed(message=f"{len(failed)}/{len(returned)} states failed.", data=exc)
        return S.Completed(data=value)
    return state


def _settle(flow_run: FlowRun, value: Any) -> Any:
    """Wait for the run's unfinished task runs; turn returned futures into their states."""
    from nbflow.futures import resolve_futures_to_states

    returned = find(value, PrefectFuture)
    for future in returned:
        future.task_run._resolved = True
    unfinished = [r for r in flow_run.task_runs if not r._done]
    unresolved = [r for r in unfinished if not r._resolved]
    for run in unfinished:
        run.wait()
    if unresolved:
        names = ", ".join(repr(r.name) for r in unresolved[:10])
        more = f" and {len(unresolved) - 10} more" if len(unresolved) > 10 else ""
        warnings.warn(
            f"Flow run {flow_run.name!r} returned while {len(unresolved)} task run(s) nobody "
            f"waited for were unfinished: {names}{more}. nbflow waited for them; call .result() "
            "or .wait() on their futures, or nbflow.futures.wait(...), before the flow returns.",
            UnfinishedTaskRunsWarning,
            stacklevel=2,
        )
    return resolve_futures_to_states(value) if returned else value


def _cancel_unfinished(flow_run: FlowRun, reason: str, interrupt: bool) -> None:
    """Cancel task runs that have not started; then interrupt running ones, or wait for them.

    A failed body lets started runs finish (what they compute is kept); an
    interrupt, a timeout or a cancel stops them at their next bytecode.
    """
    from nbflow.timeouts import interrupt_thread

    unfinished = [run for run in iter_task_runs(flow_run) if not run._done]
    for run in unfinished:
        run.cancel(reason)
    for run in unfinished:
        if run._done:
            continue
        if not interrupt:
            run.wait()
        elif run._thread_id is not None:
            interrupt_thread(run._thread_id, engine.CancelSignal)
    if interrupt and flow_run.task_runner is not None:
        flow_run.task_runner.cancel_all(reason)


def cancel_flow_run(flow_run: FlowRun, reason: str = "cancelled by the user") -> None:
    """Cancel a flow run's task runs that have not started and interrupt running ones.

    What completed is kept. Used by the notebook view's Cancel button; safe to
    call from any thread.
    """
    _cancel_unfinished(flow_run, reason, interrupt=True)


@overload
def flow(__fn: Callable[P, R]) -> Flow[P, R]: ...


@overload
def flow(
    __fn: None = None,
    *,
    name: str | None = None,
    version: str | None = None,
    flow_run_name: str | Callable[..., str] | None = None,
    retries: int | None = None,
    retry_delay_seconds: float | None = None,
    task_runner: TaskRunner | type[TaskRunner] | None = None,
    description: str | None = None,
    timeout_seconds: float | None = None,
    validate_parameters: bool = True,
    log_prints: bool | None = None,
    on_completion: list[Callable] | None = None,
    on_failure: list[Callable] | None = None,
    on_cancellation: list[Callable] | None = None,
    on_crashed: list[Callable] | None = None,
    on_running: list[Callable] | None = None,
    **accepted: Any,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(__fn: Any = None, **options: Any) -> Any:
    """Make a function a flow: ``@flow``, ``@flow(task_runner=...)``, or ``flow(fn)``."""
    if __fn is not None:
        return Flow(__fn, **options)
    return lambda fn: Flow(fn, **options)


__all__ = ["Flow", "flow", "cancel_flow_run"]
