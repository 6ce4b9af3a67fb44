"""Cache policies behave as in Prefect 3.9.1 (each case was run there first).

Which runs are Cached, which compute, what persists a result, how policies
combine, and what a bad key or an unpicklable result does.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time

import pytest

from nbflow import flow, task
from nbflow.cache_policies import (
    DEFAULT,
    FLOW_PARAMETERS,
    INPUTS,
    NO_CACHE,
    NONE,
    RUN_ID,
    TASK_SOURCE,
    CacheKeyFnPolicy,
    CachePolicy,
    CompoundCachePolicy,
    Inputs,
    RunId,
    TaskSource,
)

pytestmark = pytest.mark.parity


def states_of(t, *calls):
    """Run ``t`` once per argument tuple, each in its own flow run; the state names."""

    @flow
    def one(args):
        return t(*args, return_state=True).name

    return [one(args) for args in calls]


def test_persist_result_alone_caches_within_one_flow_run_only():
    calls = []

    @task(persist_result=True)
    def a(x):
        calls.append(x)
        return x

    @flow
    def twice():
        return a(1, return_state=True).name, a(1, return_state=True).name

    assert twice() == ("Completed", "Cached")
    assert twice() == ("Completed", "Cached")  # RUN_ID is part of DEFAULT: a new flow run computes again
    assert calls == [1, 1]


def test_inputs_caches_across_flow_runs_with_the_stored_value():
    calls = []

    @task(cache_policy=INPUTS)
    def double(x):
        calls.append(x)
        return 2 * x

    @flow
    def f(x):
        state = double(x, return_state=True)
        return state.name, state.message, state.result()

    assert f(1) == ("Completed", None, 2)
    assert f(1) == ("Cached", None, 2)
    assert f(2) == ("Completed", None, 4)
    assert calls == [1, 2]


def test_inputs_alone_keys_on_the_inputs_so_tasks_share_entries():
    @task(cache_policy=INPUTS)
    def first(x):
        return "first"

    @task(cache_policy=INPUTS)
    def second(x):
        return "second"

    @flow
    def f():
        return first(7), second(7, return_state=True).name

    assert f() == ("first", "Cached")


def test_inputs_gives_no_key_to_a_task_without_inputs_but_task_source_does():
    @task(cache_policy=INPUTS)
    def no_inputs():
        return 3

    @task(cache_policy=TASK_SOURCE)
    def by_source():
        return 3

    assert states_of(no_inputs, (), ()) == ["Completed", "Completed"]
    assert states_of(by_source, (), ()) == ["Completed", "Cached"]


def test_an_input_that_cannot_be_hashed_warns_naming_it_and_runs_uncached(caplog):
    @task(cache_policy=INPUTS)
    def locked(x, lock):
        return x

    with caplog.at_level(logging.WARNING, logger="nbflow"):
        assert states_of(locked, (1, threading.Lock()), (1, threading.Lock())) == ["Completed", "Completed"]
    records = [r for r in caplog.records if "cache key" in r.getMessage()]
    messages = [r.getMessage() for r in records]
    assert len(messages) == 2
    assert [(r.name, r.levelname) for r in records] == [("nbflow.task_runs", "ERROR")] * 2  # as Prefect's
    assert messages[0].startswith("Error encountered when computing cache key - result will not be persisted.")
    assert "'lock'" in messages[0] and "'locked'" in messages[0] and "Inputs(exclude=['lock'])" in messages[0]


def test_inputs_minus_a_name_leaves_that_parameter_out():
    @task(cache_policy=INPUTS - "verbose")
    def compute(x, verbose):
        return x

    assert states_of(compute, (1, True), (1, False), (2, False)) == ["Completed", "Cached", "Completed"]


def test_refresh_cache_computes_every_time_and_replaces_the_entry():
    runs = []

    @task(cache_policy=INPUTS, refresh_cache=True)
    def refreshed(x):
        runs.append(x)
        return len(runs)

    @task(cache_policy=INPUTS)
    def reader(x):
        return -1

    @flow
    def f():
        return refreshed(5, return_state=True).name, reader(5)

    assert f() == ("Completed", 1)
    assert f() == ("Completed", 2)  # the reader shares the key and sees the newest value


def test_a_failed_run_stores_nothing():
    attempts = []

    @task(cache_policy=INPUTS)
    def flaky(x):
        attempts.append(x)
        if len(attempts) == 1:
            raise ValueError("boom")
        return x

    assert states_of(flaky, (9,), (9,), (9,)) == ["Failed", "Completed", "Cached"]


def test_result_storage_key_is_where_the_result_goes_and_its_key():
    @task(result_storage_key="k-{parameters[x]}.pkl")
    def stored(x):
        return x

    assert stored.cache_policy is None and stored.persist_result is True
    assert states_of(stored, (1,), (1,), (2,)) == ["Completed", "Cached", "Completed"]


def test_a_result_storage_key_naming_nothing_there_fails_the_run_with_the_formatting_error():
    @task(result_storage_key="{nope}")
    def stored():
        return 1

    @flow
    def f():
        return stored(return_state=True)

    state = f(return_state=True)
    assert state.is_failed()
    with pytest.raises(KeyError, match="nope"):  # Prefect 3.9.1: the task run fails with it
        state.result()


def test_persist_result_false_ignores_the_policy_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="nbflow"):
        @task(cache_policy=INPUTS, persist_result=False)
        def never(x):
            return x

    assert any("Ignoring `cache_policy` because `persist_result` is False" in r.getMessage() for r in caplog.records)
    assert never.cache_policy == NO_CACHE
    assert states_of(never, (1,), (1,)) == ["Completed", "Completed"]


def test_flow_parameters_key_on_the_flow_runs_parameters():
    @task(cache_policy=FLOW_PARAMETERS)
    def echo(x):
        return x

    @flow
    def f(p):
        return echo(p, return_state=True).name

    assert [f(1), f(1), f(2)] == ["Completed", "Cached", "Completed"]


def test_completion_hooks_see_the_cached_state():
    seen = []

    @task(cache_policy=INPUTS, on_completion=[lambda t, r, s: seen.append(s.name)])
    def hooked(x):
        return x

    assert states_of(hooked, (31,), (31,)) == ["Completed", "Cached"]
    assert seen == ["Completed", "Cached"]


def test_a_cached_run_passes_through_running_its_running_hooks_are_called_and_run_count_is_1():
    # Prefect 3.9.1: on_running is called (state Running, run_count 1) before the cache is read.
    seen = []

    def note(kind):
        return lambda t, r, s: seen.append((kind, s.name, r.run_count))

    @task(cache_policy=INPUTS, on_running=[note("running")], on_completion=[note("done")])
    def hooked(x):
        return x

    assert states_of(hooked, (32,), (32,)) == ["Completed", "Cached"]
    assert seen == [("running", "Running", 1), ("done", "Completed", 1), ("running", "Running", 1), ("done", "Cached", 1)]


def test_a_cache_key_fn_that_returns_none_never_caches():
    calls = []

    @task(cache_key_fn=lambda context, parameters: None)
    def unkeyed(x):
        calls.append(x)
        return x

    assert states_of(unkeyed, (1,), (1,)) == ["Completed", "Completed"]
    assert calls == [1, 1]


def test_cache_key_fn_wins_over_cache_policy_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="nbflow"):
        @task(cache_policy=INPUTS, cache_key_fn=lambda context, parameters: "always")
        def both(x):
            return x

    assert any("Both `cache_policy` and `cache_key_fn` are set" in r.getMessage() for r in caplog.records)
    assert isinstance(both.cache_policy, CacheKeyFnPolicy)
    assert states_of(both, (1,), (2,)) == ["Completed", "Cached"]


def test_an_expired_entry_is_computed_again(monkeypatch):
    @task(cache_policy=INPUTS, cache_expiration=datetime.timedelta(hours=1))
    def fresh(x):
        return x

    assert states_of(fresh, (41,), (41,)) == ["Completed", "Cached"]
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 7200)
    assert states_of(fresh, (41,)) == ["Completed"]


def test_serializable_isolation_computes_a_key_once_however_many_runs_want_it():
    calls = []

    @task(cache_policy=INPUTS.configure(isolation_level="SERIALIZABLE"))
    def once(x):
        calls.append(x)
        return x

    @flow
    def f():
        futures = [once.submit(202) for _ in range(4)]
        return sorted(future.state.name for future in futures if future.wait() is None)

    assert f() == ["Cached", "Cached", "Cached", "Completed"]
    assert calls == [202]


def test_an_inline_call_outside_a_flow_is_cached_too():
    calls = []

    @task(cache_policy=INPUTS)
    def outside(x):
        calls.append(x)
        return x

    assert (outside(606), outside(606)) == (606, 606)
    assert outside(606, return_state=True).name == "Cached"
    assert calls == [606]


def test_an_unpicklable_result_is_returned_and_not_cached(caplog):
    @task(cache_policy=INPUTS)
    def make_lock(x):
        return threading.Lock()

    with caplog.at_level(logging.WARNING, logger="nbflow"):
        assert states_of(make_lock, (505,), (505,)) == ["Completed", "Completed"]
    assert any("'make_lock'" in r.getMessage() and "not stored" in r.getMessage() for r in caplog.records)


def test_a_bare_task_has_the_default_policy_and_persists_nothing():
    calls = []

    @task
    def plain(x):
        calls.append(x)
        return x

    assert plain.cache_policy is DEFAULT and plain.persist_result is None
    assert states_of(plain, (1,), (1,)) == ["Completed", "Completed"]


def test_policies_combine_and_subtract_as_prefects():
    assert isinstance(DEFAULT, CompoundCachePolicy)
    assert [type(p) for p in DEFAULT.policies] == [TaskSource, RunId, Inputs]
    assert INPUTS - "x" == Inputs(exclude=["x"]) and INPUTS.exclude == []
    assert NO_CACHE + INPUTS is INPUTS and INPUTS + NONE is INPUTS
    minus = DEFAULT - "x"
    assert [type(p) for p in minus.policies] == [TaskSource, RunId, Inputs]
    assert minus.policies[-1].exclude == ["x"]
    merged = (INPUTS - "a") + (TASK_SOURCE + (INPUTS - "b"))
    assert [p.exclude for p in merged.policies if isinstance(p, Inputs)] == [["a", "b"]]
    assert TASK_SOURCE - "x" is TASK_SOURCE and (RUN_ID + TASK_SOURCE) - "x" == RUN_ID + TASK_SOURCE
    with pytest.raises(TypeError, match="Can only subtract strings"):
        INPUTS - 1  # type: ignore[operator]


def test_configure_returns_a_copy_and_combining_different_settings_is_refused(tmp_path):
    configured = INPUTS.configure(key_storage=tmp_path, isolation_level="SERIALIZABLE")
    assert (configured.key_storage, configured.isolation_level) == (tmp_path, "SERIALIZABLE")
    assert INPUTS.key_storage is None and INPUTS.isolation_level is None
    assert (configured + TASK_SOURCE).isolation_level == "SERIALIZABLE"
    with pytest.raises(ValueError, match="different storage locations"):
        configured + TASK_SOURCE.configure(key_storage=tmp_path / "other")
    with pytest.raises(ValueError, match="different isolation levels"):
        configured + TASK_SOURCE.configure(isolation_level="READ_COMMITTED")
    with pytest.raises(ValueError, match="isolation_level must be one of"):
        INPUTS.configure(isolation_level="EVENTUAL")  # type: ignore[arg-type]


def test_key_storage_keeps_entries_in_that_folder(tmp_path):
    folder = tmp_path / "keys"

    @task(cache_policy=INPUTS.configure(key_storage=folder))
    def kept(x):
        return x

    assert states_of(kept, (3,), (3,)) == ["Completed", "Cached"]
    assert any(p.is_file() for p in folder.rglob("*"))


def test_a_custom_policy_subclass_with_compute_key():
    class Parity(CachePolicy):
        def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs):
            return "even" if inputs["x"] % 2 == 0 else None

    @task(cache_policy=Parity())
    def numbered(x):
        return x

    assert states_of(numbered, (2,), (4,), (3,), (3,)) == ["Completed", "Cached", "Completed", "Completed"]


def test_a_policy_that_is_not_a_policy_is_refused_naming_the_task_and_the_fix():
    # Prefect 3.9.1 accepts it and fails every run with an AttributeError; nbflow says so at once.
    with pytest.raises(TypeError, match=r"Task 'bad': cache_policy must be a cache policy.*nbflow.cache_policies"):
        @task(cache_policy="inputs")
        def bad(x):
            return x


def test_with_options_carries_the_policy_the_user_gave():
    base = task(cache_policy=INPUTS)(lambda x: x)
    assert base.with_options(name="renamed").cache_policy is INPUTS
    off = base.with_options(persist_result=False)
    assert off.cache_policy == NO_CACHE and off.persist_result is False
    assert task(lambda x: x).with_options(cache_policy=TASK_SOURCE).cache_policy is TASK_SOURCE


def test_a_flows_persist_result_reaches_its_tasks_and_its_subflows_tasks():
    calls = []

    @task
    def t(x):
        calls.append(x)
        return x

    @task(persist_result=False)
    def never(x):
        calls.append(-x)
        return x

    @flow
    def child():
        return t(2, return_state=True).name, t(2, return_state=True).name

    @flow(persist_result=True)
    def parent():
        names = [t(1, return_state=True).name, t(1, return_state=True).name]
        names += [never(1, return_state=True).name, never(1, return_state=True).name]
        return names, child()

    assert parent() == (["Completed", "Cached", "Completed", "Completed"], ("Completed", "Cached"))
    assert calls == [1, -1, -1, 2]

    @flow
    def plain():
        return t(3, return_state=True).name, t(3, return_state=True).name

    assert plain() == ("Completed", "Completed")  # no flow asks: nothing persisted, nothing cached
