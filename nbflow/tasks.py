"""Tasks: the ``@task`` decorator, inline calls, ``submit``, ``map`` and ``with_options``."""

from __future__ import annotations

import datetime
import functools
import hashlib
import inspect
import string
import threading
from collections.abc import Callable, Iterable
from contextvars import copy_context
from typing import Any, Generic, ParamSpec, TypeVar, overload

from nbflow.context import current_flow_run, tags_var, tracer_var
from nbflow.exceptions import TaskRunNameError
from nbflow.options import (
    MAX_RETRY_DELAYS,
    TASK_OPTIONS,
    MethodDescriptor,
    NotSet,
    check_reserved,
    hook_decorator,
    unwrap_method,
)
from nbflow.records import NOTHING, TaskRun
from nbflow.resolve import dependencies
from nbflow.signature import CallSignature, render_run_name
from nbflow.states import State
from nbflow.timeouts import MAIN_THREAD

P = ParamSpec("P")
R = TypeVar("R")


class Task(MethodDescriptor, Generic[P, R]):
    """A function whose calls nbflow tracks as task runs.

    Call it to run it now, ``.submit()`` it to run it on the flow's task
    runner and get a future, ``.map()`` it over iterables to get a list of
    futures. Create with the :func:`task` decorator.
    """

    def __init__(self, fn: Callable[P, R], **options: Any) -> None:
        """A task of ``fn`` (a function, a callable object, or a ``classmethod``/``staticmethod``).

        ``options`` are those of :func:`task`, checked as Prefect checks them.
        """
        fn, self._method = unwrap_method(fn)
        if not callable(fn):
            raise TypeError(f"'fn' must be callable: @task decorates a function, got {fn!r}")
        functools.update_wrapper(self, fn)  # __name__, __doc__, __wrapped__ ... as Prefect's tasks have
        self.fn = fn
        self.isasync = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        TASK_OPTIONS.apply(self, options, "Task.__init__()")
        self.signature = CallSignature(fn)
        check_reserved(self.signature.names, f"task {self.name!r}")
        self._template_problem = self._check_template()

    # -- options ----------------------------------------------------------------
    def with_options(self, **options: Any) -> Task[P, R]:
        """A new task with some options changed (the keywords of :func:`task` but ``version``).

        As in Prefect: ``tags`` replaces, it does not merge; an empty ``name``,
        ``description``, ``cache_key_fn``, ``cache_expiration``, hook list,
        ``retry_condition_fn`` or ``viz_return_value``, and a ``None``
        ``tags``, ``timeout_seconds`` or ``cache_result_in_memory``, keep the
        current value. The original task is unchanged.
        """
        return self._copy_with(TASK_OPTIONS.merge(self, options, "Task.with_options()"))

    on_completion = hook_decorator("on_completion")
    on_failure = hook_decorator("on_failure")
    on_running = hook_decorator("on_running")

    @functools.cached_property
    def task_key(self) -> str:
        """Identity of the task's code, as Prefect forms it: ``{function name}-{8 hex digits of its code's hash}``."""
        fn = self.fn
        if not hasattr(fn, "__qualname__"):  # a callable object: its class names it
            return f"{type(fn).__module__}.{type(fn).__qualname__}"
        code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__call__", None), "__code__", None)
        if code is None:  # a builtin
            payload = fn.__qualname__.encode()
        else:
            import cloudpickle

            payload = cloudpickle.dumps(((code,), {}))
        digest = hashlib.md5(payload, usedforsecurity=False).hexdigest()[:8]
        return f"{fn.__qualname__.split('.')[-1]}-{digest}"

    # -- run names ------------------------------------------------------------------
    def _check_template(self) -> str | None:
        template = self.task_run_name
        if not isinstance(template, str) or self.signature.var_keyword:
            return None
        try:
            fields = {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f}
        except ValueError as exc:
            return f"task_run_name {template!r} of task {self.name!r} is not a valid template: {exc}"
        missing = sorted(fields - set(self.signature.names))
        if not missing:
            return None
        return (
            f"task_run_name {template!r} of task {self.name!r} names {', '.join(map(repr, missing))}, "
            f"which {'is' if len(missing) == 1 else 'are'} not a parameter of the task; its parameters "
            f"are: {', '.join(self.signature.names) or '(none)'}. Use those names in the template, "
            "or pass a callable as task_run_name."
        )

    def render_run_name(self, parameters: dict[str, Any]) -> str:
        """The run name ``task_run_name`` gives for these (resolved) parameters."""
        return render_run_name(self.task_run_name, parameters, f"task {self.name!r}", "task_run_name")

    def _check_runnable(self) -> None:
        if self._template_problem is not None:
            raise TaskRunNameError(self._template_problem)

    # -- runs -------------------------------------------------------------------------
    def call_arguments(self, parameters: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        return self.signature.call_arguments(parameters)

    def create_run(
        self,
        parameters: dict[str, Any],
        wait_for: Iterable[Any] | None = None,
        map_index: int | None = None,
        inline: bool = False,
    ) -> TaskRun:
        """Record a new Pending run of this task in the current flow run, with its upstream.

        In a retry of a flow run, a run that completed in the original (and
        whose upstream runs were all reused) ends at once, Cached, with the
        original's stored result.

        A run submitted to a runner (``inline=False``) keeps the context it was
        submitted in, to execute in it wherever it runs.
        """
        extra_tags, own_tags = tags_var.get(), self.tags
        if extra_tags or own_tags:  # a snapshot: the task's tags are a set its owner may change
            run_tags = frozenset(own_tags | extra_tags if extra_tags else own_tags)
        else:
            run_tags = extra_tags
        flow_run = current_flow_run()
        run = TaskRun(
            self,
            flow_run,
            parameters,
            run_tags,
            map_index,
            dependencies=dependencies(parameters, wait_for),
            context=None if inline else copy_context(),
        )
        if flow_run is not None and flow_run.reuse is not None:
            flow_run.reuse.serve(run)  # a retry: a run that completed in the original ends now
        return run

    def __call__(self, *args: Any, return_state: bool = False, wait_for: Iterable[Any] | None = None, **kwargs: Any) -> Any:
        """Run the task now, in this thread, and return its value (or its State).

        An async task returns a coroutine to await.
        """
        tracer = tracer_var.get()
        if tracer is not None:  # Flow.visualize()/plan() is tracing: record the call, run nothing
            return tracer.trace(self, "call", args, kwargs, wait_for, return_state)
        from nbflow import engine

        self._check_runnable()
        parameters = self.signature.bind(args, kwargs)
        if self.isasync:
            return self._call_async(parameters, wait_for, return_state)
        run = self.create_run(parameters, wait_for, inline=True)
        if self.timeout_seconds is not None and threading.get_ident() != MAIN_THREAD:
            return _inline_outcome(run, engine.run_apart(run), return_state)  # a blocked call can be abandoned
        return _inline_outcome(run, engine.run_here(run), return_state)

    async def _call_async(self, parameters: dict[str, Any], wait_for: Iterable[Any] | None, return_state: bool) -> Any:
        from nbflow import engine

        # The run is created once the coroutine runs: one never awaited leaves no run for its flow to wait on.
        run = self.create_run(parameters, wait_for, inline=True)
        return _inline_outcome(run, await engine.run_here_async(run), return_state)

    def submit(self, *args: Any, return_state: bool = False, wait_for: Iterable[Any] | None = None, **kwargs: Any) -> Any:
        """Run the task on the flow's task runner; returns a future at once.

        ``return_state=True`` waits and returns the final State instead.
        """
        tracer = tracer_var.get()
        if tracer is not None:  # Flow.visualize()/plan() is tracing: record the call, run nothing
            return tracer.trace(self, "submit", args, kwargs, wait_for, return_state)
        flow_run = _require_flow_run(self, "submit")
        self._check_runnable()
        parameters = self.signature.bind(args, kwargs)
        future = flow_run.task_runner.submit(self, parameters, wait_for=wait_for)
        if return_state:
            future.wait()
            return future.state
        return future

    def map(self, *args: Any, return_state: bool = False, wait_for: Iterable[Any] | None = None,
            deferred: bool = False, **kwargs: Any) -> Any:
        """Submit one run per element of the iterable arguments; returns a PrefectFutureList.

        Every iterable argument (but ``str``, ``bytes`` and files) is mapped
        over, element by element; wrap an iterable in ``unmapped(...)`` to pass
        it whole to every run. ``return_state=True`` returns the final States.
        ``deferred`` is Prefect's: ``False`` only (nbflow has no task workers to defer to).
        """
        if deferred:
            raise ValueError(
                f"Task {self.name!r}: .map(deferred=True) hands runs to Prefect's task workers; "
                "nbflow runs them in this process. Drop deferred=True."
            )
        tracer = tracer_var.get()
        if tracer is not None:  # Flow.visualize()/plan() is tracing: record the call, run nothing
            return tracer.trace(self, "map", args, kwargs, wait_for, return_state)
        flow_run = _require_flow_run(self, "map")
        self._check_runnable()
        parameters = self.signature.bind(args, kwargs, apply_defaults=False)
        futures = flow_run.task_runner.map(self, parameters, wait_for=wait_for)
        if return_state:
            futures.wait()
            return [f.state for f in futures]
        return futures

    def __repr__(self) -> str:
        return f"Task(name={self.name!r})"


class MaterializingTask(Task[P, R]):
    """A task that materializes assets (made by :func:`nbflow.assets.materialize`).

    ``assets`` (strings become :class:`~nbflow.assets.Asset`) and
    ``materialized_by`` (the tool, e.g. "dbt") are kept as Prefect keeps them.
    """

    def __init__(
        self, fn: Callable[P, R], *, assets: Iterable[Any], materialized_by: str | None = None, **options: Any
    ) -> None:
        from nbflow.assets import as_assets

        super().__init__(fn, **options)
        self.assets = as_assets(assets)
        self.materialized_by = materialized_by

    def with_options(self, assets: Iterable[Any] | None = None, **options: Any) -> MaterializingTask[P, R]:
        """:meth:`Task.with_options`, and ``assets`` (None keeps the current ones); ``materialized_by`` is kept."""
        merged = TASK_OPTIONS.merge(self, options, "MaterializingTask.with_options()")
        merged.update(assets=self.assets if assets is None else assets, materialized_by=self.materialized_by)
        return self._copy_with(merged)


def _inline_outcome(run: TaskRun, state: State, return_state: bool) -> Any:
    """What an inline call gives: the state, what the task returned if that was states, or the result.

    A real interrupt that ended the run is raised on (a BaseException of the
    task's own code is in its state as a CrashedRun, and raises only if asked).
    """
    if isinstance(state.data, KeyboardInterrupt):
        from nbflow import engine

        raise engine.surfacing(state.data)
    if return_state:
        return state
    if run.returned is not NOTHING:
        return run.returned
    if state.name == "NotReady" and state.is_pending():  # Prefect's inline call gives None (the record says why)
        return None
    return state.result(_sync=True)


def _require_flow_run(task: Task, method: str) -> Any:
    flow_run = current_flow_run()
    if flow_run is None or flow_run.task_runner is None:
        raise RuntimeError(
            f"Task {task.name!r}: .{method}() works only inside a flow run. Call it from a "
            "function decorated with @flow (or a %%flow cell in a notebook), or call the task "
            "directly to run it now."
        )
    return flow_run


@overload
def task(__fn: Callable[P, R]) -> Task[P, R]: ...


@overload
def task(
    __fn: None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    tags: Iterable[str] | None = None,
    version: str | None = None,
    cache_policy: Any = NotSet,
    cache_key_fn: Callable[[Any, dict[str, Any]], str | None] | None = None,
    cache_expiration: datetime.timedelta | None = None,
    task_run_name: str | Callable[..., str] | None = None,
    retries: int | None = None,
    retry_delay_seconds: float | list[float] | Callable[[int], list[float]] | None = None,
    retry_jitter_factor: float | None = None,
    persist_result: bool | None = None,
    result_storage: Any = None,
    result_serializer: Any = None,
    result_storage_key: str | None = None,
    cache_result_in_memory: bool = True,
    timeout_seconds: float | None = None,
    log_prints: bool | None = None,
    refresh_cache: bool | None = None,
    on_completion: list[Callable[..., Any]] | None = None,
    on_failure: list[Callable[..., Any]] | None = None,
    on_running: list[Callable[..., Any]] | None = None,
    retry_condition_fn: Callable[..., bool] | None = None,
    viz_return_value: Any = None,
    asset_deps: list[Any] | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(__fn: Any = None, **options: Any) -> Any:
    """Make a function a task: ``@task``, ``@task(retries=2)``, or ``task(fn)``.

    The options are Prefect's (see the typed overload above); bad values are
    rejected here, when the decorator runs. ``log_prints`` defaults to
    ``None``: the task inherits its flow's setting.
    """
    TASK_OPTIONS.check_names(options, "task()")
    options = {**TASK_OPTIONS.decorator_defaults, **options}
    if __fn is not None:
        return Task(__fn, **options)
    return lambda fn: Task(fn, **options)


task.__signature__ = TASK_OPTIONS.signature(  # type: ignore[attr-defined]
    inspect.Parameter("__fn", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
)


def exponential_backoff(backoff_factor: float) -> Callable[[int], list[float]]:
    """Retry delays doubling from ``backoff_factor``: pass it as ``retry_delay_seconds``.

    >>> exponential_backoff(2)(4)
    [2, 4, 8, 16]
    """

    def delays(retries: int) -> list[float]:
        return [backoff_factor * 2**attempt for attempt in range(min(retries, MAX_RETRY_DELAYS))]

    return delays


def task_input_hash(context: Any, arguments: dict[str, Any]) -> str | None:
    """A cache key from the task's identity and its arguments (for ``cache_key_fn``); None if they cannot be pickled."""
    import cloudpickle

    task_key = context.task.task_key  # as in Prefect, a missing context is an AttributeError
    try:
        payload = cloudpickle.dumps((task_key, sorted(arguments.items(), key=lambda kv: kv[0])))
    except Exception:
        return None
    return hashlib.sha256(payload).hexdigest()


__all__ = ["MaterializingTask", "Task", "task", "task_input_hash", "exponential_backoff"]
