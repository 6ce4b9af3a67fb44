"""Flow.plan(): the runs a real run would serve from the cache and the runs it would run."""

from __future__ import annotations

import collections
import datetime

import pytest

import nbflow.visualize as viz

from nbflow import flow, settings, task
from nbflow.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from nbflow.runs import last_flow_run, subscribe
from nbflow.visualize import Plan


@task
def square(x):
    return x * x


@task
def total(values):
    return sum(values)


@flow
def pipeline(xs):
    return total(square.map(xs))


def real_counts(run) -> dict[str, collections.Counter]:
    """Per task of a finished flow run: how many runs were Cached and how many ran."""
    per: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for task_run in run.task_runs:
        per[task_run.task.name]["cached" if task_run.state.name == "Cached" else "ran"] += 1
    return per


def assert_agrees(plan: Plan, run) -> None:
    real = real_counts(run)
    assert {g.name: (g.cached, g.to_run) for g in plan.groups} == {
        name: (c["cached"], c["ran"]) for name, c in real.items()
    }


@pytest.fixture
def cache_on():
    settings.current.cache = True  # %nbflow cache on (restored by the conftest fixture)


@pytest.fixture(autouse=True)
def nothing_runs_in_a_plan(monkeypatch):
    """Fail a plan that makes a task run (a task's own state would change its CODE key, so no counter there)."""
    import nbflow.visualize

    made = []
    subscription = subscribe(made.append)
    real_plan = nbflow.visualize.plan

    def plan(*args):
        before = len(made)
        result = real_plan(*args)
        assert len(made) == before, f"a plan published run events: {made[before:]}"
        return result

    monkeypatch.setattr(nbflow.visualize, "plan", plan)
    yield
    subscription.unsubscribe()


def test_a_map_with_ten_changed_inputs_plans_90_cached_and_10_to_run(cache_on):
    first = pipeline.plan(list(range(100)))
    assert (first["square"].cached, first["square"].to_run) == (0, 100)
    pipeline(list(range(100)))
    changed = list(range(90)) + list(range(1000, 1010))
    plan = pipeline.plan(changed)
    assert (plan["square"].runs, plan["square"].cached, plan["square"].to_run) == (100, 90, 10)
    assert (plan["total"].cached, plan["total"].to_run) == (0, 1)  # downstream of runs that run
    assert (plan.cached, plan.to_run) == (90, 11)
    pipeline(changed)
    assert_agrees(plan, last_flow_run())


def test_a_fully_cached_chain_is_keyed_through_stored_values(cache_on):
    pipeline([1, 2, 3])
    plan = pipeline.plan([1, 2, 3])
    assert (plan["square"].cached, plan["total"].cached, plan.to_run) == (3, 1, 0)
    pipeline([1, 2, 3])
    assert_agrees(plan, last_flow_run())


def test_inline_and_submit_chains_and_values_read_from_the_store(cache_on):
    @flow
    def chained(n):
        a = square(n)  # inline: a cached run gives its stored value to the body
        b = square.submit(a + 1)
        return total([b, square(n + 1)])

    chained(2)
    plan = chained.plan(2)
    assert (plan["square"].cached, plan["total"].cached) == (3, 1)
    chained(2)
    assert_agrees(plan, last_flow_run())
    plan = chained.plan(3)  # square(3) is new, square(10) and square(4) are not... nor total's input
    chained(3)
    assert_agrees(plan, last_flow_run())


def test_without_the_cache_every_run_would_run():
    pipeline([1, 2])
    plan = pipeline.plan([1, 2])
    assert (plan.cached, plan.to_run) == (0, 3)


def test_policies_refresh_no_cache_expiry_and_result_storage_key(monkeypatch):
    import time

    @task(cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
    def kept(x):
        return x

    @task(cache_policy=INPUTS + TASK_SOURCE, persist_result=True, refresh_cache=True)
    def refreshed(x):
        return x

    @task(cache_policy=NO_CACHE, persist_result=True)
    def never(x):
        return x

    @task(cache_policy=INPUTS + TASK_SOURCE, persist_result=True, cache_expiration=datetime.timedelta(seconds=60))
    def expiring(x):
        return x

    @task(cache_policy=None, persist_result=True, result_storage_key="plan-{parameters[x]}")
    def named(x):
        return x

    @task(cache_policy=None, persist_result=True, result_storage_key="plan-{task_run.id}")
    def per_run(x):
        return x

    @flow
    def mixed(x):
        return [t(x) for t in (kept, refreshed, never, expiring, named, per_run)]

    mixed(1)
    plan = mixed.plan(1)
    assert {g.name: g.cached for g in plan.groups} == {
        "kept": 1, "refreshed": 0, "never": 0, "expiring": 1, "named": 1, "per_run": 0,
    }
    mixed(1)
    assert_agrees(plan, last_flow_run())
    later = time.time() + 120  # past the expiry of `expiring`
    monkeypatch.setattr(time, "time", lambda: later)
    assert mixed.plan(1)["expiring"].cached == 0


def test_the_estimate_comes_from_the_run_history(cache_on):
    from nbflow.store import history

    pipeline([1, 2])
    history.stop()  # commits what the writer holds
    plan = pipeline.plan([1, 2, 3])
    square_time = plan["square"].seconds_per_run
    assert square_time is not None and square_time >= 0
    assert plan["square"].estimate == pytest.approx(square_time)  # one run to run
    assert plan.estimate is not None


def test_unknown_map_lengths_and_the_text_and_html_forms(cache_on):
    @task
    def numbers(n):
        return list(range(n))

    @flow
    def fan(n):
        return total(square.map(numbers(n)))

    plan = fan.plan(3)
    assert plan["square"].runs is None and plan.to_run is None
    text = str(plan)
    assert text.splitlines()[0] == "Plan of flow 'fan': ? task runs, 0 cached, ? to run"
    assert text.splitlines()[1].split() == ["task", "runs", "cached", "to", "run", "time/run", "estimate"]
    assert text.splitlines()[3].split() == ["square", "?", "0", "?", "-", "-"]
    fan(3)
    plan = fan.plan(3)  # numbers(3) is Cached now: its stored list gives the map its length
    assert (plan["square"].runs, plan["square"].cached, plan.to_run) == (3, 3, 0)
    page = plan._repr_html_()
    assert "<svg" not in page and "<td>square</td><td>3</td><td>3</td><td>0</td>" in page  # no drawer: a table
    from nbflow.report.dag import Dag

    viz.drawer = Dag.from_trace  # what %load_ext nbflow installs
    try:
        assert "<svg" in plan._repr_html_() and "square x3" in plan._repr_html_()
    finally:
        viz.drawer = None
    assert repr(plan) == "<Plan of flow 'fan': 5 task runs, 5 cached, 0 to run>"


def test_names_are_escaped_in_html():
    evil = task(lambda x: x, name="<b>x</b>")

    @flow
    def shown():
        return evil(1)

    page = shown.plan()._repr_html_()
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page


def test_plan_of_an_async_flow(cache_on):
    @task
    async def double(x):
        return 2 * x

    @flow
    async def twice(x):
        return await double(x)

    import asyncio

    asyncio.run(twice(4))
    plan = twice.plan(4)
    assert (plan["double"].cached, plan.to_run) == (1, 0)


def test_a_missing_task_name_says_what_the_flow_calls():
    with pytest.raises(KeyError, match="calls: square, total"):
        pipeline.plan([1])["nope"]
