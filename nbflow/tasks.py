"""Tasks: the ``@task`` decorator, inline calls, ``submit``, ``map`` and ``with_options``."""

from __future__ import annotations

import datetime
import hashlib
import inspect
import string
from contextvars import copy_context
from typing import Any, Callable, Generic, Iterable, TypeVar, overload

from typing import ParamSpec

from nbflow.context import current_flow_run, tags_var
from nbflow.exceptions import ReservedArgumentError, TaskRunNameError
from nbflow.resolve import _ATOMIC, collect
from nbflow.runs import TaskRun
from nbflow.signature import CallSignature, render_run_name
from nbflow.states import State

P = ParamSpec("P")
R = TypeVar("R")

RESERVED_ARGUMENTS = ("wait_for", "return_state")
_MAX_RETRY_DELAYS = 50

# Prefect options nbflow accepts so code ports unchanged, but does not act on:
# results are kept in memory, and persisted only for cache_key_fn.
_ACCEPTED_OPTIONS = (
    "persist_result",
    "result_storage",
    "result_serializer",
    "result_storage_key",
    "cache_result_in_memory",
    "cache_policy",
    "viz_return_value",
    "version",
)


def _hook_list(value: Any, option: str) -> list[Callable]:
    if value is None:
        return []
    if callable(value) or not isinstance(value, Iterable):
        raise TypeError(
            f"Expected iterable for {option!r}; got {type(value).__name__} instead. "
            f"Please provide a list of hooks to {option!r}: {option}=[hook1, hook2]."
        )
    hooks = list(value)
    for hook in hooks:
        if not callable(hook):
            raise TypeError(
                f"Expected callables in {option!r}; got {type(hook).__name__} instead. "
                f"Please provide a list of hooks to {option!r}: {option}=[hook1, hook2]."
            )
    return hooks


class Task(Generic[P, R]):
    """A function whose calls nbflow tracks as task runs.

    Call it to run it now, ``.submit()`` it to run it on the flow's task
    runner and get a future, ``.map()`` it over iterables to get a list of
    futures. Create with the :func:`task` decorator.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        name: str | None = None,
        description: str | None = None,
        tags: Iterable[str] | None = None,
        cache_key_fn: Callable[[Any, dict[str, Any]], str | None] | None = None,
        cache_expiration: datetime.timedelta | None = None,
        refresh_cache: bool | None = None,
        task_run_name: str | Callable[..., str] | None = None,
        retries: int | None = None,
        retry_delay_seconds: float | list[float] | Callable[[int], list[float]] | None = None,
        retry_jitter_factor: float | None = None,
        retry_condition_fn: Callable[..., bool] | None = None,
        timeout_seconds: float | None = None,
        log_prints: bool | None = None,
        on_completion: list[Callable] | None = None,
        on_failure: list[Callable] | None = None,
        on_running: list[Callable] | None = None,
        **accepted: Any,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@task must decorate a function, got {fn!r}")
        unknown = set(accepted) - set(_ACCEPTED_OPTIONS)
        if unknown:
            raise TypeError(f"@task got unknown option(s): {', '.join(sorted(unknown))}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.description = description or inspect.getdoc(fn)
        self.isasync = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        self.signature = CallSignature(fn, f"task {self.name!r}")
        for reserved in RESERVED_ARGUMENTS:
            if reserved in self.signature.names:
                raise ReservedArgumentError(
                    f"{reserved!r} is a reserved argument name and cannot be used in task "
                    f"functions (task {self.name!r}); rename the parameter."
                )
        self.tags = frozenset(tags or ())
        self.cache_key_fn = cache_key_fn
        self.cache_expiration = cache_expiration
        self.refresh_cache = refresh_cache
        self.task_run_name = task_run_name
        self.retries = int(retries or 0)
        if isinstance(retry_delay_seconds, (list, tuple)) and len(retry_delay_seconds) > _MAX_RETRY_DELAYS:
            raise ValueError(f"Can not configure more than {_MAX_RETRY_DELAYS} retry delays per task.")
        self.retry_delay_seconds = retry_delay_seconds if retry_delay_seconds is not None else 0
        if retry_jitter_factor is not None and retry_jitter_factor < 0:
            raise ValueError("`retry_jitter_factor` must be >= 0.")
        self.retry_jitter_factor = retry_jitter_factor
        self.retry_condition_fn = retry_condition_fn
        self.timeout_seconds = float(timeout_seconds) if timeout_seconds else None
        self.log_prints = log_prints
        self.on_completion_hooks = _hook_list(on_completion, "on_completion")
        self.on_failure_hooks = _hook_list(on_failure, "on_failure")
        self.on_running_hooks = _hook_list(on_running, "on_running")
        self._accepted = accepted
        self._template_problem = self._check_template()
        self._task_key: str | None = None

    # -- options ----------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        return dict(
            name=self.name,
            description=self.description,
            tags=self.tags,
            cache_key_fn=self.cache_key_fn,
            cache_expiration=self.cache_expiration,
            refresh_cache=self.refresh_cache,
            task_run_name=self.task_run_name,
            retries=self.retries,
            retry_delay_seconds=self.retry_delay_seconds,
            retry_jitter_factor=self.retry_jitter_factor,
            retry_condition_fn=self.retry_condition_fn,
            timeout_seconds=self.timeout_seconds,
            log_prints=self.log_prints,
            on_completion=self.on_completion_hooks,
            on_failure=self.on_failure_hooks,
            on_running=self.on_running_hooks,
            **self._accepted,
        )

    def with_options(self, **options: Any) -> "Task[P, R]":
        """A new task with some options changed (``tags`` replaces, it does not merge)."""
        merged = self._options()
        merged.update(options)
        return type(self)(self.fn, **merged)

    def on_completion(self, fn: Callable) -> Callable:
        """Decorator adding a completion hook ``fn(task, task_run, state)``."""
        self.on_completion_hooks.append(fn)
        return fn

    def on_failure(self, fn: Callable) -> Callable:
        """Decorator adding a failure hook ``fn(task, task_run, state)``."""
        self.on_failure_hooks.append(fn)
        return fn

    def on_running(self, fn: Callable) -> Callable:
        """Decorator adding a hook ``fn(task, task_run, state)`` called as each attempt starts."""
        self.on_running_hooks.append(fn)
        return fn

    @property
    def task_key(self) -> str:
        """Stable identity of the task: qualified name and a hash of its code."""
        if self._task_key is None:
            code = getattr(self.fn, "__code__", None)
            digest = hashlib.sha256(
                repr((code.co_code, code.co_consts) if code else self.name).encode()
            ).hexdigest()[:12]
            self._task_key = f"{getattr(self.fn, '__qualname__', self.name)}-{digest}"
        return self._task_key

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
    ) -> TaskRun:
        """Record a new Pending run of this task in the current flow run, with its upstream."""
        extra_tags = tags_var.get()
        run = TaskRun(
            self,
            current_flow_run(),
            parameters,
            self.tags | extra_tags if extra_tags else self.tags,
            map_index,
        )
        run._context = copy_context()
        if wait_for is None:
            for value in parameters.values():
                if type(value) not in _ATOMIC:
                    break
            else:
                return run
        deps, special = collect(parameters, wait_for)
        if deps or special:
            run._dependencies = tuple(deps)
            if deps:
                upstream = []
                for dep, _ in deps:
                    dep._resolved = True
                    if dep not in upstream:
                        upstream.append(dep)
                run.upstream = tuple(upstream)
        return run

    def __call__(self, *args: Any, return_state: bool = False, wait_for: Iterable[Any] | None = None, **kwargs: Any) -> Any:
        """Run the task now, in this thread, and return its value (or its State).

        An async task returns a coroutine to await.
        """
        from nbflow import engine

        self._check_runnable()
        parameters = self.signature.bind(args, kwargs)
        run = self.create_run(parameters, wait_for)
        if self.isasync:
            return self._call_async(run, return_state)
        for dep, _ in run._dependencies or ():
            dep.wait()
        run.claim()
        try:
            inputs = engine.resolve_inputs(run)
            state = inputs if isinstance(inputs, State) else engine.execute(run, inputs)
        except BaseException as exc:  # the run must end even if the engine raised
            run.finish(engine.outcome_state(False, exc, f"Task run {run.name!r}", None, TimeoutError))
            raise
        return _inline_outcome(run, state, return_state)

    async def _call_async(self, run: TaskRun, return_state: bool) -> Any:
        from nbflow import engine

        for dep, _ in run._dependencies or ():
            dep.wait()
        run.claim()
        inputs = engine.resolve_inputs(run)
        if isinstance(inputs, State):
            state = inputs
        else:
            state = await engine.drive_async(engine.task_lifecycle(run, inputs))
        return _inline_outcome(run, state, return_state)

    def submit(self, *args: Any, return_state: bool = False, wait_for: Iterable[Any] | None = None, **kwargs: Any) -> Any:
        """Run the task on the flow's task runner; returns a future at once.

        ``return_state=True`` waits and returns the final State instead.
        """
        flow_run = _require_flow_run(self, "submit")
        self._check_runnable()
        parameters = self.signature.bind(args, kwargs)
        future = flow_run.task_runner.submit(self, parameters, wait_for=wait_for)
        if return_state:
            future.wait()
            return future.state
        return future

    def map(self, *args: Any, return_state: bool = False, wait_for: Iterable[Any] | None = None, **kwargs: Any) -> Any:
        """Submit one run per element of the iterable arguments; returns a PrefectFutureList.

        Every iterable argument (but ``str``, ``bytes`` and files) is mapped
        over, element by element; wrap an iterable in ``unmapped(...)`` to pass
        it whole to every run. ``return_state=True`` returns the final States.
        """
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

    def __get__(self, instance: Any, owner: Any) -> Any:
        # A task defined in a class body becomes a bound task for the instance.
        if instance is None:
            return self
        bound = self.with_options()
        bound.fn = self.fn.__get__(instance, owner)
        bound.signature = CallSignature(bound.fn, f"task {self.name!r}")
        return bound


def _inline_outcome(run: TaskRun, state: State, return_state: bool) -> Any:
    run.finish(state)
    if isinstance(state.data, (KeyboardInterrupt, SystemExit)):
        raise state.data
    if return_state:
        return state
    return state.result()


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
    cache_key_fn: Callable[..., str | None] | None = None,
    cache_expiration: datetime.timedelta | None = None,
    refresh_cache: bool | None = None,
    task_run_name: str | Callable[..., str] | None = None,
    retries: int | None = None,
    retry_delay_seconds: Any = None,
    retry_jitter_factor: float | None = None,
    retry_condition_fn: Callable[..., bool] | None = None,
    timeout_seconds: float | None = None,
    log_prints: bool | None = None,
    on_completion: list[Callable] | None = None,
    on_failure: list[Callable] | None = None,
    on_running: list[Callable] | None = None,
    **accepted: Any,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(__fn: Any = None, **options: Any) -> Any:
    """Make a function a task: ``@task``, ``@task(retries=2)``, or ``task(fn)``."""
    if __fn is not None:
        return Task(__fn, **options)
    return lambda fn: Task(fn, **options)


def task_input_hash(context: Any, arguments: dict[str, Any]) -> str | None:
    """A cache key from the task's identity and its arguments (for ``cache_key_fn``)."""
    import cloudpickle

    try:
        payload = cloudpickle.dumps((context.task.task_key, sorted(arguments.items(), key=lambda kv: kv[0])))
    except Exception:
        return None
    return hashlib.sha256(payload).hexdigest()


__all__ = ["Task", "task", "task_input_hash"]
