"""Every example of the seed document (Prefect 3 docs, "Run tasks concurrently or in parallel").

Each example's code is kept exactly as in Prefect's docs page
(docs/v3/develop/task-runners.mdx), with only ``prefect`` -> ``nbflow`` in the
imports (``prefect_dask.task_runners`` -> ``nbflow.task_runners``). It is run
as a module would run it, then its documented outcome is asserted.

``time.sleep(floor)`` / ``time.sleep(2)`` in the examples stand for work; the
``fast_sleep`` fixture shrinks sleeps of a second or more a thousandfold so the
examples run in milliseconds (and counts how many ran at once).
"""

from __future__ import annotations

import re
import textwrap
import threading
import time

import pytest

from nbflow.runs import last_flow_run


def run_example(source: str, module: str = "seed_example", **extra) -> dict:
    """Execute an example's source as a module named ``module``; return its namespace."""
    namespace = {"__name__": module, **extra}
    code = compile(textwrap.dedent(source), f"<seed example {module}>", "exec", dont_inherit=True)
    exec(code, namespace)
    return namespace


class SleepMeter:
    """Counts concurrent sleepers of the example's work sleeps.

    With ``peers`` set, a sleeper waits (up to 10 s) until that many sleep at
    once, so that runs which may overlap are seen to, however slow the machine.
    """

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.peers = 0
        self.calls: list[float] = []
        self.lock = threading.Condition()


@pytest.fixture
def fast_sleep(monkeypatch):
    real_sleep = time.sleep
    meter = SleepMeter()

    def sleep(seconds):
        if seconds < 1:
            return real_sleep(seconds)
        with meter.lock:
            meter.calls.append(seconds)
            meter.active += 1
            meter.peak = max(meter.peak, meter.active)
            meter.lock.notify_all()
            if meter.peers:
                meter.lock.wait_for(lambda: meter.peak >= meter.peers, timeout=10)
        try:
            real_sleep(seconds / 1000)
        finally:
            with meter.lock:
                meter.active -= 1

    monkeypatch.setattr(time, "sleep", sleep)
    return meter


# -- Configure a task runner ------------------------------------------------------------------------
ELEVATOR = '''
from nbflow import flow, task
from nbflow.futures import wait
from nbflow.task_runners import ThreadPoolTaskRunner
import time

@task
def stop_at_floor(floor):
    print(f"elevator moving to floor {floor}")
    time.sleep(floor)
    print(f"elevator stops on floor {floor}")

@flow(task_runner=ThreadPoolTaskRunner(max_workers=3))
def elevator():
    floors = []

    for floor in range(10, 0, -1):
        floors.append(stop_at_floor.submit(floor))

    wait(floors) # wait for the sequence of futures to complete
'''


@pytest.mark.timeout(30)
def test_configure_a_task_runner_elevator(fast_sleep):
    ns = run_example(ELEVATOR)
    ns["elevator"]()
    fr = last_flow_run()
    assert fr.flow_name == "elevator" and fr.state.is_completed()
    assert fr.task_runner.max_workers == 3
    runs = fr.task_runs
    assert len(runs) == 10 and all(r.state.is_completed() for r in runs)
    by_floor = {r.parameters["floor"]: r for r in runs}
    assert sorted(by_floor) == list(range(1, 11))
    for floor, run in by_floor.items():
        assert run.output.text() == (
            f"elevator moving to floor {floor}\nelevator stops on floor {floor}\n"
        )
    assert sorted(fast_sleep.calls) == list(range(1, 11))
    assert fast_sleep.peak <= 3  # max_workers=3: never more than 3 floors at once


# -- Submit tasks to a task runner ---------------------------------------------------------------------
HELLO = '''
from nbflow import flow, task

@task
def say_hello(name):
    return f"Hello {name}!"

@task
def print_result(result):
    print(type(result))
    print(result)

@flow(name="hello-flow")
def hello_world():
    future = say_hello.submit("Marvin")
    print_result.submit(future).wait()

hello_world()
'''


def test_submit_passes_resolved_value_downstream():
    ns = run_example(HELLO)
    fr = last_flow_run()
    assert fr.flow is ns["hello_world"] and fr.flow_name == "hello-flow"
    assert fr.state.is_completed()
    say, show = fr.task_runs
    assert say.state.result() == "Hello Marvin!"
    # the downstream received the upstream's value, a str, not the future
    assert show.output.text() == "<class 'str'>\nHello Marvin!\n"
    assert show.upstream == (say,)


# -- Access results from submitted tasks -----------------------------------------------------------------
RESULT_42 = '''
from nbflow import flow, task

@task
def my_task():
    return 42

@flow
def my_flow():
    future = my_task.submit()
    result = future.result()
    print(result)

my_flow()
'''


def test_access_results_from_submitted_tasks(capsys):
    run_example(RESULT_42)
    assert capsys.readouterr().out.splitlines()[-1] == "42"
    fr = last_flow_run()
    assert fr.state.is_completed() and fr.task_runs[0].state.result() == 42


RAISE_ON_FAILURE = '''
from nbflow import flow, task

@task
def my_task():
    return "I'm a task!"


@flow
def my_flow():
    future = my_task.submit()
    result = future.result(raise_on_failure=False)
    if future.state.is_failed():
        # `result` is an exception! handle accordingly
        ...
    else:
        # `result` is the expected return value of our task
        ...
'''


def test_result_raise_on_failure_false_example():
    ns = run_example(RAISE_ON_FAILURE)
    assert ns["my_flow"]() is None
    fr = last_flow_run()
    assert fr.state.is_completed()
    assert fr.task_runs[0].state.result() == "I'm a task!"


def test_result_raise_on_failure_false_example_with_failing_task():
    """The same flow with a failing task: result is the exception, the flow still completes."""
    ns = run_example(RAISE_ON_FAILURE)
    from nbflow import task

    @task
    def my_task():
        raise ValueError("handled")

    ns["my_task"] = my_task  # the flow body looks the task up in its module globals
    assert ns["my_flow"]() is None
    fr = last_flow_run()
    assert fr.state.is_completed()
    assert fr.task_runs[0].state.is_failed()


# -- Creating state dependencies -------------------------------------------------------------------------
STATE_DEPENDENCIES = '''
@task
def task_a():
    pass

@task
def task_b():
    pass

@task
def task_c():
    pass
    
@task
def task_d():
    pass

@flow
def my_flow():
    a = task_a.submit()
    b = task_b.submit()
    # Wait for task_a and task_b to complete
    c = task_c.submit(wait_for=[a, b])
    # task_d will wait for task_c to complete
    # Note: If waiting for one task it must still be in a list.
    d = task_d(wait_for=[c])
'''


def test_creating_state_dependencies(events):
    from nbflow import flow, task

    ns = run_example(STATE_DEPENDENCIES, flow=flow, task=task)
    ns["my_flow"]()
    fr = last_flow_run()
    assert fr.state.is_completed()
    runs = {r.task.name: r for r in fr.task_runs}
    assert set(runs) == {"task_a", "task_b", "task_c", "task_d"}
    assert runs["task_c"].upstream == (runs["task_a"], runs["task_b"])
    assert runs["task_d"].upstream == (runs["task_c"],)
    # c started only after a and b completed; d only after c
    assert runs["task_c"].start_time >= max(runs["task_a"].end_time, runs["task_b"].end_time)
    assert runs["task_d"].start_time >= runs["task_c"].end_time
    order = [
        (e.run.task.name, e.state.name)
        for e in events.events
        if e.kind == "state" and hasattr(e.run, "task") and e.state.name in ("Running", "Completed")
    ]
    assert order.index(("task_c", "Running")) > order.index(("task_a", "Completed"))
    assert order.index(("task_c", "Running")) > order.index(("task_b", "Completed"))
    assert order.index(("task_d", "Running")) > order.index(("task_c", "Completed"))


# -- Simple mapping -------------------------------------------------------------------------------------------
SIMPLE_MAPPING = '''
from nbflow import flow, task

@task
def print_nums(nums: list[int]):
    for n in nums:
        print(n)

@task
def square_num(num: int) -> int:
    return num**2

@flow
def map_flow(nums: list[int]):
    print_nums(nums)
    squared_nums = square_num.map(nums)
    print_nums(squared_nums)

map_flow([1,2,3,5,8,13])
'''


def test_simple_mapping():
    run_example(SIMPLE_MAPPING)
    fr = last_flow_run()
    assert fr.state.is_completed()
    prints = [r for r in fr.task_runs if r.task.name == "print_nums"]
    squares = [r for r in fr.task_runs if r.task.name == "square_num"]
    assert len(prints) == 2 and len(squares) == 6
    assert prints[0].output.text() == "1\n2\n3\n5\n8\n13\n"
    assert prints[1].output.text() == "1\n4\n9\n25\n64\n169\n"
    assert sorted(r.state.result() for r in squares) == [1, 4, 9, 25, 64, 169]


# -- Using the unmapped annotation ---------------------------------------------------------------------------
STATIC_VALUE = '''
from nbflow import flow, task

@task
def add_together(x, y):
    return x + y

@flow
def sum_it(numbers: list[int], static_value: int):
    futures = add_together.map(numbers, static_value)
    return futures.result()

resulting_sum = sum_it([1, 2, 3], 5)
assert resulting_sum == [6, 7, 8]
'''


def test_non_iterable_values_are_not_mapped():
    ns = run_example(STATIC_VALUE)
    assert ns["resulting_sum"] == [6, 7, 8]


UNMAPPED = '''
from nbflow import flow, task, unmapped

@task
def sum_plus(x, static_iterable):
    return x + sum(static_iterable)

@flow
def sum_it(numbers, static_iterable):
    futures = sum_plus.map(numbers, unmapped(static_iterable))
    return futures.result()

resulting_sum = sum_it([4, 5, 6], [1, 2, 3])
assert resulting_sum == [10, 11, 12]
'''


def test_unmapped_annotation():
    ns = run_example(UNMAPPED)
    assert ns["resulting_sum"] == [10, 11, 12]


# -- Bulk PrefectFuture operations ------------------------------------------------------------------------------
def test_bulk_future_operations():
    from nbflow import flow, task

    @task
    def some_task(x):
        return x * 3

    some_iterable = [1, 2, 3]

    @flow
    def bulk():
        futures = some_task.map(some_iterable)
        results = futures.result()
        # ...which is syntactic sugar for the corresponding list comprehension:
        futures = some_task.map(some_iterable)
        comprehension = [future.result() for future in futures]
        return results, comprehension

    results, comprehension = bulk()
    assert results == comprehension == [3, 6, 9]


# -- Nested mapped tasks ---------------------------------------------------------------------------------------------
NESTED_MAPPED = '''
import re

from nbflow import flow, task
from nbflow.futures import wait

def count_words(text: str) -> int:
    """Count the number of words in a text."""
    return len(text.split())

def extract_emails(text: str) -> list[str]:
    return re.findall(r"[\\w.+-]+@[\\w-]+\\.[\\w.-]+", text)

@task
def analyze_texts(texts: list[str]) -> dict[str, list[int | list[str]]]:
    futures = {
        op.__name__: task(op).map(texts) for op in [count_words, extract_emails]
    }
    wait([f for futs in futures.values() for f in futs])
    return {name: [f.result() for f in futs] for name, futs in futures.items()}

@flow
def run_text_analysis():
    """Analyze a batch of social media posts with multiple operations."""
    results = analyze_texts(
        texts=[
            "Just visited #Paris! Contact me at visitor@example.com #travel #vacation",
            "Working on my new #project. Reach out at developer@example.com if interested!",
            "Happy to announce our company event #celebration #milestone email: events@company.org",
        ]
    )
    print("\\nAnalysis Results:")
    print(f"  Word counts: {results['count_words']}")
    print(f"  Extracted emails: {results['extract_emails']}\\n")
    return results

run_text_analysis()
'''


def test_nested_mapped_tasks(capsys):
    run_example(NESTED_MAPPED)
    out = capsys.readouterr().out
    assert "\nAnalysis Results:\n" in out
    assert "  Word counts: [9, 11, 10]\n" in out
    assert (
        "  Extracted emails: [['visitor@example.com'], ['developer@example.com'], "
        "['events@company.org']]\n" in out
    )
    fr = last_flow_run()
    assert fr.flow_name == "run-text-analysis" and fr.state.is_completed()
    names = sorted(r.task.name for r in fr.task_runs)
    assert names == ["analyze_texts"] + ["count_words"] * 3 + ["extract_emails"] * 3
    for run in fr.task_runs:
        assert re.fullmatch(rf"{run.task.name}-[0-9a-f]{{3}}", run.name), run.name
        assert run.state.is_completed()


# -- Real-world applications ---------------------------------------------------------------------------------------
EVALUATE_MODELS = '''
import random
from dataclasses import dataclass

from nbflow import flow, task
from nbflow.futures import PrefectFuture, wait

@dataclass
class Dataset:
    name: str

@dataclass
class ModelConfig:
    name: str

@task(task_run_name="train on {dataset.name} with {model_config.name}")
def train_model(dataset: Dataset, model_config: ModelConfig) -> dict:
    return {
        "dataset": dataset.name,
        "model": model_config.name,
        "score": random.random(),
    }

@flow
def evaluate_models(datasets: list[Dataset], model_configs: list[ModelConfig]):
    all_futures: list[PrefectFuture[dict[str, object]]] = []
    for dataset in datasets:
        futures = train_model.map(
            dataset=dataset,
            model_config=model_configs,
        )
        all_futures.extend(futures)

    results = [future.result() for future in wait(all_futures).done]

    print(f"\\nBest model: {max(results, key=lambda r: r['score'])}")

evaluate_models(
    datasets=[
        Dataset("customers"), Dataset("products"), Dataset("orders")
    ],
    model_configs=[
        ModelConfig("random_forest"), ModelConfig("gradient_boosting")
    ],
)
'''


def test_real_world_model_evaluation(capsys):
    run_example(EVALUATE_MODELS)
    fr = last_flow_run()
    assert fr.flow_name == "evaluate-models" and fr.state.is_completed()
    names = sorted(r.name for r in fr.task_runs)
    assert names == sorted(
        f"train on {d} with {m}"
        for d in ("customers", "products", "orders")
        for m in ("random_forest", "gradient_boosting")
    )
    results = [r.state.result() for r in fr.task_runs]
    best = max(results, key=lambda r: r["score"])
    out = capsys.readouterr().out
    assert f"\nBest model: {best}\n" in out
    # each dataset (a dataclass, not iterable) was passed whole; the configs were mapped over
    assert sorted((r["dataset"], r["model"]) for r in results) == sorted(
        (d, m)
        for d in ("customers", "products", "orders")
        for m in ("random_forest", "gradient_boosting")
    )


# -- Use multiple task runners -----------------------------------------------------------------------------------------
MULTIPLE_RUNNERS = '''
from nbflow import flow, task
from nbflow.task_runners import ThreadPoolTaskRunner
from nbflow.task_runners import DaskTaskRunner
import time


@task
def hello_local(name: str):
    time.sleep(2)
    print(f"Hello {name}!")


@flow # implicitly uses the default task runner, ThreadPoolTaskRunner
def concurrent_nested_flow():
    marvin = hello_local.submit("marvin")
    ford = hello_local.submit("ford")
    marvin.wait(), ford.wait()


@task
def hello_dask():
    print("Hello from Dask!")


@flow(task_runner=DaskTaskRunner())
def dask_nested_flow():
    hello_dask.submit().wait()


@flow # implicitly uses the default task runner, ThreadPoolTaskRunner
def parent_flow():
    concurrent_nested_flow()
    dask_nested_flow()


if __name__ == "__main__":
    parent_flow()
'''


@pytest.mark.timeout(120)
def test_use_multiple_task_runners(fast_sleep):
    pytest.importorskip("dask")
    pytest.importorskip("distributed")
    fast_sleep.peers = 2
    ns = run_example(MULTIPLE_RUNNERS, module="__main__")
    from nbflow.task_runners import DaskTaskRunner, ThreadPoolTaskRunner

    fr = last_flow_run()
    assert fr.flow is ns["parent_flow"] and fr.state.is_completed()
    concurrent, dask = fr.subflow_runs
    assert concurrent.flow_name == "concurrent-nested-flow"
    assert dask.flow_name == "dask-nested-flow"
    assert isinstance(concurrent.task_runner, ThreadPoolTaskRunner)
    assert isinstance(dask.task_runner, DaskTaskRunner)
    hellos = {r.parameters["name"]: r for r in concurrent.task_runs}
    assert set(hellos) == {"marvin", "ford"}
    assert hellos["marvin"].output.text() == "Hello marvin!\n"
    assert hellos["ford"].output.text() == "Hello ford!\n"
    assert fast_sleep.peak == 2  # the two hello_local runs slept at the same time
    (hello_dask,) = dask.task_runs
    assert hello_dask.state.is_completed()
    assert parent_flow_ran_tasks_in_subflows_only(fr)


def parent_flow_ran_tasks_in_subflows_only(fr) -> bool:
    return fr.task_runs == []
