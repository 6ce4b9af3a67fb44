"""Error messages worded as Prefect 3.9.1 words them (each case run there), where nbflow adds to them
only after Prefect's own words."""

from __future__ import annotations

import pytest

from nbflow import as_completed, flow, get_run_logger, task, wait
from nbflow.exceptions import MissingContextError

pytestmark = [pytest.mark.parity, pytest.mark.timeout(30)]


@task
def one(x=1):
    return x


def test_negative_timeouts_are_value_errors_worded_as_prefects():
    @flow
    def f():
        futures = one.map([1, 2])
        futures.wait()
        message = "^'timeout' must be a non-negative number, got -1$"
        with pytest.raises(ValueError, match=message):
            wait(futures, timeout=-1)
        with pytest.raises(ValueError, match=message):
            list(as_completed(futures, timeout=-1))
        with pytest.raises(ValueError, match=message):
            futures.result(timeout=-1)

    f()


def test_get_run_logger_outside_a_run_starts_with_prefects_words():
    with pytest.raises(MissingContextError, match="^There is no active flow or task run context"):
        get_run_logger()


def test_an_unknown_with_options_keyword_is_worded_as_python_words_it():
    with pytest.raises(TypeError) as info:
        one.with_options(bogus=1)
    assert str(info.value) == "Task.with_options() got an unexpected keyword argument 'bogus'"


@task
def pair(a, b):
    return a + b


@task
def slow_until(event):
    event.wait(10)
    return 1


def test_map_errors_start_with_prefects_words_then_name_the_task():
    from nbflow.exceptions import MappingLengthMismatch, MappingMissingIterable

    @flow
    def f():
        with pytest.raises(MappingLengthMismatch, match=(
                r"^Received iterable parameters with different lengths\. Parameters for map must all "
                r"be the same length\. Got lengths: \{'a': 2, 'b': 1\}\. Task 'pair': ")):
            pair.map([1, 2], [1])
        with pytest.raises(MappingMissingIterable, match=(
                r"^No iterable parameters were received\. Parameters for map must include at least one "
                r"iterable\. Parameters: \{'a': 1, 'b': 2\}\. Task 'pair': ")):
            pair.map(1, 2)

    f()


def test_result_timeouts_start_with_prefects_words():
    import threading

    release = threading.Event()

    @flow
    def f():
        future = slow_until.submit(release)
        futures = slow_until.map([release])
        try:
            with pytest.raises(TimeoutError, match=f"^Task run {future.task_run_id} did not complete within 0.01 seconds"):
                future.result(timeout=0.01)
            with pytest.raises(TimeoutError, match="^Timed out waiting for all futures to complete within 0.01 seconds"):
                futures.result(timeout=0.01)
        finally:
            release.set()
        return future.result()

    assert f() == 1


def test_a_timed_out_run_has_prefects_state_message_and_an_error_naming_it():
    import time

    from nbflow.exceptions import FlowRunTimeoutError, TaskRunTimeoutError

    @task(timeout_seconds=0.1, task_run_name="sleeper")
    def sleeper():
        time.sleep(5)

    seen = []

    @flow
    def pipeline():
        seen.append(sleeper(return_state=True))

    pipeline()
    state = seen[0]
    assert state.name == "TimedOut" and state.message == "Task run exceeded timeout of 0.1 second(s)"
    with pytest.raises(TaskRunTimeoutError, match=r"^Task run 'sleeper' exceeded timeout of 0.1 second\(s\)\.$"):
        state.result()

    @flow(timeout_seconds=0.1, flow_run_name="slow-flow")
    def slow():
        time.sleep(5)

    state = slow(return_state=True)
    assert state.name == "TimedOut" and state.message == "Flow run exceeded timeout of 0.1 second(s)"
    with pytest.raises(FlowRunTimeoutError, match=r"^Flow run 'slow-flow' exceeded timeout of 0.1 second\(s\)\.$"):
        state.result()
