"""The ``%%flow`` cell magic and the ``%nbflow`` line magic.

``%%flow`` makes the cell body the body of a flow run: it executes in the
notebook's namespace (names it assigns stay there), ``.submit``/``.map`` work
at its top level, its task runs are waited for, and an exception in it fails
the run and shows as usual; the value of its last expression is the cell's
result.

In a kernel the cell *awaits* its run: an input transformer turns a
``%%flow`` cell into ``await run_flow_cell(...)``, the flow runs in a
background thread, and the kernel goes on handling widget messages (a
blocked, synchronous cell never receives them), so the view's Cancel button
works; a kernel interrupt cancels the run and returns within
``settings.interrupt_grace`` seconds. Elsewhere (a terminal IPython) the
magic runs the flow in the calling thread.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import contextvars
import re
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from nbflow import completion
from nbflow import settings as nbflow_settings
from nbflow.context import current_flow_run
from nbflow.exceptions import CancelledRun, KernelInterrupt
from nbflow.flows import Flow, cancel_flow_run
from nbflow.notebook import output
from nbflow.notebook import session as sessions
from nbflow.notebook.session import CellOptions, NotebookSession, settings
from nbflow.records import FlowRun, find_flow_run, last_flow_run
from nbflow.timeouts import interrupt_thread

RUNNERS = ("thread", "process", "dask", "ray")
COMMANDS = ("runs", "view", "dag", "cache", "history", "retry", "plan", "wait", "export")  # of %nbflow
background: list[Any] = []  # the CellFlows started with %%flow --background, oldest first


def make_runner(name: str, max_workers: int | None) -> Any:
    """The task runner a ``%%flow --runner NAME --max-workers N`` cell asks for."""
    from nbflow import task_runners

    if name == "thread":
        return task_runners.ThreadPoolTaskRunner(max_workers=max_workers)
    if name == "process":
        return task_runners.ProcessPoolTaskRunner(max_workers=max_workers)
    if name == "dask":
        runner = task_runners.DaskTaskRunner
        return runner(cluster_kwargs={"n_workers": max_workers}) if max_workers else runner()
    if name == "ray":
        runner = task_runners.RayTaskRunner
        return runner(init_kwargs={"num_cpus": max_workers}) if max_workers else runner()
    raise UsageError(f"--runner must be one of {', '.join(RUNNERS)}, got {name!r}")


def run_code(shell: Any, source: str, filename: str) -> Any:
    """Execute Python source in the user namespace like a cell; return its last expression's value.

    ``filename`` names the source in tracebacks (IPython caches it); a
    trailing ``;`` hides the value, as in any cell.
    """
    tree = shell.transform_ast(shell.compile.ast_parse(source, filename=filename))
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not source.rstrip().endswith(";"):
        last = ast.Expression(tree.body.pop().value)
    if tree.body:
        exec(shell.compile(tree, filename, "exec"), shell.user_global_ns, shell.user_ns)
    if last is not None:
        return eval(shell.compile(last, filename, "eval"), shell.user_global_ns, shell.user_ns)
    return None


def _cell_number(shell: Any) -> int:
    """The number of the cell executing now (IPython 9 counts up before executing, 8 after)."""
    result = getattr(shell.displayhook, "exec_result", None)
    return getattr(result, "execution_count", None) or shell.execution_count


def wait_for_task_runs(flow_run: FlowRun) -> None:
    """Wait until every task run of ``flow_run`` has ended (including runs started meanwhile)."""
    while True:
        pending = [run for run in list(flow_run.task_runs) if not run.done]
        if not pending:
            return
        for run in pending:
            run.wait()


class CellFlow:
    """One execution of a ``%%flow`` cell: its flow, its run, and the cell's value."""

    def __init__(self, shell: Any, session: NotebookSession, line: str, cell: str) -> None:
        args = parse_argstring(NbflowMagics.flow, line)
        if args.max_workers is not None and args.max_workers < 1:
            raise UsageError(f"--max-workers must be at least 1, got {args.max_workers}")
        self.shell = shell
        # Magics in the body are transformed now; a blank first line stands for the %%flow
        # line, so tracebacks number the body's lines as the cell does.
        self.source = "\n" + shell.transform_cell(cell)
        self.filename = shell.compile.cache(self.source, _cell_number(shell), raw_code=self.source)
        self.flow = Flow(self._body, name=args.name or "cell", task_runner=make_runner(args.runner, args.max_workers))
        session.cells[self.flow] = CellOptions(view=not args.no_view, cancel=self.cancel)
        self.value: Any = None
        self.flow_run: FlowRun | None = None
        self._thread: threading.Thread | None = None
        self._in_body = False
        self._lock = threading.Lock()
        self._outcome: tuple[bool, Any] | None = None
        self._cancelled_from_view = False
        self._cache = args.cache
        self.background = args.background
        self._ended: threading.Event | None = None

    def _body(self) -> None:
        with self._lock:
            self.flow_run = current_flow_run()
            self._in_body = True
        current = nbflow_settings.current
        cache_before = current.cache
        current.cache = cache_before or self._cache
        try:
            self.value = run_code(self.shell, self.source, self.filename)
            if self.flow_run is not None:
                wait_for_task_runs(self.flow_run)
        finally:
            current.cache = cache_before
            with self._lock:
                self._in_body = False

    # -- running ---------------------------------------------------------------------------
    def run(self) -> Any:
        """Run the flow in this thread; the cell's value, or its exception raised."""
        __tracebackhide__ = True
        try:
            self.flow()
        except BaseException as exc:
            raise self._failure(exc) from None
        return self.value

    async def run_async(self) -> Any:
        """Run the flow in a background thread while the kernel's loop keeps serving messages.

        An interrupt (SIGINT, or the awaiting task being cancelled) stops the
        run; after ``settings.interrupt_grace`` seconds the cell returns even
        if a task is still blocked in C code.
        """
        __tracebackhide__ = True
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        parent = output.current_parent(self.shell)
        interrupted = False

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def interrupt() -> None:
            nonlocal interrupted
            if not interrupted:
                interrupted = True
                self._stop("interrupted")
                loop.call_later(settings.interrupt_grace, finished)

        self._thread = self._runner_thread(parent, lambda: loop.call_soon_threadsafe(finished))
        with _on_sigint(lambda: loop.call_soon_threadsafe(interrupt)):  # before the run can start
            self._thread.start()
            while not done.done():
                try:
                    await asyncio.shield(done)
                except asyncio.CancelledError:  # how ipykernel passes an interrupt on to a coroutine
                    interrupt()
        if self._outcome is None:
            name = self.flow_run.name if self.flow_run is not None else self.flow.name
            raise KeyboardInterrupt(f"flow run {name!r} is still stopping in the background; its view shows when it has.")
        ok, value = self._outcome
        if not ok:
            raise self._failure(value) from None
        return self.value

    def _runner_thread(self, parent: Any, then: Callable[[], Any]) -> threading.Thread:
        """A thread (not started) that runs the flow, keeps its outcome, then calls ``then``."""

        def target() -> None:
            with output.thread_parent(self.shell, parent):
                try:
                    self._outcome = (True, self.flow())
                except BaseException as exc:  # handed to whoever awaits or waits for the cell
                    self._outcome = (False, exc)
            then()

        context = contextvars.copy_context()
        return threading.Thread(target=context.run, args=(target,), name="nbflow-cell", daemon=True)

    def start_background(self) -> None:
        """Start the run and return at once (``%%flow --background``); :meth:`wait` waits for it."""
        self._ended = threading.Event()
        self._thread = self._runner_thread(output.current_parent(self.shell), self._ended.set)
        background.append(self)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until a background run ends; the cell's value, or its exception raised."""
        __tracebackhide__ = True
        # in steps, with the wait hook between them: the view's Cancel button works meanwhile
        if not completion.wait_step(self._ended.wait, timeout):
            raise TimeoutError(f"flow run {self.label!r} has not ended after {timeout} s")
        ok, value = self._outcome  # type: ignore[misc]
        if not ok:
            raise self._failure(value) from None
        return self.value

    @property
    def label(self) -> str:
        """The run's name once it started, else the flow's."""
        return self.flow_run.name if self.flow_run is not None else self.flow.name

    def cancel(self) -> None:
        """The view's Cancel button: stop the cell's body and cancel its unfinished task runs."""
        self._cancelled_from_view = True
        self._stop("cancelled from the run view")

    def _stop(self, reason: str) -> None:
        with self._lock:
            thread = self._thread
            if self._in_body and thread is not None and thread.ident is not None:
                interrupt_thread(thread.ident, KernelInterrupt)
            flow_run = self.flow_run
        if flow_run is not None:
            cancel_flow_run(flow_run, reason)

    def _failure(self, exc: BaseException) -> BaseException:
        """What the cell raises: the body's exception without nbflow's frames in front."""
        if isinstance(exc, KeyboardInterrupt) and self._cancelled_from_view:
            name = self.flow_run.name if self.flow_run is not None else self.flow.name
            return CancelledRun(
                f"Flow run {name!r} was cancelled from its view: task runs that had not finished "
                "were cancelled, completed ones kept."
            )
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != self.filename:
            tb = tb.tb_next
        return exc.with_traceback(tb) if tb is not None else exc


@contextlib.contextmanager
def _on_sigint(callback: Callable[[], Any]) -> Iterator[None]:
    """Within the block, SIGINT (a kernel interrupt) calls ``callback`` instead of raising.

    ipykernel 7.4 turns SIGINT during an awaiting cell into a cancellation only
    once its loop wakes for another reason, so the cell handles it itself.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: callback())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# -- the input transformer that makes %%flow cells awaitable ----------------------------------
_FLOW_CELL = re.compile(r"%%flow(?=\s|$)")


def flow_cell_transformer(lines: list[str]) -> list[str]:
    """Turn a ``%%flow`` cell into ``await run_flow_cell(line, body)`` (an IPython cleanup transform).

    Only where IPython awaits top-level ``await`` on asyncio (``%autoawait``
    on, the default); elsewhere the cell stays a plain cell magic.
    """
    if not lines or not _FLOW_CELL.match(lines[0]) or not _awaits_on_asyncio():
        return lines
    line = lines[0][len("%%flow") :].strip()
    body = "".join(lines[1:])
    return [f"await __import__('nbflow.notebook.magics', fromlist=['_']).run_flow_cell({line!r}, {body!r})\n"]


def _awaits_on_asyncio() -> bool:
    from IPython import get_ipython
    from IPython.core.async_helpers import _asyncio_runner

    shell = get_ipython()
    return shell is not None and shell.autoawait and shell.loop_runner is _asyncio_runner


async def run_flow_cell(line: str, body: str) -> Any:
    """What an awaitable ``%%flow`` cell runs."""
    __tracebackhide__ = True
    from IPython import get_ipython

    cell_flow = CellFlow(get_ipython(), sessions.get(), line, body)
    if cell_flow.background:
        return _in_background(cell_flow)
    return await cell_flow.run_async()


def _in_background(cell_flow: CellFlow) -> None:
    cell_flow.start_background()
    print(f"nbflow: flow {cell_flow.flow.name!r} runs in the background; its view shows its progress, "
          "%nbflow wait waits for it.")


# -- the magics --------------------------------------------------------------------------------
def _find_run(target: str | None) -> Any:
    """A flow run of this kernel (by name, id prefix, flow name or index), else one from the run history."""
    from nbflow import history

    if target is None:
        run = last_flow_run()
        if run is not None:
            return run
        earlier = history.flow_runs(limit=1)
        if not earlier:
            raise UsageError("no flow run yet: run a flow (or a %%flow cell) first")
        return earlier[0]
    try:
        return find_flow_run(int(target) if re.fullmatch(r"-?\d+", target) else target)
    except LookupError as exc:
        here = exc
    try:
        return history.flow_run(target)
    except LookupError:
        raise UsageError(str(here)) from None


@magics_class
class NbflowMagics(Magics):
    """``%%flow`` and ``%nbflow``."""

    def __init__(self, shell: Any, session: NotebookSession) -> None:
        super().__init__(shell)
        self.session = session

    @magic_arguments()
    @argument("name", nargs="?", help="the flow's name (default: cell)")
    @argument("--runner", choices=RUNNERS, default="thread", help="where task runs execute (default: thread)")
    @argument("--max-workers", type=int, default=None, metavar="N", help="most task runs executing at once")
    @argument("--no-view", action="store_true", help="do not show the live run view")
    @argument("--cache", action="store_true", help="tasks without a cache policy cache on their inputs and code")
    @argument("--background", action="store_true",
              help="return at once; the view stays live, %%nbflow wait waits for the run")
    @cell_magic
    def flow(self, line: str, cell: str) -> Any:
        """Run the cell as a flow run.

        The cell body is the flow's body: ``.submit()`` and ``.map()`` work at
        its top level, names it assigns stay in the notebook, task runs it
        started are waited for, and an exception fails the run and shows as
        usual. The cell's value is its last expression's. While it runs, the
        live view shows the DAG, a state grid and the task runs; its Cancel
        button (or interrupting the kernel) cancels what has not finished.

        Example::

            %%flow etl --max-workers 8
            squares = square.map(range(100))
            total = add.submit(squares)
        """
        __tracebackhide__ = True
        cell_flow = CellFlow(self.shell, self.session, line, cell)
        if cell_flow.background:
            return _in_background(cell_flow)
        return cell_flow.run()

    @magic_arguments()
    @argument("command", choices=COMMANDS, help="what to do; see the examples above")
    @argument("target", nargs="*", help="a flow run (name, id prefix, flow name, or index: -1 is the last), "
              "on/off, or clear [TASK]")
    @argument("--save", metavar="PATH", help="dag: also write the picture (.svg, .png, .pdf, .dot)")
    @argument("-n", "--limit", type=int, default=20, help="runs: how many to list (default 20)")
    @argument("--flow", metavar="NAME", help="runs: only the runs of this flow")
    @argument("--state", metavar="STATE", help="runs: only the runs that ended in this state (e.g. Failed)")
    @line_magic
    def nbflow(self, line: str) -> Any:
        """Look at flow runs and the cache.

        ``%nbflow runs``, ``%nbflow view [RUN|on|off]``, ``%nbflow dag [RUN] [--save PATH]``;
        ``%nbflow cache`` (entries and size per task), ``%nbflow cache on|off`` (every
        task without a policy of its own caches on its inputs and code),
        ``%nbflow cache clear [TASK]``; ``%nbflow runs [--flow NAME] [--state STATE] [--limit N]``
        lists runs from the run history, across kernel restarts; ``%nbflow history clear``
        empties it; ``%nbflow retry [RUN]`` re-runs a flow run, executing only what did not
        complete (RUN: a run id, a run name, or a flow name for its latest run);
        ``%nbflow plan CALL`` (e.g. ``%nbflow plan pipeline(100)``) shows what a call of a
        flow would do, per task: how many runs the cache would serve and how many would run;
        ``%nbflow export [RUN] PATH`` writes a run's report to one offline HTML file;
        ``%nbflow wait [RUN]`` waits for a ``%%flow --background`` run and gives its value.
        """
        args = parse_argstring(self.nbflow, line)
        return getattr(self, f"_{args.command}")(args, args.target)

    def _runs(self, args: Any, target: list[str]) -> Any:
        from nbflow.notebook.reprs import RunsTable

        if target:
            raise UsageError(f"%nbflow runs takes options (--flow, --state, --limit), not {' '.join(target)!r}")
        return RunsTable(args.limit, flow=args.flow, state=args.state)

    def _wait(self, args: Any, target: list[str]) -> Any:
        """Wait for a background %%flow run (the latest, or RUN: its run or flow name); its value."""
        __tracebackhide__ = True
        wanted = _one(target)
        for cell_flow in reversed(background):
            if wanted is None or wanted in (cell_flow.label, cell_flow.flow.name):
                background.remove(cell_flow)
                return cell_flow.wait()
        raise UsageError(f"no background flow run{f' {wanted!r}' if wanted else ''} to wait for: "
                         "start one with %%flow --background")

    def _history(self, args: Any, target: list[str]) -> Any:
        from nbflow import history

        if target != ["clear"]:
            raise UsageError("%nbflow history takes one command: clear")
        removed = history.clear()
        print(f"nbflow: run history cleared ({removed:,} flow run{'s' if removed != 1 else ''} removed)")

    def _retry(self, args: Any, target: list[str]) -> Any:
        import nbflow

        try:
            return nbflow.retry(_one(target))
        except LookupError as exc:
            raise UsageError(str(exc)) from None

    def _view(self, args: Any, target: list[str]) -> Any:
        if target and target[0] in ("on", "off"):
            settings.auto_view = target[0] == "on"
            print(f"nbflow: live run views {'on' if settings.auto_view else 'off'}")
            return None
        return self.session.view(_find_run(_one(target)))

    def _dag(self, args: Any, target: list[str]) -> Any:
        from nbflow.report.dag import Dag

        dag = Dag.from_flow_run(_find_run(_one(target)).root)
        if args.save:
            try:
                path = dag.save(args.save)
            except (RuntimeError, ValueError) as exc:
                raise UsageError(str(exc)) from None
            print(f"nbflow: DAG saved to {path}")
        return dag

    def _cache(self, args: Any, target: list[str]) -> Any:
        from nbflow.notebook.reprs import CacheTable
        from nbflow.store import cache

        what = target[0] if target else None
        if what in ("on", "off"):
            nbflow_settings.current.cache = what == "on"
            print(f"nbflow: cache {'on: tasks without a cache policy cache on their inputs and code' if what == 'on' else 'off'}")
            return None
        if what == "clear":
            name = " ".join(target[1:]) or None
            removed = cache.clear(name)
            print(f"nbflow: {removed:,} cache entr{'y' if removed == 1 else 'ies'} removed"
                  + (f" for task {name!r}" if name else ""))
            return None
        if what is not None:
            raise UsageError(f"%nbflow cache takes on, off or clear [TASK], not {what!r}")
        return CacheTable(cache.store_at().summary(), nbflow_settings.current.cache)


    def _plan(self, args: Any, target: list[str]) -> Any:
        """``%nbflow plan CALL``: the plan of a flow call (``pipeline(100)``), evaluated in the notebook."""
        import ast
        import collections

        source = " ".join(target)
        try:
            call = ast.parse(source, mode="eval").body
        except SyntaxError:
            call = None
        if not isinstance(call, ast.Call):
            raise UsageError(f"%nbflow plan takes a flow call, such as pipeline(100); got {source!r}")
        pack = "__nbflow_plan_arguments"
        arguments = ast.Expression(ast.Call(ast.Name(pack, ast.Load()), call.args, call.keywords))
        namespace = collections.ChainMap({pack: lambda *a, **k: (a, k)}, self.shell.user_ns)
        flow = eval(compile(ast.Expression(call.func), "<%nbflow plan>", "eval"), self.shell.user_global_ns, namespace)
        plan = getattr(flow, "plan", None)
        if plan is None:
            raise UsageError(f"%nbflow plan: {ast.unparse(call.func)} is not a flow (got {flow!r})")
        call_args, call_kwargs = eval(compile(ast.fix_missing_locations(arguments), "<%nbflow plan>", "eval"),
                                      self.shell.user_global_ns, namespace)
        return plan(*call_args, **call_kwargs)


    def _export(self, args: Any, target: list[str]) -> Any:
        """``%nbflow export [RUN] PATH``: write the run's offline HTML report (the last run if RUN is left out)."""
        from nbflow.report.export import export

        if not 1 <= len(target) <= 2:
            raise UsageError("%nbflow export takes [RUN] PATH, e.g. %nbflow export analysis report.html")
        *run, path = target
        written = export(_find_run(_one(run)), path)
        print(f"nbflow: report written to {written}")
        return None


def _one(target: list[str]) -> str | None:
    if len(target) > 1:
        raise UsageError(f"expected one flow run, got {' '.join(target)!r}")
    return target[0] if target else None


__all__ = ["CellFlow", "NbflowMagics", "flow_cell_transformer", "make_runner", "run_code", "run_flow_cell"]
