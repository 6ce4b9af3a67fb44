"""What the run history costs the runs it records.

    python -m bench history            # 10,000-task maps, 9 of each; empty flow runs; floods
    python -m bench history --quick    # 5 of each map, fewer empty flow runs, smaller floods

Measured in this process, in a temporary NBFLOW_HOME, history off and on interleaved:

- a ``.map`` of 10,000 trivial tasks: the flow call's time with history off and on (medians, ratio;
  target <= 1.10), and how long after the call the writer had committed the run (it writes in the
  background, taking at most ``BUSY_SHARE`` of the time while flow runs execute, then catches up);
- an empty flow run with history on (median per run; target < 1 ms), beside history off;
- floods, with every commit slowed by 50 ms (a slow disk): tasks printing in tight loops (the writer
  gets no event per line: its buffer stays at a few markers; the output tails are right), and empty
  flow runs back to back (one marker per flow run, coalesced; the most the buffer held, its bound).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import threading
import time
from pathlib import Path

import nbflow.history
import nbflow.logging
import nbflow.runs
import nbflow.settings
from nbflow import flow, task
from nbflow.store import history as store


@task
def trivial(x: int) -> int:
    return x + 1


@flow
def mapped(n: int) -> list[int]:
    return trivial.map(range(n)).result()


@flow
def empty() -> None:
    return None


def _timed(n: int) -> float:
    gc.collect()
    start = time.perf_counter()
    mapped(n)
    return time.perf_counter() - start


def map_costs(n: int, reps: int) -> dict[str, float]:
    """Medians of the flow call with history off and on, and of the writer's catching up after it."""
    off, on, behind = [], [], []
    mapped(n)  # warm up
    for _ in range(reps):
        off.append(_timed(n))
        writer = store.start()
        on.append(_timed(n))
        start = time.perf_counter()
        writer.flush(timeout=120)
        behind.append(time.perf_counter() - start)
        writer.stop()
    return {"off_s": statistics.median(off), "on_s": statistics.median(on), "behind_s": statistics.median(behind)}


def empty_costs(calls: int) -> dict[str, float]:
    """Median microseconds per empty flow run, history off and on (five rounds of ``calls`` each)."""
    def per_call() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            empty()
        return (time.perf_counter() - start) / calls * 1e6

    empty()
    off, on = [], []
    for _ in range(5):
        off.append(per_call())
        writer = store.start()
        on.append(per_call())
        writer.flush(timeout=120)
        writer.stop()
    return {"off_us": statistics.median(off), "on_us": statistics.median(on)}


def output_flood(lines: int) -> dict[str, float]:
    """Eight tasks print ``lines`` lines in all while every commit of the writer is slowed by 50 ms."""
    per_task = lines // 8

    @task
    def chatty(i: int) -> int:
        for k in range(per_task):
            print(k)
        return i

    @flow
    def flooding() -> list[int]:
        return chatty.map(range(8)).result()

    writer = store.start()
    writer.before_commit = lambda: time.sleep(0.05)  # a slow disk
    printed = [0]
    lock = threading.Lock()

    def count(event: object) -> None:
        with lock:
            printed[0] += 1

    nbflow.logging.console_echo(False)
    subscription = nbflow.runs.subscribe(count, kinds=("output",))
    start = time.perf_counter()
    state = flooding(return_state=True)
    elapsed = time.perf_counter() - start
    subscription.unsubscribe()
    nbflow.logging.console_echo(True)
    writer.before_commit = None
    writer.flush(timeout=120)
    writer.stop()
    record = nbflow.history.flow_run(nbflow.runs.last_flow_run().name)
    tails = all(r.output is not None and r.output.text().endswith(f"{per_task - 1}\n") for r in record.task_runs)
    return {"events": printed[0], "peak": writer.peak, "bound": writer.bound, "seconds": elapsed,
            "ok": state.is_completed() and record.state_counts() == {"Completed": 8} and tails}


def flow_run_flood(runs: int) -> dict[str, float]:
    """``runs`` empty flow runs back to back while every commit of the writer is slowed by 50 ms."""
    nbflow.history.clear()
    current = nbflow.settings.current
    limit, current.history_max_runs = current.history_max_runs, runs  # keep them all, to count them
    writer = store.start()
    writer.before_commit = lambda: time.sleep(0.05)
    start = time.perf_counter()
    for _ in range(runs):
        empty()
    elapsed = time.perf_counter() - start
    writer.before_commit = None
    writer.flush(timeout=120)
    writer.stop()
    recorded = len(nbflow.history.flow_runs(name=empty.name, limit=runs + 10))
    current.history_max_runs = limit
    return {"runs": runs, "seconds": elapsed, "peak": writer.peak, "bound": writer.bound,
            "dropped": writer.dropped, "recorded": recorded}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench history", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, a smaller flood")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as home:
        nbflow.settings.current.home = Path(home)
        maps = map_costs(10_000, 5 if args.quick else 9)
        empties = empty_costs(500 if args.quick else 2_000)
        flooded = output_flood(100_000 if args.quick else 400_000)
        burst = flow_run_flood(2_000 if args.quick else 10_000)
        size = store.default_path().stat().st_size
    ratio = maps["on_s"] / maps["off_s"]
    print("a .map of 10,000 trivial tasks (flow call, medians, history off / on interleaved):")
    print(f"  history off        {maps['off_s']:8.3f} s")
    print(f"  history on         {maps['on_s']:8.3f} s   ({ratio:.2f}x; target <= 1.10)")
    print(f"  writer caught up   {maps['behind_s']:8.3f} s after the call returned (committed in the background)")
    print("an empty flow run (median per run):")
    print(f"  history off        {empties['off_us']:8.1f} us")
    print(f"  history on         {empties['on_us']:8.1f} us   (target < 1000 us)")
    print(f"a flood of output: 8 tasks printing {flooded['events']:,} lines in {flooded['seconds']:.2f} s, "
          "every commit slowed by 50 ms:")
    print(f"  peak buffered      {flooded['peak']:8,} markers (bound {flooded['bound']:,}); final states and output "
          f"tails {'right' if flooded['ok'] else 'WRONG'}")
    print(f"a flood of flow runs: {burst['runs']:,} empty flow runs in {burst['seconds']:.2f} s, every commit "
          "slowed by 50 ms:")
    print(f"  peak buffered      {burst['peak']:8,} markers (bound {burst['bound']:,}); {burst['recorded']:,} "
          f"recorded, {burst['dropped']:,} let go")
    print(f"history file: {size / 1e6:.1f} MB")
    return 0
