"""Futures of task runs, future lists, ``wait`` and ``as_completed``.

Every nbflow future is a :class:`PrefectFuture` over a :class:`~nbflow.records.TaskRun`
record; runners complete the record, so a future of any runner has the same
methods and semantics. Waiting uses waiters registered on the record (never
polling): ``wait`` and ``as_completed`` cost one callback per future.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from typing import Any, Generic, Iterable, Iterator, NamedTuple, TypeVar

from nbflow.completion import Countdown, blocking_wait, wait_step
from nbflow.records import TaskRun
from nbflow.states import State

logger = logging.getLogger("nbflow.futures")

R = TypeVar("R")


class PrefectFuture(Generic[R]):
    """The future result of a task run.

    ``result()`` blocks and returns the value (or raises the task's exception),
    ``wait()`` blocks without raising, ``state`` is the run's current state.
    """

    __slots__ = ("_run",)

    def __init__(self, task_run: TaskRun) -> None:
        self._run = task_run

    @property
    def task_run(self) -> TaskRun:
        """The run record behind this future."""
        return self._run

    @property
    def task_run_id(self) -> uuid.UUID:
        return self._run.id

    @property
    def state(self) -> State[R]:
        """The run's current state (Pending, Running, Completed, ...)."""
        return self._run.states[-1]

    def done(self) -> bool:
        """True once the run is over (final, cancelled, or blocked upstream)."""
        return self._run.done

    def wait(self, timeout: float | None = None) -> None:
        """Block until the run is over or ``timeout`` seconds pass. Never raises."""
        self._run.mark_resolved()
        self._run.wait(timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The run's value, waiting for it.

        A failed run re-raises its exception (or returns it with
        ``raise_on_failure=False``); a run that never ran because an upstream
        failed raises :class:`~nbflow.exceptions.UnfinishedRun`; ``timeout``
        seconds without an outcome raise :class:`TimeoutError`.
        """
        run = self._run
        run.mark_resolved()
        if not run.done and not run.wait(timeout):
            raise TimeoutError(  # Prefect's words first, then which run it is and what to do
                f"Task run {run.id} did not complete within {timeout} seconds ({run.name!r} goes on "
                "running: call .result() again to wait longer)"
            )
        return run.states[-1].result(raise_on_failure=raise_on_failure, _sync=True)

    def add_done_callback(self, fn: Any) -> None:
        """Call ``fn(future)`` once the run is over (at once if it already is).

        As with ``concurrent.futures`` (and Prefect), an exception ``fn`` raises
        is logged, never raised: not into the caller, nor into the thread that
        ended the run, whose other callbacks still run.
        """

        def call(_run: Any) -> None:
            try:
                fn(self)
            except Exception:
                logger.exception("Done callback %r of task run %r raised", fn, self._run.name)

        self._run.add_done_callback(call)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrefectFuture) and other._run is self._run

    def __hash__(self) -> int:
        return hash(self._run)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._run.name!r}, state={self.state.name})"


class PrefectConcurrentFuture(PrefectFuture[R]):
    """A future of a thread or process runner's task run."""

    __slots__ = ()


class PrefectFutureList(list, Iterator[PrefectFuture[R]]):
    """A list of futures (what ``Task.map`` returns) with bulk ``wait`` and ``result``.

    An ``Iterator`` by its bases, as Prefect's (``isinstance`` checks agree); iterate it as a list.
    """

    def wait(self, timeout: float | None = None) -> None:
        """Wait for every future, at most ``timeout`` seconds in all. Never raises on timeout."""
        wait(self, timeout=timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[R]:
        """Every future's value, in list order.

        The first failure to *happen* is raised as soon as it happens (with
        ``raise_on_failure=False`` exceptions stand in place instead).
        """
        _check_timeout(timeout)
        if raise_on_failure:
            ending = as_completed(self, timeout=timeout)
            while True:
                try:
                    future = next(ending)
                except StopIteration:
                    break
                except TimeoutError as exc:  # the wait's own (one a task raised comes from .result below)
                    raise TimeoutError(self._timed_out(timeout)) from exc
                if not future._run.states[-1].is_completed():
                    future.result(raise_on_failure=True)
        else:
            done, not_done = wait(self, timeout=timeout)
            if not_done:
                raise TimeoutError(self._timed_out(timeout))
        return [f.result(raise_on_failure=raise_on_failure) for f in self]

    def _timed_out(self, timeout: float | None) -> str:
        unfinished = sum(1 for f in set(self) if not f._run.done)
        return (f"Timed out waiting for all futures to complete within {timeout} seconds "
                f"({unfinished} of {len(set(self))} task runs have not ended)")


class DoneAndNotDoneFutures(NamedTuple, Generic[R]):
    """What :func:`wait` returns: the futures that finished and those that did not."""

    done: set[PrefectFuture[R]]
    not_done: set[PrefectFuture[R]]


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"'timeout' must be a non-negative number, got {timeout}")


def wait(futures: Iterable[PrefectFuture[R]], timeout: float | None = None) -> DoneAndNotDoneFutures[R]:
    """Wait until every future is done or ``timeout`` seconds pass.

    Returns ``(done, not_done)`` sets; never raises on timeout.
    """
    _check_timeout(timeout)
    unique = set(futures)
    pending = [f for f in unique if not f._run.done]
    for f in unique:
        f._run.mark_resolved()
    if pending:
        gate = Countdown(len(pending))
        for f in pending:
            f._run.add_done_callback(gate.tick)
        gate.wait(timeout)
    done = {f for f in unique if f._run.done}
    return DoneAndNotDoneFutures(done, unique - done)


def as_completed(
    futures: Iterable[PrefectFuture[R]], timeout: float | None = None
) -> Iterator[PrefectFuture[R]]:
    """Yield each distinct future once, as it finishes.

    Raises :class:`TimeoutError` if ``timeout`` seconds pass before all finish
    (after yielding those that did).
    """
    _check_timeout(timeout)
    unique = list(dict.fromkeys(futures))
    if not unique:
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    finished: queue.SimpleQueue = queue.SimpleQueue()
    by_run = {}
    for f in unique:
        f._run.mark_resolved()
        by_run[id(f._run)] = f
        f._run.add_done_callback(finished.put)
    got: list[Any] = []

    def attempt(seconds: float | None) -> bool:
        try:
            got.append(finished.get(timeout=seconds))
        except queue.Empty:
            return False
        return True

    for left in range(len(unique), 0, -1):
        if finished.empty():
            with blocking_wait():  # the main thread's wait calls the notebook's wait hook (a Cancel click)
                if not wait_step(attempt, None if deadline is None else max(deadline - time.monotonic(), 0)):
                    raise TimeoutError(f"{left} (of {len(unique)}) futures unfinished") from None
            run = got.pop()
        else:
            run = finished.get()
        yield by_run[id(run)]


def resolve_futures_to_states(value: Any) -> Any:
    """Replace futures in a (possibly nested) value by their final states, waiting for them.

    As Prefect's, futures inside ``quote(...)`` are left as they are, not waited for.
    """
    from nbflow.resolve import visit

    def to_state(f: PrefectFuture) -> State:
        f.wait()
        return f.state

    return visit(value, on_future=to_state, quoted=False)


def resolve_futures_to_results(value: Any) -> Any:
    """Replace futures in a (possibly nested) value by their results, waiting for them.

    As Prefect's, a future whose run did not complete raises ``Exception("At least one
    result did not complete successfully")``, and futures inside ``quote(...)`` are
    left as they are, not waited for.
    """
    from nbflow.resolve import visit

    def to_result(f: PrefectFuture) -> Any:
        f.wait()
        if not f.state.is_completed():
            raise Exception("At least one result did not complete successfully")
        return f.result()

    return visit(value, on_future=to_result, quoted=False)


__all__ = [
    "PrefectFuture",
    "PrefectConcurrentFuture",
    "PrefectFutureList",
    "DoneAndNotDoneFutures",
    "wait",
    "as_completed",
    "resolve_futures_to_results",
    "resolve_futures_to_states",
]
