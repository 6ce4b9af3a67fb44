"""A flow run's DAG as data, laid out by graphviz and painted as SVG.

One node per task: every run of a task -- a ``.map`` of 100,000 runs, or a
``.submit`` in a loop -- is one node labelled ``name xN`` with a bar of its
runs' states, so a huge fan-out draws as fast as a ten-node flow. A subflow
run is one node of its own (``▸ flow``, a bar of all its task runs); expanded,
it stays as a header node and its own tasks (and subflows) are drawn after it.

Graphviz only places the nodes and routes the edges; nbflow paints the
picture itself from that layout. So the layout is computed once per graph
*shape* (nodes and edges) and cached, while each redraw only recolours the
bars, and every label is escaped by one painter. Layout backends, in order:
``pygraphviz`` (its wheels bundle graphviz, so a plain ``pip install`` draws),
the ``dot`` program through the ``graphviz`` package, and a small layered
layout in pure Python, so a picture never fails to appear.
"""

from __future__ import annotations

import collections
import html
import importlib.util
import logging
import math
import shutil
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, NamedTuple, Union

from nbflow.report.model import (
    CACHED,
    CATEGORIES,
    COMPLETED,
    CRASHED,
    DONE_CODES,
    FAILED,
    PENDING,
    RUNNING,
    RunModel,
    counts_dict,
    state_code,
)
from nbflow.visualize import trace_groups

logger = logging.getLogger("nbflow.report")

NODE_HEIGHT = 40
_CHAR = 7.0  # px per character of a 12 px sans-serif label, generously
_PAD = 10
_BAR = 8
_MAX_NAME = 40
_COUNT_ROOM = len(" x1000000")
_MARGIN = 8


#: A node's id: a task group's index, or ``"f<k>"`` for subflow ``k`` of a run model.
NodeId = Union[int, str]


def flow_node_id(flow: int) -> str:
    """The node id of subflow ``flow`` (its index in ``RunModel.subflows``)."""
    return f"f{flow}"


class DagNode(NamedTuple):
    """One task (or subflow run): node id, name, how many runs it has, how many are in each state category.

    A subflow's node has ``flow`` (its index in the run model), its runs are
    all its task runs, and ``expanded`` says whether its tasks are drawn.
    """

    id: NodeId
    name: str
    runs: int
    counts: tuple[int, ...]
    flow: int | None = None
    expanded: bool = False
    colour: str | None = None  # overrides the colour the counts give (a subflow that failed)

    @property
    def label(self) -> str:
        """``name`` (shortened if long), with `` xN`` when the task ran more than once; ``▸``/``▾`` for a subflow."""
        name = self.name if len(self.name) <= _MAX_NAME else self.name[: _MAX_NAME - 1] + "…"
        if self.flow is not None:
            return f"{'▾' if self.expanded else '▸'} {name}"
        return name if self.runs <= 1 else f"{name} x{self.runs}"

    @property
    def width(self) -> int:
        # Room for the longest count, so the layout does not change as runs are added.
        shown = min(len(self.name), _MAX_NAME)
        return max(100, int(2 * _PAD + _CHAR * (shown + _COUNT_ROOM)))


class Layout(NamedTuple):
    """Where the nodes and edges go, in SVG pixels (origin top left)."""

    width: float
    height: float
    boxes: dict[NodeId, tuple[float, float, float, float]]  # node id -> x, y, w, h
    edges: list[tuple[NodeId, NodeId, list[tuple[float, float]]]]  # cubic Bezier chain per edge


Shape = tuple[tuple[tuple[NodeId, int], ...], tuple[tuple[NodeId, NodeId], ...]]


def _dot_name(node: NodeId) -> str:
    return f"g{node}" if isinstance(node, int) else node


def _edge_order(edge: tuple[NodeId, NodeId]) -> tuple:
    # task groups (ints) before subflows ("f<k>"), each in their own order
    return tuple((isinstance(n, str), n if isinstance(n, int) else 0, str(n)) for n in edge)


# -- layout backends --------------------------------------------------------------------
def _layout_dot(shape: Shape) -> str:
    nodes, edges = shape
    lines = [
        "digraph nbflow {",
        "graph [rankdir=LR, nodesep=0.25, ranksep=0.45, margin=0];",
        'node [shape=box, fixedsize=true, label=""];',
    ]
    lines += [f"{_dot_name(i)} [width={w / 72:.4f}, height={NODE_HEIGHT / 72:.4f}];" for i, w in nodes]
    lines += [f"{_dot_name(a)} -> {_dot_name(b)};" for a, b in edges]
    lines.append("}")
    return "\n".join(lines)


def _plain_pygraphviz(dot: str) -> str:
    import pygraphviz

    return pygraphviz.AGraph(string=dot).draw(format="plain", prog="dot").decode()


def _plain_dot_program(dot: str) -> str:
    import graphviz

    return graphviz.pipe("dot", "plain", dot.encode()).decode()


def _from_plain(text: str, shape: Shape) -> Layout:
    """Read graphviz's ``plain`` output (inches, origin bottom left) into a Layout of ``shape``'s nodes."""
    scale = 72.0
    height = 0.0
    width = 0.0
    ids = {_dot_name(i): i for i, _ in shape[0]}
    boxes: dict[NodeId, tuple[float, float, float, float]] = {}
    edges: list[tuple[NodeId, NodeId, list[tuple[float, float]]]] = []

    def point(x: str, y: str) -> tuple[float, float]:
        return (float(x) * scale + _MARGIN, height - float(y) * scale + _MARGIN)

    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "graph":
            width, height = float(parts[2]) * scale, float(parts[3]) * scale
        elif parts[0] == "node":
            cx, cy = point(parts[2], parts[3])
            w, h = float(parts[4]) * scale, float(parts[5]) * scale
            boxes[ids[parts[1]]] = (cx - w / 2, cy - h / 2, w, h)
        elif parts[0] == "edge":
            n = int(parts[3])
            coords = parts[4 : 4 + 2 * n]
            pts = [point(coords[i], coords[i + 1]) for i in range(0, len(coords), 2)]
            edges.append((ids[parts[1]], ids[parts[2]], pts))
    return Layout(width + 2 * _MARGIN, height + 2 * _MARGIN, boxes, edges)


def _layout_python(shape: Shape) -> Layout:
    """Layered left-to-right layout: a node's column is its longest path from a source."""
    nodes, edges = shape
    widths = dict(nodes)
    preds: dict[NodeId, list[NodeId]] = collections.defaultdict(list)
    for a, b in edges:
        preds[b].append(a)
    rank: dict[NodeId, int] = {}

    def rank_of(i: NodeId, visiting: frozenset[NodeId]) -> int:
        if i not in rank:
            ups = [rank_of(p, visiting | {i}) for p in preds[i] if p not in visiting]
            rank[i] = 1 + max(ups) if ups else 0
        return rank[i]

    for i in widths:
        rank_of(i, frozenset())
    columns: dict[int, list[NodeId]] = collections.defaultdict(list)
    for i in widths:
        columns[rank[i]].append(i)
    gap_x, gap_y = 36, 14
    tallest = max(len(c) for c in columns.values()) if columns else 0
    boxes: dict[NodeId, tuple[float, float, float, float]] = {}
    order: dict[NodeId, float] = {}
    x = float(_MARGIN)
    for r in sorted(columns):
        # Order a column by where its nodes' inputs are, to keep edges short.
        column = sorted(
            columns[r],
            key=lambda i: (sum(order[p] for p in preds[i] if p in order) / max(1, len(preds[i])), *_edge_order((i,))),
        )
        offset = (tallest - len(column)) * (NODE_HEIGHT + gap_y) / 2
        for k, i in enumerate(column):
            order[i] = k
            boxes[i] = (x, _MARGIN + offset + k * (NODE_HEIGHT + gap_y), widths[i], NODE_HEIGHT)
        x += max(widths[i] for i in column) + gap_x
    routed = []
    for a, b in edges:
        ax, ay, aw, ah = boxes[a]
        bx, by, _, bh = boxes[b]
        start, end = (ax + aw, ay + ah / 2), (bx - 10, by + bh / 2)
        mid = (start[0] + end[0]) / 2
        routed.append((a, b, [start, (mid, start[1]), (mid, end[1]), end]))
    width = x - gap_x + _MARGIN if columns else 2 * _MARGIN
    height = tallest * (NODE_HEIGHT + gap_y) - gap_y + 2 * _MARGIN if columns else 2 * _MARGIN
    return Layout(width, height, boxes, routed)


def _have_pygraphviz() -> bool:
    return importlib.util.find_spec("pygraphviz") is not None


def _have_dot_program() -> bool:
    return importlib.util.find_spec("graphviz") is not None and shutil.which("dot") is not None


BACKENDS: dict[str, tuple[Callable[[], bool], Callable[[Shape], Layout]]] = {
    "pygraphviz": (_have_pygraphviz, lambda shape: _from_plain(_plain_pygraphviz(_layout_dot(shape)), shape)),
    "dot": (_have_dot_program, lambda shape: _from_plain(_plain_dot_program(_layout_dot(shape)), shape)),
    "python": (lambda: True, _layout_python),
}

_cache: collections.OrderedDict[tuple[str, Shape], Layout] = collections.OrderedDict()
_cache_lock = threading.Lock()
_CACHE_SIZE = 64


def layout(shape: Shape, backend: str | None = None) -> tuple[str, Layout]:
    """The layout of a graph shape and the backend that made it (cached per shape).

    ``backend`` forces one of ``BACKENDS``; by default the first available
    that works is used.
    """
    names = [backend] if backend else list(BACKENDS)
    for name in names:
        with _cache_lock:
            cached = _cache.get((name, shape))
            if cached is not None:
                _cache.move_to_end((name, shape))
                return name, cached
        available, compute = BACKENDS[name]
        if not available():
            continue
        try:
            result = compute(shape)
        except Exception as exc:  # a broken graphviz install falls through to the next
            logger.debug("DAG layout with %s failed: %r", name, exc)
            if backend:
                raise
            continue
        with _cache_lock:
            _cache[(name, shape)] = result
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        return name, result
    raise RuntimeError(f"no DAG layout backend available among {names}")


# -- painting -------------------------------------------------------------------------------
def _bar_widths(counts: tuple[int, ...], width: float) -> list[float]:
    """Segment widths of a state bar; a non-empty state gets at least 2 px, so one failure shows."""
    total = sum(counts)
    if not total:
        return [0.0] * len(counts)
    widths = [max(2.0, width * n / total) if n else 0.0 for n in counts]
    excess = sum(widths) - width
    if excess > 0:
        widest = max(range(len(widths)), key=widths.__getitem__)
        widths[widest] -= excess
    return widths


def _colour(node: DagNode) -> str:
    return node.colour or node_colour(node.counts)


def node_colour(counts: tuple[int, ...]) -> str:
    """The colour that sums a node up: failed, running, all completed, or waiting."""
    if counts[FAILED] or counts[CRASHED]:
        return CATEGORIES[FAILED].colour
    if counts[RUNNING]:
        return CATEGORIES[RUNNING].colour
    total = sum(counts)
    if total and counts[COMPLETED] + counts[CACHED] == total:
        return CATEGORIES[COMPLETED if counts[COMPLETED] else CACHED].colour
    if total and all(counts[c] == 0 for c in range(len(counts)) if c not in DONE_CODES):
        return "#777777"
    return "#aaaaaa"


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def paint(lay: Layout, nodes: list[DagNode]) -> str:
    """An SVG picture of the nodes at their laid-out places; every label is escaped."""
    out = [
        (f'<svg xmlns="http://www.w3.org/2000/svg" class="nbflow-dag" width="{_num(lay.width)}" '
        f'height="{_num(lay.height)}" viewBox="0 0 {_num(lay.width)} {_num(lay.height)}" '
        'style="max-width:100%;height:auto" font-family="Helvetica,Arial,sans-serif" font-size="12">')
    ]
    for _, _, pts in lay.edges:
        d = f"M{_num(pts[0][0])},{_num(pts[0][1])} C" + " ".join(
            f"{_num(x)},{_num(y)}" for x, y in pts[1:]
        )
        out.append(f'<path d="{d}" fill="none" stroke="#888" stroke-width="1.2"/>')
        out.append(_arrowhead(pts[-2], pts[-1]))
    for node in nodes:
        box = lay.boxes.get(node.id)
        if box is None:
            continue
        x, y, w, h = box
        name = html.escape(node.name)
        tip = html.escape(", ".join(f"{k} {v}" for k, v in counts_dict(node.counts).items()))
        if node.flow is None:
            out.append(f'<g class="nbflow-node" data-group="{node.id}" style="cursor:pointer"><title>{name}: {node.runs} run(s) ({tip})</title>')
            dash = ""
        else:
            action = "collapse" if node.expanded else "expand"
            out.append(
                f'<g class="nbflow-node nbflow-subflow" data-flow="{node.flow}" data-expanded="{str(node.expanded).lower()}" '
                f'style="cursor:pointer"><title>subflow {name}: {node.runs} task run(s) ({tip}); click to {action}</title>'
            )
            dash = ' stroke-dasharray="5,3"'
        out.append(
            f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(w)}" height="{_num(h)}" rx="5" '
            f'fill="#fff" stroke="{_colour(node)}" stroke-width="1.5"{dash}/>'
        )
        out.append(f'<text x="{_num(x + _PAD)}" y="{_num(y + 17)}" fill="#222">{html.escape(node.label)}</text>')
        bx, by = x + _PAD, y + h - _PAD - _BAR
        for code, seg in enumerate(_bar_widths(node.counts, w - 2 * _PAD)):
            if seg > 0:
                out.append(
                    f'<rect x="{_num(bx)}" y="{_num(by)}" width="{_num(seg)}" height="{_BAR}" '
                    f'fill="{CATEGORIES[code].colour}"/>'
                )
                bx += seg
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def _arrowhead(before: tuple[float, float], tip_start: tuple[float, float]) -> str:
    # graphviz ends an edge's spline where its 10-point arrowhead begins
    dx, dy = tip_start[0] - before[0], tip_start[1] - before[1]
    norm = math.hypot(dx, dy) or 1.0
    ux, uy = dx / norm, dy / norm
    tip = (tip_start[0] + 10 * ux, tip_start[1] + 10 * uy)
    left = (tip_start[0] - 3.5 * uy, tip_start[1] + 3.5 * ux)
    right = (tip_start[0] + 3.5 * uy, tip_start[1] - 3.5 * ux)
    pts = " ".join(f"{_num(px)},{_num(py)}" for px, py in (tip, left, right))
    return f'<polygon points="{pts}" fill="#888"/>'


# -- the DAG object -------------------------------------------------------------------------
class Dag:
    """The task graph of a flow run: nodes per task, edges where runs waited for other runs.

    ``svg()`` paints it, ``source`` is DOT (with the state bars as HTML-like
    labels) for graphviz, and ``save(path)`` exports SVG, DOT, PNG, PDF or any
    format graphviz renders, chosen by the path's suffix.
    """

    def __init__(
        self,
        nodes: list[DagNode],
        edges: set[tuple[NodeId, NodeId]] | list[tuple[NodeId, NodeId]],
        title: str = "",
        backend: str | None = None,
    ) -> None:
        self.nodes = list(nodes)
        self.edges = sorted(set(edges), key=_edge_order)
        self.title = title
        self.backend = backend

    @classmethod
    def from_model(
        cls, model: RunModel, complete: bool = False, backend: str | None = None, expanded: Collection[int] = ()
    ) -> Dag:
        """The DAG of a run model as it is now (``complete`` reads every run's upstream).

        The model's own tasks are nodes; each subflow it called is one node,
        and those in ``expanded`` (subflow indices) also draw their own tasks
        and subflows, after their node. An edge into or out of a collapsed
        subflow's tasks is drawn to its node.
        """
        subflows = list(model.subflows)
        # Where each flow's runs are drawn: its own nodes if it is shown open, else its
        # nearest collapsed subflow node. Parents come before their subflows.
        drawn_as: dict[int | None, NodeId | None] = {None: None}  # None: drawn open
        for sub in subflows:
            outer = drawn_as[sub.parent]
            if outer is not None:  # inside a collapsed subflow
                drawn_as[sub.index] = outer
            elif sub.index in expanded:
                drawn_as[sub.index] = None
            else:
                drawn_as[sub.index] = flow_node_id(sub.index)
        shown = {flow for flow, where in drawn_as.items() if where is None}
        nodes: list[DagNode] = []
        for group in list(model.groups):
            if group.flow in shown:
                nodes.append(DagNode(group.index, group.name, len(group.codes), tuple(group.counts())))
        for sub in subflows:
            if sub.parent in shown:
                counts = tuple(model.flow_counts(sub.index))
                state = sub.flow_run.states[-1]
                colour = CATEGORIES[state_code(state)].colour if state_code(state) in (FAILED, CRASHED) else None
                nodes.append(DagNode(flow_node_id(sub.index), sub.flow_run.flow_name, sum(counts), counts,
                                     flow=sub.index, expanded=sub.index in shown, colour=colour))

        def node_of(group: int) -> NodeId:
            flow = model.groups[group].flow
            return group if flow in shown else drawn_as[flow]  # type: ignore[return-value]

        edges = {(node_of(a), node_of(b)) for a, b in model.edges(complete=complete)}
        # an open subflow's node leads to its tasks and subflows that wait for nothing in it
        entered = {b for _, b in edges}
        for node in nodes:
            owner = model.groups[node.id].flow if node.flow is None else model.subflows[node.flow].parent
            if owner is not None and node.id not in entered:
                edges.add((flow_node_id(owner), node.id))
        return cls(nodes, {(a, b) for a, b in edges if a != b}, model.flow_run.flow_name, backend)

    @classmethod
    def from_flow_run(cls, flow_run: Any, backend: str | None = None) -> Dag:
        """The DAG of a recorded flow run (and its subflows)."""
        return cls.from_model(RunModel.of(flow_run), complete=True, backend=backend)

    @classmethod
    def from_trace(cls, name: str, calls: list[Any], planned: bool = False) -> Dag:
        """The calls ``Flow.visualize()`` / ``Flow.plan()`` traced, drawn as a run is.

        A plan's nodes show their runs as Cached and the rest as Pending (would run).
        """
        groups, edges = trace_groups(calls)
        nodes = []
        for i, group in enumerate(groups):
            runs = group.runs
            cached = sum(c.cached for c in group.calls) if planned else 0
            counts = [0] * len(CATEGORIES)
            counts[CACHED], counts[PENDING] = cached, runs - cached
            nodes.append(DagNode(i, group.what.name, runs, tuple(counts)))
        return cls(nodes, edges, name)

    @property
    def shape(self) -> Shape:
        """What the layout depends on: node widths and edges (not the counts or states)."""
        return tuple((n.id, n.width) for n in self.nodes), tuple(self.edges)

    def layout(self) -> tuple[str, Layout]:
        """``(backend name, layout)``, cached per shape."""
        return layout(self.shape, self.backend)

    def svg(self) -> str:
        """The picture as an SVG document."""
        return paint(self.layout()[1], self.nodes)

    @property
    def source(self) -> str:
        """DOT source of the picture, state bars included, for graphviz or export."""
        lines = [
            f"digraph {_dot_string(self.title or 'nbflow')} {{",
            '  graph [rankdir=LR, nodesep=0.25, ranksep=0.45, fontname="Helvetica"];',
            '  node [shape=box, style=rounded, fontname="Helvetica", fontsize=11];',
        ]
        for node in self.nodes:
            style = ", style=\"rounded,dashed\"" if node.flow is not None else ""
            lines.append(f'  {_dot_name(node.id)} [label=<{_html_label(node)}>, color="{_colour(node)}"{style}];')
        lines += [f"  {_dot_name(a)} -> {_dot_name(b)};" for a, b in self.edges]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path, format: str | None = None) -> Path:
        """Write the picture to ``path``; the format comes from its suffix unless given.

        ``svg`` and ``dot``/``gv`` always work; other formats (``png``, ``pdf``,
        ...) are rendered by graphviz (pygraphviz, or the ``dot`` program).
        """
        path = Path(path)
        fmt = (format or path.suffix.lstrip(".")).lower()
        if not fmt:
            raise ValueError(f"cannot tell the format of {str(path)!r}: give it a suffix such as .svg, .png or .pdf")
        if fmt == "svg":
            path.write_text(self.svg(), encoding="utf-8")
        elif fmt in ("dot", "gv"):
            path.write_text(self.source, encoding="utf-8")
        else:
            path.write_bytes(self.render(fmt))
        return path

    def render(self, fmt: str) -> bytes:
        """The DOT source rendered by graphviz into ``fmt`` (``png``, ``pdf``, ...)."""
        if _have_pygraphviz():
            import pygraphviz

            return pygraphviz.AGraph(string=self.source).draw(format=fmt, prog="dot")
        if _have_dot_program():
            import graphviz

            return graphviz.pipe("dot", fmt, self.source.encode())
        raise RuntimeError(
            f"exporting a DAG as {fmt!r} needs graphviz: pip install pygraphviz (its wheels bundle "
            "graphviz), or install the 'dot' program. SVG and DOT export work without it."
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"image/svg+xml": self.svg(), "text/plain": repr(self)}

    def __repr__(self) -> str:
        return f"<nbflow DAG {self.title!r}: {len(self.nodes)} tasks, {len(self.edges)} edges>"


def _dot_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _html_label(node: DagNode) -> str:
    cells = "".join(
        f'<TD BGCOLOR="{CATEGORIES[code].colour}" WIDTH="{max(1, round(seg))}" HEIGHT="7" FIXEDSIZE="TRUE"></TD>'
        for code, seg in enumerate(_bar_widths(node.counts, node.width - 2 * _PAD))
        if seg > 0
    ) or '<TD BGCOLOR="#dcdcdc" WIDTH="80" HEIGHT="7" FIXEDSIZE="TRUE"></TD>'
    span = max(1, sum(1 for n in node.counts if n))
    return (
        '<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
        f'<TR><TD COLSPAN="{span}" ALIGN="LEFT">{html.escape(node.label, quote=False)}</TD></TR>'
        f"<TR>{cells}</TR></TABLE>"
    )


__all__ = ["BACKENDS", "Dag", "DagNode", "Layout", "NodeId", "flow_node_id", "layout", "node_colour", "paint"]
