"""nbflow's few settings: read from ``NBFLOW_*`` environment variables, changeable at run time.

>>> import nbflow.settings
>>> nbflow.settings.current.max_flow_runs = 20
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Settings:
    """Settings in force; each field's default comes from its environment variable."""

    #: How many flow runs' records are kept in memory (older ones are let go).
    max_flow_runs: int = field(default_factory=lambda: _env_int("NBFLOW_MAX_FLOW_RUNS", 100) or 100)
    #: Where nbflow keeps local files (results, history): ``NBFLOW_HOME``, default ``~/.nbflow``.
    home: Path = field(
        default_factory=lambda: Path(os.environ.get("NBFLOW_HOME", "~/.nbflow")).expanduser()
    )
    #: Thread cap of the default ThreadPoolTaskRunner (None: no small cap, as Prefect).
    thread_pool_max_workers: int | None = field(
        default_factory=lambda: _env_int("NBFLOW_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS", None)
    )
    #: Capture what task runs print and log into their run records.
    capture_output: bool = field(default_factory=lambda: _env_bool("NBFLOW_CAPTURE_OUTPUT", True))
    #: Characters of captured output kept per task run (the tail is kept).
    max_output_chars: int = field(
        default_factory=lambda: _env_int("NBFLOW_MAX_OUTPUT_CHARS", 100_000) or 100_000
    )

    #: Give every task without a cache policy of its own ``INPUTS + CODE`` (``%nbflow cache on``).
    cache: bool = field(default_factory=lambda: _env_bool("NBFLOW_CACHE", False))
    #: Keep the results of the completed task runs of a flow run that did not complete, as it
    #: ends, so that a retry reuses them (on by default once the notebook extension is loaded).
    persist_results: bool = field(default_factory=lambda: _env_bool("NBFLOW_PERSIST_RESULTS", False))
    #: Size limit of the result store in megabytes; least recently used entries go first.
    results_max_mb: int = field(default_factory=lambda: _env_int("NBFLOW_RESULTS_MAX_MB", 5120) or 5120)
    #: Record flow runs and task runs in the run history (``nbflow.history``).
    history: bool = field(default_factory=lambda: _env_bool("NBFLOW_HISTORY", True))
    #: The history keeps the last this many top-level flow runs...
    history_max_runs: int = field(default_factory=lambda: _env_int("NBFLOW_HISTORY_MAX_RUNS", 1000) or 1000)
    #: ...and at most this many megabytes, whichever limit is reached first.
    history_max_mb: int = field(default_factory=lambda: _env_int("NBFLOW_HISTORY_MAX_MB", 200) or 200)

    @property
    def results(self) -> Path:
        """Folder of the result store (cache entries and persisted results)."""
        return self.home / "results"

    @property
    def history_path(self) -> Path:
        """The run history's SQLite file."""
        return self.home / "history.sqlite"


current = Settings()

__all__ = ["Settings", "current"]
