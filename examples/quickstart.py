"""The example flow of nbflow's README: a small ETL that fans out, fails once, and recovers.

    python examples/quickstart.py

It shows what nbflow does with no server and no set-up: tasks submitted and
mapped on threads, futures passed between tasks, a retry, a failure that
blocks only its own downstream run, and the run records you can inspect
afterwards (the same records the notebook view draws).
"""

from __future__ import annotations

import collections
import random

from nbflow import allow_failure, flow, get_run_logger, task, unmapped
from nbflow.runs import last_flow_run


@task(retries=2, retry_delay_seconds=0.01)
def fetch(city: str) -> list[float]:
    """Pretend to download a week of temperatures; the network is flaky the first time."""
    from nbflow.runtime import task_run

    if city == "Oslo" and task_run.run_count == 1:
        raise ConnectionError("timeout talking to the weather service")
    rng = random.Random(city)
    return [round(rng.uniform(-5, 30), 1) for _ in range(7)]


@task(task_run_name="clean-{city}")
def clean(city: str, readings: list[float], limits: tuple[float, float]) -> list[float]:
    low, high = limits
    if city == "Atlantis":
        raise ValueError("Atlantis sent no readings")
    return [r for r in readings if low <= r <= high]


@task
def mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 2)


@task
def report(means: list[float | None], cities: list[str]) -> dict[str, float | str]:
    # Under allow_failure a run that never started (its upstream failed) arrives as None.
    logger = get_run_logger()
    table: dict[str, float | str] = {}
    for city, value in zip(cities, means):
        table[city] = value if value is not None else "no data (an upstream task failed)"
        logger.info("%s: %s", city, table[city])
    return table


@flow(log_prints=True)
def weather(cities: list[str]) -> dict[str, float | str]:
    raw = fetch.map(cities)
    cleaned = clean.map(cities, raw, unmapped((-10.0, 40.0)))
    means = mean.map(cleaned)
    # allow_failure: the report runs even though one city failed upstream.
    summary = report.submit(allow_failure(means), cities)
    print(f"submitted {3 * len(cities) + 1} task runs")  # log_prints: this print is a log record
    return summary.result()


def main() -> None:
    cities = ["Lisbon", "Oslo", "Nairobi", "Atlantis", "Lima"]
    table = weather(cities)
    print("\nMean temperature per city:")
    for city, value in table.items():
        print(f"  {city:<9} {value}")

    run = last_flow_run()
    counts = collections.Counter(r.state.name for r in run.task_runs)
    print(f"\nFlow run {run.name!r} ended {run.state.name}: {dict(sorted(counts.items()))}")
    oslo = next(r for r in run.task_runs if r.task.name == "fetch" and r.parameters["city"] == "Oslo")
    print(f"  fetch(Oslo) took {oslo.run_count} attempts: {' -> '.join(s.name for s in oslo.states)}")
    blocked = next(r for r in run.task_runs if r.state.name == "NotReady")
    print(f"  {blocked.name} did not run: {blocked.state.message}")


if __name__ == "__main__":
    main()
