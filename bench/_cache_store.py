"""Measures of the cache's two pieces on disk: input fingerprints and the result store.

Reusable functions for ``python -m bench cache``; each returns a dict of figures:

>>> from bench import _cache_store as cache_store
>>> cache_store.fingerprint_array()        # GB/s on a 400 MB float64 array
>>> cache_store.measure_all(quick=True)    # every figure, smaller sizes

Targets (issues 9 and 10): fingerprints >= 1 GB/s on a 400 MB array and a 5-column
1e7-row numeric DataFrame, a small value in a few microseconds; a small value
(an entry inline in the store's index) written in tens of microseconds, whatever
the disk, and read back in < 40 us; 10,000 small writes committed (flush) in well
under a second.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbflow.store.fingerprint import fingerprint
from nbflow.store.results import ResultStore


def _median_seconds(work: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        gc.collect()
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _per_call_us(work: Callable[[], Any], calls: int, reps: int = 5) -> float:
    def many() -> None:
        for _ in range(calls):
            work()

    return _median_seconds(many, reps) / calls * 1e6


# -- fingerprints ---------------------------------------------------------------------------------
def fingerprint_rate(value: Any, nbytes: int, reps: int = 5) -> dict[str, float]:
    """Seconds and GB/s to fingerprint ``value``, which holds ``nbytes`` of data."""
    fingerprint(value)  # warm: imports, page faults
    seconds = _median_seconds(lambda: fingerprint(value), reps)
    return {"mb": nbytes / 1e6, "seconds": seconds, "gb_per_s": nbytes / seconds / 1e9}


def fingerprint_array(mb: int = 400, reps: int = 5) -> dict[str, float]:
    """Fingerprint throughput on a float64 numpy array of ``mb`` megabytes."""
    import numpy as np

    array = np.random.default_rng(0).random(mb * 1_000_000 // 8)
    return {"case": "numpy float64", **fingerprint_rate(array, array.nbytes, reps)}


def fingerprint_frame(rows: int = 10_000_000, columns: int = 5, reps: int = 5) -> dict[str, float]:
    """Fingerprint throughput on a numeric pandas DataFrame (float64 columns, a RangeIndex)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f"c{i}": rng.random(rows) for i in range(columns)})
    nbytes = int(frame.memory_usage(index=False).sum())
    return {"case": "pandas frame", **fingerprint_rate(frame, nbytes, reps)}


def fingerprint_small(calls: int = 20_000) -> dict[str, float]:
    """Microseconds per fingerprint of small values: an int, a short str, a small tuple, a small dict."""
    values = {"int": 12345, "str": "a short string", "tuple": (1, "a", 2.5), "dict": {"a": 1, "b": [1, 2]}}
    return {f"{name}_us": _per_call_us(lambda v=value: fingerprint(v), calls) for name, value in values.items()}


# -- the result store -----------------------------------------------------------------------------
_SMALL = {"rows": 100, "name": "small"}


def store_small(root: Path, calls: int = 2_000) -> dict[str, float]:
    """Microseconds per write of a small value (an inline entry; new keys each write), per rewrite of
    one key, and per hit read of an inline entry once committed to the index."""
    store = ResultStore(root, 1 << 40)
    try:
        store.write("hit", _SMALL, task="bench")  # the index is open before the clock starts
        keys = iter(range(10**9))
        write_us = _per_call_us(lambda: store.write(f"small-{next(keys)}", _SMALL, task="bench"), calls)
        rewrite_us = _per_call_us(lambda: store.write("hit", _SMALL, task="bench"), calls // 4)
        store.flush()
        read_us = _per_call_us(lambda: store.read("hit"), calls)
    finally:
        store.close()
    return {"write_us": write_us, "rewrite_us": rewrite_us, "read_us": read_us}


def store_batch(root: Path, entries: int = 10_000) -> dict[str, float]:
    """Seconds for ``entries`` small writes (new keys) followed by flush(): the writes alone, then
    until all of them are committed; microseconds per entry of the whole."""
    store = ResultStore(root, 1 << 40)
    try:
        store.write("first", _SMALL, task="bench")
        store.flush()
        gc.collect()
        start = time.perf_counter()
        for i in range(entries):
            store.write(f"batch-{i}", _SMALL, task="bench")
        written = time.perf_counter() - start
        store.flush()
        committed = time.perf_counter() - start
    finally:
        store.close()
    return {"entries": entries, "writes_s": written, "seconds": committed, "us_per_entry": committed / entries * 1e6}


def store_large(root: Path, mb: int = 100, reps: int = 3) -> dict[str, float]:
    """Seconds and GB/s to write (under new keys) and to read back a float64 array of ``mb`` megabytes."""
    import numpy as np

    array = np.random.default_rng(0).random(mb * 1_000_000 // 8)
    store = ResultStore(root, 1 << 40)
    keys = iter(range(reps))
    try:
        write_s = _median_seconds(lambda: store.write(f"large-{next(keys)}", array, task="bench"), reps)
        read_s = _median_seconds(lambda: store.read("large-0"), reps)
    finally:
        store.close()
    return {
        "mb": array.nbytes / 1e6,
        "write_s": write_s,
        "write_gb_per_s": array.nbytes / write_s / 1e9,
        "read_s": read_s,
        "read_gb_per_s": array.nbytes / read_s / 1e9,
    }


def measure_all(quick: bool = False) -> list[dict[str, Any]]:
    """Every figure above (``quick``: a tenth of the sizes), each row named by its ``case``."""
    scale = 10 if quick else 1
    rows: list[dict[str, Any]] = [
        fingerprint_array(400 // scale),
        fingerprint_frame(10_000_000 // scale),
        {"case": "fingerprint small", **fingerprint_small(20_000 // scale)},
    ]
    with tempfile.TemporaryDirectory(prefix="nbflow-bench-") as folder:
        rows.append({"case": "store small", **store_small(Path(folder) / "small", 2_000 // scale)})
        rows.append({"case": "store 10,000 small + flush", **store_batch(Path(folder) / "batch")})
        rows.append({"case": "store 100 MB array", **store_large(Path(folder) / "large", 100 // scale)})
    return rows


__all__ = [
    "fingerprint_array",
    "fingerprint_frame",
    "fingerprint_rate",
    "fingerprint_small",
    "measure_all",
    "store_batch",
    "store_large",
    "store_small",
]
