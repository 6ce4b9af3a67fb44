"""Running task runs and flow runs: the lifecycles every runner shares, and the one guarded path.

A run's life is written once, as a generator (:func:`task_lifecycle`,
``flows.flow_lifecycle``) that yields what it needs done: call the user's
function with a timeout, sleep before a retry, call hooks, wait for runs.
Two small drivers carry those requests out: :func:`drive` in a thread and
:func:`drive_async` on an event loop, so sync and async tasks and flows share
one lifecycle, and waiting on an event loop never blocks it.

:func:`run_here` (and its async twin :func:`run_here_async`) is the one way a
task run executes: claim it, resolve its inputs, drive its lifecycle, and end
it in a final state whatever raises. Inline calls, thread workers and the
workers of the process, Dask and Ray runners all use it.

Exceptions a task's own code raises end only that run: an ``Exception``
fails it, any other ``BaseException`` (``SystemExit``, a ``KeyboardInterrupt``
the code raises, ...) crashes it, and ``.result()`` raises a ``CrashedRun``
naming the run, caused by the original. Only a real interrupt
(``KernelInterrupt``: SIGINT while a run's code executes in the main thread,
the notebook view's Cancel) or an interrupt outside the user's code travels
on to the caller, after the run has ended.

A task run dispatched to a worker thread that does not react to its deadline
or to a cancel (it is blocked in C: ``time.sleep``, I/O) is abandoned
``timeouts.ABANDON_AFTER`` seconds later: its lifecycle carries on in another
thread (the pool's replacement for the stuck one), so the run ends TimedOut
or Cancelled on time and a retry starts in that thread; what the stuck call
returns later is discarded and logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from nbflow import settings
from nbflow import states as S
from nbflow.completion import wait_all_async
from nbflow.context import flow_run_var, task_run_var
from nbflow.exceptions import CrashedRun, FlowRunTimeoutError, KernelInterrupt, TaskRunTimeoutError
from nbflow.logging import get_run_logger, lifecycle
from nbflow.records import NOTHING, TaskRun
from nbflow.resolve import resolve
from nbflow.states import State, StateType
from nbflow.timeouts import (
    MAIN_THREAD,
    DeadlineExceeded,
    Watch,
    deadline,
    hand_over,
    mark_real_interrupts,
    restore_interrupts,
    settle,
)

logger = logging.getLogger("nbflow.engine")

# What a lifecycle yields, and what the drivers send back:
CALL = "call"  # (CALL, fn, args, kwargs, timeout, task run or None, on_deadline) -> (ok, value)
SLEEP = "sleep"  # (SLEEP, seconds, task run or None) -> None (a task run's cancel cuts it short)
HOOKS = "hooks"  # (HOOKS, hooks, owner, run, state) -> None
WAIT = "wait"  # (WAIT, completions) -> None

Request = tuple
Outcome = tuple  # (True, value) or (False, exception)
Lifecycle = Generator[Request, Any, State]


class CancelSignal(BaseException):
    """Raised into a running task run's thread to cancel it (interrupt, Cancel button)."""


# What _drive returns when a task run's call was abandoned: another thread carries its lifecycle on.
_ABANDONED: Any = object()
_FIRST: Any = object()  # start a lifecycle (rather than send it a reply)


# -- drivers ---------------------------------------------------------------------
def drive(lifecycle: Lifecycle) -> State:
    """Carry out a lifecycle's requests in this thread; return its final state.

    An exception raised while carrying out a request (a Ctrl-C during a
    wait, say) is thrown into the lifecycle where it yielded the request.
    """
    return _drive(lifecycle, _FIRST, None)


def _drive(lifecycle: Lifecycle, reply: Any, context: contextvars.Context | None) -> State:
    """:func:`drive`, starting with ``reply`` sent to the lifecycle (or ``_FIRST``).

    With ``context`` (the Context a dispatched task run executes in), a call
    of the run that does not react to its deadline or a cancel is abandoned:
    the lifecycle goes on in another thread and this returns ``_ABANDONED``.
    """
    try:
        request = next(lifecycle) if reply is _FIRST else lifecycle.send(reply)
        while True:
            try:
                if request[0] is CALL:
                    reply = _call_sync(request, lifecycle, context)
                    if reply is _ABANDONED:
                        return _ABANDONED
                else:
                    reply = _carry_out(request)
            except BaseException as exc:
                request = lifecycle.throw(exc)
            else:
                request = lifecycle.send(reply)
    except StopIteration as stop:
        return stop.value


def _carry_out(request: Request) -> Any:
    kind = request[0]
    if kind is SLEEP:
        run = request[2]
        if run is not None:
            run.pause(request[1])
        else:
            time.sleep(request[1])
    elif kind is HOOKS:
        for hook, awaitable in _call_hooks(*request[1:]):
            try:
                run_coroutine(awaitable)
            except Exception:
                _hook_failed(hook, request[3])
    else:
        for completion in request[1]:
            completion.wait()
    return None


async def drive_async(lifecycle: Lifecycle) -> State:
    """Carry out a lifecycle's requests on the running event loop, never blocking it."""
    try:
        request = next(lifecycle)
        while True:
            try:
                reply = await _carry_out_async(request)
            except BaseException as exc:
                request = lifecycle.throw(exc)
            else:
                request = lifecycle.send(reply)
    except StopIteration as stop:
        return stop.value


async def _carry_out_async(request: Request) -> Any:
    kind = request[0]
    if kind is CALL:
        return await _call_async(request)
    if kind is SLEEP:
        await asyncio.sleep(request[1])  # a cancel meanwhile is seen when it ends (TaskRun.stop_reason)
    elif kind is HOOKS:
        for hook, awaitable in _call_hooks(*request[1:]):
            try:
                await awaitable
            except Exception:
                _hook_failed(hook, request[3])
    else:
        await wait_all_async(request[1])
    return None


def _call_sync(request: Request, lifecycle: Lifecycle, context: contextvars.Context | None) -> Any:
    """Call the function of a CALL request here: its outcome ``(ok, value)``, or ``_ABANDONED``.

    A task run's call is watched, so a cancel can interrupt it; a deadline
    interrupts it too. In the main thread, SIGINT meanwhile raises
    KernelInterrupt: a real interrupt, unlike a KeyboardInterrupt the code raises.
    """
    _, fn, args, kwargs, timeout, run, on_deadline = request
    main = threading.get_ident() == MAIN_THREAD
    if run is None and timeout is None:  # a flow body with no deadline: nothing interrupts it
        return _call_unwatched(fn, args, kwargs, main)
    watch = Watch() if run is None or context is None or main else _TaskCall(run, lifecycle, context)
    marked = False
    try:
        try:
            if run is not None:
                stop = run.attach_call(watch)
                if stop is not None:
                    raise stop()
            if timeout is not None:
                watch.arm(timeout, on_deadline)
            if main:
                marked = mark_real_interrupts()
            value = fn(*args, **kwargs)
        finally:
            watch.claims.append(True)  # first: an interrupt landing from here on cannot undo it
        ok = True
    except BaseException as exc:  # handed to the lifecycle, which decides
        ok, value = False, exc
    raised = watch.raised  # final once empty here: a later interrupter sees the claim and raises nothing
    if timeout is not None or raised:  # an alarm to disarm, or an interrupt that may still land
        landed = settle(watch)
        if landed is not None:
            ok, value = False, landed
        raised = watch.raised
        if watch.claims[0] is True and type(watch) is _TaskCall:
            watch.forget()  # the timer holds the watch until its deadline: not the run with it
    if marked:
        restore_interrupts(marked)
    if run is not None:
        run.detach_call(watch)
    if watch.claims[0] is not True:  # the run went on without this call
        _discard_late(run, ok, value)
        return _ABANDONED
    if raised and (ok or not isinstance(value, (*raised, KernelInterrupt))):
        ok, value = False, raised[0]()  # the code swallowed its interrupt (or turned it into another error)
    if ok and inspect.isawaitable(value):  # an async fn only built its coroutine above
        try:
            value = run_coroutine(_with_timeout(value, timeout))
        except BaseException as exc:
            ok, value = False, exc
    return ok, value


def _call_unwatched(fn: Callable, args: tuple, kwargs: dict, main: bool) -> Outcome:
    marked = mark_real_interrupts() if main else False
    try:
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = run_coroutine(value)
        return True, value
    except BaseException as exc:
        return False, exc
    finally:
        restore_interrupts(marked)


class _TaskCall(Watch):
    """A dispatched task run's call in a worker thread: if it does not react, the run goes on without it."""

    __slots__ = ("context", "lifecycle", "run")

    abandonable = True

    def __init__(self, run: TaskRun, lifecycle: Lifecycle, context: contextvars.Context) -> None:
        super().__init__()
        self.run = run
        self.lifecycle = lifecycle
        self.context = context

    def forget(self) -> None:
        """The call ended by itself: let go of the run (called in the call's thread)."""
        self.run = self.lifecycle = self.context = None

    def abandoned(self, exc: type[BaseException]) -> None:
        """Carry the run's lifecycle on in another thread, as if the call had raised ``exc`` (timer thread)."""
        run = self.run
        logger.warning(
            "Task run %r did not stop at its %s: it is blocked outside Python code (time.sleep, I/O or a "
            "C call). nbflow ends the run without it and leaves its thread behind; whatever that thread "
            "returns later is discarded. Give blocking calls their own timeout to free the thread.",
            run.name,
            "deadline" if exc is DeadlineExceeded else "cancel",
        )
        context = self.context.copy()  # the run's variables as the call saw them
        hand_over(self.ident, functools.partial(context.run, _carry_on, run, self.lifecycle, (False, exc()), context))


def _carry_on(run: TaskRun, lifecycle: Lifecycle, outcome: Outcome, context: contextvars.Context) -> None:
    """Drive an abandoned call's lifecycle on from its outcome, and end the run."""
    try:
        state = _drive(lifecycle, outcome, context)
    except BaseException as exc:
        state = _guard_state(run, exc)
    _end(run, state)


def _discard_late(run: TaskRun, ok: bool, value: Any) -> None:
    logger.warning(
        "Task run %r: its abandoned call finally returned (%s); that is discarded, the run stays %s.",
        run.name, "a value" if ok else type(value).__name__, run.state.name,
    )


async def _call_async(request: Request) -> Outcome:
    _, fn, args, kwargs, timeout, _, _ = request
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
    except TimeoutError:
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
# The Failed message of a task run's (False) or flow run's (True) exception, as Prefect 3.9.1 words it.
_FAILED_WORDS = {False: "Task run encountered an exception ", True: "Flow run encountered an exception: "}


def outcome_state(ok: bool, value: Any, what: str, timeout: float | None, timeout_error: type) -> State:
    """The state a call's outcome puts a run in (``what`` names the run in messages)."""
    if ok:  # returned states decide the outcome, as in Prefect (see states.return_value_to_state)
        return S.return_value_to_state(value)
    if isinstance(value, DeadlineExceeded):
        exc = timeout_error(f"{what} exceeded timeout of {timeout} second(s).")
        kind = "Flow run" if timeout_error is FlowRunTimeoutError else "Task run"  # Prefect's words exactly
        return S.TimedOut(message=f"{kind} exceeded timeout of {timeout} second(s)", data=exc)
    if isinstance(value, CancelSignal):
        return S.Cancelled(message=f"{what} was cancelled while running.", data=None)
    if isinstance(value, (KeyboardInterrupt, SystemExit)):
        return S.Crashed(message=f"{what} was interrupted by {type(value).__name__}.", data=value)
    if isinstance(value, TimeoutError):  # as Prefect: a TimeoutError out of the code (a subflow's, a task's) times the run out
        kind = "Flow run" if timeout_error is FlowRunTimeoutError else "Task run"
        return S.TimedOut(message=f"{kind} failed due to timeout: {value!r}", data=value)
    if isinstance(value, Exception):  # Prefect's words exactly: users compare them (the run's record names it)
        words = _FAILED_WORDS[timeout_error is FlowRunTimeoutError]
        return S.not_retriable(S.Failed(message=f"{words}{type(value).__name__}: {value}", data=value))
    return S.Crashed(message=f"{what} crashed with {type(value).__name__}: {value}", data=value)


def _task_outcome_state(ok: bool, value: Any, what: str, timeout: float | None) -> State:
    """:func:`outcome_state` for a task's own code: a BaseException it raises crashes only that run.

    Its state holds a :class:`CrashedRun` naming the run, caused by the
    original, so that nobody downstream receives the ``SystemExit`` or
    ``KeyboardInterrupt``. A real interrupt (:class:`KernelInterrupt`) stays
    as it is: the caller re-raises it.
    """
    if ok or isinstance(value, (Exception, DeadlineExceeded, CancelSignal, KernelInterrupt)):
        return outcome_state(ok, value, what, timeout, TaskRunTimeoutError)
    return _crash_state(value, what)


def _crash_state(exc: BaseException, what: str) -> State:
    """Crashed, holding a CrashedRun caused by ``exc``, a BaseException ``what``'s code raised."""
    error = CrashedRun(
        f"{what} crashed: its code raised {exc!r}. Only this run ended; the flow and other runs go on."
    )
    error.__cause__ = exc
    return S.Crashed(message=str(error), data=error)


def surfacing(exc: BaseException) -> BaseException:
    """What to raise to the caller for ``exc``.

    A real interrupt leaving the outermost run (no flow or task run encloses
    the caller) is a plain KeyboardInterrupt, as Python's own.
    """
    if isinstance(exc, KernelInterrupt) and task_run_var.get() is None and flow_run_var.get() is None:
        plain = KeyboardInterrupt(*exc.args).with_traceback(exc.__traceback__)
        plain.__suppress_context__ = True
        return plain
    return exc


def _call_hooks(hooks: list | None, owner: Any, run: Any, state: State) -> Iterator[tuple[Callable, Any]]:
    """Call ``hook(owner, run, state)`` for each hook; yield ``(hook, awaitable)`` for async hooks to await.

    A hook that raises is logged and ignored: the run's outcome is unchanged.
    """
    for hook in hooks or ():
        try:
            outcome = hook(owner, run, state)
        except Exception:
            _hook_failed(hook, run)
            continue
        if inspect.isawaitable(outcome):  # async hooks are awaited, as in Prefect
            yield hook, outcome


def _hook_failed(hook: Callable, run: Any) -> None:
    """Log a hook's exception with its traceback on the run's logger, in Prefect's words."""
    get_run_logger(run).error(
        "An error was encountered while running hook %r", getattr(hook, "__name__", repr(hook)), exc_info=True
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
    """True if ``state`` is a failure that ``owner``'s retries (and its retry condition) allow retrying."""
    if not state.is_failed() or run.run_count > owner.retries:
        return False
    condition = getattr(owner, "retry_condition_fn", None)
    if condition is None:
        return True
    try:
        verdict = condition(owner, run, state)
        if inspect.isawaitable(verdict):  # an async condition is awaited, as in Prefect
            verdict = run_coroutine(verdict)
        return bool(verdict)
    except Exception:
        get_run_logger(run).error(
            "An error was encountered while running `retry_condition_fn` check %r for task %r; not retrying.",
            condition, owner.name, exc_info=True,
        )
        return False


def final_hooks(owner: Any, state: State) -> list | None:
    """The hooks ``owner`` (a task or a flow) calls when a run of it ends in ``state``.

    Tasks have no crash or cancellation hooks: a crashed task run calls its failure hooks.
    """
    kind = state.type
    if kind is StateType.COMPLETED:
        return owner.on_completion_hooks
    if kind is StateType.FAILED:
        return owner.on_failure_hooks
    if kind is StateType.CRASHED:
        return getattr(owner, "on_crashed_hooks", owner.on_failure_hooks)
    if kind is StateType.CANCELLED:
        return getattr(owner, "on_cancellation_hooks", None)
    return None


# -- the task lifecycle -----------------------------------------------------------------
def task_lifecycle(run: TaskRun, parameters: dict[str, Any]) -> Lifecycle:
    """The life of one task run from Running to its final state (cache, retries, hooks)."""
    task = run.task
    outer = task_run_var.get()  # restored by value: the lifecycle may end in another thread's context
    task_run_var.set(run)
    run.set_inputs(parameters)  # what nbflow.runtime.task_run.parameters shows
    entry = None  # the run's place in the result store, if it has one
    try:
        if task.task_run_name is not None:
            try:
                run.name = task.render_run_name(parameters)
            except Exception as exc:
                return S.Failed(message=str(exc), data=exc)
        current = settings.current
        flow_run = run.flow_run
        if task.persist_result or current.cache or (
            task.persist_result is None and flow_run is not None and flow_run.persist_result
        ):
            from nbflow.store import cache

            policy, persist = cache.policy_of(task, flow_run)
            if persist:
                try:
                    entry = cache.open_entry(task, run, parameters, policy, persist)
                except Exception as exc:  # a cache key or storage key that cannot be made fails the run
                    return outcome_state(False, exc, f"Task run {run.name!r}", None, TaskRunTimeoutError)
            if entry is not None and entry.cached is not None:
                entry.close(None)
                attempt = run.start_attempt()  # a cached run passes through Running too, as in Prefect
                if task.on_running_hooks:
                    yield (HOOKS, task.on_running_hooks, task, run, attempt)
                run.ending(entry.cached)
                yield (HOOKS, task.on_completion_hooks, task, run, entry.cached)
                return entry.cached
        args, kwargs = task.call_arguments(parameters)
        state: State | None = None  # the last attempt's outcome
        while True:
            stop = run.stop_reason()
            if stop is not None:  # cancelled before this attempt, or its flow run is over: it does not start
                what = f"Task run {run.name!r}"
                if state is not None:
                    stop = f"{what} was not retried: {stop} (its last attempt: {state.message})"
                else:
                    stop = f"{what} did not start: {stop}; it has no result. Run the flow again to compute it."
                state = S.Cancelled(message=stop)
                break
            attempt = run.start_attempt()
            if task.on_running_hooks:
                yield (HOOKS, task.on_running_hooks, task, run, attempt)
            ok, value = yield (CALL, task.fn, args, kwargs, task.timeout_seconds, run, None)
            if ok:  # the common case: no message to build
                state = S.return_value_to_state(value)
            else:
                state = _task_outcome_state(ok, value, f"Task run {run.name!r}", task.timeout_seconds)
            if ok and (isinstance(value, State) or S.is_state_iterable(value)):
                run.note_returned(value)  # an inline call returns it as it is
            elif run.returned is not NOTHING:
                run.note_returned(NOTHING)
            if should_retry(task, run, state):
                delay = retry_delay(
                    task.retry_delay_seconds, task.retries, run.run_count, task.retry_jitter_factor
                )
                lifecycle(run, logging.INFO, "Task run failed with %s: %r - Retry %s/%s will start %s",
                          *_failure(ok, value, state), run.run_count, task.retries,
                          f"{delay} second(s) from now" if delay else "immediately")
                run.set_state(S.AwaitingRetry(message=f"Retry {run.run_count} of {task.retries} after: {state.message}"))
                if delay:
                    yield (SLEEP, delay, run)
                continue
            if state.is_failed():
                kind, failure = _failure(ok, value, state)
                lifecycle(run, logging.ERROR, f"Task run failed with {kind}: {failure!r}"
                          + (" - Retries are exhausted" if task.retries else ""),
                          exc_info=failure if isinstance(failure, BaseException) else None)
                if state.name == "TimedOut":
                    lifecycle(run, logging.ERROR, "Task run exceeded timeout of %s second(s)", task.timeout_seconds)
            break
        if entry is not None:
            entry.close(state)
            entry = None
        hooks = final_hooks(task, state)
        if hooks:
            run.ending(state)  # a hook reads the run's final state, as in Prefect
            yield (HOOKS, hooks, task, run, state)
        return state
    finally:
        if entry is not None:  # cut short (an interrupt): release the key's lock, store nothing
            entry.close(None)
        run.set_inputs(None)
        task_run_var.set(outer)


# -- the one guarded path -------------------------------------------------------------------
def resolve_inputs(run: TaskRun) -> dict[str, Any] | State:
    """The run's arguments with futures replaced by results, or ``NotReady`` if an upstream did not complete.

    Waits for upstream runs that have not ended (none have, for a run a runner
    dispatched). As in Prefect, an upstream admits the run if it completed, or,
    under ``allow_failure``, if it failed or never ran (NotReady); a crashed or
    cancelled upstream blocks it either way.
    """
    deps = run.dependencies
    if deps is None:
        return run.parameters
    for dep, allowed in deps:
        if isinstance(dep, State):
            state = dep
        else:
            if not dep.done:
                dep.wait()
            state = dep.states[-1]
        if not admits(state, allowed):
            return S.NotReady(message=upstream_message(dep, state))
    return resolve(run.parameters, run)


def admits(state: State, failure_allowed: bool) -> bool:
    """Whether an upstream in ``state`` lets a downstream run start."""
    kind = state.type
    if kind is StateType.COMPLETED:
        return True
    return failure_allowed and (
        kind is StateType.FAILED or (kind is StateType.PENDING and state.name == "NotReady")
    )


def upstream_message(dep: TaskRun | State, state: State) -> str:
    """Why a run waiting on ``dep`` (a task run now in ``state``, or a State) cannot start.

    Prefect's sentence, then the root cause: down a chain of NotReady runs,
    the run that failed, named once (so messages do not grow with the chain).
    """
    if not isinstance(dep, TaskRun):
        return f"Upstream state {state} did not reach a 'COMPLETED' state."
    if state.type is StateType.PENDING and state.name == "NotReady":
        # The root is read off the upstream's own message: on a cluster's worker, upstream records are stand-ins.
        found = _UPSTREAM_WORDS.fullmatch(state.message or "")
        why = "NotReady"
        if found is not None:
            root = found["why"]
            why += ": " + (root.removeprefix("NotReady: ") if root.startswith("NotReady: ")
                           else f"task run {found['name']} {root}")
    else:
        why = f"{state.name}: {state.data!r}" if isinstance(state.data, BaseException) else state.name
    return f"Upstream task run {dep.name!r} did not reach a 'COMPLETED' state ({why})."


_UPSTREAM_WORDS = re.compile(r"Upstream task run (?P<name>.+?) did not reach a 'COMPLETED' state \((?P<why>.+)\)\.", re.S)


def run_here(run: TaskRun) -> State:
    """Execute ``run`` in this thread and end it in a final state, whatever raises; return that state.

    Claims the run first (a run already claimed or cancelled is left alone and
    its current state returned), enters the context it was submitted in,
    waits for and resolves its inputs, then drives its lifecycle. A real
    interrupt (KernelInterrupt, or a KeyboardInterrupt outside the task's own
    code) ends the run Crashed with the interrupt as its data; callers in the
    thread re-raise it after the run has ended. If the run's call was
    abandoned, another thread ends the run and this returns its state as it
    is by then.
    """
    if not run.claim():
        return run.state
    context = run.take_context()
    if context is None:
        return _run_claimed(run, None)
    return context.run(_run_claimed, run, context)


def run_apart(run: TaskRun) -> State:
    """:func:`run_here` for an inline call, in a thread of its own while this one waits; its final state.

    An inline call with a deadline off the main thread runs so (no SIGALRM
    there to cut a blocked call short): like a dispatched run's, a call that
    is blocked in C at its deadline is abandoned, and the caller goes on with
    the run ended TimedOut on time.
    """
    if not run.claim():
        return run.state
    context = contextvars.copy_context()
    threading.Thread(
        target=context.run, args=(_run_claimed, run, context), name=f"nbflow-inline-{run.name}", daemon=True
    ).start()
    run.wait()
    return run.state


def _run_claimed(run: TaskRun, context: contextvars.Context | None) -> State:
    try:
        try:
            inputs = resolve_inputs(run)
            state = inputs if isinstance(inputs, State) else _drive(task_lifecycle(run, inputs), _FIRST, context)
        except BaseException as exc:  # an engine bug, bad inputs or an interrupt must still end the run
            state = _guard_state(run, exc)
        return _end(run, state)
    except RecursionError as exc:  # too deep to end the run here: end it with room to spare
        with_headroom(_end_crashed, run, exc)
        return run.state  # an inline caller raises the error from it


async def run_here_async(run: TaskRun) -> State:
    """:func:`run_here` on the running event loop: waiting for upstream runs awaits, never blocks."""
    if not run.claim():
        return run.state
    try:
        try:
            await wait_all_async(run.pending_upstream())
            inputs = resolve_inputs(run)
            state = inputs if isinstance(inputs, State) else await drive_async(task_lifecycle(run, inputs))
        except BaseException as exc:
            state = _guard_state(run, exc)
        return _end(run, state)
    except RecursionError as exc:
        with_headroom(_end_crashed, run, exc)
        return run.state


def _end(run: TaskRun, state: State) -> State:
    """End ``run`` in ``state`` (unless its lifecycle went on in another thread); return its state."""
    if state is not _ABANDONED:
        lifecycle(run, logging.INFO if state.is_completed() else logging.ERROR, "Finished in state %s", state)
        run.finish(state)
    return run.state


def _failure(ok: bool, value: Any, state: State) -> tuple[str, Any]:
    """How Prefect's log records name a failed attempt: its exception, or the failed state it returned."""
    if ok or not isinstance(value, BaseException):
        return "state", state
    return "exception", state.data if isinstance(state.data, BaseException) else value  # a timeout's own error


def _end_crashed(run: TaskRun, exc: BaseException) -> None:
    if not run.done:
        run.finish(S.Crashed(message=f"Task run {run.name!r} could not end normally: {exc!r}", data=exc))


def with_headroom(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)`` with the recursion limit raised a little: bookkeeping after a RecursionError."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 200)
    try:
        return fn(*args)
    finally:
        sys.setrecursionlimit(limit)


def _guard_state(run: TaskRun, exc: BaseException) -> State:
    """The state a run ends in when the engine itself raised ``exc`` around the user's code.

    A KeyboardInterrupt here did not come from the task's code: it is a real
    interrupt, kept as the state's data for the caller to re-raise.
    """
    what = f"Task run {run.name!r}"
    if isinstance(exc, Exception):  # e.g. an argument that fails to resolve (a raising __post_init__)
        return S.Failed(message=f"{what} could not start: {type(exc).__name__}: {exc}", data=exc)
    if isinstance(exc, (KeyboardInterrupt, DeadlineExceeded, CancelSignal)):
        return outcome_state(False, exc, what, None, TaskRunTimeoutError)
    return _crash_state(exc, what)


__all__ = [
    "CALL",
    "HOOKS",
    "SLEEP",
    "WAIT",
    "CancelSignal",
    "admits",
    "drive",
    "drive_async",
    "final_hooks",
    "outcome_state",
    "resolve_inputs",
    "retry_delay",
    "run_coroutine",
    "run_apart",
    "run_here",
    "run_here_async",
    "should_retry",
    "surfacing",
    "task_lifecycle",
    "upstream_message",
    "with_headroom",
]
