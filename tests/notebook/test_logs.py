"""Log records of runs say who wrote them (Prefect's format) and show their level, never as a crash."""

from __future__ import annotations

import logging
import re

import nbflow
from nbflow import events, flow, task
from nbflow import logging as nb_logging
from nbflow.notebook import reprs
from nbflow.runs import last_flow_run

LINE = r"\d\d:\d\d:\d\d\.\d\d\d \| {level} \| {who} - {message}\n"


@task(task_run_name="clean-{i}")
def clean(i: int) -> int:
    log = nbflow.get_run_logger()
    log.info("cleaning %s", i)
    log.warning("item %s looks odd", i)
    log.error("item %s is bad", i)
    return i


@flow(name="logs")
def logs() -> int:
    nbflow.get_run_logger().info("starting")
    return clean.submit(4).result()


def test_task_run_records_name_the_task_run_in_prefects_format():
    logs()
    (run,) = last_flow_run().task_runs
    text = run.output.text()
    assert re.fullmatch(
        LINE.format(level="INFO   ", who="Task run 'clean-4'", message="cleaning 4")
        + LINE.format(level="WARNING", who="Task run 'clean-4'", message="item 4 looks odd")
        + LINE.format(level="ERROR  ", who="Task run 'clean-4'", message="item 4 is bad"),
        text,
    ), text


def test_flow_run_records_name_the_flow_run():
    formatter = nb_logging.RunFormatter()
    record = logging.LogRecord("nbflow.flow_runs", logging.INFO, __file__, 1, "starting", None, None)
    record.flow_run_name = "brave-otter"
    assert re.fullmatch(LINE.format(level="INFO   ", who="Flow run 'brave-otter'", message="starting").removesuffix("\\n"),
                        formatter.format(record))
    other = logging.LogRecord("nbflow.store", logging.WARNING, __file__, 1, "disk full", None, None)
    assert formatter.format(other).endswith("| WARNING | nbflow.store - disk full")


def test_details_show_warnings_and_errors_distinctly_and_info_as_plain_text():
    logs()
    (run,) = last_flow_run().task_runs
    details = reprs.task_run_html(run)
    levels = dict(re.findall(r'data-level="(\w+)" style="([^"]*)"', details))
    assert set(levels) == {"INFO", "WARNING", "ERROR"}
    assert levels["INFO"] == ""  # an INFO line looks like printed text
    assert levels["WARNING"] and levels["ERROR"] and levels["WARNING"] != levels["ERROR"]


def test_info_lines_echo_to_stdout_in_a_notebook_warnings_and_errors_to_stderr(monkeypatch, capsys):
    monkeypatch.setattr(logging.root, "handlers", [])  # no root handler: nbflow echoes records itself
    run = object()

    def echo_all():
        for level in ("INFO   ", "WARNING", "ERROR  "):
            nb_logging.echo_to_console(events.OutputEvent("log", run, "log", f"12:00:00.000 | {level} | Task run 'x' - hi\n"))
        return capsys.readouterr()

    out, err = echo_all()  # a script: every line on stderr, as Prefect's console
    assert out == "" and err.count("| INFO") == 1 and "| WARNING" in err and "| ERROR" in err
    nb_logging.info_lines_to("stdout")  # what the notebook extension's output router sets
    try:
        out, err = echo_all()
    finally:
        nb_logging.info_lines_to("stderr")
    assert out.count("| INFO") == 1 and "WARNING" not in out
    assert "| WARNING" in err and "| ERROR" in err and "INFO" not in err
