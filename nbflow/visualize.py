"""See a flow before it runs: ``Flow.visualize()`` (Prefect 3's) and ``Flow.plan()`` (nbflow's).

Both call the flow's body with a :class:`Tracer` in force (``nbflow.context.tracer_var``):
every task call inside it -- inline, ``.submit()``, ``.map()`` -- is recorded
and returns a placeholder (a :class:`VizTask`, also a future) or the task's
``viz_return_value``, and no task body runs. Code of the flow body that is not
a task does run, as in Prefect (``visualize`` warns so).

``visualize`` behaves as Prefect 3.9.1's: it returns None, draws the graph
with graphviz (a PNG named after the flow, opened in a viewer) or, when IPython
is running, displays the live view's DAG in the cell; a body that needs a real
value (iterating over a placeholder, arithmetic on it) raises the error Python
gives, with Prefect's hint about ``viz_return_value`` appended; called where an
event loop runs (a notebook cell too), it returns a coroutine to await.
Beyond Prefect, ``.submit()`` and ``.map()`` are traced (Prefect 3.9.1 raises
for them), edges come from ``wait_for`` and from placeholders nested in
arguments too, and a map is one node labelled with its count.

``plan`` traces the same way and asks the result store, with the cache
machinery a real run uses (``nbflow.store.cache.policy_of``, the policy's
``key_parts``), which runs would be served Cached and which would run. A call
whose inputs are concrete values, or values of upstream calls predicted
Cached (read from the store), can be keyed; whatever depends on a run that
would run cannot be known, and would run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import html
import io
import statistics
import sys
import uuid
import warnings
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, NamedTuple

from nbflow import settings
from nbflow import states as S
from nbflow.annotations import BaseAnnotation, unmapped
from nbflow.cache_policies import digest_parts
from nbflow.context import current_flow_run, task_run_var, tracer_var
from nbflow.futures import PrefectFuture
from nbflow.resolve import find, resolve


class FlowVisualizationError(Exception):
    """The flow's graph could not be built or rendered (as Prefect's)."""


class VisualizationUnsupportedError(Exception):
    """The flow does something a trace cannot follow (as Prefect's)."""


class GraphvizImportError(Exception):
    """The ``graphviz`` package failed while building the graph (as Prefect's)."""


class GraphvizExecutableNotFoundError(Exception):
    """Graphviz's ``dot`` program is not installed or not on PATH (as Prefect's)."""


_VIZ_HINT = (
    "It's possible you are trying to visualize a flow that contains "
    "code that directly interacts with the result of a task"
    " inside of the flow. \nTry passing a `viz_return_value` "
    "to the task decorator, e.g. `@task(viz_return_value=[1, 2, 3]).`"
)
_BUILD_FAILED = (
    "Something went wrong building the flow's visualization."
    " If you're interacting with the return value of a task"
    " directly inside of your flow, you must set a set a `viz_return_value`"
    ", for example `@task(viz_return_value=[1, 2, 3])`."
)
_NO_DOT = (
    "It appears you do not have Graphviz installed, or it is not on your "
    "PATH. Please install Graphviz from http://www.graphviz.org/download/. "
    "Note: Just installing the `graphviz` python package is not "
    "sufficient."
)
_OURS = (GraphvizImportError, GraphvizExecutableNotFoundError, VisualizationUnsupportedError, FlowVisualizationError)
# Values whose identity says nothing about where they came from (Prefect's UNTRACKABLE_TYPES).
_UNTRACKABLE = (bool, type(None), type(...), type(NotImplemented))

_NOTHING: Any = object()  # a placeholder with no value: neither stored nor a viz_return_value


# -- the trace -----------------------------------------------------------------------------------
class TracedCall:
    """One traced call of a task (a map is one call) or subflow: a node of Prefect's graph."""

    def __init__(self, what: Any, kind: str, name: str, upstream: list[TracedCall]) -> None:
        self.what = what  # the Task (or Flow, for a subflow)
        self.kind = kind  # "call", "submit", "map" or "subflow"
        self.name = name  # Prefect's node name: "{task name}-{n}"
        self.upstream = upstream
        self.runs: int | None = 0  # None: a map over an iterable whose length the trace cannot know
        self.cached = 0

    @property
    def to_run(self) -> int | None:
        """How many of its runs would run (plan); None when the number of runs is unknown."""
        return None if self.runs is None else self.runs - self.cached

    def __repr__(self) -> str:
        return f"TracedCall({self.name!r}, runs={self.runs})"


class _Settled:
    """What a placeholder future stands on instead of a task run record: over, with a known state."""

    __slots__ = ("id", "name", "states")

    def __init__(self, name: str, value: Any) -> None:
        self.id = None
        self.name = name
        self.states = [S.Completed(data=value) if value is not _NOTHING else S.Pending()]

    done = True

    def mark_resolved(self) -> None:
        return None

    def wait(self, timeout: float | None = None) -> bool:
        return True

    def add_done_callback(self, fn: Any) -> None:
        fn(self)


class VizTask(PrefectFuture):
    """What a traced task call returns: a placeholder for a run that does not happen.

    A future (``.result()``, ``.wait()``, ``wait``, ``as_completed`` work), so
    downstream calls record it as their upstream. ``.result()`` is the value
    a traced inline call gives: the stored value (plan, Cached), the task's
    ``viz_return_value``, or the placeholder itself. Anything that needs a
    real value (iterating, arithmetic) raises ``TypeError`` as on Prefect's
    ``VizTask``.
    """

    __slots__ = ("call", "known", "value")

    def __init__(self, call: TracedCall, value: Any = _NOTHING, known: bool = False) -> None:
        super().__init__(_Settled(call.name, value))  # type: ignore[arg-type]
        self.call = call
        self.value = value
        self.known = known  # the value is the run's real result (plan: read from the store)

    @property
    def name(self) -> str:
        """The traced call's node name, ``{task name}-{n}`` (as Prefect's ``VizTask.name``)."""
        return self.call.name

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        """The value a traced inline call would give (see the class docstring)."""
        return self if self.value is _NOTHING else self.value

    def __repr__(self) -> str:
        return f"<VizTask {self.call.name!r}>"


def _trace_runner() -> Any:
    """A task runner whose ``map`` is the real one (same expansion, same errors) and whose runs are traced."""
    from nbflow.runners.base import TaskRunner

    class TraceRunner(TaskRunner):
        def __init__(self, tracer: Tracer) -> None:
            super().__init__()
            self.tracer = tracer
            self._started = True  # a trace starts nothing: its map is usable as soon as it exists

        def duplicate(self) -> TraceRunner:
            return TraceRunner(self.tracer)

        def submit(self, task: Any, parameters: dict[str, Any] | None = None,
                   wait_for: Iterable[Any] | None = None, map_index: int | None = None) -> PrefectFuture:
            return self.tracer.mapped_run(parameters or {})

        def _dispatch(self, run: Any) -> None:
            raise AssertionError("a trace dispatches nothing")

    return TraceRunner


class Tracer:
    """Records the task calls of a flow body; with ``planning``, predicts each run from the store."""

    def __init__(self, planning: bool = False, flow_parameters: dict[str, Any] | None = None) -> None:
        self.planning = planning
        self.flow_parameters = flow_parameters or {}
        self.calls: list[TracedCall] = []
        self._numbers: dict[str, int] = {}
        self._linked: dict[int, tuple[Any, VizTask]] = {}  # id of a returned value -> (it, its call)
        self._written: dict[str, bool] = {}  # keys runs of this plan would store -> by an inline call
        self._mapping: tuple[TracedCall, bool] | None = None
        self._runner: Any = None

    @contextlib.contextmanager
    def active(self) -> Iterator[Tracer]:
        """Trace the task calls made in this context (this thread, and tasks it starts)."""
        token = tracer_var.set(self)
        try:
            yield self
        finally:
            tracer_var.reset(token)

    # -- the hook: Task.__call__ / submit / map (and Flow.__call__) hand their call here ----------
    def trace(self, what: Any, kind: str, args: tuple, kwargs: dict[str, Any],
              wait_for: Iterable[Any] | None = None, return_state: bool = False) -> Any:
        """Record a call of ``what`` (``kind``: call, submit, map, subflow); returns what it stands for."""
        parameters = what.signature.bind(args, kwargs, apply_defaults=kind != "map")
        parameters = {k: self._linked.get(id(v), (None, v))[1] for k, v in parameters.items()}
        if kind == "map":
            return self._map(what, parameters, wait_for, return_state)
        if kind == "subflow" and self.planning:
            return self._into_subflow(what, parameters)
        call = self._record(what, kind, parameters, wait_for)
        future = self._run(call, parameters)
        if kind == "submit":
            return future.state if return_state else future
        value = future.result()
        if value is not future:
            self._link(value, future)
        if what.isasync:
            return _ready(value)
        return value

    def mapped_run(self, parameters: dict[str, Any]) -> VizTask:
        """One run of the map being traced (called by the trace's task runner)."""
        assert self._mapping is not None
        call, tainted = self._mapping
        return self._run(call, parameters, tainted)

    def _record(self, what: Any, kind: str, parameters: dict[str, Any], wait_for: Iterable[Any] | None) -> TracedCall:
        upstream: dict[int, TracedCall] = {}
        for placeholder in find(parameters, PrefectFuture) + find(list(wait_for or ()), PrefectFuture):
            if isinstance(placeholder, VizTask):
                upstream.setdefault(id(placeholder.call), placeholder.call)
        number = self._numbers[what.name] = self._numbers.get(what.name, -1) + 1
        call = TracedCall(what, kind, f"{what.name}-{number}", list(upstream.values()))
        self.calls.append(call)
        return call

    def _map(self, task: Any, parameters: dict[str, Any], wait_for: Iterable[Any] | None, return_state: bool) -> Any:
        call = self._record(task, "map", parameters, wait_for)
        unknown = [k for k, v in parameters.items() if _unknown_iterable(v)]
        if unknown and not any(_iterable(v) for k, v in parameters.items() if k not in unknown):
            call.runs = None  # its length is not known: one placeholder stands for all its runs
            return VizTask(call)
        tainted = any(isinstance(p, VizTask) and not p.known for p in find(parameters, PrefectFuture))
        if self._runner is None:
            self._runner = _trace_runner()(self)
        self._mapping = (call, tainted)
        try:
            futures = self._runner.map(task, parameters, wait_for)
        finally:
            self._mapping = None
        return [f.state for f in futures] if return_state else futures

    def _into_subflow(self, flow: Any, parameters: dict[str, Any]) -> Any:
        """Plan a subflow: trace its body, so its task runs are counted (its own parameters in force)."""
        args, kwargs = flow.signature.call_arguments(flow.parameters_for_run(parameters))
        outer, self.flow_parameters = self.flow_parameters, parameters
        if flow.isasync:
            return self._subflow_async(flow, args, kwargs, outer)
        try:
            return flow.fn(*args, **kwargs)
        finally:
            self.flow_parameters = outer

    async def _subflow_async(self, flow: Any, args: tuple, kwargs: dict[str, Any], outer: dict[str, Any]) -> Any:
        try:
            return await flow.fn(*args, **kwargs)
        finally:
            self.flow_parameters = outer

    def _link(self, value: Any, future: VizTask) -> None:
        # As Prefect: a returned value passed on later is known by its identity (not singletons).
        if type(value) in _UNTRACKABLE or (isinstance(value, int) and -5 <= value <= 256):
            return
        self._linked[id(value)] = (value, future)

    # -- one run ---------------------------------------------------------------------------------
    def _run(self, call: TracedCall, parameters: dict[str, Any], tainted: bool = False) -> VizTask:
        assert call.runs is not None
        call.runs += 1
        stand_in = getattr(call.what, "viz_return_value", None) or _NOTHING  # Prefect: a falsy one is ignored
        if not self.planning or tainted:
            return VizTask(call, stand_in)
        found = self._predict(call.what, parameters, inline=call.kind == "call")
        if found is None:
            return VizTask(call, stand_in)
        call.cached += 1
        return VizTask(call, found[0], known=True) if found[0] is not _NOTHING else VizTask(call, stand_in)

    def _predict(self, task: Any, parameters: dict[str, Any], inline: bool) -> tuple[Any] | None:
        """``(stored value,)`` if the run would be Cached (``(_NOTHING,)``: by a run earlier in this plan)."""
        placeholders = find(parameters, PrefectFuture)
        if any(not (isinstance(p, VizTask) and p.known) for p in placeholders):
            return None  # an input comes from a run that would run: its key cannot be known
        if placeholders:
            parameters = resolve(parameters)  # as the real run resolves them: values, annotations undone
        keyed = self._key(task, parameters)
        if keyed is None:
            return None
        key, store = keyed
        from nbflow.store import cache

        found = None if task.refresh_cache else cache.read(store, key)
        if found is None and not task.refresh_cache and self._written.get(key):
            found = (_NOTHING,)  # an inline run before this one stores it first
        if found is None:
            self._written[key] = self._written.get(key, False) or inline
        return found

    def _key(self, task: Any, parameters: dict[str, Any]) -> tuple[str, Any] | None:
        """The run's cache key and store, as ``nbflow.store.cache.open_entry`` forms them; None: no lookup."""
        current = settings.current
        if not (task.persist_result or current.cache):
            return None
        from nbflow.store import cache

        policy, persist = cache.policy_of(task)
        if not persist:
            return None
        try:
            parts = cache.key_parts(task, _PlannedRun(task), parameters, policy, self.flow_parameters,
                                    names={"flow_run": _NOT_YET, "task_run": _NOT_YET})
        except Exception:  # noqa: BLE001 - it names the run (unknown yet), or the real run logs the failure and runs
            return None
        if parts is None:
            return None
        return digest_parts(parts), cache.store_at(getattr(policy, "key_storage", None))


class _NotKnownYet(Exception):
    pass


class _NotYetRun:
    """``flow_run`` / ``task_run`` in a ``result_storage_key`` template: a run not made yet."""

    def __getattr__(self, name: str) -> Any:
        raise _NotKnownYet(name)

    def __format__(self, spec: str) -> str:
        raise _NotKnownYet(spec)


_NOT_YET = _NotYetRun()


class _PlannedRun:
    """The ``task_run`` a policy sees in a plan: a run that does not exist yet (a new id, no flow run)."""

    def __init__(self, task: Any) -> None:
        self.id = uuid.uuid4()
        self.flow_run_id = None
        self.task = task
        self.name = task.name


def _iterable(value: Any) -> bool:
    """Whether a concrete argument of a map is mapped over (the runner's rule: not str, bytes, files)."""
    if isinstance(value, (unmapped, PrefectFuture, str, bytes, io.IOBase)):
        return False
    if isinstance(value, BaseAnnotation):
        return _iterable(value.value)
    try:
        iter(value)
    except TypeError:
        return False
    return True


def _unknown_iterable(value: Any) -> bool:
    """Whether a map's argument is a placeholder with no value: mapped over only if nothing else is."""
    if isinstance(value, unmapped):
        return False
    if isinstance(value, BaseAnnotation):
        value = value.value
    return isinstance(value, VizTask) and value.value is _NOTHING


async def _ready(value: Any) -> Any:
    return value


# -- running the body ----------------------------------------------------------------------------------
def _in_async_context() -> bool:
    """Prefect's ``is_in_async_context``: inside an async run, or where an event loop runs."""
    run = task_run_var.get()
    owner = run.task if run is not None else None
    if owner is None:
        flow_run = current_flow_run()
        owner = flow_run.flow if flow_run is not None else None
    if owner is not None:
        return bool(owner.isasync)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run an async body to its end from sync code (in a helper thread if a loop runs here)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures
    import contextvars

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nbflow-trace") as pool:
        return pool.submit(contextvars.copy_context().run, asyncio.run, coro).result()


def _hinted(exc: Exception) -> Exception:
    """Prefect's rewrite of an error from the body: same type, its message plus the viz_return_value hint."""
    try:
        new = type(exc)(str(exc) + "\n" + _VIZ_HINT)
    except Exception:  # noqa: BLE001 - a type not built from a message: keep the original
        return exc
    new.__traceback__ = exc.__traceback__
    return new


@contextlib.contextmanager
def _tracing(tracer: Tracer) -> Iterator[Tracer]:
    """The tracer in force; errors of the body come out as Prefect's visualize gives them."""
    try:
        with tracer.active():
            yield tracer
    except _OURS:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the hint
        raise _hinted(exc)  # as Prefect: the original is the new one's context


# -- visualize --------------------------------------------------------------------------------------------
def visualize(flow: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    """``Flow.visualize(*args, **kwargs)``: trace the body and draw its graph; returns None.

    As Prefect's (``async_dispatch``): inside an async run or a running event
    loop (a notebook cell) it returns a coroutine to await; ``_sync=True`` or
    ``False`` decides instead.
    """
    sync = kwargs.pop("_sync", None)
    if not (sync if sync is not None else not _in_async_context()):
        return _visualize_async(flow, args, kwargs)
    _check_graphviz()
    _warn()
    with _tracing(Tracer()) as tracer:
        if flow.isasync:
            _run_coroutine(flow.fn(*args, **kwargs))
        else:
            flow.fn(*args, **kwargs)
    _show(flow.name, tracer)
    return None


async def _visualize_async(flow: Any, args: tuple, kwargs: dict[str, Any]) -> None:
    _check_graphviz()
    _warn()
    with _tracing(Tracer()) as tracer:
        if flow.isasync:
            await flow.fn(*args, **kwargs)
        else:
            flow.fn(*args, **kwargs)
    _show(flow.name, tracer)


def _check_graphviz() -> None:
    try:
        import graphviz  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "flow.visualize() draws with graphviz: pip install graphviz (and install the "
            "Graphviz 'dot' program from https://www.graphviz.org/download/)."
        ) from exc


def _warn() -> None:
    warnings.warn(
        "`flow.visualize()` will execute code inside of your flow that is not decorated with `@task` or `@flow`.",
        stacklevel=4,
    )


def _ipython_running() -> bool:
    ipython = sys.modules.get("IPython")
    return ipython is not None and ipython.get_ipython() is not None


def _show(name: str, tracer: Tracer) -> None:
    """In IPython: the live view's DAG in the cell. Elsewhere: Prefect's PNG, opened in a viewer."""
    if drawer is not None and _ipython_running():
        from IPython.display import display

        display(drawer(name, tracer.calls, False))
        return
    graph = digraph(tracer.calls)
    import graphviz

    try:
        graph.render(filename=name, view=True, format="png", cleanup=True)
    except graphviz.backend.ExecutableNotFound as exc:
        raise GraphvizExecutableNotFoundError(_NO_DOT) from exc
    except Exception:  # noqa: BLE001 - Prefect's catch-all, raised as its error
        raise FlowVisualizationError(_BUILD_FAILED) from None


def digraph(calls: list[TracedCall]) -> Any:
    """Prefect's graph of the traced calls: a ``graphviz.Digraph``, one node per call (``name-n``)."""
    try:
        import graphviz

        g = graphviz.Digraph()
        for call in calls:
            if call.kind == "map":
                g.node(call.name, label=f"{call.name} x{call.runs if call.runs is not None else '?'}")
            else:
                g.node(call.name)
            for up in call.upstream:
                g.edge(up.name, call.name)
        return g
    except ImportError as exc:
        raise GraphvizImportError from exc
    except Exception:  # noqa: BLE001 - Prefect's catch-all, raised as its error
        raise FlowVisualizationError(_BUILD_FAILED) from None


class TraceGroup(NamedTuple):
    """The traced calls of one task (or subflow): one node of the drawing."""

    what: Any
    calls: list[TracedCall]

    @property
    def runs(self) -> int:
        """How many runs the calls make (a map whose length is unknown counts as one)."""
        return sum(c.runs if c.runs is not None else 1 for c in self.calls)


def trace_groups(calls: list[TracedCall]) -> tuple[list[TraceGroup], set[tuple[int, int]]]:
    """The calls by task (one node per task, as the live view) and the edges between those nodes."""
    index: dict[int, int] = {}
    groups: list[TraceGroup] = []
    for call in calls:
        at = index.setdefault(id(call.what), len(groups))
        if at == len(groups):
            groups.append(TraceGroup(call.what, []))
        groups[at].calls.append(call)
    edges = {(index[id(up.what)], index[id(call.what)]) for call in calls for up in call.upstream}
    return groups, {(a, b) for a, b in edges if a != b}


#: ``drawer(name, calls, planned)`` draws traced calls as the live view draws a run (an object
#: with ``svg()`` and ``_repr_html_``): the notebook extension installs it when it loads, so
#: this module never reaches the notebook layer. Without it, visualize() renders with graphviz
#: as Prefect does, and a plan's HTML has no picture.
drawer: Callable[[str, list[TracedCall], bool], Any] | None = None


# -- plan --------------------------------------------------------------------------------------------------
class PlanGroup(NamedTuple):
    """What a plan predicts for one task: its runs, how many would be Cached and how many would run.

    ``runs`` and ``to_run`` are None when a map's length cannot be known
    before its upstream runs; ``seconds_per_run`` is the median duration of
    the task's completed runs in the latest runs of the flow (None: no history).
    """

    name: str
    runs: int | None
    cached: int
    to_run: int | None
    seconds_per_run: float | None
    upstream: tuple[str, ...]

    @property
    def estimate(self) -> float | None:
        """Seconds its runs that would run take, one after the other (None if unknown)."""
        if self.to_run is None or self.seconds_per_run is None:
            return None
        return self.to_run * self.seconds_per_run


class Plan:
    """What a run of a flow with these arguments would do: per task, Cached runs and runs to run.

    ``print(plan)`` shows a table; in a notebook the plan displays as the DAG
    with the counts and the table. ``plan["task name"]`` is one
    :class:`PlanGroup`; ``cached`` and ``to_run`` are the totals.
    """

    def __init__(self, flow_name: str, calls: list[TracedCall], durations: dict[str, float]) -> None:
        self.flow_name = flow_name
        self.calls = calls
        groups, edges = trace_groups(calls)
        names = [g.what.name for g in groups]
        upstream: dict[int, list[str]] = collections.defaultdict(list)
        for a, b in sorted(edges):
            upstream[b].append(names[a])
        self.groups: list[PlanGroup] = []
        for i, group in enumerate(groups):
            unknown = any(c.runs is None for c in group.calls)
            runs = None if unknown else sum(c.runs or 0 for c in group.calls)
            cached = sum(c.cached for c in group.calls)
            self.groups.append(PlanGroup(
                group.what.name, runs, cached, None if runs is None else runs - cached,
                durations.get(group.what.name), tuple(upstream[i]),
            ))

    @property
    def cached(self) -> int:
        """Task runs that would be served from the cache."""
        return sum(g.cached for g in self.groups)

    @property
    def to_run(self) -> int | None:
        """Task runs that would run (None if a map's length is unknown)."""
        counts = [g.to_run for g in self.groups]
        return None if None in counts else sum(c for c in counts if c is not None)

    @property
    def estimate(self) -> float | None:
        """Seconds the runs to run took in the history, added up (None if none is known)."""
        known = [g.estimate for g in self.groups if g.estimate is not None]
        return sum(known) if known else None

    def __getitem__(self, name: str) -> PlanGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(f"flow {self.flow_name!r} calls no task named {name!r}; it calls: "
                       f"{', '.join(g.name for g in self.groups) or '(none)'}")

    @property
    def dag(self) -> Any:
        """The DAG with each task's runs shown Cached or Pending (would run); None without the notebook extension."""
        return drawer(self.flow_name, self.calls, True) if drawer is not None else None

    def rows(self) -> list[tuple[str, str, str, str, str, str]]:
        """The table: task, runs, cached, to run, time per run, estimate (as text)."""
        return [
            (g.name, _count(g.runs), f"{g.cached:,}", _count(g.to_run),
             _seconds(g.seconds_per_run), _seconds(g.estimate))
            for g in self.groups
        ]

    def summary(self) -> str:
        """One line: how many task runs, Cached and to run, and the time estimate."""
        runs = None if self.to_run is None else self.cached + self.to_run
        line = (f"Plan of flow {self.flow_name!r}: {_count(runs)} task run{'' if runs == 1 else 's'}, "
                f"{self.cached:,} cached, {_count(self.to_run)} to run")
        if self.to_run and self.estimate is not None:
            line += f" (about {_seconds(self.estimate)} from the run history)"
        return line

    def __str__(self) -> str:
        header = ("task", "runs", "cached", "to run", "time/run", "estimate")
        rows = [header, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [self.summary()]
        for row in rows:
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
            lines.append("  ".join(cells).rstrip())
        if any(g.runs is None for g in self.groups):
            lines.append("?: a map over the result of a run that would run; its length is known only then.")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<{self.summary()}>"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("task", "runs", "cached", "to run", "time/run", "estimate"))
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in self.rows()
        )
        dag = self.dag
        picture = dag.svg() if dag is not None else ""
        return (
            f'<div class="nbflow-plan"><p>{html.escape(self.summary())}</p>{picture}'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
        )


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def plan(flow: Any, args: tuple, kwargs: dict[str, Any]) -> Plan:
    """``Flow.plan(*args, **kwargs)``: trace the body, predict each run from the store (see the module doc)."""
    parameters = flow.parameters_for_run(flow.signature.bind(args, kwargs))
    call_args, call_kwargs = flow.signature.call_arguments(parameters)
    with _tracing(Tracer(planning=True, flow_parameters=parameters)) as tracer:
        if flow.isasync:
            _run_coroutine(flow.fn(*call_args, **call_kwargs))
        else:
            flow.fn(*call_args, **call_kwargs)
    return Plan(flow.name, tracer.calls, _durations(flow.name))


def _durations(flow_name: str, latest: int = 5) -> dict[str, float]:
    """Median seconds of each task's completed runs in the latest runs of the flow (subflows included)."""
    if not settings.current.history:
        return {}
    from nbflow import history

    per_task: dict[str, list[float]] = collections.defaultdict(list)
    todo = list(history.flow_runs(name=flow_name, limit=latest))
    while todo:
        run = todo.pop()
        todo += run.subflow_runs
        for task_run in run.task_runs:
            if task_run.state.name == "Completed" and task_run.duration is not None:
                per_task[task_run.task_name].append(task_run.duration)
    return {name: statistics.median(values) for name, values in per_task.items()}


__all__ = [
    "FlowVisualizationError",
    "GraphvizExecutableNotFoundError",
    "GraphvizImportError",
    "Plan",
    "PlanGroup",
    "TracedCall",
    "Tracer",
    "VisualizationUnsupportedError",
    "TraceGroup",
    "VizTask",
    "digraph",
    "drawer",
    "plan",
    "trace_groups",
    "visualize",
]
