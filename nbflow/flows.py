"""Flows: the ``@flow`` decorator and the flow-run lifecycle (subflows, retries, timeouts, hooks).

A flow call runs its body in the calling thread, with a fresh copy of the
flow's task runner for the tasks it submits. When the body returns, task runs
nobody waited for are waited for (and named in a warning), returned futures
become their final states, and the runner is shut down. An interrupt of the
body (Ctrl-C, a notebook's "interrupt kernel", the view's Cancel) cancels what
has not started and what is running, keeps what completed, and is re-raised;
a KeyboardInterrupt or SystemExit raised by a task's own code only crashes
that task run. A timeout (``timeout_seconds``) ends the body and stops its
task runs, off the main thread too.
"""

from __future__ import annotations

import functools
import inspect
import logging
import typing
import warnings
import weakref
from collections.abc import Callable, Generator, Iterable
from typing import (
    Any,
    Generic,
    ParamSpec,
    TypeVar,
    overload,
)

from nbflow import engine, settings
from nbflow import states as S
from nbflow.context import current_flow_run, flow_run_var, tags_var, task_run_var, tracer_var
from nbflow.exceptions import (
    FlowRunTimeoutError,
    ParameterTypeError,
    SignatureMismatchError,
    UnfinishedTaskRunsWarning,
)
from nbflow.futures import PrefectFuture
from nbflow.logging import lifecycle
from nbflow.options import (
    FLOW_OPTIONS,
    MethodDescriptor,
    check_reserved,
    hook_decorator,
    unwrap_method,
)
from nbflow.records import FlowRun, TaskRun, iter_task_runs
from nbflow.resolve import collect, dependencies, find, resolve, wait_for_items
from nbflow.runtime.task_run import calling_task_run_var
from nbflow.signature import CallSignature, render_run_name
from nbflow.states import State
from nbflow.task_runners import TaskRunner

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("nbflow.flow_runs")


# Flows by name, the latest definition of each: what a retry after a restart runs.
_by_name: weakref.WeakValueDictionary[str, Flow] = weakref.WeakValueDictionary()


class Flow(MethodDescriptor, Generic[P, R]):
    """A function whose calls are flow runs. Create with the :func:`flow` decorator."""

    def __init__(self, fn: Callable[P, R], **options: Any) -> None:
        """A flow of ``fn``; ``options`` are those of :func:`flow`, checked as Prefect checks them."""
        fn, self._method = unwrap_method(fn)
        if not callable(fn):
            raise TypeError(f"'fn' must be callable: @flow decorates a function, got {fn!r}")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.isasync = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        FLOW_OPTIONS.apply(self, options, "Flow.__init__()")
        self.signature = CallSignature(fn)
        check_reserved(self.signature.names, f"flow {self.name!r}")
        self._adapters: dict[str, Any] | None = None
        _by_name[self.name] = self  # the latest definition, for retries

    retry_condition_fn = None  # flows have none; the engine's retry rule reads it

    @functools.cached_property
    def parameters(self) -> Any:
        """The JSON schema of the flow's parameters (a ``ParameterSchema``, as Prefect's ``flow.parameters``)."""
        from nbflow.parameter_schema import parameter_schema  # pydantic loads only when asked for

        return parameter_schema(self.fn)

    on_completion = hook_decorator("on_completion")
    on_failure = hook_decorator("on_failure")
    on_cancellation = hook_decorator("on_cancellation")
    on_crashed = hook_decorator("on_crashed")
    on_running = hook_decorator("on_running")

    def with_options(self, **options: Any) -> Flow[P, R]:
        """A new flow with some options changed; the original is unchanged.

        As in Prefect: an empty ``name``, ``version``, ``flow_run_name``,
        ``description`` or hook list, and a ``None`` ``retries``,
        ``retry_delay_seconds``, ``task_runner``, ``timeout_seconds``,
        ``validate_parameters`` or ``cache_result_in_memory``, keep the
        current value.
        """
        return self._copy_with(FLOW_OPTIONS.merge(self, options, "Flow.with_options()"))

    # -- parameters --------------------------------------------------------------------
    def validate_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """Parameters coerced to the function's type hints (pydantic, lax mode), as Prefect's.

        The result is in the signature's order with defaults filled in and
        ``*args`` as a list; ``*args`` and ``**kwargs`` items are not checked
        (as in Prefect). A name that is not a parameter raises
        SignatureMismatchError; a missing required parameter or a value that
        does not fit its hint raises ParameterTypeError listing every problem,
        in Prefect's words. Futures and states are left for the runs that
        resolve them. It validates whatever ``validate_parameters=`` says (a
        run honours that: :meth:`parameters_for_run`).
        """
        validated = self._complete(parameters)
        problems = [f"{name}: Field required" for name in self.signature.required if name not in parameters]
        adapters = self._type_adapters()
        if adapters:  # pydantic is imported only for a flow with type hints
            import pydantic

            for name, adapter in adapters.items():
                if name not in validated or isinstance(validated[name], (PrefectFuture, State)):
                    continue
                try:
                    validated[name] = adapter.validate_python(validated[name])
                except pydantic.ValidationError as exc:
                    problems += [f"{'.'.join(map(str, (name, *err['loc'])))}: {err['msg']}" for err in exc.errors()]
        if problems:
            raise ParameterTypeError(
                "Flow run received invalid parameters:\n - " + "\n - ".join(problems) + f"\nFlow {self.name!r}: "
                "pass values that fit the type hints, or use @flow(validate_parameters=False)."
            )
        return validated

    def parameters_for_run(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """The parameters a run records and calls the function with: validated if the flow's
        ``validate_parameters`` is on, else only completed (order, defaults, ``*args`` as a list)."""
        return self.validate_parameters(parameters) if self.should_validate_parameters else self._complete(parameters)

    def _complete(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """``parameters`` in the signature's order, defaults filled in, ``*args`` a list (Prefect records it so)."""
        names = self.signature.names
        if any(name not in names for name in parameters):
            raise SignatureMismatchError.from_bad_params(list(names), list(parameters))
        given = self.signature.apply_defaults(dict(parameters))
        complete = {name: given[name] for name in names if name in given}
        star = self.signature.var_positional
        if star is not None and not isinstance(complete[star], list):
            complete[star] = list(complete[star])
        return complete

    def _type_adapters(self) -> dict[str, Any]:
        """A pydantic TypeAdapter per hinted parameter but ``*args`` and ``**kwargs`` (Prefect checks neither)."""
        if self._adapters is None:
            self._adapters = {}
            try:
                hints = typing.get_type_hints(self.fn, include_extras=True)  # Annotated constraints too
            except Exception:
                hints = getattr(self.fn, "__annotations__", {})
            unchecked = ("return", self.signature.var_positional, self.signature.var_keyword)  # as Prefect
            hints = {k: v for k, v in hints.items() if k not in unchecked and k in self.signature.names}
            if hints:
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
        """Run the flow now, in this thread; returns what the body returned, or its final State.

        Returned futures come back as their final States. As in Prefect, the
        call raises when the flow failed, except when the body returned a
        list, set or tuple of states: that is handed back as is. An async
        flow returns a coroutine to await.
        """
        parameters = self.signature.bind(args, kwargs)  # a bind error raises here, as in Prefect
        tracer = tracer_var.get()
        if tracer is not None:  # Flow.visualize()/plan() is tracing: a subflow is one traced call
            return tracer.trace(self, "subflow", args, kwargs, wait_for, return_state)
        parent = current_flow_run()
        if parent is None and settings.current.home is not _history_for:
            _start_history()
        flow_run = FlowRun(self, parameters, parent, tags_var.get())
        lifecycle = _call_lifecycle(self, flow_run, wait_for)
        if self.isasync:
            return self._call_async(flow_run, lifecycle, return_state)
        try:
            state = engine.drive(lifecycle)
        except BaseException as exc:
            _end_escaped(flow_run, exc)
            raise engine.surfacing(exc)
        return _outcome(flow_run, state, return_state)

    async def _call_async(self, flow_run: FlowRun, lifecycle: Generator[Any, Any, State], return_state: bool) -> Any:
        try:
            state = await engine.drive_async(lifecycle)
        except BaseException as exc:
            _end_escaped(flow_run, exc)
            raise engine.surfacing(exc)
        return _outcome(flow_run, state, return_state)

    def visualize(self, *args: Any, **kwargs: Any) -> Any:
        """Draw the flow's task graph without running any task (Prefect 3's ``Flow.visualize``).

        The body is called with these arguments; each task call in it returns
        a placeholder (or the task's ``viz_return_value``) and is recorded.
        In IPython the graph displays in the cell, elsewhere graphviz renders
        it. Returns None; where an event loop runs (a notebook cell) it
        returns a coroutine to await. See :mod:`nbflow.visualize`.
        """
        from nbflow.visualize import visualize

        return visualize(self, args, kwargs)

    def plan(self, *args: Any, **kwargs: Any) -> Any:
        """What a run with these arguments would do: per task, runs served Cached and runs to run.

        Traces the body as :meth:`visualize` does and keys each run as a real
        run would, with no task body run. Returns a :class:`nbflow.visualize.Plan`.
        """
        from nbflow.visualize import plan

        return plan(self, args, kwargs)

    def __repr__(self) -> str:
        return f"Flow(name={self.name!r})"


def _call_lifecycle(flow: Flow, flow_run: FlowRun, wait_for: Iterable[Any] | None) -> Generator[Any, Any, State]:
    """A flow call: wait for its upstream runs, resolve its arguments, check them, then run the body.

    As in Prefect, futures and states among the arguments (at any depth, as
    for a task run) are waited for and replaced by their results; a subflow
    whose upstream (an argument or ``wait_for``) did not complete stays
    ``Pending("NotReady")``, and invalid parameters end the run Failed (its
    on_failure hooks called) without running the body or retrying.
    """
    state, needs_resolve = yield from _wait_for_upstream(flow_run.parameters, wait_for)
    if state is None:
        try:
            if needs_resolve:
                flow_run.parameters = resolve(flow_run.parameters)
            flow_run.parameters = flow.parameters_for_run(flow_run.parameters)
        except Exception as exc:
            message = f"Validation of flow parameters failed with error: {type(exc).__name__}: {exc}"
            logger.error("Flow run %r: %s", flow_run.name, message)
            state = S.Failed(message=message, data=exc)
    if state is None:
        state = yield from flow_lifecycle(flow, flow_run)
    else:
        flow_run.set_state(state)
        hooks = engine.final_hooks(flow, state)
        if hooks:
            yield (engine.HOOKS, hooks, flow, flow_run, state)
    lifecycle(flow_run, logging.INFO, "Finished in state %s", state)
    return state


def _wait_for_upstream(
    parameters: dict[str, Any], wait_for: Iterable[Any] | None
) -> Generator[Any, Any, tuple[State | None, bool]]:
    """Wait for the task runs and states among the arguments and in ``wait_for``.

    Returns ``(NotReady, _)`` if one does not admit the run, by the same rule
    as for a task run (``engine.admits``: ``allow_failure`` lets through an
    upstream that failed or never ran, not one that was cancelled or
    crashed), else ``(None, needs_resolve)``: whether the arguments hold
    futures, states or annotations to replace.
    """
    wait_for = wait_for_items(wait_for) or None
    if dependencies(parameters, wait_for) is None:  # plain values only: nothing to wait for
        return None, False
    deps, needs_resolve = collect(parameters, wait_for)
    runs = [dep for dep, _ in deps if isinstance(dep, TaskRun)]
    for run in runs:
        run.mark_resolved()
    unfinished = [run for run in runs if not run.done]
    if unfinished:
        yield (engine.WAIT, unfinished)
    for dep, allowed in deps:
        state = dep if isinstance(dep, State) else dep.state
        if not engine.admits(state, allowed):
            return S.NotReady(message=engine.upstream_message(dep, state)), False
    return None, needs_resolve


def _end_escaped(flow_run: FlowRun, exc: BaseException) -> None:
    """End a flow run whose lifecycle raised ``exc`` (a RecursionError from deeply nested subflows, say).

    No record is left Pending or Running: the run ends Crashed (Cancelled for
    an interrupt), its subflow runs that never started end Crashed, and the
    caller gets ``exc``.
    """
    def crash() -> None:
        what = f"Flow run {flow_run.name!r}"
        if isinstance(exc, KeyboardInterrupt):  # an interrupt outside the body (in a hook, a wait)
            state = S.Cancelled(message=f"{what} was interrupted.", data=exc)
        else:
            state = S.Crashed(message=f"{what} could not finish: {type(exc).__name__}: {exc}", data=exc)
        flow_run.crash_unfinished(state)

    if isinstance(exc, RecursionError):
        engine.with_headroom(crash)
    else:
        crash()


def _outcome(flow_run: FlowRun, state: State, return_state: bool) -> Any:
    """What a flow call gives its caller once the run ended in ``state``."""
    state.mark_run(flow_run.int_id, task=False)  # a run's state: a parent flow returning it aggregates it
    if isinstance(state.data, (KeyboardInterrupt, SystemExit)):
        raise engine.surfacing(state.data)
    if return_state:
        return state
    if state.data_returned and not isinstance(state.data, State):
        # As in Prefect, the call returns what the body returned, even holding failed states.
        return state.data
    return state.result(_sync=True)


def flow_lifecycle(flow: Flow, flow_run: FlowRun) -> Generator[Any, Any, State]:
    """The life of one flow run: attempts, waiting for its task runs, hooks, final state."""
    from nbflow.logging import install_capture

    install_capture()
    flow_token = flow_run_var.set(flow_run)
    calling = task_run_var.get()
    calling_token = calling_task_run_var.set(calling) if calling is not None else None  # nbflow.runtime.task_run reads it
    task_token = task_run_var.set(None)  # a subflow called in a task owns its body's runs
    try:
        if flow.flow_run_name is not None:
            flow_run.name = render_run_name(
                flow.flow_run_name, flow_run.parameters, f"flow {flow.name!r}", "flow_run_name"
            )
        args, kwargs = flow.signature.call_arguments(flow_run.parameters)
        what = f"Flow run {flow_run.name!r}"
        while True:
            lifecycle(flow_run, logging.INFO, "Beginning %s run %r for flow %r",
                      "flow" if flow_run.parent is None else "subflow", flow_run.name, flow.name)
            runner = flow.task_runner.duplicate()
            runner.__enter__()
            attempt = flow_run.start_attempt(runner)
            if flow.on_running_hooks:
                yield (engine.HOOKS, flow.on_running_hooks, flow, flow_run, attempt)
            flow_run.start_body()
            on_deadline = None
            if flow.timeout_seconds is not None:  # off the main thread, waits in the body end when its runs do
                on_deadline = functools.partial(
                    _cancel_unfinished, flow_run, f"{what} exceeded timeout of {flow.timeout_seconds} second(s)", True
                )
            try:
                ok, value = yield (engine.CALL, flow.fn, args, kwargs, flow.timeout_seconds, None, on_deadline)
                if ok:
                    value = yield from _settle(flow_run, value)
            except KeyboardInterrupt as interrupt:
                ok, value = False, interrupt
            if not ok and isinstance(value, Exception):
                lifecycle(flow_run, logging.ERROR, "Encountered exception during execution: %r", value, exc_info=value)
            state = _body_state(flow_run, ok, value, what, flow.timeout_seconds)
            # As in Prefect, on_cancellation is for a run that was cancelled, not one whose body returned Cancelled.
            returned_cancelled = ok and state.is_cancelled() and flow_run.cancel_reason is None
            if flow_run.cancel_reason is not None and not state.is_cancelled():
                state = S.Cancelled(
                    message=f"{what} was cancelled ({flow_run.cancel_reason}): task runs that had "
                    "not finished were cancelled, completed ones kept."
                )
            if not state.is_completed():
                interrupt = state.is_cancelled() or state.name == "TimedOut"
                still_running = _cancel_unfinished(flow_run, f"{what} ended {state.name}: {state.message}", interrupt)
                try:  # a failed body lets started runs finish (what they compute is kept); stopped ones end soon
                    if still_running:
                        yield (engine.WAIT, still_running)
                except KeyboardInterrupt as again:  # stop waiting: the runs are stopped, they end on their own
                    if not interrupt:
                        state = _body_state(flow_run, False, again, what, None)
                        _cancel_unfinished(flow_run, f"{what} was interrupted", interrupt=True)
            runner.shutdown()
            if engine.should_retry(flow, flow_run, state):
                lifecycle(flow_run, logging.INFO, "Received non-final state 'AwaitingRetry' when proposing final "
                          "state %r and will attempt to run again...", state.name)
                flow_run.set_state(S.AwaitingRetry(message=f"Retry {flow_run.run_count} of {flow.retries}"))
                if flow.retry_delay_seconds:
                    yield (engine.SLEEP, float(flow.retry_delay_seconds), None)
                continue
            break
        flow_run.crash_unfinished_subflows()
        if flow_run.parent is None and settings.current.persist_results:
            _keep_for_retry(flow_run, state)
        flow_run.set_state(state)
        hooks = None if returned_cancelled else engine.final_hooks(flow, state)
        if hooks:
            yield (engine.HOOKS, hooks, flow, flow_run, state)
        return state
    finally:
        task_run_var.reset(task_token)
        if calling_token is not None:
            calling_task_run_var.reset(calling_token)
        flow_run_var.reset(flow_token)


def _keep_for_retry(flow_run: FlowRun, state: State) -> None:
    """Store what a top-level run that did not complete computed, before it ends: a retry reuses it."""
    runs = list(iter_task_runs(flow_run))
    if state.is_completed() and all(run.state.is_completed() for run in runs):
        return  # nothing to retry: nothing kept
    from nbflow.store import cache

    cache.keep_for_retry(runs)


def _body_state(flow_run: FlowRun, ok: bool, value: Any, what: str, timeout: float | None) -> State:
    """The state an attempt ends in: from the body's return value (see return_value_to_state) or its exception."""
    if not ok and isinstance(value, KeyboardInterrupt):
        return S.Cancelled(
            message=f"{what} was interrupted: runs not started were cancelled, completed runs kept.",
            data=value,
        )
    return engine.outcome_state(ok, value, what, timeout, FlowRunTimeoutError)


def _settle(flow_run: FlowRun, value: Any) -> Generator[Any, Any, Any]:
    """Wait for the run's unfinished task runs; turn returned futures into their states."""
    from nbflow.futures import resolve_futures_to_states

    returned = find(value, PrefectFuture)
    for future in returned:
        future.task_run.mark_resolved()
    unfinished = [r for r in flow_run.task_runs if not r.done]
    unresolved = [r for r in unfinished if not r.resolved]
    if unfinished:
        yield (engine.WAIT, unfinished)
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


def _cancel_unfinished(flow_run: FlowRun, reason: str, interrupt: bool) -> list[TaskRun]:
    """Cancel task runs that have not started; interrupt running ones, or let them finish.

    A failed body lets started runs finish (what they compute is kept): they
    are returned to wait for. An interrupt, a timeout or a cancel stops them:
    at their next bytecode, or, for a run in a worker thread blocked in C,
    by ending it without its thread (``timeouts.ABANDON_AFTER`` seconds
    later); those that will end so are returned to wait for. A run waiting
    to retry does not retry.
    """
    unfinished = flow_run.unfinished_task_runs()
    for run in unfinished:
        run.cancel(reason)
    running = [run for run in unfinished if not run.done]
    if not interrupt:
        return running
    ending = [run for run in running if run.interrupt(engine.CancelSignal)]
    if flow_run.task_runner is not None:
        flow_run.task_runner.cancel_all(reason)
    return ending


def cancel_flow_run(flow_run: FlowRun, reason: str = "cancelled by the user") -> None:
    """Cancel a flow run: its task runs that have not started, and interrupt running ones.

    What completed is kept, and the flow run ends Cancelled when its body
    returns (its call raises CancelledRun), even if the body completed. A run
    waiting to retry does not retry. Used by the notebook view's Cancel
    button; safe to call from any thread, and from the flow's own code.
    """
    flow_run.request_cancel(reason)
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
    persist_result: bool | None = None,
    result_storage: Any = None,
    result_serializer: Any = None,
    cache_result_in_memory: bool = True,
    log_prints: bool | None = None,
    on_completion: list[Callable[..., Any]] | None = None,
    on_failure: list[Callable[..., Any]] | None = None,
    on_cancellation: list[Callable[..., Any]] | None = None,
    on_crashed: list[Callable[..., Any]] | None = None,
    on_running: list[Callable[..., Any]] | None = None,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(__fn: Any = None, **options: Any) -> Any:
    """Make a function a flow: ``@flow``, ``@flow(task_runner=...)``, or ``flow(fn)``.

    The options are Prefect's (see the typed overload above); bad values are
    rejected here, when the decorator runs.
    """
    FLOW_OPTIONS.check_names(options, "flow()")
    if __fn is not None:
        return Flow(__fn, **options)
    return lambda fn: Flow(fn, **options)


flow.__signature__ = FLOW_OPTIONS.signature(  # type: ignore[attr-defined]
    inspect.Parameter("__fn", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
)


_history_for: Any = None  # the NBFLOW_HOME whose run history this process writes


def _start_history() -> None:
    """Start writing the run history (at the first top-level flow run in a home), if it is on."""
    global _history_for
    current = settings.current
    if current.history:
        from nbflow.store import history

        history.start()
    _history_for = current.home


def flow_named(name: str) -> Flow | None:
    """The flow of that name defined last in this process (while it is alive), or None."""
    return _by_name.get(name)


__all__ = ["Flow", "cancel_flow_run", "flow", "flow_named"]
