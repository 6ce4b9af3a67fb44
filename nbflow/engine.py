"""Running one task run (and one flow-run attempt loop): the engine every runner shares.

A run's life is written once, as a generator (:func:`task_lifecycle`,
``flows.flow_lifecycle``) that yields what it needs done: call the user's
function with a timeout, or sleep before a retry. Two small drivers carry
those requests out: :func:`drive` in a thread and :func:`drive_async` on an
event loop, so sync and async tasks and flows share one lifecycle.

Thread runners call :func:`run_task` in a worker; process and cluster
runners resolve inputs on the driver (:func:`resolve_inputs`) and call
:func:`execute` where the work runs.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import threading
import time
from typing import Any, Callable, Generator

from nbflow import states as S
from nbflow.context import task_run_var
from nbflow.exceptions import TaskRunTimeoutError
from nbflow.resolve import resolve
from nbflow.runs import TaskRun
from nbflow.states import State, StateType
from nbflow.timeouts import DeadlineExceeded, deadline

logger = logging.getLogger("nbflow.engine")

CALL = "call"
SLEEP = "sleep"

# What a lifecycle yields: (CALL, fn, args, kwargs, timeout, run) or (SLEEP, seconds).
Request = tuple
Outcome = tuple  # (True, value) or (False, exception)


class CancelSignal(BaseException):
    """Raised into a running task run's thread to cancel it (interrupt, Cancel button)."""


# -- drivers ---------------------------------------------------------------------
def drive(lifecycle: Generator[Request, Outcome, State]) -> State:
    """Carry out a lifecycle's requests in this thread; return its final state."""
    try:
        request = next(lifecycle)
        while True:
            if request[0] is CALL:
                request = lifecycle.send(_call_sync(request))
            else:
                time.sleep(request[1])
                request = next(lifecycle)
    except StopIteration as stop:
        return stop.value


async def drive_async(lifecycle: Generator[Request, Outcome, State]) -> State:
    """Carry out a lifecycle's requests on the running event loop."""
    try:
        request = next(lifecycle)
        while True:
            if request[0] is CALL:
                request = lifecycle.send(await _call_async(request))
            else:
                await asyncio.sleep(request[1])
                request = next(lifecycle)
    except StopIteration as stop:
        return stop.value


def _call_sync(request: Request) -> Outcome:
    _, fn, args, kwargs, timeout, run = request
    if run is not None:
        run._thread_id = threading.get_ident()
    try:
        if timeout is None:
            value = fn(*args, **kwargs)
        else:
            with deadline(timeout):  # an async fn only builds its coroutine here
                value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = run_coroutine(_with_timeout(value, timeout))
        return True, value
    except BaseException as exc:  # handed to the lifecycle, which decides
        return False, exc
    finally:
        if run is not None:
            run._thread_id = None


async def _call_async(request: Request) -> Outcome:
    _, fn, args, kwargs, timeout, run = request
    try:
        if _is_async(fn):
            value = await _with_timeout(fn(*args, **kwargs), timeout)
        else:
            with deadline(timeout):
                value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await _with_timeout(value, timeout)
        return True, value
    except BaseException as exc:
        return False, exc


async def _with_timeout(awaitable: Any, timeout: float | None) -> Any:
    if timeout is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise DeadlineExceeded() from None


def _is_async(fn: Callable) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


# -- running coroutines from sync code ---------------------------------------------
_thread_loops = threading.local()


def run_coroutine(coro: Any) -> Any:
    """Run ``coro`` to completion from sync code, in a running notebook loop or not.

    A thread with no running loop reuses a loop of its own; a thread whose
    loop is running (a notebook cell) hands the coroutine to nbflow's private
    loop thread and waits, so no loop is ever re-entered.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = getattr(_thread_loops, "loop", None)
        if loop is None or loop.is_closed():
            loop = _thread_loops.loop = asyncio.new_event_loop()
        return loop.run_until_complete(coro)
    return asyncio.run_coroutine_threadsafe(coro, _private_loop()).result()


_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _private_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="nbflow-loop", daemon=True).start()
        return _loop


# -- outcomes, hooks, retries ---------------------------------------------------------
def outcome_state(ok: bool, value: Any, what: str, timeout: float | None, timeout_error: type) -> State:
    """The state a call's outcome puts a run in (``what`` names the run in messages)."""
    if ok:
        if isinstance(value, State):
            return value
        return S.Completed(data=value)
    if isinstance(value, DeadlineExceeded):
        exc = timeout_error(f"{what} exceeded its timeout of {timeout} seconds.")
        return S.TimedOut(message=str(exc), data=exc)
    if isinstance(value, CancelSignal):
        return S.Cancelled(message=f"{what} was cancelled while running.", data=None)
    if isinstance(value, (KeyboardInterrupt, SystemExit)):
        return S.Crashed(message=f"{what} was interrupted by {type(value).__name__}.", data=value)
    if isinstance(value, Exception):
        return S.Failed(
            message=f"{what} encountered an exception {type(value).__name__}: {value}", data=value
        )
    return S.Crashed(message=f"{what} crashed with {type(value).__name__}: {value}", data=value)


def call_hooks(hooks: list | None, owner: Any, run: Any, state: State) -> None:
    """Call ``hook(owner, run, state)`` for each hook; a hook that raises is logged and ignored."""
    for hook in hooks or ():
        try:
            outcome = hook(owner, run, state)
            if inspect.isawaitable(outcome):  # async hooks are awaited, as in Prefect
                run_coroutine(outcome)
        except Exception:
            logger.exception(
                "Hook %r of %r raised; the run's outcome is unchanged.",
                getattr(hook, "__name__", hook),
                getattr(owner, "name", owner),
            )


def retry_delay(delays: Any, retries: int, attempt: int, jitter: float | None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based)."""
    if callable(delays):
        delays = delays(retries)
    if isinstance(delays, (list, tuple)):
        delay = float(delays[min(attempt, len(delays)) - 1]) if delays else 0.0
    else:
        delay = float(delays or 0)
    if jitter and delay:
        delay = max(0.0, delay * random.uniform(1 - jitter, 1 + jitter))
    return delay


def should_retry(owner: Any, run: Any, state: State) -> bool:
    if not state.is_failed() or run.run_count > owner.retries:
        return False
    condition = getattr(owner, "retry_condition_fn", None)
    if condition is None:
        return True
    try:
        return bool(condition(owner, run, state))
    except Exception:
        logger.exception("retry_condition_fn of %r raised; not retrying.", owner.name)
        return False


# -- the task lifecycle -----------------------------------------------------------------
def task_lifecycle(run: TaskRun, parameters: dict[str, Any]) -> Generator[Request, Outcome, State]:
    """The life of one task run from Running to its final state (cache, retries, hooks)."""
    task = run.task
    token = task_run_var.set(run)
    run._inputs = parameters  # what nbflow.runtime.task_run.parameters shows
    try:
        if task.task_run_name is not None:
            try:
                run.name = task.render_run_name(parameters)
            except Exception as exc:
                return S.Failed(message=str(exc), data=exc)
        cache_key = None
        if task.cache_key_fn is not None:
            from nbflow import cache

            try:
                cache_key, cached = cache.lookup(task, run, parameters)
            except Exception:
                logger.exception(
                    "Error encountered when computing cache key - result will not be persisted "
                    "(task %r).", task.name
                )
                cache_key, cached = None, None
            if cached is not None:
                return cached
        args, kwargs = task.call_arguments(parameters)
        what = f"Task run {run.name!r}"
        while True:
            run.run_count += 1
            run.set_state(S.Running() if run.run_count == 1 else S.Retrying())
            if task.on_running_hooks:
                call_hooks(task.on_running_hooks, task, run, run.states[-1])
            ok, value = yield (CALL, task.fn, args, kwargs, task.timeout_seconds, run)
            state = outcome_state(ok, value, what, task.timeout_seconds, TaskRunTimeoutError)
            if should_retry(task, run, state):
                delay = retry_delay(
                    task.retry_delay_seconds, task.retries, run.run_count, task.retry_jitter_factor
                )
                run.set_state(S.AwaitingRetry(message=f"Retry {run.run_count} of {task.retries} after: {state.message}"))
                if delay:
                    yield (SLEEP, delay)
                continue
            break
        if cache_key is not None and state.is_completed():
            from nbflow import cache

            cache.store(task, cache_key, state.data)
        if state.is_completed():
            call_hooks(task.on_completion_hooks, task, run, state)
        elif state.is_failed() or state.is_crashed():
            call_hooks(task.on_failure_hooks, task, run, state)
        return state
    finally:
        run._inputs = None
        task_run_var.reset(token)


# -- entry points for runners ---------------------------------------------------------------
def resolve_inputs(run: TaskRun) -> dict[str, Any] | State:
    """The run's arguments with futures replaced by results, or ``NotReady`` if an upstream failed."""
    deps = run._dependencies
    if deps is None:
        return run.parameters
    for dep, allowed in deps:
        state = dep.states[-1]
        if not allowed and state.type is not StateType.COMPLETED:
            return S.NotReady(message=_upstream_message(dep, state))
    return resolve(run.parameters, run)


def _upstream_message(dep: TaskRun, state: State) -> str:
    if state.type is StateType.PENDING and state.name == "NotReady":
        return f"Upstream task run {dep.name!r} did not run: {state.message}"
    error = f": {state.data!r}" if isinstance(state.data, BaseException) else ""
    return f"Upstream task run {dep.name!r} is {state.name}{error}."


def execute(run: TaskRun, parameters: dict[str, Any]) -> State:
    """Run a task run's lifecycle here (thread, process or cluster worker); return its final state.

    A run interrupted by KeyboardInterrupt ends Crashed with the interrupt as
    its data; callers in the main thread re-raise it after finishing the run.
    """
    return drive(task_lifecycle(run, parameters))


def run_task(run: TaskRun) -> None:
    """Claim, resolve and execute ``run`` in this thread (in its submit-time context), then finish it."""
    if not run.claim():
        return
    context, run._context = run._context, None
    if context is None:
        _run_claimed(run)
    else:
        context.run(_run_claimed, run)


def _run_claimed(run: TaskRun) -> None:
    try:
        parameters = resolve_inputs(run)
        if isinstance(parameters, State):
            run.finish(parameters)
            return
        state = execute(run, parameters)
    except BaseException as exc:  # an engine bug or an interrupt must still end the run
        state = outcome_state(False, exc, f"Task run {run.name!r}", None, TaskRunTimeoutError)
        if state.type is StateType.FAILED:
            state = S.Crashed(message=state.message, data=exc)
        run.finish(state)
        if not isinstance(exc, Exception):
            raise
        return
    run.finish(state)


__all__ = [
    "drive",
    "drive_async",
    "task_lifecycle",
    "resolve_inputs",
    "execute",
    "run_task",
    "run_coroutine",
    "call_hooks",
    "outcome_state",
    "CancelSignal",
]
