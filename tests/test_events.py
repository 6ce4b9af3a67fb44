"""nbflow.events: typed events, choosing kinds, and subscribers that print."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

import nbflow.events
import nbflow.runs
from nbflow import flow, get_run_logger, task
from nbflow.events import OutputEvent, StateEvent
from nbflow.records import FlowRun, TaskRun


@task
def chatty(x: int) -> int:
    print(f"chatty {x}")
    get_run_logger().info("logged %s", x)
    return x


@flow
def pipeline(n: int) -> list[int]:
    return chatty.map(range(n)).result()


def test_every_kind_by_default_each_typed():
    got = []
    with nbflow.events.subscribe(got.append):
        pipeline(2)
    kinds = {e.kind for e in got}
    assert kinds == {"state", "output", "log"}
    for event in got:
        if event.kind == "state":
            assert isinstance(event, StateEvent) and event.state is not None
        else:
            assert isinstance(event, OutputEvent) and event.stream in ("stdout", "log")
    printed = sorted(e.text for e in got if e.kind == "output")
    assert printed == ["chatty 0\n", "chatty 1\n"]
    assert any("logged 1" in e.text for e in got if e.kind == "log")


@pytest.mark.parametrize(
    "kinds, expected",
    [
        ("flow-state", {("state", FlowRun)}),
        ("task-state", {("state", TaskRun)}),
        ("state", {("state", FlowRun), ("state", TaskRun)}),
        (["output"], {("output", TaskRun)}),
        (("log",), {("log", TaskRun)}),
    ],
)
def test_a_subscriber_gets_only_the_kinds_it_chose(kinds, expected):
    got = []
    with nbflow.events.subscribe(got.append, kinds):
        pipeline(2)
    assert {(e.kind, type(e.run)) for e in got} == expected


def test_an_unknown_kind_is_rejected_naming_the_kinds():
    with pytest.raises(ValueError, match="'task-state', 'flow-state', 'output', 'log'"):
        nbflow.events.subscribe(print, "states")


def test_a_subscriber_that_prints_never_sees_its_own_output(capfd):
    seen = []

    def printer(event) -> None:
        seen.append(event)
        print("subscriber saw", event.kind)

    with nbflow.runs.subscribe(printer):
        result = pipeline(3)
    assert result == [0, 1, 2]
    outputs = [e.text for e in seen if e.kind == "output"]
    assert not any("subscriber saw" in text for text in outputs)
    run = nbflow.runs.last_flow_run()
    for task_run in run.task_runs:
        assert "subscriber saw" not in task_run.output.text()
    assert "subscriber saw state" in capfd.readouterr().out


def test_readme_example_runs_as_written():
    script = textwrap.dedent(
        """
        import nbflow.runs
        from nbflow import flow, task

        @task(retries=2)
        def square(x: int) -> int:
            return x * x

        @task
        def total(values: list[int], offset: int) -> int:
            return sum(values) + offset

        @flow
        def pipeline(n: int) -> int:
            squares = square.map(range(n))
            return total.submit(squares, 10).result()

        with nbflow.runs.subscribe(lambda event: print(event.run.name, event.state.name)):
            pipeline(3)

        run = nbflow.runs.last_flow_run()
        print(run.state, run.state_counts(), [r.upstream for r in run.task_runs])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "raised" not in done.stderr and "Error" not in done.stderr
    # Threads print concurrently, so lines may interleave; each event printed its run and state.
    assert done.stdout.count("Completed") >= 5 and "square-" in done.stdout
    # A run's final event can still be printing from its worker thread when the caller has the result.
    assert "{'Completed': 4}" in done.stdout


def test_a_subscriber_that_raises_is_removed_and_reported_once(caplog):
    calls = []

    def broken(event) -> None:
        calls.append(event)
        raise RuntimeError("subscriber bug")

    nbflow.events.subscribe(broken)
    with caplog.at_level(logging.ERROR, logger="nbflow"):
        assert pipeline(2) == [0, 1]
    assert len(calls) == 1
    assert sum("subscriber bug" in r.getMessage() for r in caplog.records) == 1


def test_a_run_is_done_to_its_readers_only_once_its_final_event_is_delivered():
    """Whoever sees a task run done (its future, the flow waiting for it) can rely on
    subscribers having had its final event: none comes after the flow's own end."""
    seen = []

    def on_state(event):
        if event.state.is_final():
            seen.append((type(event.run).__name__, event.state.name, getattr(event.run, "done", None)))

    with nbflow.events.subscribe(on_state, "state"):
        pipeline(3)
    assert seen[:3] == [("TaskRun", "Completed", False)] * 3
    assert seen[3:] == [("FlowRun", "Completed", None)]
