"""Per-task overhead of nbflow's thread runner against a raw ThreadPoolExecutor.

    python -m bench overhead            # full: 1k, 10k, 100k tasks
    python -m bench overhead --quick    # 1k and 10k only, fewer repetitions

Each case runs the same trivial work through nbflow and through a raw
``concurrent.futures.ThreadPoolExecutor`` in the same process, interleaved,
and prints medians per task and the ratio nbflow / raw. Memory growth and
the fixed costs (an empty flow run, ``import nbflow``) are measured in fresh
subprocesses. Targets (issue 2): ratios <= 3x (aim 2x) for submit, map and
the diamond; memory growth <= 2x; an empty flow run <= 5 ms; import <= 0.3 s.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import gc
import json
import statistics
import subprocess
import sys
import threading
import time
from typing import Callable

from nbflow import flow, task


def trivial(x: int) -> int:
    return x + 1


def combine(x: int, y: int) -> int:
    return x + y


t_trivial = task(trivial)
t_combine = task(combine)


# -- the cases: each returns seconds for n tasks ------------------------------------
def nbflow_submit(n: int) -> float:
    @flow
    def submit_all() -> float:
        start = time.perf_counter()
        futures = [t_trivial.submit(i) for i in range(n)]
        for f in futures:
            f.result()
        return time.perf_counter() - start

    return submit_all()


def raw_submit(n: int) -> float:
    with cf.ThreadPoolExecutor() as pool:
        start = time.perf_counter()
        futures = [pool.submit(trivial, i) for i in range(n)]
        for f in futures:
            f.result()
        return time.perf_counter() - start


def nbflow_map(n: int) -> float:
    @flow
    def map_all() -> float:
        start = time.perf_counter()
        t_trivial.map(range(n)).result()
        return time.perf_counter() - start

    return map_all()


def raw_map(n: int) -> float:
    with cf.ThreadPoolExecutor() as pool:
        start = time.perf_counter()
        list(pool.map(trivial, range(n)))
        return time.perf_counter() - start


def nbflow_diamond(items: int) -> float:
    @flow
    def diamond() -> float:
        start = time.perf_counter()
        ends = []
        for i in range(items):
            a = t_trivial.submit(i)
            b = t_trivial.submit(a)
            c = t_trivial.submit(a)
            ends.append(t_combine.submit(b, c))
        for d in ends:
            d.result()
        return time.perf_counter() - start

    return diamond()


def raw_diamond(items: int) -> float:
    """The same diamonds with done-callbacks: no thread is parked on a result."""
    with cf.ThreadPoolExecutor() as pool:
        done = threading.Event()
        left = [items]
        lock = threading.Lock()

        def finished(_f: cf.Future) -> None:
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        def start_item(i: int) -> None:
            a = pool.submit(trivial, i)

            def after_a(fa: cf.Future) -> None:
                b = pool.submit(trivial, fa.result())
                c = pool.submit(trivial, fa.result())
                pending = [2]

                def after_bc(_f: cf.Future) -> None:
                    with lock:
                        pending[0] -= 1
                        ready = pending[0] == 0
                    if ready:
                        pool.submit(combine, b.result(), c.result()).add_done_callback(finished)

                b.add_done_callback(after_bc)
                c.add_done_callback(after_bc)

            a.add_done_callback(after_a)

        start = time.perf_counter()
        for i in range(items):
            start_item(i)
        done.wait()
        return time.perf_counter() - start


# -- measuring ------------------------------------------------------------------------
def compare(name: str, ours: Callable[[int], float], raw: Callable[[int], float], n: int, tasks: int, reps: int) -> dict:
    mine, theirs = [], []
    for _ in range(reps):  # interleaved, so both see the same machine load
        gc.collect()
        mine.append(ours(n))
        gc.collect()
        theirs.append(raw(n))
    m, r = statistics.median(mine), statistics.median(theirs)
    row = {
        "case": name,
        "tasks": tasks,
        "nbflow_us": m / tasks * 1e6,
        "raw_us": r / tasks * 1e6,
        "ratio": m / r,
    }
    print(f"{name:<22} {tasks:>8} {row['nbflow_us']:>10.1f} {row['raw_us']:>10.1f} {row['ratio']:>7.2f}x", flush=True)
    return row


_MEMORY_SCRIPT = """
import gc, os, sys
import concurrent.futures as cf
kind, n = sys.argv[1], int(sys.argv[2])
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def trivial(x):
    return x + 1
import nbflow
from nbflow import flow, task
gc.collect()
before = rss()
if kind == "raw":
    with cf.ThreadPoolExecutor() as pool:
        futures = [pool.submit(trivial, i) for i in range(n)]
        [f.result() for f in futures]
        gc.collect()
        after = rss()
else:
    t = task(trivial)
    @flow
    def f():
        futures = [t.submit(i) for i in range(n)]
        [x.result() for x in futures]
        gc.collect()
        return rss()
    after = f()
print(after - before)
"""


def memory_growth(kind: str, n: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, kind, str(n)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def subprocess_seconds(code: str, reps: int) -> float:
    times = []
    for _ in range(reps):
        out = subprocess.run(
            [sys.executable, "-c", f"import time; t=time.perf_counter(); {code}; print(time.perf_counter()-t)"],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def empty_flow_ms(reps: int) -> float:
    @flow
    def empty() -> None:
        return None

    empty()  # warm up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        empty()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k only, 3 repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per case (median taken)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 5)
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]

    print(f"{'case':<22} {'tasks':>8} {'nbflow us':>10} {'raw us':>10} {'ratio':>8}")
    rows = []
    for n in sizes:
        r = reps if n < 100_000 else max(1, reps // 2)
        rows.append(compare("submit+result", nbflow_submit, raw_submit, n, n, r))
        rows.append(compare("map", nbflow_map, raw_map, n, n, r))
    rows.append(compare("diamond (1k items)", nbflow_diamond, raw_diamond, 1_000, 4_000, reps))

    n_mem = 10_000 if args.quick else 100_000
    ours = statistics.median(memory_growth("nbflow", n_mem) for _ in range(3))
    raw = statistics.median(memory_growth("raw", n_mem) for _ in range(3))
    print(f"\nmemory growth at {n_mem} tasks: nbflow {ours / 2**20:.1f} MiB "
          f"({ours / n_mem:.0f} B/task), raw {raw / 2**20:.1f} MiB ({raw / n_mem:.0f} B/task), "
          f"ratio {ours / raw:.2f}x")
    flow_ms = empty_flow_ms(200)
    print(f"empty flow run: {flow_ms:.3f} ms (median of 200)")
    import_s = subprocess_seconds("import nbflow", 5) 
    print(f"import nbflow: {import_s:.3f} s (median of 5 fresh interpreters)")

    summary = {
        "rows": rows,
        "memory": {"tasks": n_mem, "nbflow_bytes": ours, "raw_bytes": raw, "ratio": ours / raw},
        "empty_flow_ms": flow_ms,
        "import_s": import_s,
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)
    return 0
