"""How much small work to hand an engine at once, from the durations measured so far.

Runners that pay a fixed cost per hand-over (a Dask task, a pipe round trip
to a worker process) send runs of short tasks several at a time: a Dask
chunk, a worker's queue of runs. Each task's mean run duration is measured
as its runs end (per process, by task key) and sizes the next hand-overs.
"""

from __future__ import annotations

from nbflow.records import TaskRun

# Mean duration (seconds) of a run of each task, by task key.
_durations: dict[str, float] = {}


def mean_duration(task_key: str) -> float | None:
    """The measured mean duration of a run of the task ``task_key`` (None until one completed)."""
    return _durations.get(task_key)


def measure(runs: list[TaskRun]) -> None:
    """Fold the durations of these completed runs of one task into its mean."""
    durations = [r.duration for r in runs if r.state.is_completed() and r.duration is not None]
    if durations:
        mean = sum(durations) / len(durations)
        key = runs[0].task.task_key
        known = _durations.get(key)
        _durations[key] = mean if known is None else (known + mean) / 2


def runs_per(seconds: float, mean: float | None, unknown: int, most: int) -> int:
    """How many runs of mean duration ``mean`` make about ``seconds`` of work (``unknown`` if not measured),
    between 1 and ``most``."""
    count = unknown if mean is None else int(seconds / max(mean, 1e-6))
    return max(1, min(count, most))


__all__ = ["mean_duration", "measure", "runs_per"]
