"""The state grid (one PNG per group) and the DAG (one node per task, cached layout, export)."""

from __future__ import annotations

import struct
import zlib

import pytest

from nbflow import flow, task
from nbflow.report import dag as dag_module
from nbflow.report.dag import Dag, DagNode
from nbflow.report.grid import GAP, grid_png, layout
from nbflow.report.model import CATEGORIES, COMPLETED, FAILED, PENDING, RUNNING

EVIL = "<script>alert(1)</script>"


def _pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Decode our own indexed PNG: width, height, rows of palette indices."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    idat = png.index(b"IDAT")
    length = struct.unpack(">I", png[idat - 4 : idat])[0]
    raw = zlib.decompress(png[idat + 4 : idat + 4 + length])
    rows = [raw[r * (width + 1) + 1 : (r + 1) * (width + 1)] for r in range(height)]
    return width, height, rows


def counts(**by_name: int) -> tuple[int, ...]:
    values = [0] * len(CATEGORIES)
    for name, n in by_name.items():
        values[next(c.code for c in CATEGORIES if c.name == name)] = n
    return tuple(values)


# -- grid ---------------------------------------------------------------------------------
def test_grid_draws_each_run_as_a_square_in_order():
    codes = bytes([COMPLETED, FAILED, RUNNING, PENDING])
    image = grid_png(codes)
    width, height, rows = _pixels(image.png)
    columns, square, gap = layout(4)
    assert (width, height) == (image.width, image.height) == (4 * (square + gap) - gap, square)
    first = rows[0]
    assert [first[i * (square + gap)] for i in range(4)] == list(codes)
    assert first[square] == GAP  # transparent space between squares


@pytest.mark.parametrize("n", [1, 100, 10_000, 100_000])
def test_grid_stays_small_at_any_size(n):
    image = grid_png(bytes([COMPLETED]) * n)
    assert image.width <= 600 and image.height <= 200
    assert len(image.png) < 20_000
    columns, square, gap = layout(n)
    assert columns * ((n + columns - 1) // columns) >= n  # every run has a square


# -- DAG ----------------------------------------------------------------------------------------
@task
def square(x: int) -> int:
    return x * x


@task(name=EVIL)
def evil(values: list[int]) -> int:
    return sum(values)


def test_a_mapped_task_is_one_node_labelled_with_its_count():
    @flow
    def fan() -> int:
        return evil.submit(square.map(range(1000))).result()

    fan()
    from nbflow.runs import last_flow_run

    dag = Dag.from_flow_run(last_flow_run())
    assert [(n.name, n.runs) for n in dag.nodes] == [("square", 1000), (EVIL, 1)]
    assert dag.edges == [(0, 1)]
    svg = dag.svg()
    assert "square x1000" in svg
    assert svg.count('class="nbflow-node"') == 2


def test_a_subflow_is_a_node_of_its_own_whose_tasks_show_when_expanded():
    @flow(name="inner")
    def inner() -> int:
        return evil.submit(square.map(range(5))).result()

    @flow
    def outer() -> int:
        return square.submit(inner()).result()

    outer()
    from nbflow.report.model import RunModel
    from nbflow.runs import last_flow_run

    model = RunModel.of(last_flow_run())
    collapsed = Dag.from_model(model, complete=True)
    assert [(n.id, n.label) for n in collapsed.nodes] == [(0, "square"), ("f0", "▸ inner")]
    assert collapsed.nodes[1].runs == 6 and collapsed.edges == []
    expanded = Dag.from_model(model, complete=True, expanded={0})
    assert [(n.id, n.label) for n in expanded.nodes] == [(0, "square"), (1, "square x5"), (2, EVIL), ("f0", "▾ inner")]
    assert expanded.edges == [(1, 2), ("f0", 1)]  # the open subflow leads to its first task
    for backend in ("pygraphviz", "python"):
        svg = Dag(expanded.nodes, expanded.edges, backend=backend).svg()
        assert svg.count('class="nbflow-node"') == 3 and svg.count("nbflow-subflow") == 1
    assert "f0 -> g1;" in expanded.source and "dashed" in expanded.source


def test_every_label_is_escaped_in_svg_and_dot():
    dag = Dag([DagNode(0, EVIL, 3, counts(Completed=3)), DagNode(1, 'a"b\\c', 1, counts())], [(0, 1)], title='t"<')
    for backend in ("pygraphviz", "python"):
        svg = Dag(dag.nodes, dag.edges, backend=backend).svg()
        assert "<script>" not in svg and "&lt;script&gt;alert(1)&lt;/script&gt; x3" in svg
    source = dag.source
    assert "<script>" not in source and "&lt;script&gt;" in source
    assert 'digraph "t\\"<"' in source


def test_layout_is_cached_per_shape_and_only_recoloured(monkeypatch):
    calls = []
    available, compute = dag_module.BACKENDS["python"]

    def counting(shape):
        calls.append(shape)
        return compute(shape)

    monkeypatch.setitem(dag_module.BACKENDS, "python", (available, counting))
    monkeypatch.setattr(dag_module, "_cache", type(dag_module._cache)())
    nodes = [DagNode(0, "load", 1, counts(Running=1)), DagNode(1, "square", 10, counts(Pending=10))]
    first = Dag(nodes, [(0, 1)], backend="python").svg()
    progressed = [DagNode(0, "load", 1, counts(Completed=1)), DagNode(1, "square", 9999, counts(Completed=9000, Failed=999))]
    second = Dag(progressed, [(0, 1)], backend="python").svg()
    assert len(calls) == 1  # counts and states changed, the shape did not
    assert first != second and CATEGORIES[FAILED].colour in second
    Dag(progressed + [DagNode(2, "report", 1, counts())], [(0, 1), (1, 2)], backend="python").svg()
    assert len(calls) == 2


def test_a_failing_backend_falls_back_to_the_next(monkeypatch):
    def broken(shape):
        raise OSError("graphviz is broken here")

    monkeypatch.setitem(dag_module.BACKENDS, "pygraphviz", (lambda: True, broken))
    monkeypatch.setitem(dag_module.BACKENDS, "dot", (lambda: False, broken))
    monkeypatch.setattr(dag_module, "_cache", type(dag_module._cache)())
    dag = Dag([DagNode(0, "a", 1, counts()), DagNode(1, "b", 1, counts())], [(0, 1)])
    name, lay = dag.layout()
    assert name == "python" and set(lay.boxes) == {0, 1}
    assert dag.svg().startswith("<svg")
    with pytest.raises(OSError):
        Dag(dag.nodes, dag.edges, backend="pygraphviz").layout()


def test_graphviz_and_python_layouts_place_every_node_and_edge():
    nodes = [DagNode(i, f"t{i}", 1, counts(Completed=1)) for i in range(5)]
    edges = [(0, 1), (0, 2), (1, 3), (2, 3), (3, 4), (4, 1)]  # a cycle between groups is fine
    for backend in ("pygraphviz", "python"):
        _, lay = Dag(nodes, edges, backend=backend).layout()
        assert set(lay.boxes) == set(range(5))
        assert len(lay.edges) == len(edges)
        assert all(0 <= x and x + w <= lay.width + 1 and 0 <= y and y + h <= lay.height + 1 for x, y, w, h in lay.boxes.values())


def test_export_by_suffix(tmp_path):
    dag = Dag([DagNode(0, EVIL, 2, counts(Completed=1, Failed=1))], [], title="export")
    assert dag.save(tmp_path / "x.svg").read_text().startswith("<svg")
    assert dag.save(tmp_path / "x.dot").read_text().startswith('digraph "export"')
    assert dag.save(tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert dag.save(tmp_path / "x.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="suffix"):
        dag.save(tmp_path / "noformat")


def test_export_without_graphviz_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(dag_module, "_have_pygraphviz", lambda: False)
    monkeypatch.setattr(dag_module, "_have_dot_program", lambda: False)
    dag = Dag([DagNode(0, "a", 1, counts())], [])
    with pytest.raises(RuntimeError, match="pip install pygraphviz"):
        dag.save(tmp_path / "x.png")
    assert dag.save(tmp_path / "x.svg").exists()  # SVG needs no graphviz


def test_dag_mimebundle_has_svg_and_text():
    bundle = Dag([DagNode(0, "a", 1, counts())], [], title="f")._repr_mimebundle_()
    assert bundle["image/svg+xml"].startswith("<svg")
    assert bundle["text/plain"] == "<nbflow DAG 'f': 1 tasks, 0 edges>"
