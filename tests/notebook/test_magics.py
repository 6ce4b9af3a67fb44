"""%load_ext nbflow, %%flow and %nbflow, driven through an IPython shell (no kernel)."""

from __future__ import annotations

import asyncio
import threading
import traceback
import warnings

import pytest
from IPython.core.error import UsageError

from nbflow import task
from nbflow.exceptions import CancelledRun, UnfinishedTaskRunsWarning
from nbflow.notebook import session as sessions
from nbflow.notebook.magics import CellFlow, flow_cell_transformer, make_runner
from nbflow.runs import last_flow_run
from nbflow.task_runners import ThreadPoolTaskRunner


@task
def square(x: int) -> int:
    return x * x


@task
def fails(x: int) -> int:
    raise ValueError(f"bad {x}")


@pytest.fixture
def ip(ipython, comms):
    """The shell with nbflow loaded and the test tasks in its namespace."""
    ipython.run_line_magic("load_ext", "nbflow")
    ipython.user_ns.update(square=square, fails=fails)
    yield ipython
    ipython.run_line_magic("unload_ext", "nbflow")
    for name in ("total", "squares", "x", "where", "futures", "z"):
        ipython.user_ns.pop(name, None)


def run(ip, cell: str):
    """Run a cell; return the ExecutionResult."""
    return ip.run_cell(cell, store_history=True)


def test_load_unload_and_reload(ipython):
    manager = ipython.magics_manager
    ipython.run_line_magic("load_ext", "nbflow")
    assert "flow" in manager.magics["cell"] and "nbflow" in manager.magics["line"]
    assert sessions.active() is not None
    ipython.run_line_magic("reload_ext", "nbflow")
    assert "flow" in manager.magics["cell"] and sessions.active() is not None
    ipython.run_line_magic("unload_ext", "nbflow")
    assert "flow" not in manager.magics["cell"] and "nbflow" not in manager.magics["line"]
    assert sessions.active() is None


def test_cell_body_is_the_flow_body_and_its_names_stay(ip):
    result = run(ip, "%%flow etl --max-workers 2\nsquares = square.map(range(10))\ntotal = sum(f.result() for f in squares)\ntotal")
    assert result.success and result.result == 285
    assert ip.user_ns["total"] == 285 and len(ip.user_ns["squares"]) == 10
    flow_run = last_flow_run()
    assert flow_run.flow_name == "etl" and flow_run.state.is_completed()
    assert isinstance(flow_run.task_runner, ThreadPoolTaskRunner) and flow_run.task_runner.max_workers == 2
    assert run(ip, "%%flow\nx = 1;").result is None  # a trailing ; hides the value, as in any cell


def test_unresolved_futures_are_waited_for_quietly(ip):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnfinishedTaskRunsWarning)
        result = run(ip, "%%flow\nfutures = square.map(range(50))")
    assert result.success
    assert all(f.state.is_completed() for f in ip.user_ns["futures"])


def test_an_exception_fails_the_run_and_shows_as_usual(ip):
    result = run(ip, "%%flow\nx = 1\nfails.submit(2).result()")
    error = result.error_in_exec
    assert isinstance(error, ValueError) and str(error) == "bad 2"
    assert last_flow_run().state.is_failed()
    assert ip.user_ns["x"] == 1
    text = "".join(traceback.format_exception(error))
    assert "nbflow/flows.py" not in text.replace("\\", "/")  # the flow machinery is cut out
    assert "line 3" in text  # the cell's own line numbers (line 1 is %%flow)


def test_magics_inside_the_body_work(ip):
    result = run(ip, "%%flow\nwhere = %pwd\nwhere")
    assert result.success and result.result == ip.user_ns["where"]


def test_help_is_the_argument_parser(ip, capsys):
    doc = ip.find_cell_magic("flow").__doc__
    assert "%flow [--runner {thread,process,dask,ray}] [--max-workers N] [--no-view]" in doc
    assert "--no-view" in doc
    ip.run_line_magic("pinfo", "%%flow")
    assert "Run the cell as a flow run" in capsys.readouterr().out


def test_bad_arguments_are_usage_errors(ip):
    result = run(ip, "%%flow --max-workers 0\nx = 1")
    assert isinstance(result.error_in_exec, UsageError)
    result = run(ip, "%%flow --runner gpu\nx = 1")
    assert not result.success


def test_runners_by_name():
    assert make_runner("thread", 3).max_workers == 3
    try:
        process = make_runner("process", 2)
    except (ImportError, AttributeError):
        pytest.skip("the process runner is not available")
    assert type(process).__name__ == "ProcessPoolTaskRunner" and process.max_workers == 2


def test_nbflow_runs_view_dag(ip, tmp_path, view_settings):
    run(ip, "%%flow report\nsquare.map(range(3)).wait()")
    table = ip.run_line_magic("nbflow", "runs -n 5")
    assert "report" in repr(table) and "Completed 3" in repr(table)
    view = ip.run_line_magic("nbflow", "view -1")
    assert view.state == "Completed" and view.task_run_count == 3
    assert ip.run_line_magic("nbflow", f"view {last_flow_run().name}") is view
    dag = ip.run_line_magic("nbflow", f"dag --save {tmp_path / 'd.svg'}")
    assert "square x3" in (tmp_path / "d.svg").read_text() and len(dag.nodes) == 1
    ip.run_line_magic("nbflow", "view off")
    assert view_settings.auto_view is False
    ip.run_line_magic("nbflow", "view on")
    assert view_settings.auto_view is True
    with pytest.raises(UsageError, match="no recorded flow run"):
        ip.run_line_magic("nbflow", "view no-such-run")


def test_transformer_turns_flow_cells_into_awaits(ipython):
    assert flow_cell_transformer(["%%flow etl --max-workers 2\n", "x = 1\n"]) == [
        "await __import__('nbflow.notebook.magics', fromlist=['_']).run_flow_cell('etl --max-workers 2', 'x = 1\\n')\n"
    ]
    for untouched in (["%%flow?\n"], ["%%flowers\n", "x\n"], ["x = 1\n"], []):
        assert flow_cell_transformer(untouched) == untouched
    ipython.autoawait = False  # top-level await off: a plain (blocking) cell magic
    try:
        assert flow_cell_transformer(["%%flow\n", "x = 1\n"]) == ["%%flow\n", "x = 1\n"]
    finally:
        ipython.autoawait = True


def test_awaited_cell_runs_its_flow_in_a_background_thread(ip):
    ip.input_transformers_cleanup.append(flow_cell_transformer)
    try:
        result = run(ip, "%%flow\nimport threading\nwhere = threading.current_thread().name\nsquare.submit(4).result()")
        failed = run(ip, "%%flow\nfails.submit(3).result()")
    finally:
        ip.input_transformers_cleanup.remove(flow_cell_transformer)
    assert result.success and result.result == 16
    assert ip.user_ns["where"] == "nbflow-cell"
    assert isinstance(failed.error_in_exec, ValueError)


@pytest.fixture
def stoppable():
    """A task that runs until told to stop, returning to bytecode often (so it can be interrupted)."""
    started, stop = threading.Event(), threading.Event()

    @task
    def work() -> None:
        started.set()
        while not stop.wait(0.005):
            pass

    yield work, started
    stop.set()


def test_interrupt_cancels_the_run_keeps_what_completed_and_returns(ip, stoppable, view_settings):
    work, started = stoppable
    ip.user_ns["work"] = work
    cell = CellFlow(
        ip,
        sessions.get(),
        "--max-workers 1",
        "done = square.submit(2)\ndone.wait()\nwork.submit()\nlater = square.map(range(5))\n",
    )

    async def cell_coroutine():
        try:
            await cell.run_async()
        except KeyboardInterrupt as interrupt:
            return interrupt

    async def main():
        running = asyncio.ensure_future(cell_coroutine())
        await asyncio.to_thread(started.wait, 10)
        loop = asyncio.get_running_loop()
        begin = loop.time()
        running.cancel()  # what ipykernel does on SIGINT while a cell awaits
        outcome = await running
        return outcome, loop.time() - begin

    outcome, seconds = asyncio.run(main())
    assert isinstance(outcome, KeyboardInterrupt)
    assert seconds < view_settings.interrupt_grace
    flow_run = cell.flow_run
    assert flow_run.state.is_cancelled()
    names = sorted((r.task.name, r.state.name) for r in flow_run.task_runs)
    assert names == [("square", "Cancelled")] * 5 + [("square", "Completed"), ("work", "Cancelled")]


def test_cancel_from_the_view_says_so(ip, stoppable):
    work, started = stoppable
    ip.user_ns["work"] = work
    cell = CellFlow(ip, sessions.get(), "", "work.submit().wait()\n")

    async def main():
        running = asyncio.ensure_future(cell.run_async())
        await asyncio.to_thread(started.wait, 10)
        sessions.get().cells[cell.flow].cancel()  # what the view's Cancel button calls
        with pytest.raises(CancelledRun, match="cancelled from its view"):
            await running

    asyncio.run(main())
    assert cell.flow_run.state.is_cancelled()


def test_nbflow_cache_on_lists_clears_and_off(ip, capsys):
    import nbflow.settings

    ip.run_line_magic("nbflow", "cache on")
    assert nbflow.settings.current.cache is True
    ip.run_cell("from nbflow import flow\n@flow\ndef sq_all():\n    return square.map(range(4)).result()\n")
    ip.run_cell("sq_all()")
    ip.run_cell("sq_all()")
    assert [r.state.name for r in last_flow_run().task_runs] == ["Cached"] * 4
    table = ip.run_line_magic("nbflow", "cache")
    assert "square" in repr(table) and "4 entries" in repr(table)
    assert "<td" in table._repr_html_() and "square" in table._repr_html_()
    ip.run_line_magic("nbflow", "cache clear square")
    assert "4 cache entries removed for task 'square'" in capsys.readouterr().out
    ip.run_cell("sq_all()")
    assert [r.state.name for r in last_flow_run().task_runs] == ["Completed"] * 4
    ip.run_line_magic("nbflow", "cache off")
    assert nbflow.settings.current.cache is False
    with pytest.raises(UsageError, match="on, off or clear"):
        ip.run_line_magic("nbflow", "cache maybe")


def test_flow_cell_with_cache_caches_only_that_cell(ip):
    import nbflow.settings

    for _ in range(2):
        ip.run_cell_magic("flow", "cached --cache --no-view", "values = square.map(range(3)).result()")
    assert [r.state.name for r in last_flow_run().task_runs] == ["Cached"] * 3
    assert nbflow.settings.current.cache is False  # only for the cell's run
    ip.run_cell_magic("flow", "plain --no-view", "values = square.map(range(3)).result()")
    assert [r.state.name for r in last_flow_run().task_runs] == ["Completed"] * 3


def test_runs_view_and_retry_reach_runs_of_an_earlier_kernel(ip, tmp_path, capsys):
    import subprocess
    import sys
    import textwrap

    from nbflow import history

    script = tmp_path / "earlier_kernel.py"
    script.write_text(textwrap.dedent('''
        import nbflow.settings
        from nbflow import flow, task
        nbflow.settings.current.persist_results = True

        @task
        def part(i):
            if i == 2:
                raise ValueError("part 2 is bad")
            return i

        @flow(name="earlier")
        def earlier(n):
            parts = part.map(range(n))
            parts.wait()  # every part ends (none is left cancelled by the failure of part 2)
            return parts.result()

        earlier(4, return_state=True)
    '''))
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)

    table = ip.run_line_magic("nbflow", "runs --flow earlier")
    assert "earlier" in repr(table) and "Failed" in repr(table)
    assert ip.run_line_magic("nbflow", "dag earlier") is not None  # the latest run of the flow "earlier"

    # the flow defined again in this kernel (part 2 fixed): retry runs only part 2
    ip.run_cell(textwrap.dedent('''
        from nbflow import flow, task
        calls = []

        @task
        def part(i):
            calls.append(i)
            return i

        @flow(name="earlier")
        def earlier(n):
            return part.map(range(n)).result()
    '''))
    assert ip.run_line_magic("nbflow", "retry earlier") == [0, 1, 2, 3]
    assert ip.user_ns["calls"] == [2]
    assert history.flow_run("earlier").retry_of_id is not None


def test_a_background_flow_cell_returns_at_once_and_wait_gives_its_outcome(ip, gate, capsys):
    ip.user_ns["gate"] = gate
    assert ip.run_cell_magic("flow", "bg --background --no-view", "gate.wait()\nx = square.map(range(3)).result()\nx") is None
    assert "runs in the background" in capsys.readouterr().out
    assert "x" not in ip.user_ns  # it has not finished: the cell returned while it waits on the gate
    gate.open()
    assert ip.run_line_magic("nbflow", "wait bg") == [0, 1, 4]
    assert ip.user_ns["x"] == [0, 1, 4]

    ip.run_cell_magic("flow", "--background --no-view", "fails.submit(1).result()")
    with pytest.raises(ValueError, match="bad 1"):
        ip.run_line_magic("nbflow", "wait")
    with pytest.raises(UsageError, match="no background flow run"):
        ip.run_line_magic("nbflow", "wait")


@pytest.mark.timeout(60)
def test_nbflow_wait_calls_the_wait_hook_so_the_views_cancel_works_meanwhile(ip, gate):
    """In a kernel the hook handles widget messages: a Cancel click while ``%nbflow wait`` blocks."""
    from nbflow import completion

    ip.user_ns["gate"] = gate
    ip.run_cell_magic("flow", "bg --background --no-view", "gate.wait()\n42")
    previous = completion._wait_hook
    completion.set_wait_hook(gate.open)  # a blocked wait that never called it would never end
    try:
        assert ip.run_line_magic("nbflow", "wait bg") == 42
    finally:
        completion.set_wait_hook(previous)


def test_loading_the_extension_makes_visualize_draw_as_the_live_view(ipython):
    import nbflow.visualize as viz
    from nbflow.report.dag import Dag

    ipython.run_line_magic("load_ext", "nbflow")
    try:
        assert viz.drawer == Dag.from_trace
    finally:
        ipython.run_line_magic("unload_ext", "nbflow")
    assert viz.drawer is None
