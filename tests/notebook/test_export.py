"""The offline HTML report of a flow run: run.export, nbflow.report.export and %nbflow export."""

from __future__ import annotations

import html.parser
import subprocess
import sys
import textwrap

import pytest

import nbflow
from nbflow import flow, task
from nbflow.report.export import export
from nbflow.runs import last_flow_run

EVIL = "<script>alert(1)</script>"


@task(name=EVIL)
def load(i: int) -> int:
    if i == 3:
        nbflow.get_run_logger().warning("item %s looks odd", i)
    return i


@task
def clean(i: int) -> int:
    print(f"cleaning {i}")
    if i == 7:
        raise ValueError(f"bad item {i}")
    return i


@flow(name="report-me")
def analysis(n: int) -> None:
    clean.map(load.map(range(n))).wait()


class Links(html.parser.HTMLParser):
    """Every src and href of a page, and whether it has a script element."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.scripts += tag == "script"
        self.urls += [value or "" for name, value in attrs if name in ("src", "href", "xlink:href")]


def _parsed(text: str) -> Links:
    links = Links()
    links.feed(text)
    return links


def test_a_report_is_one_offline_file_with_failures_logs_and_timings(tmp_path):
    analysis(12)
    path = export(last_flow_run(), tmp_path / "out" / "report.html")
    text = path.read_text(encoding="utf-8")
    links = _parsed(text)

    assert links.scripts == 0 and EVIL not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert links.urls and all(url.startswith("data:image/png;base64,") for url in links.urls), links.urls
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text
    assert "<svg" in text and "report-me" in text  # the DAG, inline
    assert 'data-done="24" data-total="24"' in text
    failure = text[text.index("<h2>Failures</h2>") :]
    assert "map index 7" in failure and "ValueError: bad item 7" in failure
    assert 'raise ValueError(f&quot;bad item {i}&quot;)' in failure  # the traceback shows the user's line
    assert "engine.py" not in failure  # and not nbflow's frames
    assert "cleaning 11" in text  # output tails
    assert 'data-level="WARNING"' in text and "item 3 looks odd" in text  # a log line with its level
    assert "<h2>Timings</h2>" in text and "median" in text


def test_a_run_is_found_by_name_and_in_the_history_of_an_earlier_process(tmp_path):
    analysis(2)
    assert "report-me" in export("report-me", tmp_path / "by-name.html").read_text()

    script = tmp_path / "earlier.py"
    script.write_text(textwrap.dedent('''
        from nbflow import flow, task

        @task
        def part(i):
            if i == 1:
                raise KeyError("part 1 is missing")
            return i

        @flow(name="earlier-process")
        def earlier(n):
            part.map(range(n)).wait()

        earlier(3, return_state=True)
    '''))
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
    text = export("earlier-process", tmp_path / "history.html").read_text()
    assert "earlier-process" in text and "KeyError" in text and "part 1 is missing" in text
    assert "Traceback" in text  # as the history kept it

    with pytest.raises(LookupError, match="nor in the run history"):
        export("no-such-run", tmp_path / "missing.html")


def test_nbflow_export_magic_writes_the_report(ipython, comms, tmp_path, capsys):
    ipython.run_line_magic("load_ext", "nbflow")
    try:
        analysis(3)
        ipython.run_line_magic("nbflow", f"export report-me {tmp_path / 'magic.html'}")
        assert "report written to" in capsys.readouterr().out
        assert "report-me" in (tmp_path / "magic.html").read_text()
        ipython.run_line_magic("nbflow", f"export {tmp_path / 'last.html'}")  # the last run
        assert (tmp_path / "last.html").exists()
    finally:
        ipython.run_line_magic("unload_ext", "nbflow")


def _without_date(text: str) -> str:
    return text[: text.index('<p class="muted">Written by nbflow on')]


def test_run_export_writes_the_magics_report_from_a_live_record_and_a_history_record(tmp_path):
    from nbflow.store import history as store

    writer = store.start(prune_seconds=0)
    analysis(10)
    run = last_flow_run()
    path = run.export(tmp_path / "live.html")
    assert path == tmp_path / "live.html"
    text = path.read_text(encoding="utf-8")
    assert _without_date(text) == _without_date(export(run, tmp_path / "same.html").read_text(encoding="utf-8"))
    assert "ValueError: bad item 7" in text and 'data-done="20" data-total="20"' in text
    writer.flush()
    record = nbflow.history.flow_run(run.name)
    assert not isinstance(record, type(run))
    past = record.export(tmp_path / "past.html").read_text(encoding="utf-8")
    assert "report-me" in past and "ValueError: bad item 7" in past and "<h2>Timings</h2>" in past
    assert _parsed(past).scripts == 0


def test_a_report_draws_subflows_open_with_their_own_grids(tmp_path):
    @flow(name="inner-part")
    def inner() -> None:
        clean.map(range(8, 11)).wait()

    @flow(name="outer-part")
    def outer() -> None:
        load.map(range(2)).wait()
        inner()

    outer()
    text = last_flow_run().export(tmp_path / "nested.html").read_text(encoding="utf-8")
    assert "▾ inner-part" in text and 'data-expanded="true"' in text  # the subflow's node, drawn open
    assert "inner-part › clean" in text  # its task runs in a grid of their own
    assert 'data-done="2" data-total="2"' in text  # the header counts the run's own task runs
