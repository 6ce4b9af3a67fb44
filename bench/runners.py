"""The process, Dask and Ray runners beside the plain engines, in one run.

    python -m bench runners                          # 8 CPU tasks of ~0.5 s; 10,000 trivial tasks
    python -m bench runners --tasks 2000 --reps 3    # a quicker run
    python -m bench runners --skip ray               # leave an engine out

(1) CPU-bound: 8 pure-Python tasks of about 0.5 s each, speedup over running
them serially, for ProcessPoolTaskRunner, DaskTaskRunner and RayTaskRunner
next to a raw ``concurrent.futures.ProcessPoolExecutor``, plain Dask
(``client.map``) and plain Ray (``f.remote()``). Target: at least 1.8x on 2 cores.

(2) Per-task overhead: N trivial tasks through DaskTaskRunner and
RayTaskRunner (``.submit`` in a loop, and ``.map``) against plain
``client.submit`` / ``client.map`` and plain ``f.remote()`` on the same
cluster, every result read back. Target: at most 1.5x.

Each engine starts once (a 2-worker LocalCluster, a 2-CPU local Ray) and
every case is warmed up first, so a flow run pays what it pays with a warm
pool or cluster. Cases are interleaved; medians of the repetitions.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import logging
import statistics
import sys
import time
from typing import Any, Callable

import cloudpickle

from nbflow import flow, task, wait
from nbflow.task_runners import ProcessPoolTaskRunner

# Ray workers do not import this module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def burn(iterations: int) -> int:
    """Pure-Python CPU work."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def inc(x: int) -> int:
    return x + 1


t_burn = task(burn)
t_inc = task(inc)


def calibrate(seconds: float) -> int:
    """Iterations of :func:`burn` that take about ``seconds`` here."""
    iterations = 200_000
    while True:
        start = time.perf_counter()
        burn(iterations)
        took = time.perf_counter() - start
        if took > 0.1:
            return int(iterations * seconds / took)
        iterations *= 4


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def flow_case(runner: Any, body: Callable[[], Any]) -> Callable[[], float]:
    """A flow on ``runner`` whose body is timed (the flow's own start and end included)."""

    @flow(task_runner=runner)
    def measured() -> None:
        body()

    return lambda: timed(measured)


def measure(cases: dict[str, Callable[[], float]], reps: int) -> dict[str, float]:
    for case in cases.values():  # warm up: pools, clusters and caches
        case()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):  # interleaved, so every case sees the same machine load
        for name, case in cases.items():
            times[name].append(case())
    return {name: statistics.median(values) for name, values in times.items()}


# -- the engines ------------------------------------------------------------------------------
def start_dask() -> tuple[Any, Any]:
    import distributed

    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.ERROR
    )
    return cluster, distributed.Client(cluster)


def start_ray() -> Any:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray


# -- (1) CPU-bound speedup ----------------------------------------------------------------------
def cpu_cases(iterations: int, count: int, dask: Any, ray: Any) -> dict[str, Callable[[], float]]:
    work = [iterations] * count
    pool = cf.ProcessPoolExecutor(max_workers=2)
    cases: dict[str, Callable[[], float]] = {
        "serial": lambda: timed(lambda: [burn(n) for n in work]),
        "raw ProcessPoolExecutor": lambda: timed(lambda: list(pool.map(burn, work))),
        "ProcessPoolTaskRunner": flow_case(
            ProcessPoolTaskRunner(max_workers=2), lambda: t_burn.map(work).result()
        ),
    }
    if dask is not None:
        from nbflow.task_runners import DaskTaskRunner

        cluster, client = dask
        cases["plain Dask (client.map)"] = lambda: timed(
            lambda: client.gather(client.map(burn, work, pure=False))
        )
        cases["DaskTaskRunner"] = flow_case(
            DaskTaskRunner(address=cluster.scheduler_address), lambda: t_burn.map(work).result()
        )
    if ray is not None:
        from nbflow.task_runners import RayTaskRunner

        remote_burn = ray.remote(burn)
        cases["plain Ray (f.remote)"] = lambda: timed(
            lambda: ray.get([remote_burn.remote(n) for n in work])
        )
        cases["RayTaskRunner"] = flow_case(RayTaskRunner(), lambda: t_burn.map(work).result())
    return cases


# -- (2) per-task overhead ------------------------------------------------------------------------
def overhead_cases(n: int, dask: Any, ray: Any) -> dict[str, tuple[str, Callable[[], float]]]:
    """Cases as ``name: (the plain case it is compared with, case)``."""

    def submit_all() -> None:  # as client.gather(futures): wait for all, then read all
        futures = [t_inc.submit(i) for i in range(n)]
        wait(futures)
        for future in futures:
            future.result()

    def map_all() -> None:
        t_inc.map(range(n)).result()

    cases: dict[str, tuple[str, Callable[[], float]]] = {}
    if dask is not None:
        from nbflow.task_runners import DaskTaskRunner

        cluster, client = dask
        address = cluster.scheduler_address
        cases["plain client.submit"] = ("", lambda: timed(
            lambda: client.gather([client.submit(inc, i, pure=False) for i in range(n)])
        ))
        cases["DaskTaskRunner .submit"] = ("plain client.submit", flow_case(
            DaskTaskRunner(address=address), submit_all
        ))
        cases["plain client.map"] = ("", lambda: timed(
            lambda: client.gather(client.map(inc, range(n), pure=False))
        ))
        cases["DaskTaskRunner .map"] = ("plain client.map", flow_case(
            DaskTaskRunner(address=address), map_all
        ))
    if ray is not None:
        from nbflow.task_runners import RayTaskRunner

        remote_inc = ray.remote(inc)
        cases["plain f.remote()"] = ("", lambda: timed(
            lambda: ray.get([remote_inc.remote(i) for i in range(n)])
        ))
        cases["RayTaskRunner .submit"] = ("plain f.remote()", flow_case(RayTaskRunner(), submit_all))
        cases["RayTaskRunner .map"] = ("plain f.remote()", flow_case(RayTaskRunner(), map_all))
    return cases


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench runners", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="trivial tasks per overhead case")
    parser.add_argument("--cpu-tasks", type=int, default=8, help="CPU-bound tasks")
    parser.add_argument("--seconds", type=float, default=0.5, help="seconds of work per CPU-bound task")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per case (median taken)")
    parser.add_argument("--skip", default="", help="engines to leave out: dask, ray (comma-separated)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}

    dask = start_dask() if "dask" not in skip else None
    ray = start_ray() if "ray" not in skip else None
    iterations = calibrate(args.seconds)

    print(f"(1) {args.cpu_tasks} CPU-bound tasks of ~{args.seconds} s, median of {args.reps}")
    print(f"{'case':<28} {'seconds':>8} {'speedup':>8}")
    cpu = measure(cpu_cases(iterations, args.cpu_tasks, dask, ray), args.reps)
    for name, seconds in cpu.items():
        print(f"{name:<28} {seconds:>8.2f} {cpu['serial'] / seconds:>7.2f}x", flush=True)

    print(f"\n(2) {args.tasks} trivial tasks, median of {args.reps}")
    print(f"{'case':<28} {'us/task':>8} {'ratio':>8}")
    cases = overhead_cases(args.tasks, dask, ray)
    overhead = measure({name: case for name, (_, case) in cases.items()}, args.reps)
    for name, (baseline, _) in cases.items():
        ratio = f"{overhead[name] / overhead[baseline]:>7.2f}x" if baseline else ""
        print(f"{name:<28} {overhead[name] / args.tasks * 1e6:>8.0f} {ratio:>8}", flush=True)

    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"cpu_seconds": cpu, "overhead_seconds": overhead, "tasks": args.tasks}, handle, indent=2)
    if dask is not None:
        dask[1].close()
        dask[0].close()
    if ray is not None:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
