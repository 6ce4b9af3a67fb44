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
