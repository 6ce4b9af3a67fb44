"""log_prints as Prefect 3.9.1 has it (``prefect.logging.loggers.print_as_log``).

One ``print()`` is one INFO record on the run logger (task run logger in a
task, flow run logger in a flow body) whose message is what print would have
written, trailing whitespace stripped. ``None`` inherits: a task from its
flow, a subflow from its parent flow (a subflow called in a task too, from
the flow, not the task). It applies while the run runs, and only to prints
to stdout/stderr. Every expectation here was observed on Prefect 3.9.1.
"""

from __future__ import annotations

import builtins
import io
import logging
import sys

import pytest

from nbflow import flow, task
from nbflow.runs import last_flow_run

RUN_LOGGERS = ("nbflow.task_runs", "nbflow.flow_runs")


@pytest.fixture
def logged(caplog):
    """``logged()``: ``(logger name, message)`` of the run-logger records so far."""
    caplog.set_level(logging.INFO)

    def records():  # leaving out the engine's own ("Finished in state ...", tested in test_lifecycle_logs.py)
        return [(r.name, r.getMessage()) for r in caplog.records
                if r.name in RUN_LOGGERS and not getattr(r, "nbflow_lifecycle", False)]

    return records


def _messages(records):
    return [message for _, message in records]


def test_one_print_is_one_record_formatted_as_print_would(logged, caplog):
    @task(log_prints=True)
    def talker():
        print("a", "b")
        print("a", "b", sep="-", end="!\n")
        print("x  ")
        print("a\nb")
        print()
        print("no end", end="")
        print("  lead")
        print(1, 2.5, None)
        print("flushed", flush=True)
        print("defaults", "too", sep=None, end=None)

    @flow
    def f():
        talker()

    f()
    assert logged() == [("nbflow.task_runs", m) for m in (
        "a b", "a-b!", "x", "a\nb", "", "no end", "  lead", "1 2.5 None", "flushed", "defaults too"
    )]
    records = [r for r in caplog.records if r.name == "nbflow.task_runs"]
    assert {r.levelno for r in records} == {logging.INFO}
    # The record points at the print call, not at nbflow (as Prefect's stacklevel=2), unless another
    # library wrapped print after nbflow did (Ray's driver does: then it points at Ray's wrapper).
    import builtins

    if getattr(builtins.print, "__module__", None) == "nbflow.logging":
        assert records[0].funcName == "talker" and records[0].pathname == __file__


def test_records_reach_the_run_output_and_the_root_logger_not_stdout(caplog, capsys):
    @task(log_prints=True)
    def talker():
        print("logged", "line")

    @flow
    def f():
        talker.submit().wait()

    with caplog.at_level(logging.INFO):
        f()
    [record] = [r for r in caplog.records if r.getMessage() == "logged line"]  # caplog sits on the root
    run = last_flow_run().task_runs[0]
    assert record.task_run_name == run.name
    assert "logged line" in run.output.text(("log",))
    assert "logged line" not in run.output.text(("stdout",))
    assert "logged line" not in capsys.readouterr().out


def test_flow_body_prints_go_to_the_flow_run_logger(logged):
    @flow(log_prints=True)
    def f():
        print("body", 1)

    f()
    assert logged() == [("nbflow.flow_runs", "body 1")]


def test_tasks_inherit_from_their_flow_and_can_opt_out(logged):
    @task
    def plain(label):
        print(label)

    @task(log_prints=False)
    def opts_out():
        print("opted out")

    @flow(log_prints=True)
    def f():
        plain("inline")
        plain.submit("submitted").wait()
        plain.map(["mapped"]).wait()
        opts_out()

    f()
    assert sorted(logged()) == sorted(("nbflow.task_runs", m) for m in ("inline", "submitted", "mapped"))
    [run] = [r for r in last_flow_run().task_runs if r.task.name == "opts_out"]
    assert run.output.text(("stdout",)) == "opted out\n"


def test_without_log_prints_prints_are_captured_output(logged):
    @task
    def plain():
        print("captured", "as printed")

    @flow
    def f():
        plain()

    f()
    assert logged() == []
    assert last_flow_run().task_runs[0].output.text(("stdout",)) == "captured as printed\n"


def test_a_subflow_inherits_from_its_parent_and_so_do_its_tasks(logged):
    @task
    def plain(label):
        print(label)

    @flow
    def child():
        print("child body")
        plain("child task")

    @flow(log_prints=False)
    def child_off():
        print("child_off body")
        plain("child_off task")

    @flow(log_prints=True)
    def parent():
        child()
        child_off()

    parent()
    assert logged() == [("nbflow.flow_runs", "child body"), ("nbflow.task_runs", "child task")]
    [off] = [s for s in last_flow_run().subflow_runs if s.flow.name == "child-off"]
    assert off.task_runs[0].output.text(("stdout",)) == "child_off task\n"


def test_a_subflow_called_in_a_task_inherits_from_the_flow_not_the_task(logged):
    @flow
    def child():
        print("child body")

    @task
    def plain_task():
        child()

    @task(log_prints=True)
    def printing_task():
        child()

    @flow(log_prints=True)
    def printing_flow():
        plain_task()

    @flow
    def plain_flow():
        printing_task()

    printing_flow()
    assert _messages(logged()) == ["child body"]
    plain_flow()
    assert _messages(logged()) == ["child body"]


def test_a_task_with_log_prints_called_outside_a_flow(logged):
    @task(log_prints=True)
    def talker():
        print("outside", "a flow")
        return 1

    assert talker() == 1
    assert logged() == [("nbflow.task_runs", "outside a flow")]


def test_prints_to_other_files_are_left_alone_stderr_is_logged(logged):
    buffer = io.StringIO()

    @task(log_prints=True)
    def talker():
        print("to a buffer", file=buffer)
        print("to stderr", file=sys.stderr)
        print("to stdout", file=sys.stdout)

    @flow
    def f():
        talker()

    f()
    assert buffer.getvalue() == "to a buffer\n"
    assert _messages(logged()) == ["to stderr", "to stdout"]


def test_log_prints_stops_at_the_end_of_the_run(logged, capsys):
    print_before = builtins.print

    @flow(log_prints=True)
    def f():
        print("during")

    f()
    print("after")
    assert _messages(logged()) == ["during"]
    assert "after" in capsys.readouterr().out
    assert builtins.print is print_before


def test_concurrent_runs_each_follow_their_own_setting(logged, gate):
    @task(log_prints=True)
    def loud():
        gate.wait()
        print("loud")

    @task(log_prints=False)
    def quiet():
        gate.wait()
        print("quiet")

    @flow
    def f():
        futures = [loud.submit(), quiet.submit()]
        gate.open()
        for future in futures:
            future.wait()

    f()
    assert _messages(logged()) == ["loud"]
    [quiet_run] = [r for r in last_flow_run().task_runs if r.task.name == "quiet"]
    assert quiet_run.output.text(("stdout",)) == "quiet\n"
