"""What the live run view costs a 10,000 + 10,000-task run, in Chromium and in this process.

    python -m bench view                 # in Chromium: 3 interleaved repetitions of four modes
    python -m bench view --reps 9
    python -m bench view --in-process    # no browser: 15 interleaved repetitions of four modes
    python -m bench view --in-process --quick --tasks 100000

In Chromium (the default): a JupyterLab on loopback and headless Debian
Chromium, as the browser tests have them (tests/browser/conftest.py). One
tab and kernel per mode (``BROWSER_MODES``): no extension; ``%load_ext
nbflow`` with views off; the view on, as a notebook has it; the view on with
results not persisted (the extension persists them by default, for
``%nbflow retry``). Each runs a warm-up flow, then, in turns, the timed one:
a plain call of a flow mapping 10,000 tasks into 10,000 more. Its wall time
and CPU time (user + system, all its threads) are measured in the kernel;
the tab's busy time (its renderer's tasks: script, style, layout, paint;
CDP ``Performance.getMetrics``), its longest frame (the largest gap between
two animation frames) and its longest task (``longtask`` entries) while
the cell runs, in the page. CPU and busy times are what load changes least. Kernel and browser share this machine's cores,
as they do on a laptop: a frame is late when the kernel's threads starve the
browser too. Target: the view on costs at most 10% more wall time, its
longest frame under 100 ms.

In this process (``--in-process``): the same flow, run four ways,
interleaved so they see the same machine load: without the notebook
extension; with it loaded but views off (its flow-run subscriber and output
routing only); with the view on as a notebook has it (the live view appears
once a run has lasted ``settings.view_delay``, 0.25 s; the final view is
always made and its display bundle computed); and with the live view from
the run's first moment (the worst case: widgets made at once, redrawn at
10 Hz throughout). Widgets use ipywidgets' no-kernel comm.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nbflow import flow, task
from nbflow.notebook import session as sessions


@task
def square(x: int) -> int:
    return x * x


def _formatted(obj: Any, raw: bool = False) -> None:
    """Stands in for IPython's display(): compute the bundle a kernel would publish."""
    if not raw:
        obj._repr_mimebundle_()


MODES = ("no extension", "views off", "view on", "live from 0 s")


def _configure(mode: str, defaults: dict[str, Any]) -> None:
    sessions.uninstall()
    for key, value in defaults.items():
        setattr(sessions.settings, key, value)
    if mode == "no extension":
        return
    sessions.install(sessions.NotebookSession(None, display=_formatted, widgets=True))
    sessions.settings.auto_view = mode != "views off"
    if mode == "live from 0 s":
        sessions.settings.view_delay = 0.0


def run_once(n: int) -> float:
    @flow(name="bench-map")
    def mapped() -> None:
        square.map(range(n)).result()

    gc.collect()
    start = time.perf_counter()
    mapped()
    return time.perf_counter() - start


def in_process(tasks: int, reps: int) -> None:
    """The four modes in this process, interleaved; prints medians and ratios."""
    saved = dict(vars(sessions.settings))
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for mode in ("no extension", "live from 0 s"):  # warm up threads and imports
            _configure(mode, saved)
            run_once(min(tasks, 1000))
        for _ in range(reps):
            for mode in MODES:
                _configure(mode, saved)
                times[mode].append(run_once(tasks))
    finally:
        _configure("no extension", saved)
    base = statistics.median(times["no extension"])
    print(f"{tasks:,}-task map, median of {reps} (interleaved)")
    print(f"{'mode':<14} {'median s':>9} {'us/task':>8} {'ratio':>7} {'best s':>8}")
    for mode in MODES:
        median = statistics.median(times[mode])
        print(
            f"{mode:<14} {median:>9.3f} {median / tasks * 1e6:>8.1f} {median / base:>6.2f}x "
            f"{min(times[mode]):>8.3f}"
        )
    for mode in ("view on", "live from 0 s"):
        ratio = statistics.median(times[mode]) / base
        best = min(times[mode]) / min(times["no extension"])
        verdict = "ok" if ratio <= 1.10 else "over target"
        print(f"{mode} / no extension: {ratio:.3f}x median, {best:.3f}x best (target <= 1.10x: {verdict})")


# -- in Chromium ----------------------------------------------------------------------------------
# What each notebook runs first: the extension or not; results persisted (the extension's default) or not.
BROWSER_MODES = {
    "no extension": "",
    "views off": "%load_ext nbflow\n%nbflow view off",
    "view on": "%load_ext nbflow",
    "view on, not persisted": "import os\nos.environ['NBFLOW_PERSIST_RESULTS'] = '0'\n%load_ext nbflow",
}
BROWSER_SETUP = """\
{load}
import time
from nbflow import flow, task

@task
def first(i: int) -> int:
    return i

@task
def second(x: int) -> int:
    return x * x

@flow(name="bench-view")
def bench(n: int) -> int:
    return len(second.map(first.map(range(n))).result())

bench(1000)  # warm-up: threads, imports, the view's first drawing
"""
BROWSER_RUN = """\
import resource
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
started, started_cpu = time.perf_counter(), cpu()
bench({tasks})
print(f"BENCH {{time.perf_counter() - started:.4f}} {{cpu() - started_cpu:.4f}}")
"""

# In the page: the largest gap between two animation frames and the longest task, from reset on.
FRAME_RECORDER = """() => {
  const rec = window.__nbflowFrames = {last: performance.now(), worst: 0, longest: 0};
  const tick = (now) => { rec.worst = Math.max(rec.worst, now - rec.last); rec.last = now; requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) rec.longest = Math.max(rec.longest, e.duration);
  }).observe({type: "longtask"});
}"""
FRAME_RESET = "() => { const r = window.__nbflowFrames; r.last = performance.now(); r.worst = 0; r.longest = 0; }"
FRAME_READ = "() => { const r = window.__nbflowFrames; return {worst: r.worst, longest: r.longest}; }"
RUN_CELL = ("(i) => { const w = window.jupyterapp.shell.currentWidget; w.content.activeCellIndex = i;"
            " window.jupyterapp.commands.execute('notebook:run-cell'); }")


def _open_mode(lab: Any, filename: str, load: str, tasks: int) -> None:
    """A notebook of its own tab: set up and warmed up, its timed cell not yet run."""
    lab.write_notebook(filename, [BROWSER_SETUP.format(load=load), BROWSER_RUN.format(tasks=tasks)])
    lab.open_notebook(filename)
    lab.page.evaluate(FRAME_RECORDER)
    lab.page.evaluate(RUN_CELL, 0)
    lab.wait_cells_done(timeout=120, cells=1)


def _renderer_busy(cdp: Any) -> float:
    """Seconds the tab's renderer has spent on tasks (script, style, layout, paint) so far."""
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return metrics["TaskDuration"]


def _timed_run(lab: Any, cdp: Any) -> dict[str, float]:
    """Run the timed cell in ``lab``'s tab (in front): kernel wall and CPU seconds, the tab's busy
    seconds, its longest frame and task (ms)."""
    lab.page.bring_to_front()  # a tab behind others draws no frames
    lab.page.evaluate(FRAME_RESET)
    busy = _renderer_busy(cdp)
    lab.page.evaluate(RUN_CELL, 1)
    lab.page.wait_for_function(
        "() => /BENCH [0-9.]+/.test(window.jupyterapp.shell.currentWidget.content.widgets[1].node.innerText)",
        timeout=300_000,
    )
    lab.wait_cells_done(timeout=120)
    busy = _renderer_busy(cdp) - busy
    frames = lab.page.evaluate(FRAME_READ)
    seconds, cpu = re.search(r"BENCH ([0-9.]+) ([0-9.]+)", lab.output_text(1)).groups()  # type: ignore[union-attr]
    return {"seconds": float(seconds), "kernel_cpu": float(cpu), "tab_busy": busy,
            "frame_ms": frames["worst"], "task_ms": frames["longest"]}


def in_chromium(tasks: int, reps: int) -> int:
    """The run in each of BROWSER_MODES in JupyterLab + Chromium, one tab each, interleaved; prints medians."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, Lab, browser_unavailable, run_lab_server

    reason = browser_unavailable()
    if reason:
        print(f"python -m bench view needs a browser: {reason} (or run it --in-process)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    base = Path(tempfile.mkdtemp(prefix="nbflow-bench-view-"))
    os.environ["NBFLOW_HOME"] = str(base / "home")  # the kernels' records and cache: thrown away
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in BROWSER_MODES}
    try:
        with run_lab_server(base) as server, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            context.set_default_timeout(120_000)
            tabs = {}
            for k, (mode, load) in enumerate(BROWSER_MODES.items()):
                lab = Lab(server, context.new_page(), f"bench-{k}")
                cdp = context.new_cdp_session(lab.page)
                cdp.send("Performance.enable")
                tabs[mode] = (lab, cdp)
                _open_mode(lab, f"mode-{k}.ipynb", load, tasks)
            for _ in range(reps):
                for mode, (lab, cdp) in tabs.items():
                    results[mode].append(_timed_run(lab, cdp))
            browser.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {mode: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for mode, runs in results.items()}
    base_s = med["no extension"]["seconds"]
    print(f"{tasks:,} + {tasks:,}-task run in JupyterLab + Chromium, median of {reps} (interleaved)")
    print(f"{'mode':<24} {'median s':>9} {'best s':>8} {'ratio':>7} {'kernel CPU s':>13} {'tab busy s':>11}"
          f" {'longest frame':>14} {'longest task':>13}")
    for mode, runs in results.items():
        m = med[mode]
        print(f"{mode:<24} {m['seconds']:>9.3f} {min(r['seconds'] for r in runs):>8.3f} {m['seconds'] / base_s:>6.2f}x "
              f"{m['kernel_cpu']:>13.3f} {m['tab_busy']:>11.3f} {m['frame_ms']:>11.0f} ms {m['task_ms']:>10.0f} ms")
    ratio = med["view on"]["seconds"] / base_s
    worst = max(r["frame_ms"] for r in results["view on"])
    ok = ratio <= 1.10 and worst < 100
    print(f"view on / no extension: {ratio:.3f}x; view on / views off: {med['view on']['seconds'] / med['views off']['seconds']:.3f}x; "
          f"longest frame of any view-on run {worst:.0f} ms (targets <= 1.10x, < 100 ms: {'ok' if ok else 'over target'})")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench view", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="size of each map (default 10000)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of each mode (median taken)")
    parser.add_argument("--quick", action="store_true", help="in process: 3 repetitions")
    parser.add_argument("--in-process", action="store_true", help="no browser: four modes in this process")
    args = parser.parse_args(argv)
    if args.in_process:
        in_process(args.tasks, args.reps or (3 if args.quick else 15))
        return 0
    return in_chromium(args.tasks, args.reps or 3)
