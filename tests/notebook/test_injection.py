"""HTML injection: hostile task names, run names, tags, parameters, results, printed and
logged lines and exception messages show as text on every HTML surface nbflow draws: the
reprs of runs, states, futures and future lists, the runs table, the run view (header, DAG, details,
snapshot) and the exported report. Each surface is parsed; no element or attribute the
input spelled may appear.
"""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from nbflow import flow, get_run_logger, tags, task
from nbflow.futures import PrefectFuture, PrefectFutureList
from nbflow.notebook.reprs import RunsTable, html_of
from nbflow.notebook.widget import RunView
from nbflow.report.export import export
from nbflow.report.model import RunModel
from nbflow.runs import last_flow_run

EVIL = "<script>alert(1)</script>\"><img src=x onerror=alert(2)>'><svg onload=alert(3)></textarea><script>alert(4)</script>"


class Hostile:
    """A value whose repr and str are markup."""

    def __repr__(self) -> str:
        return EVIL

    __str__ = __repr__


class Elements(HTMLParser):
    """The elements and attributes of a page that hostile input could have made."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "iframe", "object", "embed", "textarea"):
            self.found.append(tag)
        if tag == "img" and not dict(attrs).get("src", "").startswith("data:image/png;base64,"):
            self.found.append(f"img {attrs}")  # the grid's own picture is a data: PNG
        self.found += [f"{tag} {name}" for name, _ in attrs if name.startswith("on")]


def injected(html: str) -> list[str]:
    parser = Elements()
    parser.feed(html)
    return parser.found


@task(name="bad" + EVIL, task_run_name="run" + EVIL + "{x}", tags=[EVIL])
def bad(x):
    get_run_logger().warning("logged " + EVIL)
    raise ValueError("raised " + EVIL)


@task(name="good" + EVIL)
def good(x):
    print("printed " + EVIL)
    return {EVIL: Hostile(), "k": [EVIL]}


@flow(name='flow"onmouseover="alert(9)', flow_run_name="flow run " + EVIL, log_prints=True)
def hostile(p=EVIL, q=Hostile()):
    with tags(EVIL):
        done, failed = good.submit(Hostile()), bad.submit(EVIL)
        done.wait()
        failed.wait()
    return "finished"


@pytest.fixture(scope="module")
def run():
    hostile()
    return last_flow_run()


def surfaces(run, tmp_path) -> dict[str, str]:
    view = RunView(RunModel.of(run))
    view.redraw(final=True)
    pages = {
        "flow run repr": html_of(run),
        "runs table": RunsTable()._repr_html_(),
        "view header": view.header,
        "view dag": view.dag,
        "view snapshot": view.snapshot_html(),
        "export": export(run, tmp_path / "report.html").read_text(),
        "plan": hostile.plan()._repr_html_(),
    }
    futures = PrefectFutureList(PrefectFuture(task_run) for task_run in run.task_runs)
    pages["future list repr"] = html_of(futures)
    for task_run, future in zip(run.task_runs, futures):
        name = task_run.task.name[:4]
        pages[f"{name} future repr"] = html_of(future)
        pages[f"{name} task run repr"] = html_of(task_run)
        pages[f"{name} state repr"] = html_of(task_run.state)
        pages[f"{name} view details"] = view.details_html(task_run)
    return pages


def test_no_surface_holds_markup_from_hostile_input(run, tmp_path):
    pages = surfaces(run, tmp_path)
    assert {name: injected(html) for name, html in pages.items() if injected(html)} == {}


def test_hostile_text_shows_escaped_where_it_belongs(run, tmp_path):
    pages = surfaces(run, tmp_path)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    bad_details = pages["bad< view details"]
    for text in ("raised ", "logged "):  # the exception message and the log line
        assert text + escaped in bad_details
    assert "printed " + escaped in pages["good view details"]
    assert "flow run " + escaped in pages["view header"] and "flow run " + escaped in pages["export"]
    assert escaped in pages["good task run repr"]  # the result
