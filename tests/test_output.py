"""Captured output: prints in task runs, log_prints, and run loggers."""

from __future__ import annotations

import logging
import sys

import pytest

from nbflow import flow, get_run_logger, task
from nbflow.exceptions import MissingContextError
from nbflow.runs import last_flow_run


def _run_named(flow_run, task_name):
    return [r for r in flow_run.task_runs if r.task.name == task_name]


def test_print_in_task_lands_in_task_run_output():
    @task
    def talker(i):
        print(f"hello from {i}")
        print("second line", file=sys.stderr)
        return i

    @flow
    def f():
        talker.submit(1).wait()
        talker(2)

    f()
    runs = last_flow_run().task_runs
    assert "hello from 1\n" in runs[0].output.text()
    assert "second line" in runs[0].output.text()
    assert "hello from 2\n" in runs[1].output.text()
    # each run holds only its own output
    assert "hello from 2" not in runs[0].output.text()


def test_output_is_published_on_the_event_seam(events):
    @task
    def talker():
        print("seen by subscribers")

    @flow
    def f():
        talker.submit().wait()

    f()
    run = last_flow_run().task_runs[0]
    texts = [e.text for e in events.for_run(run) if e.kind == "output"]
    assert "".join(texts).strip() == "seen by subscribers"
    assert all(e.stream == "stdout" for e in events.for_run(run) if e.kind == "output")


def test_print_in_flow_body_goes_to_stdout(capsys):
    @flow
    def f():
        print("from the body")

    f()
    assert "from the body" in capsys.readouterr().out


def test_log_prints_turns_prints_into_log_records(caplog):
    @task(log_prints=True)
    def talker():
        print("logged line")

    @flow
    def f():
        talker.submit().wait()

    with caplog.at_level(logging.INFO):
        f()
    records = [r for r in caplog.records if r.getMessage() == "logged line"]
    assert records and records[0].levelno == logging.INFO
    assert records[0].name.startswith("nbflow")
    run = last_flow_run().task_runs[0]
    # not captured as stdout
    assert run.output is None or "logged line" not in run.output.text(("stdout",))


def test_task_inherits_log_prints_from_its_flow_and_can_opt_out(caplog):
    @task
    def inherits():
        print("inherited print")

    @task(log_prints=False)
    def opts_out():
        print("plain print")

    @flow(log_prints=True)
    def f():
        inherits.submit().wait()
        opts_out.submit().wait()
        print("body print")

    with caplog.at_level(logging.INFO):
        f()
    messages = [r.getMessage() for r in caplog.records]
    assert "inherited print" in messages
    assert "body print" in messages
    assert "plain print" not in messages
    run = _run_named(last_flow_run(), "opts_out")[0]
    assert "plain print" in run.output.text(("stdout",))


def test_get_run_logger_records_reach_caplog(caplog):
    @task
    def logs():
        get_run_logger().info("task says hi")
        get_run_logger().warning("task warns")

    @flow
    def f():
        get_run_logger().info("flow says hi")
        logs.submit().wait()

    with caplog.at_level(logging.INFO):
        f()
    by_message = {r.getMessage(): r for r in caplog.records}
    assert "task says hi" in by_message and "flow says hi" in by_message
    assert by_message["task warns"].levelno == logging.WARNING
    run = last_flow_run().task_runs[0]
    assert "task says hi" in run.output.text()


def test_get_run_logger_outside_a_run_raises_missing_context_error():
    with pytest.raises(MissingContextError) as info:
        get_run_logger()
    assert "@flow" in str(info.value) or "@task" in str(info.value)


def test_output_of_inline_task_outside_flow_is_captured_or_printed(capsys):
    @task
    def talker():
        print("outside any flow")
        return 1

    assert talker() == 1
    # outside a flow nothing intercepts prints: they reach stdout
    assert "outside any flow" in capsys.readouterr().out


def test_captured_output_keeps_the_tail_beyond_max_output_chars():
    import nbflow.settings

    nbflow.settings.current.max_output_chars = 50

    @task
    def chatty():
        for i in range(100):
            print(f"line {i:03d}")

    @flow
    def f():
        chatty.submit().wait()

    f()
    text = last_flow_run().task_runs[0].output.text()
    assert text.endswith("line 099\n")
    assert "line 000" not in text
    assert "characters dropped" in text


def test_capture_output_false_leaves_prints_on_stdout(capsys):
    import nbflow.settings

    nbflow.settings.current.capture_output = False

    @task
    def talker():
        print("uncaptured")

    @flow
    def f():
        talker()

    f()
    assert "uncaptured" in capsys.readouterr().out
    run = last_flow_run().task_runs[0]
    assert run.output is None or "uncaptured" not in run.output.text()


# -- the output buffer: the tail within the cap, at a constant cost per write ----------------------
def _buffer():
    from nbflow.logging import OutputBuffer

    return OutputBuffer()


def test_buffer_keeps_the_tail_within_the_cap_and_counts_what_it_dropped():
    import nbflow.settings

    nbflow.settings.current.max_output_chars = 100
    buf = _buffer()
    for i in range(1000):
        buf.append("stdout", f"line {i:03d}\n")  # 9 characters each
    assert buf.size == sum(len(t) for _, t in buf.chunks) <= 100
    assert buf.size + buf.dropped == 9000
    assert buf.chunks[-1] == ("stdout", "line 999\n") and len(buf) == 11
    assert buf.text() == f"[... {buf.dropped} characters dropped ...]\n" + "".join(
        f"line {i:03d}\n" for i in range(989, 1000)
    )


def test_a_chunk_longer_than_the_cap_keeps_its_tail():
    import nbflow.settings

    nbflow.settings.current.max_output_chars = 10
    buf = _buffer()
    buf.append("stdout", "12345")
    buf.append("stderr", "0123456789abcdef")
    assert buf.chunks == [("stderr", "6789abcdef")]
    assert (buf.size, buf.dropped) == (10, 11)


def test_buffer_pickles_and_keeps_working():
    import pickle

    import cloudpickle

    buf = _buffer()
    buf.append("stdout", "out\n")
    buf.append("log", "record\n")
    for dumps in (pickle.dumps, cloudpickle.dumps):
        copy = pickle.loads(dumps(buf))
        assert (copy.chunks, copy.size, copy.dropped) == (buf.chunks, buf.size, buf.dropped)
        copy.append("stderr", "more\n")
        assert copy.text() == "out\nrecord\nmore\n" and buf.text() == "out\nrecord\n"


def test_one_print_is_one_chunk_of_exactly_what_it_printed():
    @task
    def talker():
        print("a", "b", 3)
        print("x", "y", sep="-", end="!\n")
        sys.stdout.write("direct\n")

    @flow
    def f():
        talker()

    f()
    assert last_flow_run().task_runs[0].output.chunks == [
        ("stdout", "a b 3\n"), ("stdout", "x-y!\n"), ("stdout", "direct\n")
    ]


def test_the_work_of_a_print_does_not_grow_with_what_is_kept_or_was_printed():
    import nbflow.settings

    def calls_made_by(fn):
        """Python and C calls made while fn runs (an operation count, not a time)."""
        count = 0

        def profile(frame, event, arg):
            nonlocal count
            count += event in ("call", "c_call")

        sys.setprofile(profile)
        try:
            fn()
        finally:
            sys.setprofile(None)
        return count

    def probe():
        return min(calls_made_by(lambda: print("line 9999999")) for _ in range(3))

    def fill_past_the_cap(cap):
        nbflow.settings.current.max_output_chars = cap
        for i in range(2 * cap // 13 + 10):  # every print now lets the oldest line go
            print(f"line {i:07d}")

    @task
    def chatty():
        fill_past_the_cap(1_000)
        small = probe()
        fill_past_the_cap(100_000)  # a hundred times more kept, 20,000 lines printed
        return small, probe()

    @flow
    def f():
        return chatty()

    small, large = f()
    assert small == large
    output = last_flow_run().task_runs[0].output
    assert 99_000 < output.size <= 100_000 and output.text().endswith("line 9999999\n")
