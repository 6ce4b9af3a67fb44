"""Testing helpers with Prefect's names."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nbflow import settings
from nbflow.store import cache, history


@contextlib.contextmanager
def prefect_test_harness(server_startup_timeout: int | None = 30) -> Iterator[Path]:
    """Run flows inside the block against a fresh, temporary nbflow home, removed after it.

    Run history, cached and kept results go to the temporary home, so tests
    neither read nor change ``~/.nbflow``. ``server_startup_timeout`` is
    accepted for Prefect code; nbflow starts no server.

    >>> with prefect_test_harness():
    ...     assert my_flow() == "Done!"
    """
    home = Path(tempfile.mkdtemp(prefix="nbflow-test-"))
    saved_home, saved_env = settings.current.home, os.environ.get("NBFLOW_HOME")
    settings.current.home = home
    os.environ["NBFLOW_HOME"] = str(home)  # worker processes started inside use it too
    try:
        yield home
    finally:
        history.stop(settings.current.history_path)  # commit and let go of the temporary files
        cache.close_stores()
        settings.current.home = saved_home
        if saved_env is None:
            os.environ.pop("NBFLOW_HOME", None)
        else:
            os.environ["NBFLOW_HOME"] = saved_env
        shutil.rmtree(home, ignore_errors=True)


__all__ = ["prefect_test_harness"]
