"""The notebook cache: ``INPUTS + CODE`` for every task, per-item map entries, and misses that say why."""

from __future__ import annotations

import pytest

import nbflow.runs
import nbflow.settings
from nbflow import flow, task
from nbflow.cache_policies import CODE, INPUTS, NO_CACHE


@pytest.fixture
def cache_on():
    nbflow.settings.current.cache = True
    yield
    nbflow.settings.current.cache = False


def define(source: str) -> dict:
    """Run ``source`` as a notebook cell would, in a fresh namespace acting as ``__main__``."""
    namespace = {"__name__": "__main__", "task": task, "flow": flow}
    exec(compile(source, "<cell>", "exec"), namespace)
    return namespace


PIPELINE = """
THRESHOLD = {threshold}

def parse(x):
    return x {op} 1

@task
def score(x):
    return parse(x) * THRESHOLD

@flow
def pipeline(items):
    return score.map(items).result()
"""


def last_runs():
    return nbflow.runs.last_flow_run().task_runs


def test_a_rerun_is_served_from_the_cache(cache_on):
    ns = define(PIPELINE.format(threshold=2, op="+"))
    assert ns["pipeline"]([1, 2, 3]) == [4, 6, 8]
    assert ns["pipeline"]([1, 2, 3]) == [4, 6, 8]
    runs = last_runs()
    assert [r.state.name for r in runs] == ["Cached"] * 3
    assert all(r.cache.hit and r.cache.key for r in runs)


def test_a_map_reruns_only_the_items_whose_inputs_changed(cache_on):
    ns = define(PIPELINE.format(threshold=2, op="+"))
    ns["pipeline"](list(range(20)))
    items = list(range(20))
    items[3], items[11] = 103, 111
    ns["pipeline"](items)
    runs = last_runs()
    computed = [r.map_index for r in runs if r.state.name == "Completed"]
    assert computed == [3, 11]
    assert runs[3].cache.why == "the parameter x changed"
    assert runs[0].cache.hit


def test_editing_a_helper_reruns_its_callers_and_says_so(cache_on):
    ns = define(PIPELINE.format(threshold=2, op="+"))
    ns["pipeline"]([1, 2])
    exec(compile("def parse(x):\n    return x - 1\n", "<cell 2>", "exec"), ns)  # the helper edited in a cell
    assert ns["pipeline"]([1, 2]) == [0, 2]
    runs = last_runs()
    assert [r.state.name for r in runs] == ["Completed", "Completed"]
    assert "the source of helper parse changed" in runs[0].cache.why


def test_changing_a_global_it_reads_reruns_and_names_the_global(cache_on):
    ns = define(PIPELINE.format(threshold=2, op="+"))
    ns["pipeline"]([1])
    ns["THRESHOLD"] = 10
    assert ns["pipeline"]([1]) == [20]
    assert "the global THRESHOLD changed" in last_runs()[0].cache.why


def test_a_comment_or_formatting_change_still_hits(cache_on):
    ns = define(PIPELINE.format(threshold=2, op="+"))
    ns["pipeline"]([1])
    exec(compile("def parse(x):\n    # a comment\n\n    return (x +\n            1)\n", "<cell 3>", "exec"), ns)
    ns["pipeline"]([1])
    assert last_runs()[0].state.name == "Cached"


def test_the_cache_survives_a_new_process(cache_on, tmp_path):
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent('''
        import nbflow.settings, nbflow.runs
        from nbflow import flow, task
        nbflow.settings.current.cache = True

        @task
        def square(x):
            return x * x

        @flow
        def job():
            return square.map([1, 2, 3]).result()

        job()
        print(",".join(r.state.name for r in nbflow.runs.last_flow_run().task_runs))
    '''))
    outputs = [subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
               for _ in range(2)]
    assert outputs[0].strip() == "Completed,Completed,Completed"
    assert outputs[1].strip() == "Cached,Cached,Cached"


def test_an_explicit_policy_is_kept_when_the_notebook_cache_is_on(cache_on):
    calls = []

    @task(cache_policy=NO_CACHE)
    def uncached(x):
        calls.append(x)
        return x

    @flow
    def f():
        return uncached(1)

    f()
    f()
    assert calls == [1, 1]
    assert last_runs()[0].cache is None


def test_code_as_an_explicit_policy_outside_the_notebook_cache():
    ns = define("""
def helper(x):
    return x * 3
""")

    @task(cache_policy=INPUTS + CODE)
    def tripled(x):
        return ns["helper"](x)

    @flow
    def f():
        return tripled(2, return_state=True).name

    assert [f(), f()] == ["Completed", "Cached"]


def test_a_miss_with_no_earlier_entry_has_no_why(cache_on):
    ns = define(PIPELINE.format(threshold=2, op="+"))
    ns["pipeline"]([5])
    outcome = last_runs()[0].cache
    assert (outcome.hit, outcome.why) == (False, None)


def test_the_cache_and_its_reasons_work_on_the_process_runner(cache_on):
    source = PIPELINE.format(threshold=2, op="+").replace(
        "@flow\n", "@flow(task_runner=ProcessPoolTaskRunner(max_workers=2))\n")
    ns = define("from nbflow.task_runners import ProcessPoolTaskRunner\n" + source)
    assert ns["pipeline"]([1, 2, 3]) == [4, 6, 8]
    assert ns["pipeline"]([1, 2, 3]) == [4, 6, 8]
    assert [r.state.name for r in last_runs()] == ["Cached"] * 3  # keyed the same on the workers
    ns["THRESHOLD"] = 3
    assert ns["pipeline"]([1, 2, 3]) == [6, 9, 12]
    assert [r.cache.why for r in last_runs()] == ["the global THRESHOLD changed"] * 3
