"""Big fan-outs: a ``.map`` of 100,000 and 1,000,000 trivial tasks beside the plain engines.

    python -m bench scale                                  # 100k and 1M on threads, processes, dask
    python -m bench scale --runners ray --sizes 100000     # beside plain Ray tasks
    python -m bench scale --sizes 100000 --runners threads # one case
    python -m bench scale --fail 0.1                       # 10% of the items raise
    python -m bench scale --gather 10000                   # N futures into one task, beside the raw executor

Every case runs in a fresh Python process, so that the driver's memory
growth (resident set after the map ended and every future was read, minus
before) is the case's own; figures are medians of ``--reps`` such runs.
Peers, doing the same work: ``ThreadPoolExecutor.map``,
``ProcessPoolExecutor.map(chunksize=...)``, plain Dask ``client.map`` on
the same 2-worker LocalCluster and one plain Ray task per item on a 2-CPU
local Ray (the plain engines only up to ``--plain-max`` items: a million plain
Dask or Ray tasks take far longer than a benchmark should; the ratio for
bigger sizes is then taken per task against the largest size run).
Targets (issue 12): threads at most 2x raw per task at a million; Dask at most
plain ``client.map``'s per-task cost at 100,000 and a million in under a tenth
of plain ``client.map``'s time; at most 250 bytes per task run of driver memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

CASES = {
    "threads": ("nbflow-threads", "raw-threads"),
    "processes": ("nbflow-processes", "raw-processes"),
    "dask": ("nbflow-dask", "plain-dask"),
    "ray": ("nbflow-ray", "plain-ray"),
}
PLAIN_ENGINES = {"plain-dask", "plain-ray"}

# One case, run by a fresh interpreter: prints a JSON line {"seconds", "bytes", "ok"}.
_CHILD = r'''
import json, os, sys, time, gc
os.environ.setdefault("NBFLOW_HOME", sys.argv[4])
kind, n, fail = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
every = int(1 / fail) if fail else 0

def work(x):
    if every and x % every == 0:
        raise ValueError(x)
    return x + 1

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def measure(run):
    gc.collect()
    before = rss()
    start = time.perf_counter()
    ok, keep = run()
    seconds = time.perf_counter() - start
    gc.collect()
    print(json.dumps({"seconds": seconds, "bytes": (rss() - before) / n, "ok": ok}))
    del keep

def nbflow_case(runner):
    from nbflow import flow, task
    t = task(work)

    @flow(task_runner=runner)
    def fan_out():
        futures = t.map(range(n))
        futures.wait()
        done = sum(1 for f in futures if f.state.is_completed())
        values = [f.result() for f in futures if f.state.is_completed()]
        return done, (futures, values)

    return measure(fan_out)

def safe(x):
    try:
        return work(x)
    except ValueError:
        return None

if __name__ == "__main__":
    if kind == "nbflow-threads":
        from nbflow.task_runners import ThreadPoolTaskRunner
        nbflow_case(ThreadPoolTaskRunner())
    elif kind == "nbflow-processes":
        from nbflow.task_runners import ProcessPoolTaskRunner
        nbflow_case(ProcessPoolTaskRunner(max_workers=2))
    elif kind == "nbflow-dask":
        from nbflow.task_runners import DaskTaskRunner
        nbflow_case(DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "dashboard_address": None}))
    elif kind == "nbflow-ray":
        import ray
        from nbflow.task_runners import RayTaskRunner
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        nbflow_case(RayTaskRunner())
    elif kind == "raw-threads":
        import concurrent.futures as cf
        with cf.ThreadPoolExecutor() as pool:
            measure(lambda: (lambda v: (sum(x is not None for x in v), v))(list(pool.map(safe, range(n)))))
    elif kind == "raw-processes":
        import concurrent.futures as cf
        with cf.ProcessPoolExecutor(2) as pool:
            list(pool.map(safe, range(100)))  # warm
            measure(lambda: (lambda v: (sum(x is not None for x in v), v))(
                list(pool.map(safe, range(n), chunksize=max(1, n // 200)))))
    elif kind == "plain-dask":
        import distributed
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            client.gather(client.map(safe, range(100)))  # warm
            def run():
                futures = client.map(safe, range(n), pure=False)
                values = client.gather(futures)
                return sum(x is not None for x in values), (futures, values)
            measure(run)
    elif kind == "plain-ray":
        import ray
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(safe)
        ray.get([remote.remote(x) for x in range(100)])  # warm
        def run():
            refs = [remote.remote(x) for x in range(n)]
            values = ray.get(refs)
            return sum(x is not None for x in values), (refs, values)
        measure(run)
'''

_GATHER = r'''
import json, os, sys, time, statistics
os.environ.setdefault("NBFLOW_HOME", sys.argv[2])
import concurrent.futures as cf
from nbflow import flow, task
n = int(sys.argv[1])
inc, size = task(lambda x: x + 1, name="inc"), task(lambda xs: len(xs), name="size")

@flow
def gathered():
    futures = inc.map(range(n))
    futures.wait()
    start = time.perf_counter()
    size.submit(futures).result()
    return time.perf_counter() - start

def raw():
    with cf.ThreadPoolExecutor() as pool:
        futures = [pool.submit(lambda x: x + 1, i) for i in range(n)]
        cf.wait(futures)
        start = time.perf_counter()
        pool.submit(len, [f.result() for f in futures]).result()
        return time.perf_counter() - start

ours, theirs = [], []
for _ in range(7):
    ours.append(gathered())
    theirs.append(raw())
print(json.dumps({"nbflow": statistics.median(ours), "raw": statistics.median(theirs)}))
'''


def _run(kind: str, n: int, fail: float, home: str, timeout: float) -> dict[str, Any] | None:
    try:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, kind, str(n), str(fail), home],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    print(f"  {kind} n={n} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
    return None


def _median(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--runners", default="threads,processes,dask")
    parser.add_argument("--fail", type=float, default=0.0, help="share of items that raise")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--plain-max", type=int, default=100_000, help="most items for plain Dask and Ray")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--gather", type=int, default=0, help="only the gather case, with N futures")
    args = parser.parse_args(argv)
    import tempfile

    home = tempfile.mkdtemp(prefix="nbflow-bench-scale-")
    if args.gather:
        out = subprocess.run([sys.executable, "-c", _GATHER, str(args.gather), home], capture_output=True, text=True)
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        extra = (figures["nbflow"] - figures["raw"]) * 1e3
        print(f"gather {args.gather:,} futures into one task: nbflow {figures['nbflow'] * 1e3:.1f} ms, "
              f"raw executor {figures['raw'] * 1e3:.1f} ms, {extra:+.1f} ms (target: at most +20 ms)")
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'case':<18}{'items':>11}{'seconds':>10}{'us/task':>9}{'ratio':>8}{'bytes/task':>12}  completed")
    for name in args.runners.split(","):
        ours, peer = CASES[name]
        peer_per_task = None
        for n in sizes:
            rows = {}
            for kind in (ours, peer):
                if kind in PLAIN_ENGINES and n > args.plain_max:
                    continue
                results = [r for r in (_run(kind, n, args.fail, home, args.timeout) for _ in range(args.reps)) if r]
                if results:
                    rows[kind] = results
            base = rows.get(peer)
            if base is not None:
                peer_per_task = _median(base, "seconds") / n
            for kind, results in rows.items():
                seconds = _median(results, "seconds")
                ratio = ""
                if kind == ours and peer_per_task:
                    ratio = f"{seconds / n / peer_per_task:.2f}x"
                    if base is None:
                        ratio += "*"  # against the per-task cost at the largest size the peer ran
                print(f"{kind:<18}{n:>11,}{seconds:>10.2f}{seconds / n * 1e6:>9.1f}{ratio:>8}"
                      f"{_median(results, 'bytes'):>12.0f}  {int(_median(results, 'ok')):,}")
    print("ratio: nbflow's per-task time / the peer's (* against the peer's per-task time at the largest size it ran)")
    return 0
