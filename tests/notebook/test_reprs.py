"""Rich reprs: everything shown is escaped, results summarised, text/plain stable."""

from __future__ import annotations

import re
import subprocess
import sys

from nbflow import flow, task
from nbflow import states as S
from nbflow.notebook import reprs
from nbflow.runs import last_flow_run

EVIL = "<script>alert(1)</script>"
# Flow names cannot hold < > & / % (as in Prefect): what is left to escape is quotes.
EVIL_FLOW = "evil' onclick='alert(1)"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@task(name=EVIL)
def evil(x: str) -> str:
    print(f"printed {x}")
    return x


@task
def fails(x: str) -> None:
    raise ValueError(x)


def _no_raw_script(html: str) -> None:
    assert "<script" not in html.lower() and "onclick='alert" not in html
    assert ESCAPED in html


def test_futures_and_future_lists_escape_names_results_and_errors():
    @flow(name=EVIL_FLOW)
    def evil_flow() -> tuple:
        good, bad, many = evil.submit(EVIL), fails.submit(EVIL), evil.map([EVIL] * 5)
        good.wait(), bad.wait(), many.wait()
        many.append(bad)
        return (reprs.future_html(good), reprs.future_html(bad), reprs.html_of(many), reprs.html_of(good))

    good, bad, many, hook = evil_flow()
    for html in (good, bad, hook, many):
        _no_raw_script(html)
    assert "Completed" in good and "Failed" in bad and "ValueError" in bad
    assert "6 futures" in many and "data:image/png;base64," in many
    assert "Completed 5" in many and "first failure" in many


def test_states_task_runs_and_flow_runs_escape_everything():
    @flow(name=EVIL_FLOW)
    def evil_flow() -> None:
        evil.submit(EVIL).wait()
        fails.submit(EVIL).wait()

    evil_flow()
    flow_run = last_flow_run()
    good, bad = flow_run.task_runs
    for html in (reprs.html_of(good), reprs.html_of(bad), reprs.html_of(flow_run), reprs.html_of(good.state), reprs.html_of(bad.state)):
        _no_raw_script(html)
    good_html = reprs.html_of(good)
    assert "printed " + ESCAPED in good_html  # captured output, escaped
    assert "<b>Result</b>" in good_html and "<code>str</code>" in good_html
    bad_html = reprs.html_of(bad)
    assert "Traceback" in bad_html and "ValueError: " + ESCAPED in bad_html
    flow_html = reprs.html_of(flow_run)
    assert "<svg" in flow_html and "Failed task runs" in flow_html


def test_large_results_are_summarised_not_shipped():
    big = list(range(1_000_000))
    html = reprs.html_of(S.Completed(data=big))
    assert "len 1,000,000" in html
    assert len(html) < 2000


def test_volatile_parts_are_marked_for_sanitizers():
    @flow
    def plain() -> str:
        return evil.submit("x").result()

    plain()
    html = reprs.html_of(last_flow_run())
    masked = re.sub(r'<span class="nbflow-v">[^<]*</span>', "", html)
    assert last_flow_run().name not in masked
    assert not re.search(r"\d+\.\d\d s", masked)


def test_runs_table_lists_recent_runs_escaped():
    @flow(name=EVIL_FLOW)
    def evil_flow() -> None:
        evil.submit("x").wait()

    evil_flow()
    table = reprs.RunsTable(5)
    html = table._repr_html_()
    assert "onclick='alert" not in html and "evil&#x27; onclick" in html
    assert EVIL_FLOW in repr(table)  # text/plain is text
    assert "Completed 1" in repr(table)


def test_importing_the_notebook_layer_imports_no_widgets_or_ipython():
    code = (
        "import sys, nbflow.notebook, nbflow.notebook.reprs;"
        "print('ipywidgets' in sys.modules, 'IPython' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_loading_the_extension_registers_html_reprs_and_unloading_removes_them():
    from IPython.core.interactiveshell import InteractiveShell

    from nbflow.futures import PrefectFuture

    shell = InteractiveShell.instance()
    formatter = shell.display_formatter.formatters["text/html"]
    reprs.register(shell)
    try:

        @flow
        def one() -> int:
            return evil(EVIL) and 1

        one()
        run = last_flow_run()
        html = formatter(run)
        _no_raw_script(html)
        assert formatter.lookup_by_type(PrefectFuture) is reprs.future_html
    finally:
        reprs.unregister(shell)
    assert formatter(last_flow_run()) is None


def test_tracebacks_name_cells_as_ipython_does_and_hide_nbflow_frames():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_cell("from nbflow import flow, task\n@task\ndef boom():\n    raise KeyError('in a cell')\n"
                   "@flow\ndef cell_flow():\n    return boom.submit().wait()\n", store_history=True)
    shell.run_cell("cell_flow()", store_history=True)
    run = last_flow_run().task_runs[0]
    text = reprs.traceback_text(run.state.data)
    assert re.search(r"Cell In\[\d+\], line 4, in boom", text), text
    assert "nbflow/engine.py" not in text and "KeyError: 'in a cell'" in text


def test_the_progress_bar_has_a_segment_per_ended_state_failures_their_own():
    from nbflow.report.model import CATEGORIES, COMPLETED, FAILED, RUNNING

    counts = [0] * len(CATEGORIES)
    counts[COMPLETED], counts[FAILED], counts[RUNNING] = 89, 1, 10
    bar = reprs.progress_bar(counts)
    parts = dict(re.findall(r'data-state="(\w+)" style="width:([\d.]+)%', bar))
    assert parts == {"Completed": "89.00", "Failed": "1.00"}  # 1 % of failures is 1 % of red; running is the rest
    assert reprs.progress_bar([0] * len(CATEGORIES)).count("nbflow-bar-part") == 0


def test_rate_and_eta_while_running_rate_alone_once_ended():
    assert reprs.rate_text(50, 200, 2.0, running=True) == "25 runs/s &middot; ETA 6.00 s"
    assert reprs.rate_text(200, 200, 8.0, running=False) == "25 runs/s"
    assert reprs.rate_text(3, 10, 2.0, running=True) == "1.5 runs/s &middot; ETA 4.67 s"
    assert reprs.rate_text(0, 10, 1.0, running=True) == ""
