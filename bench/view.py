"""What the live run view costs a 10,000-task ``.map``.

    python -m bench view             # 10k tasks, 15 interleaved repetitions
    python -m bench view --quick     # 3 repetitions
    python -m bench view --tasks 100000

The same flow, run in one process in four ways, interleaved so they see the
same machine load: without the notebook extension; with it loaded but views
off (its flow-run subscriber and output routing only); with the view on as a
notebook has it (the live view appears once a run has lasted
``settings.view_delay``, 0.25 s; the final view is always made and its
display bundle computed); and with the live view from the run's first
moment (the worst case: widgets made at once, redrawn at 10 Hz throughout).
Widgets use ipywidgets' no-kernel comm. Prints the median seconds of each and
the ratio to the run without the extension. Target (issue 3): the view on is
at most 10% slower.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench view", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="size of the map (default 10000)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of each mode (median taken)")
    parser.add_argument("--quick", action="store_true", help="3 repetitions")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 15)
    saved = dict(vars(sessions.settings))
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for mode in ("no extension", "live from 0 s"):  # warm up threads and imports
            _configure(mode, saved)
            run_once(min(args.tasks, 1000))
        for _ in range(reps):
            for mode in MODES:
                _configure(mode, saved)
                times[mode].append(run_once(args.tasks))
    finally:
        _configure("no extension", saved)
    base = statistics.median(times["no extension"])
    print(f"{args.tasks:,}-task map, median of {reps} (interleaved)")
    print(f"{'mode':<14} {'median s':>9} {'us/task':>8} {'ratio':>7} {'best s':>8}")
    for mode in MODES:
        median = statistics.median(times[mode])
        print(
            f"{mode:<14} {median:>9.3f} {median / args.tasks * 1e6:>8.1f} {median / base:>6.2f}x "
            f"{min(times[mode]):>8.3f}"
        )
    for mode in ("view on", "live from 0 s"):
        ratio = statistics.median(times[mode]) / base
        best = min(times[mode]) / min(times["no extension"])
        verdict = "ok" if ratio <= 1.10 else "over target"
        print(f"{mode} / no extension: {ratio:.3f}x median, {best:.3f}x best (target <= 1.10x: {verdict})")
    return 0
