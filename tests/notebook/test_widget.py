"""The run view's Python side: what the front end is sent (trait changes, grid diffs) and what it is answered."""

from __future__ import annotations

import threading
import time

from nbflow import flow, task
from nbflow.notebook.session import NotebookSession
from nbflow.notebook.viewmodel import Tracker
from nbflow.report.model import (
    CATEGORIES,
    COMPLETED,
    FAILED,
    RUNNING,
    RunModel,
)
from nbflow.notebook.widget import WIDGET_MIME, RedrawClock, RunView, changed_range
from nbflow.runs import TaskRun, last_flow_run
from nbflow.states import Completed
from nbflow.task_runners import ThreadPoolTaskRunner

EVIL = "<script>alert(1)</script>"


@task
def square(x: int) -> int:
    return x * x


@task(name=EVIL)
def fails(x: int) -> int:
    raise ValueError(EVIL)


@task
def load(i: int) -> dict:
    return {"item": i, "payload": "p" * 10}


@task
def clean(row: dict) -> int:
    if row["item"] % 10 == 7:
        raise ValueError(f"bad item {row['item']}")
    return row["item"]


@flow(name="etl")
def etl(n: int = 30) -> None:
    clean.map(load.map(range(n))).wait()


def finished_view(flow_fn) -> RunView:
    flow_fn()
    view = RunView(RunModel.of(last_flow_run()))
    view.redraw(final=True)
    return view


def codes_messages(comms) -> list[tuple[dict, list]]:
    """The grid diffs sent: ``(content, buffers)`` of each ``codes`` custom message."""
    found = []
    for kind, data, buffers in comms.messages:
        content = (data or {}).get("content", {}) if kind == "comm_msg" else {}
        if (data or {}).get("method") == "custom" and content.get("type") == "codes":
            found.append((content, [bytes(b) for b in buffers or []]))
    return found


def test_changed_range_finds_the_first_and_last_byte_that_moved():
    assert changed_range(b"abc", b"abc") is None
    assert changed_range(b"", b"xyz") == (0, 3)
    assert changed_range(b"aaaa", b"abca") == (1, 3)
    assert changed_range(b"aaaa", b"aaaab") == (4, 5)  # grown: from the first change to the end
    assert changed_range(b"aaaa", b"baaaaa") == (0, 6)
    old = bytes(100_000)
    new = bytearray(old)
    new[40_000] = new[60_123] = 2
    assert changed_range(old, bytes(new)) == (40_000, 60_124)


def test_the_grid_travels_as_diffs_of_state_codes(comms):
    view = finished_view(lambda: etl(return_state=True))
    comms.clear()
    view.answer({"type": "sync"})  # a front end drew the view: it gets the whole grid
    ((content, buffers),) = codes_messages(comms)
    assert content["groups"] == [[0, 0, 30], [1, 0, 30]]
    assert buffers[0] == bytes([COMPLETED]) * 30
    assert buffers[1][7] == FAILED and buffers[1][0] == COMPLETED

    comms.clear()
    view.redraw(final=True)
    assert codes_messages(comms) == []  # nothing moved: no grid message

    group = view.model.groups[1]  # a run moves (as a refresh would record it): only its byte travels
    group.codes[12] = RUNNING
    comms.clear()
    view._send_codes(full=False)
    ((content, buffers),) = codes_messages(comms)
    assert content["groups"] == [[1, 12, 30]] and buffers == [bytes([RUNNING])]


def test_traits_carry_the_pictures_and_group_summaries_escaped(comms):
    @flow
    def mixed() -> None:
        square.map(range(20)).wait()
        fails.submit(1).wait()

    view = finished_view(mixed)
    assert view.finished and view.state == "Completed"
    assert view.counts == {"Completed": 20, "Failed": 1} and view.task_run_count == 21 and view.progress == 1.0
    assert view.groups == [
        {"name": "square", "count": 20, "counts": {"Completed": 20}, "flow": None},
        {"name": EVIL, "count": 1, "counts": {"Failed": 1}, "flow": None},
    ]
    assert "square x20" in view.dag and 'data-group="1"' in view.dag and "<script>" not in view.dag
    assert 'data-state="Failed"' in view.header and "<script>" not in view.header
    assert view.categories[FAILED] == [CATEGORIES[FAILED].name, CATEGORIES[FAILED].colour]
    assert view.view_id == view.model_id


@flow
def child(n: int) -> int:
    return sum(square.map(range(n)).result())


@flow
def parent() -> int:
    return sum(square.map(range(20)).result()) + child(200)


def test_a_subflow_is_one_dag_node_that_expands_and_its_runs_stay_its_own(comms):
    view = finished_view(parent)
    assert view.counts == {"Completed": 20} and view.task_run_count == 20
    assert [(g["name"], g["count"], g["flow"]) for g in view.groups] == [("square", 20, None), ("square", 200, "child")]
    assert "square x20" in view.dag and "square x200" not in view.dag and "square x220" not in view.dag
    assert 'data-flow="0" data-expanded="false"' in view.dag and "▸ child" in view.dag
    assert view.list_rows(limit=1000)["total"] == 20  # the run's own task runs
    assert view.list_rows(group=1)["total"] == 200  # a subflow's group, once its node is picked
    assert view.answer({"type": "hover", "group": 1, "index": 5})["map_index"] == 5
    view.answer({"type": "expand", "flow": 0, "open": True})
    assert view.expanded == {0}
    assert "▾ child" in view.dag and "square x200" in view.dag and 'data-group="1"' in view.dag
    assert view.counts == {"Completed": 20}  # counts and grid stay the shown run's
    view.answer({"type": "expand", "flow": 0, "open": False})
    assert "square x200" not in view.dag and view.expanded == frozenset()


def test_the_list_filters_by_state_task_name_and_map_index_with_no_row_limit(comms):
    view = finished_view(lambda: etl(300, return_state=True))
    everything = view.list_rows(limit=1000)
    assert everything["total"] == 600 and len(everything["rows"]) == 600  # no row limit
    assert [row[4] for row in everything["rows"][:30]] == ["Failed"] * 30  # failures first
    failed = view.list_rows(state="Failed")
    assert failed["total"] == 30 and {row[0] for row in failed["rows"]} == {1}
    found = view.list_rows(query="217")["rows"]
    assert [1, 217, view.model.groups[1].runs[217].name, 217, "Failed"] in found
    assert [0, 217, view.model.groups[0].runs[217].name, 217, "Completed"] in found
    assert all(row[3] == 217 or "217" in row[2] for row in found)  # a run name may hold 217 too
    only_load = view.list_rows(group=0, query="217")
    assert {row[0] for row in only_load["rows"]} == {0}  # a DAG node picked: that task only
    name = view.model.groups[0].runs[5].name
    assert view.list_rows(query=name.upper())["rows"][0][2] == name  # by name, any case
    page = view.list_rows(offset=200, limit=200)
    assert page["offset"] == 200 and len(page["rows"]) == 200 and page["total"] == 600
    assert view.answer({"type": "list", "state": "Failed", "limit": 5, "seq": 9}) | {"rows": None} == {
        "type": "list", "total": 30, "offset": 0, "rows": None, "seq": 9,
    }


def test_every_page_of_the_list_is_the_slice_of_the_whole_ordered_list(comms):
    """Pages are built from counts, not from the whole list: they must still be its slices, across groups."""
    from nbflow.report.model import ROW_ORDER

    view = finished_view(lambda: etl(300, return_state=True))
    whole = [[g.index, i, g.runs[i].name, g.runs[i].map_index, g.runs[i].states[-1].name]
             for code in ROW_ORDER for g in view.model.groups_of() for i, c in enumerate(g.codes) if c == code]
    assert len(whole) == 600
    for offset, limit in [(0, 7), (25, 10), (290, 20), (300, 300), (595, 200), (600, 5)]:
        page = view.list_rows(offset=offset, limit=limit)
        assert page["total"] == 600 and page["rows"] == whole[offset : offset + limit], (offset, limit)
    found = view.list_rows(query="21", offset=3, limit=4)
    everything_found = view.list_rows(query="21", limit=1000)
    assert found["total"] == everything_found["total"] and found["rows"] == everything_found["rows"][3:7]


def test_hover_and_details_are_answered_on_request_with_resolved_inputs(comms):
    view = finished_view(lambda: etl(return_state=True))
    hover = view.answer({"type": "hover", "group": 1, "index": 7, "seq": 3})
    assert hover["seq"] == 3 and hover["task"] == "clean" and hover["map_index"] == 7 and hover["state"] == "Failed"
    assert hover["duration"].endswith(" s") and hover["message"] == "ValueError: bad item 7"
    assert "'item': 7" in hover["inputs"] and "Future" not in hover["inputs"]  # the value the run received
    details = view.answer({"type": "details", "group": 1, "index": 7})["html"]
    assert "nbflow-traceback" in details and "ValueError: bad item 7" in details
    assert "&#x27;item&#x27;: 7" in details and "Future" not in details
    assert "nbflow/engine.py" not in details  # nbflow's own frames are hidden
    assert view.answer({"type": "hover", "group": 5, "index": 0})["group"] == 5  # unknown: no summary
    assert "not known" in view.answer({"type": "details", "group": 0, "index": 10**6})["html"]


def test_details_escape_names_and_errors(comms):
    @flow
    def one_failure() -> None:
        fails.submit(1).wait()

    view = finished_view(one_failure)
    details = view.answer({"type": "details", "group": 0, "index": 0})["html"]
    assert "Traceback" in details and "ValueError" in details and "<script>" not in details


def test_a_10k_map_costs_a_bounded_number_of_messages(comms):
    """The clock thread redraws at most 10 times a second: a trait message and a grid diff per redraw."""
    views: list[RunView] = []
    clock = RedrawClock(hz=10)
    tracker = Tracker()

    class Live:
        def __init__(self, view: RunView) -> None:
            self.view = view

        def tick(self) -> bool:
            self.view.redraw()
            return not self.view.model.flow_run.state.is_final()

    def on_flow_state(flow_run, state):
        if state.is_running() and not views:
            views.append(RunView(tracker.track(flow_run)))
            comms.clear()  # count only what the run costs, not creating the widget
            clock.add(Live(views[0]))

    tracker.on_flow_state = on_flow_state
    tracker.start()

    @flow
    def big_map() -> None:
        square.map(range(10_000)).wait()

    start = time.monotonic()
    try:
        big_map()
    finally:
        clock.stop()
        tracker.stop()
    elapsed = time.monotonic() - start
    view = views[0]
    view.redraw(final=True)
    assert view.task_run_count == 10_000 and view.counts == {"Completed": 10_000}
    sent = comms.count("comm_msg") + comms.count("comm_open")
    assert sent <= (elapsed * 10 + 2) * 2, (sent, elapsed)  # the clock's bound, plus the first and final redraw
    assert comms.count("comm_open") == 0
    grid_bytes = sum(len(b) for _, buffers in codes_messages(comms) for b in buffers)
    assert grid_bytes < 10_000 * (elapsed * 10 + 2)  # diffs, not a picture per redraw


def test_no_message_without_a_redraw(comms):
    tracker = Tracker()
    views: list[RunView] = []

    def on_flow_state(flow_run, state):
        if state.is_running() and not views:
            views.append(RunView(tracker.track(flow_run)))
            comms.clear()

    tracker.on_flow_state = on_flow_state
    tracker.start()

    @flow
    def quiet() -> None:
        square.map(range(2_000)).wait()

    try:
        quiet()
    finally:
        tracker.stop()
    assert comms.count() == 0  # 6,000 events, no redraw: nothing sent
    views[0].redraw(final=True)
    assert 0 < comms.count() <= 2  # the traits that changed (one message) and the grid diff
    comms.clear()
    views[0].redraw(final=True)  # nothing changed: nothing sent
    assert comms.count() == 0


def test_cancel_cancels_what_has_not_started_and_is_hidden_once_the_run_ended(comms, gate, wait_until):
    @task
    def hold() -> None:
        gate.wait()

    models: list[RunModel] = []
    tracker = Tracker(lambda fr, st: st.is_running() and not models and models.append(tracker.track(fr)))
    tracker.start()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def queued() -> None:
        held = hold.submit()
        square.map(range(5)).wait()
        held.wait()

    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(queued(return_state=True)))
    worker.start()
    try:
        assert wait_until(lambda: models and models[0].refresh() and models[0].task_run_count() == 6)
        view = RunView(models[0])
        assert view.cancel_state == "ready"
        assert wait_until(lambda: models[0].refresh() and models[0].rows(1)[0].states[-1].is_running())
        view.answer({"type": "cancel"})  # what the button sends
        assert view.cancel_state == "cancelling"
    finally:
        gate.open()
        worker.join(10)
        tracker.stop()
    view.redraw(final=True)
    assert view.counts.get("Cancelled", 0) >= 5
    assert view.cancel_state == "hidden"  # a finished view has no Cancel button, never "Cancelling…"
    assert outcome[0].is_cancelled()
    view.cancel()  # a click that arrives after the end changes nothing
    assert view.cancel_state == "hidden"


def test_display_bundle_has_stable_text_static_html_and_the_widget(comms):
    @flow(name="my-flow")
    def small() -> None:
        fails.submit(1).wait()
        square.map(range(3)).wait()

    view = finished_view(small)
    bundle = view._repr_mimebundle_()
    assert bundle["text/plain"] == "<nbflow run 'my-flow': Completed, 4 task runs>"
    assert bundle[WIDGET_MIME]["model_id"] == view.model_id
    html = bundle["text/html"]
    assert "<svg" in html and "data:image/png;base64," in html and "<script>" not in html
    assert f'class="nbflow-static" data-view="{view.model_id}"' in html and "Failed task runs" in html
    assert set(view.static_bundle()) == {"text/plain", "text/html"}  # what a finished output becomes
    assert list(view.live_bundle()) == [WIDGET_MIME]  # invisible to nbval and static renderers


def test_a_long_run_output_is_replaced_by_its_static_picture(comms, displays, view_settings, gate):
    """The live widget's output becomes the picture (same display id), so a reopened notebook shows it."""
    updates: list[tuple[dict, str]] = []
    session = NotebookSession(None, display=displays, widgets=True, clock=RedrawClock(thread=False),
                              update=lambda bundle, display_id: updates.append((bundle, display_id)))
    from nbflow.notebook import session as sessions

    sessions.install(session)
    view_settings.view_delay = 0

    @task
    def hold() -> None:
        gate.wait()

    @flow(name="long")
    def long() -> None:
        held = hold.submit()
        session.clock.tick()  # the live view appears
        gate.open()
        held.wait()

    long()
    (live,) = displays.bundles()
    assert list(live) == [WIDGET_MIME]
    ((bundle, display_id),) = updates
    (run,) = session.live.values()
    assert display_id == run.display_id and WIDGET_MIME not in bundle
    assert "nbflow-static" in bundle["text/html"] and bundle["text/plain"].startswith("<nbflow run 'long': Completed")
    assert run.view.finished and run.view.cancel_state == "hidden"


def test_a_quick_run_shows_its_final_view_then_the_picture_once_drawn(comms, displays, view_settings):
    updates: list[tuple[dict, str]] = []
    session = NotebookSession(None, display=displays, widgets=True, clock=RedrawClock(thread=False),
                              update=lambda bundle, display_id: updates.append((bundle, display_id)))
    from nbflow.notebook import session as sessions

    sessions.install(session)
    view_settings.view_delay = 60

    @flow(name="quick")
    def quick() -> int:
        return square.submit(2).result()

    assert quick() == 4
    (final,) = displays.shown
    assert isinstance(final, RunView) and updates == []  # no front end drew it yet
    final.answer({"type": "ready"})  # the front end drew it: the output becomes the picture
    ((bundle, _),) = updates
    assert set(bundle) == {"text/plain", "text/html"}


def test_output_the_kernel_cannot_route_is_shown_in_the_view(comms):
    @flow
    def tiny() -> int:
        return square.submit(2).result()

    view = finished_view(tiny)
    view.append_output("stdout", "hello\n")
    view.append_output("stderr", "oops\n")
    view.redraw()
    assert view.output == [["stdout", "hello\n"], ["stderr", "oops\n"]]


def test_clock_ticks_until_an_item_is_done_then_idles():
    clock = RedrawClock(hz=50)
    done = threading.Event()

    class Countdown:
        ticks = 0

        def tick(self) -> bool:
            self.ticks += 1
            if self.ticks == 3:
                done.set()
                return False
            return True

    item = Countdown()
    clock.add(item)
    try:
        assert done.wait(5)
    finally:
        clock.stop()
    assert item.ticks == 3 and clock._items == []


def test_clock_tick_drives_items_by_hand():
    clock = RedrawClock()

    class Broken:
        def tick(self) -> bool:
            raise RuntimeError("draw failed")

    clock._items.append(Broken())
    clock.tick()  # a failing item is logged and dropped, never raised into the run
    assert clock._items == []


def test_view_of_a_huge_group_sends_one_byte_per_run(comms):
    @flow
    def tiny() -> int:
        return square.submit(1).result()

    tiny()
    flow_run = last_flow_run()
    for i in range(100_000):  # records as a huge map leaves them, without running 100k tasks
        TaskRun(square, flow_run, {"x": i}, map_index=i).finish(Completed())
    view = RunView(RunModel(flow_run))
    view.redraw(final=True)
    assert view.groups == [{"name": "square", "count": 100_001, "counts": {"Completed": 100_001}, "flow": None}]
    comms.clear()
    view.answer({"type": "sync"})
    ((content, buffers),) = codes_messages(comms)
    assert content["groups"] == [[0, 0, 100_001]] and len(buffers[0]) == 100_001
    assert "square x100001" in view.dag


def test_retry_is_offered_on_a_run_with_failures_and_shows_the_retry(comms, nbflow_home):
    import nbflow.settings

    nbflow.settings.current.persist_results = True
    broken = {3}
    calls = []

    @task
    def item(i: int) -> int:
        calls.append(i)
        if i in broken:
            raise ValueError("bad item")
        return i

    @flow(name="retried-from-the-view")
    def items() -> list[int]:
        return item.map(range(5)).result()

    view = finished_view(lambda: items(return_state=True))
    assert view.retry_state == "offered"  # a finished run with a failure offers Retry
    clean_view = finished_view(flow(name="clean")(lambda: square(2)))
    assert clean_view.retry_state == "hidden"

    broken.clear()
    calls.clear()
    view.retry().join(10)  # what the button's "retry" message starts
    retry_view = view.retry_view
    assert isinstance(retry_view, RunView) and view.retry_ref == f"anywidget:{retry_view.model_id}"
    assert retry_view.model.flow_run.retry_of is view.model.flow_run
    assert retry_view.model.flow_run.state.is_completed() and 3 in calls and 0 not in calls
    view.redraw(final=True)
    assert view.retry_state == "hidden"  # retried once from this view
