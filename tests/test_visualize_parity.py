"""Flow.visualize(): Prefect 3.9.1's behaviour (each case run on 3.9.1 first, outputs quoted)."""

from __future__ import annotations

import asyncio
import warnings

import pytest

import nbflow.visualize as viz
from nbflow import flow, task
from nbflow.futures import wait

pytestmark = pytest.mark.parity

HINT = (
    "\nIt's possible you are trying to visualize a flow that contains code that directly interacts "
    "with the result of a task inside of the flow. \nTry passing a `viz_return_value` to the task "
    "decorator, e.g. `@task(viz_return_value=[1, 2, 3]).`"
)

ran: list[str] = []


@task
def add_one(x):
    ran.append("add_one")
    return x + 1


@task(viz_return_value=[1, 2, 3])
def listing(x):
    ran.append("listing")
    return [x]


@task
def show(x, y=None):
    ran.append("show")
    return x


@task
async def later(x):
    ran.append("later")
    return x


@pytest.fixture(autouse=True)
def outside_ipython(monkeypatch):
    """As in a script, even when an earlier test left an IPython shell in this process."""
    monkeypatch.setattr(viz, "_ipython_running", lambda: False)


@pytest.fixture
def graphs(monkeypatch):
    """The Prefect graph (DOT source) each visualize call would render, instead of rendering it."""
    drawn: list[str] = []

    def render(self, *args, **kwargs):
        assert kwargs == {"filename": kwargs["filename"], "view": True, "format": "png", "cleanup": True}
        drawn.append(self.source)

    import graphviz

    monkeypatch.setattr(graphviz.Digraph, "render", render)
    ran.clear()
    warnings.simplefilter("ignore", UserWarning)
    yield drawn
    assert ran == [], "a task body ran during visualize()"


def edges(source: str) -> set[tuple[str, str]]:
    found = set()
    for line in source.splitlines():
        if "->" in line:
            a, b = (part.strip().strip('"') for part in line.split("->"))
            found.add((a, b))
    return found


def nodes(source: str) -> list[str]:
    return [line.strip().split()[0].strip('"') for line in source.splitlines()[1:-1] if "->" not in line]


def test_inline_calls_are_traced_named_and_linked_and_nothing_runs(graphs):
    @flow
    def pipeline(n):
        x = add_one(n)
        y = add_one(x)
        return show(x, y)

    # 3.9.1: digraph { "a-0" "a-1" "a-0" -> "a-1" "c-0" "a-0" -> "c-0" "a-1" -> "c-0" }; returns None
    assert pipeline.visualize(1) is None
    assert nodes(graphs[0]) == ["add_one-0", "add_one-1", "show-0"]
    assert edges(graphs[0]) == {("add_one-0", "add_one-1"), ("add_one-0", "show-0"), ("add_one-1", "show-0")}


def test_it_warns_that_the_body_runs():
    @flow
    def pipeline():
        return None

    with warnings.catch_warnings(record=True) as caught, pytest.MonkeyPatch.context() as mp:
        warnings.simplefilter("always")
        mp.setattr(viz, "_show", lambda name, tracer: None)
        pipeline.visualize()
    assert [str(w.message) for w in caught] == [
        "`flow.visualize()` will execute code inside of your flow that is not decorated with `@task` or `@flow`."
    ]
    assert caught[0].category is UserWarning


def test_viz_return_value_is_what_a_traced_call_returns(graphs):
    seen = []

    @task(viz_return_value=1000)
    def big(x):
        return x

    @task(viz_return_value=5)
    def small(x):
        return x

    @task(viz_return_value=0)
    def zero(x):
        return x

    @flow
    def pipeline():
        values = listing(1)
        seen.append(values)
        for v in values:  # the stand-in can be iterated
            show(v)
        show(values)  # linked by identity: an edge
        show(big(1))  # 1000 is tracked, 5 (a small int) is not
        show(small(1))
        z = zero(1)  # a falsy viz_return_value is ignored: a placeholder comes back
        seen.append(type(z).__name__)
        show(z)

    pipeline.visualize()
    # 3.9.1: b-0 c-0 c-1 c-2 c-3 b-0->c-3 big-0 c-4 big-0->c-4 small-0 c-5 zero-0 c-6 zero-0->c-6
    assert seen == [[1, 2, 3], "VizTask"]
    assert edges(graphs[0]) == {("listing-0", "show-3"), ("big-0", "show-4"), ("zero-0", "show-6")}


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        ("iterate", TypeError, "'VizTask' object is not iterable"),
        ("add", TypeError, "unsupported operand type(s) for +: 'VizTask' and 'int'"),
        ("index", TypeError, "'VizTask' object is not subscriptable"),
    ],
)
def test_a_body_that_needs_a_real_value_gets_pythons_error_with_prefects_hint(graphs, body, error, message):
    @flow
    def pipeline(n):
        x = add_one(n)
        if body == "iterate":
            for _ in x:
                pass
        elif body == "add":
            return x + 1
        else:
            return x[0]

    with pytest.raises(error) as caught:
        pipeline.visualize(1)
    assert str(caught.value) == message + HINT
    assert graphs == []


def test_a_flow_called_with_missing_arguments_gets_the_hint_too(graphs):
    @flow
    def pipeline(n):
        return add_one(n)

    with pytest.raises(TypeError) as caught:
        pipeline.visualize()
    assert str(caught.value).endswith("pipeline() missing 1 required positional argument: 'n'" + HINT)


def test_wait_for_and_nested_placeholders_make_edges(graphs):
    # 3.9.1 draws neither (it looks at top-level arguments only); nbflow draws what a run waits for.
    @flow
    def pipeline(n):
        x = add_one(n)
        show(n, wait_for=[x])
        show([x])

    pipeline.visualize(1)
    assert edges(graphs[0]) == {("add_one-0", "show-0"), ("add_one-0", "show-1")}


def test_submit_and_map_are_traced_a_map_is_one_node_with_its_count(graphs):
    # 3.9.1 raises for these (RuntimeError for submit outside a run, VisualizationUnsupportedError for map).
    @flow
    def pipeline(xs):
        first = add_one.submit(1)
        first.wait()
        squares = add_one.map(xs)
        wait(squares)
        shown = show.map(squares, y=first)
        show(shown)
        for v in listing.submit(1).result():
            show(v)
        return [f.result() for f in shown]

    pipeline.visualize([1, 2, 3])
    source = graphs[0]
    assert 'label="add_one-1 x3"' in source and 'label="show-0 x3"' in source
    assert {("add_one-1", "show-0"), ("add_one-0", "show-0"), ("show-0", "show-1")} <= edges(source)


def test_a_map_over_a_placeholder_of_unknown_length_is_one_node(graphs):
    @flow
    def pipeline(n):
        return show.map(add_one(n))

    pipeline.visualize(1)
    assert 'label="show-0 x?"' in graphs[0]
    assert edges(graphs[0]) == {("add_one-0", "show-0")}


def test_async_flows_and_tasks(graphs):
    @flow
    async def pipeline(n):
        x = add_one(n)
        y = await later(x)
        show(y)

    # 3.9.1: sync code gets None; where a loop runs, visualize() returns a coroutine to await
    assert pipeline.visualize(1) is None

    async def main():
        pending = pipeline.visualize(1)
        assert asyncio.iscoroutine(pending)
        return await pending

    assert asyncio.run(main()) is None
    assert len(graphs) == 2 and graphs[0] == graphs[1]
    assert edges(graphs[0]) == {("add_one-0", "later-0"), ("later-0", "show-0")}


def test_a_sync_flow_where_a_loop_runs_returns_a_coroutine_too(graphs):
    @flow
    def pipeline(n):
        return add_one(n)

    async def main():
        pending = pipeline.visualize(1)
        assert asyncio.iscoroutine(pending)
        await pending
        assert pipeline.visualize(1, _sync=True) is None

    asyncio.run(main())
    assert len(graphs) == 2


def test_without_the_dot_program_prefects_error(monkeypatch):
    import graphviz

    def render(self, *args, **kwargs):
        raise graphviz.backend.ExecutableNotFound(["dot"])

    monkeypatch.setattr(graphviz.Digraph, "render", render)

    @flow
    def pipeline(n):
        return add_one(n)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(viz.GraphvizExecutableNotFoundError) as caught:
            pipeline.visualize(1)
    assert str(caught.value) == (
        "It appears you do not have Graphviz installed, or it is not on your PATH. Please install Graphviz "
        "from http://www.graphviz.org/download/. Note: Just installing the `graphviz` python package is not "
        "sufficient."
    )


def test_in_ipython_with_the_extension_the_live_views_dag_is_displayed(monkeypatch):
    from nbflow.report.dag import Dag

    shown = []
    monkeypatch.setattr(viz, "_ipython_running", lambda: True)
    monkeypatch.setattr(viz, "drawer", Dag.from_trace)  # what %load_ext nbflow installs
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", shown.append)

    @flow
    def pipeline(xs):
        return show(add_one.map(xs))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.visualize([1, 2])
    (dag,) = shown
    assert [(n.name, n.runs) for n in dag.nodes] == [("add_one", 2), ("show", 1)]
    assert dag.edges == [(0, 1)]
    assert "add_one x2" in dag.svg()


def test_in_ipython_without_the_extension_it_renders_as_prefect_does(monkeypatch, graphs):
    monkeypatch.setattr(viz, "_ipython_running", lambda: True)
    monkeypatch.setattr(viz, "drawer", None)

    @flow
    def pipeline(xs):
        return show(add_one(xs))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.visualize(1)
    assert len(graphs) == 1 and "add_one" in graphs[0]


def test_a_subflow_is_one_node_and_does_not_run(graphs):
    @flow
    def inner(n):
        return add_one(n)

    @flow
    def pipeline(n):
        x = add_one(n)
        show(inner(x))

    pipeline.visualize(1)
    # 3.9.1: a-0 sub-0 a-0->sub-0 c-0 sub-0->c-0
    assert edges(graphs[0]) == {("add_one-0", "inner-0"), ("inner-0", "show-0")}
