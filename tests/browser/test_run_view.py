"""The live run view in a real browser: JupyterLab + headless Chromium, offline.

What only a browser can show: that the view renders, that it updates *while*
a cell is still running (not only when it ends), that its counts are right
at the end, and that its Cancel button reaches the kernel and cancels an
in-flight run. The harness is in conftest.py; every selector the tests use
is in ``ViewSelectors`` there.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from .conftest import REPO, browser_unavailable

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

    # The picture in the README: the finished view.
    shot = lab.screenshot(lab.view(1), "finished-view.png")
    if os.environ.get("NBFLOW_UPDATE_SCREENSHOT") or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


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
