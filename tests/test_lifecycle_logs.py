"""The engine's own log records, as Prefect 3.9.1 writes them (``task_engine.py``
``handle_retry`` / ``log_finished_message``, ``flow_engine.py`` ``begin_run`` /
``handle_exception``), each case observed on Prefect 3.9.1.

They go to the logging tree's handlers (caplog here) and only there: with no
handler configured they are not made, and nbflow's console echo and run
capture leave them out (a notebook cell does not get a line per task run).
"""

from __future__ import annotations

import logging
import time

import pytest

from nbflow import flow, task
from nbflow.cache_policies import INPUTS
from nbflow.runs import last_flow_run

pytestmark = [pytest.mark.parity, pytest.mark.timeout(30)]


@pytest.fixture
def engine_records(caplog):
    """``engine_records()``: ``(logger, level, message)`` of the lifecycle records so far."""
    caplog.set_level(logging.INFO)

    def records():
        return [(r.name, r.levelname, r.getMessage()) for r in caplog.records if getattr(r, "nbflow_lifecycle", False)]

    return records


def test_a_failing_task_and_its_flow(engine_records):
    @task
    def t():
        raise ValueError("tboom")

    @flow(name="lf9")
    def f():
        t()

    with pytest.raises(ValueError):
        f()
    name = last_flow_run().name
    assert engine_records() == [
        ("nbflow.flow_runs", "INFO", f"Beginning flow run {name!r} for flow 'lf9'"),
        ("nbflow.task_runs", "ERROR", "Task run failed with exception: ValueError('tboom')"),
        ("nbflow.task_runs", "ERROR", "Finished in state Failed('Task run encountered an exception ValueError: tboom')"),
        ("nbflow.flow_runs", "ERROR", "Encountered exception during execution: ValueError('tboom')"),
        ("nbflow.flow_runs", "INFO", "Finished in state Failed('Flow run encountered an exception: ValueError: tboom')"),
    ]


def test_task_retries_and_a_flow_retry(engine_records, caplog):
    calls = []

    @task(retries=1)
    def flaky():
        calls.append(1)
        raise ValueError("x")

    @flow(retries=1)
    def f():
        calls.append("flow")
        if calls.count("flow") == 1:
            raise ValueError("again")
        flaky(return_state=True)

    f()
    name = last_flow_run().name
    assert engine_records() == [
        ("nbflow.flow_runs", "INFO", f"Beginning flow run {name!r} for flow 'f'"),
        ("nbflow.flow_runs", "ERROR", "Encountered exception during execution: ValueError('again')"),
        ("nbflow.flow_runs", "INFO",
         "Received non-final state 'AwaitingRetry' when proposing final state 'Failed' and will attempt to run again..."),
        ("nbflow.flow_runs", "INFO", f"Beginning flow run {name!r} for flow 'f'"),  # each attempt begins
        ("nbflow.task_runs", "INFO", "Task run failed with exception: ValueError('x') - Retry 1/1 will start immediately"),
        ("nbflow.task_runs", "ERROR", "Task run failed with exception: ValueError('x') - Retries are exhausted"),
        ("nbflow.task_runs", "ERROR", "Finished in state Failed('Task run encountered an exception ValueError: x')"),
        ("nbflow.flow_runs", "INFO", "Finished in state Completed()"),
    ]
    exhausted = [r for r in caplog.records if "Retries are exhausted" in r.getMessage()]
    assert exhausted[0].exc_info[1].args == ("x",)  # with its traceback, as Prefect's
    assert exhausted[0].task_run_name.startswith("flaky-")


def test_subflows_cached_runs_and_timeouts(engine_records):
    @flow
    def child():
        return 1

    @task(cache_policy=INPUTS, persist_result=True)
    def cached(x):
        return x

    @task(timeout_seconds=0.2)
    def slow():
        time.sleep(5)

    @flow
    def parent():
        child()
        cached(1)
        cached(1)
        slow(return_state=True)

    parent()
    messages = [(level, message) for _, level, message in engine_records()]
    assert messages[1][1].startswith("Beginning subflow run ") and messages[1][1].endswith(" for flow 'child'")
    assert messages[2:] == [
        ("INFO", "Finished in state Completed()"),  # the subflow
        ("INFO", "Finished in state Completed()"),
        ("INFO", "Finished in state Cached(type=COMPLETED)"),
        ("ERROR", messages[5][1]),
        ("ERROR", "Task run exceeded timeout of 0.2 second(s)"),
        ("ERROR", "Finished in state TimedOut('Task run exceeded timeout of 0.2 second(s)', type=FAILED)"),
        ("INFO", "Finished in state Completed()"),
    ]
    assert messages[5][1].startswith("Task run failed with exception: TaskRunTimeoutError(")


def test_no_handler_no_record_and_nothing_echoed(monkeypatch, capsys):
    monkeypatch.setattr(logging.root, "handlers", [])
    made = []
    monkeypatch.setattr(logging.Logger, "makeRecord",
                        lambda self, *a, **k: made.append(a[2]) or logging.LogRecord(*a[:7]))

    @task
    def t():
        raise ValueError("quiet")

    @flow
    def f():
        t(return_state=True)

    f()
    assert made == [] and capsys.readouterr() == ("", "")


def test_a_handler_on_the_package_logger_receives_them_and_the_console_echo_does_not(monkeypatch, capsys):
    monkeypatch.setattr(logging.root, "handlers", [])
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("nbflow").addHandler(handler)
    try:
        @flow
        def f():
            return 1

        f()
    finally:
        logging.getLogger("nbflow").removeHandler(handler)
    assert seen[-1] == "Finished in state Completed()"
    assert capsys.readouterr() == ("", "")
