"""What the cache costs and what it saves, beside a raw ThreadPoolExecutor and joblib.Memory.

    python -m bench cache            # a 10,000-item map of 1 ms tasks, 400 MB fingerprints
    python -m bench cache --quick    # 2,000 items, 100 MB

Each figure is measured in this process, the compared cases interleaved:

- fingerprints of a numpy array and a pandas frame (GB/s, target >= 1) and of small values;
- a cache hit of a small value: an inline task call served from the store, beside the same
  call with no cache, and a store read alone (target: well under 1 ms);
- a ``.map`` of CPU-bound 1 ms tasks: computed through a raw ThreadPoolExecutor, through
  nbflow with the notebook cache on (first run: computing and storing), then fully cached
  (target: >= 10x faster than computing), then with ten inputs changed; joblib.Memory doing the
  same work, computed and cached, alongside.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbflow.runs
import nbflow.settings
from bench import _cache_store as cache_store
from nbflow import flow, task
from nbflow.cache_policies import INPUTS


def busy(x: int, ms: float = 1.0) -> int:
    """About ``ms`` of CPU work holding the GIL, as a pure-Python task does."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass
    return x * x


busy_task = task(busy)


@flow
def mapped(items: list[int]) -> list[int]:
    return busy_task.map(items).result()


def seconds(work: Callable[[], Any]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def median_us(work: Callable[[], Any], calls: int, reps: int = 5) -> float:
    per_call = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            work()
        per_call.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(per_call)


def hit_costs(calls: int) -> dict[str, float]:
    """Microseconds per inline call: cached (a hit), no cache at all, and a bare store read."""

    @task(cache_policy=INPUTS)
    def cached(x: int) -> int:
        return x + 1

    @task
    def plain(x: int) -> int:
        return x + 1

    cached(1)  # stored once; every later call is a hit
    from nbflow.store import cache

    store = cache.store_at()
    store.write("bench-small", 42, task="bench")
    return {
        "hit_us": median_us(lambda: cached(1), calls),
        "uncached_us": median_us(lambda: plain(1), calls),
        "store_read_us": median_us(lambda: store.read("bench-small"), calls),
    }


def map_costs(n: int) -> dict[str, float]:
    """Seconds for ``n`` 1 ms tasks: raw pool, nbflow computing, fully cached, ten changed; joblib."""
    import joblib

    items = list(range(n))
    changed = list(items)
    for i in range(0, n, max(1, n // 10))[:10]:
        changed[i] = -changed[i] - 1
    with cf.ThreadPoolExecutor() as pool:
        raw = seconds(lambda: list(pool.map(busy, items)))
    settings = nbflow.settings.current
    settings.cache = True
    try:
        computed = seconds(lambda: mapped(items))
        cached = statistics.median(seconds(lambda: mapped(items)) for _ in range(3))
        assert all(r.state.name == "Cached" for r in nbflow.runs.last_flow_run().task_runs)
        ten_changed = seconds(lambda: mapped(changed))
    finally:
        settings.cache = False
    with tempfile.TemporaryDirectory() as folder:
        memory = joblib.Memory(folder, verbose=0)
        remembered = memory.cache(busy)
        joblib_computed = seconds(lambda: [remembered(x) for x in items])
        joblib_cached = statistics.median(seconds(lambda: [remembered(x) for x in items]) for _ in range(3))
    return {
        "raw_pool_s": raw,
        "nbflow_computed_s": computed,
        "nbflow_cached_s": cached,
        "nbflow_ten_changed_s": ten_changed,
        "joblib_computed_s": joblib_computed,
        "joblib_cached_s": joblib_cached,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench cache", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args(argv)
    n = 2_000 if args.quick else 10_000
    with tempfile.TemporaryDirectory() as home:
        nbflow.settings.current.home = Path(home)
        store = cache_store.measure_all(quick=args.quick)
        hits = hit_costs(2_000 if args.quick else 20_000)
        maps = map_costs(n)
        from nbflow.store import cache

        cache.close_stores()

    print("fingerprints and the store (bench/_cache_store.py):")
    for row in store:
        figures = ", ".join(f"{k} {v:.3g}" for k, v in row.items() if k != "case")
        print(f"  {row['case']:<28} {figures}")
    print("\ncache hit of a small value, per inline task call (median of 5):")
    print(f"  served from the store   {hits['hit_us']:8.1f} us")
    print(f"  no cache, computed      {hits['uncached_us']:8.1f} us   (hit / no cache: "
          f"{hits['hit_us'] / hits['uncached_us']:.2f}x)")
    print(f"  a store read alone      {hits['store_read_us']:8.1f} us")
    print(f"\na .map of {n:,} CPU-bound 1 ms tasks (2 cores, the GIL: about {n / 1000:.0f} s of work):")
    print(f"  raw ThreadPoolExecutor            {maps['raw_pool_s']:8.3f} s")
    print(f"  nbflow, cache on, first run       {maps['nbflow_computed_s']:8.3f} s   "
          f"({maps['nbflow_computed_s'] / maps['raw_pool_s']:.2f}x raw: computing and storing)")
    print(f"  nbflow, fully cached (median 3)   {maps['nbflow_cached_s']:8.3f} s   "
          f"({maps['nbflow_computed_s'] / maps['nbflow_cached_s']:.1f}x faster than computing; target >= 10x)")
    print(f"  nbflow, ten inputs changed        {maps['nbflow_ten_changed_s']:8.3f} s")
    print(f"  joblib.Memory, first run          {maps['joblib_computed_s']:8.3f} s")
    print(f"  joblib.Memory, cached (median 3)  {maps['joblib_cached_s']:8.3f} s   "
          f"(nbflow cached / joblib cached: {maps['nbflow_cached_s'] / maps['joblib_cached_s']:.2f}x)")
    return 0
