"""The live run view in a real browser: JupyterLab + headless Chromium, offline.

What only a browser can show: that the view renders, that it updates *while*
a cell is still running (not only when it ends), that its counts are right
at the end, and that its Cancel button reaches the kernel and cancels an
in-flight run. The harness is in conftest.py; every selector the tests use
is in ``ViewSelectors`` there.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from .conftest import REPO, UIS, browser_unavailable

reason = browser_unavailable()
if reason:
    if os.environ.get("NBFLOW_REQUIRE_BROWSER_TESTS"):  # CI, where a skip would hide a regression
        pytest.fail(f"NBFLOW_REQUIRE_BROWSER_TESTS is set, but {reason}", pytrace=False)
    pytest.skip(f"browser tests need Chromium and playwright: {reason}", allow_module_level=True)

pytestmark = pytest.mark.timeout(120)

N = 1_000
FINAL = ("Completed", "Failed", "Cancelled", "Crashed")  # final states of a flow run
ENDED = f"v.state && {list(FINAL)!r}.includes(v.state)"  # JS: the view shows a final state

SETUP = """\
%load_ext nbflow
import time
from nbflow import task

@task
def tick(i: int) -> int:
    time.sleep(0.01)  # the work: 1,000 runs on 4 workers last about 2.5 s
    return i

@task
def square(x: int) -> int:
    return x * x

@task
def add_up(values: list[int]) -> int:
    return sum(values)
"""

# A 1,000-run map feeding another and a reduce: three DAG nodes, 2,001 task runs.
LIVE_MAP = f"""\
%%flow live-map --max-workers 4
values = tick.map(range({N}))
squares = square.map(values)
total = add_up.submit(squares).result()
"""
RUNS = 2 * N + 1

# Long enough that the Cancel click lands mid-run: 1,000 x 20 ms on 2 workers = 10 s.
CANCEL_SETUP = """\
%load_ext nbflow
import time
from nbflow import task

@task
def slow_tick(i: int) -> int:
    for _ in range(4):
        time.sleep(0.005)
    return i
"""

CANCEL_MAP = f"""\
%%flow cancel-me --max-workers 2
futures = slow_tick.map(range({N}))
futures.wait()
"""

SCREENSHOT = REPO / "docs" / "screenshot.png"


@pytest.mark.parametrize("lab", UIS, indirect=True)
def test_view_updates_live_while_a_1000_task_map_runs(lab):
    lab.write_notebook("live.ipynb", [SETUP, LIVE_MAP])
    lab.open_notebook("live.ipynb")
    lab.run_all()

    samples = lab.watch_view(1, f"{ENDED} && v.done === {RUNS}", timeout=60)
    lab.wait_cells_done(timeout=30)

    # Live: while the cell was still executing, the page showed at least two
    # different partial progress values.
    live = sorted({s["done"] for s in samples if s["executing"] and s["done"] is not None and 0 < s["done"] < RUNS})
    assert len(live) >= 2, f"expected >= 2 intermediate progress values while running, saw {samples}"
    assert any(s["state"] == "Running" for s in samples), samples

    final = lab.read_view(1)
    assert final["state"] == "Completed", final
    assert final["total"] == RUNS and final["done"] == RUNS, final
    assert final["counts"] == {"Completed": RUNS}, final
    assert lab.error_output() is None, lab.error_output()
    # One DAG node per task, a mapped task being one node with its number of runs.
    dag = lab.view(1).locator(lab.sel.dag).first.text_content()
    for label in (f"tick x{N}", f"square x{N}", "add_up"):
        assert label in dag, dag

    # The picture in the README: the finished view (JupyterLab's), in a window tall enough for all of it.
    lab.page.set_viewport_size({"width": 1280, "height": 1500})
    shot = lab.screenshot(lab.final_view(1), "finished-view.png")
    if lab.ui == "lab" and (os.environ.get("NBFLOW_UPDATE_SCREENSHOT") or not SCREENSHOT.exists()):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


@pytest.mark.parametrize("lab", UIS, indirect=True)
def test_cancel_button_cancels_an_in_flight_run(lab):
    lab.write_notebook("cancel.ipynb", [CANCEL_SETUP, CANCEL_MAP])
    lab.open_notebook("cancel.ipynb")
    lab.run_all()

    # Wait until the run is visibly under way, then click Cancel.
    lab.watch_view(1, "v.state === 'Running' && v.done >= 20", timeout=30)
    clicked_at = time.monotonic()
    lab.view(1).locator(lab.sel.cancel).click()

    samples = lab.watch_view(1, f"{ENDED} && v.done === {N}", timeout=30)
    lab.wait_cells_done(timeout=30)
    took = time.monotonic() - clicked_at

    final = lab.read_view(1)
    counts = final["counts"]
    assert final["state"] == "Cancelled", final
    assert counts.get("Cancelled", 0) > 0, final
    assert 20 <= counts.get("Completed", 0) < N, final
    assert counts.get("Completed", 0) + counts.get("Cancelled", 0) == N, final
    assert "Cancelled" in final["text"], final["text"]
    # The remaining ~9 s of work were not done: the run ended soon after the click.
    assert took < 8, f"the run went on for {took:.1f}s after Cancel; samples: {samples[-3:]}"


PLAIN_CANCEL_SETUP = CANCEL_SETUP + """
from nbflow import flow

@flow(name="analysis")
def analysis(n: int) -> int:
    return len(slow_tick.map(range(n)).result())
"""


def test_cancel_on_a_plain_flow_call_ends_it_cancelled_and_the_final_view_has_no_cancel(lab):
    """A plain call (no %%flow) blocks the main thread: the click comes through the wait hook's message pump."""
    lab.write_notebook("plain-cancel.ipynb", [PLAIN_CANCEL_SETUP, "analysis(10000)"])
    lab.open_notebook("plain-cancel.ipynb")
    lab.run_all()

    lab.watch_view(1, "v.state === 'Running' && v.done >= 20", timeout=30)
    clicked_at = time.monotonic()
    lab.view(1).locator(lab.sel.cancel).click()
    lab.watch_view(1, ENDED, timeout=30)
    took = time.monotonic() - clicked_at
    lab.wait_cells_done(timeout=30)

    final = lab.read_view(1)
    assert final["state"] == "Cancelled", final
    assert 20 <= final["counts"].get("Completed", 0) < 10_000, final
    # 10,000 x 20 ms on the default workers is far longer than this: the run stopped soon after the click
    assert took < 8, f"the run went on for {took:.1f}s after Cancel"
    assert lab.view(1).locator(lab.sel.cancel).filter(visible=True).count() == 0  # a finished view: no Cancel
    lab.screenshot(lab.view(1), "plain-cancel-finished.png")


# A 200-item map with failures at map indexes 7 and 107, and a reduce: the instrument's click-through.
CLICK_SETUP = """\
%load_ext nbflow
from nbflow import flow, task

@task
def load(i: int) -> dict:
    return {"item": i}

@task
def clean(row: dict) -> int:
    if row["item"] % 100 == 7:
        raise ValueError(f"bad item {row['item']}")
    return row["item"]

@flow(name="click-through")
def analysis(n: int) -> None:
    clean.map(load.map(range(n))).wait()
"""
CLICK_RUN = "analysis(200)"
PITCH, COLUMNS = 14, 42  # nbflow/report/grid.py layout() of 200 runs: 12 px squares, 2 px gaps


def _cell_point(canvas, index: int) -> tuple[float, float]:
    box = canvas.bounding_box()
    return box["x"] + (index % COLUMNS) * PITCH + 6, box["y"] + (index // COLUMNS) * PITCH + 6


@pytest.mark.parametrize("lab", UIS, indirect=True)
def test_hover_click_filter_search_and_a_finished_view(lab):
    lab.write_notebook("click.ipynb", [CLICK_SETUP, CLICK_RUN])
    lab.open_notebook("click.ipynb")
    lab.run_all()
    lab.wait_cells_done(timeout=60)
    # The view that stays: hovering the first one, or a grid not yet painted, shows no tooltip.
    view = lab.final_view(1)
    final = lab.read_view(1)
    assert final["state"] == "Completed" and final["counts"] == {"Completed": 398, "Failed": 2}, final
    assert view.locator(lab.sel.cancel).is_hidden()  # a finished view has no Cancel button
    assert "Cancelling" not in view.locator(".nbflow-top").inner_text()
    assert view.locator(".nbflow-retry").is_visible()

    canvas = view.locator(".nbflow-canvas[data-group='1']")
    view.scroll_into_view_if_needed()  # as the screenshot will: the pointer stays on the square
    lab.page.mouse.move(*_cell_point(canvas, 7))
    tip = view.locator(".nbflow-tip")
    tip.get_by_text("ValueError: bad item 7").wait_for()
    text = tip.inner_text()
    for part in ("clean", "map index 7", "Failed", "'item': 7"):
        assert part in text, text
    lab.screenshot(view, "hover-tooltip.png")

    lab.page.mouse.click(*_cell_point(canvas, 7))  # a red square opens its run's traceback
    traceback = view.locator(".nbflow-detail .nbflow-traceback")
    traceback.wait_for()
    assert "ValueError: bad item 7" in traceback.inner_text()
    assert "Cell In[1]" in traceback.inner_text(), traceback.inner_text()
    lab.screenshot(view, "details-traceback.png")

    view.locator(".nbflow-dag .nbflow-node[data-group='0']").click()  # the load node filters to load
    view.locator(".nbflow-chip", has_text="task: load").wait_for()
    assert view.locator(".nbflow-group[data-group='1']").is_hidden()
    # The list is answered by the kernel: until then it shows every task's runs, failed first.
    lab.page.wait_for_function(
        "(el) => { const rows = [...el.querySelectorAll('.nbflow-row[data-key]')];"
        " return rows.length === 200 && rows.every(r => r.dataset.key.startsWith('0:')); }",
        arg=view.element_handle(),
    )
    assert view.locator(".nbflow-row[data-state='Failed']").count() == 0
    view.locator(".nbflow-chip").click()

    view.locator(".nbflow-search").fill("107")  # search by map index
    # Map index 107 of both tasks; a run whose random name holds "107" (load-107) may match too.
    lab.page.wait_for_function(
        "(el) => { const rows = [...el.querySelectorAll('.nbflow-row[data-key]')];"
        " return rows.filter(r => r.textContent.includes('[107]')).length === 2"
        " && rows.every(r => r.textContent.includes('107')); }",
        arg=view.element_handle(),
    )
    assert view.locator(".nbflow-row[data-state='Failed']", has_text="[107]").count() == 1
    lab.screenshot(view, "search-map-index.png")


@pytest.mark.parametrize("lab", UIS, indirect=True)
def test_a_saved_notebook_reopened_with_no_kernel_shows_the_static_view(lab):
    lab.write_notebook("reopen.ipynb", [CLICK_SETUP, CLICK_RUN])
    lab.open_notebook("reopen.ipynb")
    lab.run_all()
    lab.wait_cells_done(timeout=60)
    lab.final_view(1)  # the picture is in the notebook's model: save it
    lab.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    lab.page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")
    lab.server.shutdown_kernels()
    saved = lab.server.root / "reopen.ipynb"  # without a kernelspec Lab asks, and "No Kernel" is an answer
    notebook = json.loads(saved.read_text())
    notebook["metadata"].pop("kernelspec", None)
    saved.write_text(json.dumps(notebook))

    lab.page.goto(lab.url("reopen.ipynb", workspace="-reopen"), wait_until="domcontentloaded")
    static = lab.page.locator(".jp-Cell").nth(1).locator(".nbflow-static")
    static.wait_for(timeout=30_000)  # the picture is the saved output: it shows whatever the kernel does
    no_kernel = lab.page.locator(".jp-Dialog button", has_text="No Kernel")
    if no_kernel.count():  # Lab 4.6 and Notebook 7 pick the one kernel by themselves; others may ask
        no_kernel.click()
    shown = static.inner_text()  # the edited notebook is untrusted: its HTML is sanitised, the text stays
    for part in ("click-through", "Completed", "400 of 400 task runs done", "Failed task runs", "bad item 107"):
        assert part in shown, shown
    page_text = lab.page.locator(".jp-NotebookPanel").last.inner_text()
    assert "Error displaying widget" not in page_text and "Loading widget" not in page_text
    lab.screenshot(static, "reopened-no-kernel.png")


def test_an_exported_report_opens_offline_in_chromium(lab, tmp_path):
    lab.write_notebook("export.ipynb", [CLICK_SETUP, CLICK_RUN, "%nbflow export click-through report.html"])
    lab.open_notebook("export.ipynb")
    lab.run_all()
    lab.wait_cells_done(timeout=60)
    report = lab.server.root / "report.html"
    assert report.exists(), lab.error_output()

    requests: list[str] = []
    page = lab.page.context.new_page()
    page.on("request", lambda request: requests.append(request.url))
    page.goto(report.as_uri())
    page.locator("svg").first.wait_for()
    text = page.locator("body").inner_text()
    for part in ("click-through", "400 of 400 task runs done", "map index 7", "ValueError: bad item 107",
                 "Cell In[1]", "Timings", "median"):
        assert part in text, part
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # nothing from the network
    images = page.evaluate("() => [...document.images].map(i => i.complete && i.naturalWidth > 0)")
    assert images and all(images), images  # the grids are inline PNGs that decode
    page.set_viewport_size({"width": 1100, "height": 900})
    page.screenshot(path=str(shot_path("exported-report.png")), full_page=False)
    page.close()


def shot_path(name: str):
    from .conftest import ARTIFACTS

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


BACKGROUND_RUN = f"""\
%%flow bg --background --max-workers 2
futures = slow_tick.map(range({N}))
futures.wait()
"""
NEXT_CELL = 'print("the next cell ran")'
WAIT_CELL = 'print("waiting for bg")\n%nbflow wait bg'
QUICK_BACKGROUND = "%%flow quick --background\n6 * 7"
QUICK_WAIT = "%nbflow wait quick"


def test_a_background_run_leaves_the_kernel_free_its_view_live_cancel_and_wait_work(lab):
    # The wait for bg comes last: it raises (the run was cancelled), and Run All stops at an error.
    cells = [CANCEL_SETUP, BACKGROUND_RUN, NEXT_CELL, QUICK_BACKGROUND, QUICK_WAIT, WAIT_CELL]
    lab.write_notebook("background.ipynb", cells)
    lab.open_notebook("background.ipynb")
    lab.run_all()

    # The %%flow cell returned at once: the next cell ran while the run goes on.
    lab.wait_output(1, "runs in the background")
    lab.wait_output(2, "the next cell ran")
    lab.wait_executed(1)
    lab.wait_executed(2)
    # %nbflow wait blocks its cell; meanwhile the view is still live: its progress moves on.
    lab.wait_output(5, "waiting for bg")
    first = lab.watch_view(1, "v.state === 'Running' && v.done >= 20", timeout=30)[-1]["done"]
    samples = lab.watch_view(1, f"v.state === 'Running' && v.done > {first}", timeout=30)
    assert not lab.executed(5), samples

    # Cancel while the main thread blocks in the wait: the wait hook hands the click to the view.
    lab.view(1).locator(lab.sel.cancel).click()
    lab.watch_view(1, ENDED, timeout=30)
    lab.wait_cells_done(timeout=30)
    final = lab.read_view(1)
    assert final["state"] == "Cancelled", final
    assert 20 <= final["counts"].get("Completed", 0) < N, final
    assert lab.output_text(4).split()[-1] == "42", lab.output_text(4)  # a wait gives the background cell's value
    assert "CancelledRun" in lab.output_text(5), lab.output_text(5)  # the wait raised the run's end
    lab.screenshot(lab.panel, "background-run.png")
