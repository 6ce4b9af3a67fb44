"""The run view's Python side: traitlets, messages sent, Cancel, display bundle, redraw clock."""

from __future__ import annotations

import threading
import time

from nbflow import flow, task
from nbflow.notebook.viewmodel import RunModel, Tracker
from nbflow.notebook.widget import WIDGET_MIME, RedrawClock, RunView
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


def finished_view(flow_fn) -> RunView:
    flow_fn()
    view = RunView(RunModel.of(last_flow_run()))
    view.redraw(final=True)
    return view


def test_traitlets_mirror_the_run(comms):
    @flow
    def mixed() -> None:
        square.map(range(20)).wait()
        fails.submit(1).wait()

    view = finished_view(mixed)
    assert view.state == "Completed"
    assert view.counts == {"Completed": 20, "Failed": 1}
    assert view.task_run_count == 21 and view.progress == 1.0 and view.finished
    assert view.groups == [
        {"name": "square", "count": 20, "counts": {"Completed": 20}},
        {"name": EVIL, "count": 1, "counts": {"Failed": 1}},
    ]
    assert "square x20" in view.dag_svg and "<script>" not in view.dag_svg
    assert view.rows[0].startswith(EVIL)  # failed runs are listed first
    assert len(view.rows) == 21


def test_selecting_a_run_shows_its_details_escaped(comms):
    @flow
    def one_failure() -> None:
        fails.submit(1).wait()

    view = finished_view(one_failure)
    failed = view.model.rows(1)[0]
    view.select(failed)
    assert "Traceback" in view.detail_html and "ValueError" in view.detail_html
    assert "<script>" not in view.detail_html
    view.select(None)
    assert "Select a task run" in view.detail_html


def test_a_10k_map_costs_a_bounded_number_of_messages(comms):
    """The clock thread redraws at most 10 times a second, whatever the number of events."""
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
            comms.clear()  # count only what the run costs, not creating the widgets
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
    ticks = elapsed * 10 + 2  # the clock's bound, plus the first and the final redraw
    per_tick = 6  # header, DAG, grid, rows, detail, button
    sent = comms.count("comm_msg") + comms.count("comm_open")
    assert sent <= ticks * per_tick, (sent, elapsed)
    assert sent < 300  # a message per event would be ~30,000


def test_no_message_without_a_redraw_and_few_per_redraw(comms):
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
    assert 0 < comms.count() <= 6  # header, DAG, grid, rows, button, the view's own traits
    assert comms.count("comm_open") == 0
    comms.clear()
    views[0].redraw(final=True)  # nothing changed: nothing sent
    assert comms.count() == 0


def test_cancel_button_cancels_what_has_not_started(comms, gate, wait_until):
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
        assert wait_until(lambda: models[0].refresh() and models[0].rows(1)[0].states[-1].is_running())
        view._cancel.click()
        assert view._cancel.disabled and view._cancel.description == "Cancelling…"
    finally:
        gate.open()
        worker.join(10)
        tracker.stop()
    view.redraw(final=True)
    assert view.counts.get("Cancelled", 0) >= 5
    assert view._cancel.disabled
    assert outcome[0].is_cancelled()  # a cancelled flow run ends Cancelled


def test_display_bundle_has_stable_text_static_html_and_the_widget(comms):
    @flow(name="my-flow")
    def small() -> None:
        fails.submit(1).wait()
        square.map(range(3)).wait()

    view = finished_view(small)
    bundle = view._repr_mimebundle_()
    assert bundle["text/plain"] == "<nbflow run 'my-flow': Completed, 4 task runs>"
    assert WIDGET_MIME in bundle and bundle[WIDGET_MIME]["model_id"] == view.model_id
    html = bundle["text/html"]
    assert "<svg" in html and "data:image/png;base64," in html and "<script>" not in html
    live = view.live_bundle()
    assert list(live) == [WIDGET_MIME]  # invisible to nbval and static renderers
    view.end_live()
    assert view._live_box.children == () and view._live_box.layout.display == "none"


def test_output_the_kernel_cannot_route_is_shown_in_the_view(comms):
    @flow
    def tiny() -> int:
        return square.submit(2).result()

    view = finished_view(tiny)
    view.append_output("stdout", "hello\n")
    view.append_output("stderr", "oops\n")
    view.redraw()
    outputs = view._output.outputs
    assert {"output_type": "stream", "name": "stdout", "text": "hello\n"} in outputs
    assert {"output_type": "stream", "name": "stderr", "text": "oops\n"} in outputs


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


def test_view_of_a_huge_group_redraws_fast(comms):
    @flow
    def tiny() -> int:
        return square.submit(1).result()

    tiny()
    flow_run = last_flow_run()
    for i in range(100_000):  # records as a huge map leaves them, without running 100k tasks
        TaskRun(square, flow_run, {"x": i}, map_index=i).finish(Completed())
    view = RunView(RunModel(flow_run))
    start = time.perf_counter()
    view.redraw(final=True)
    assert time.perf_counter() - start < 1.0
    assert view.groups == [{"name": "square", "count": 100_001, "counts": {"Completed": 100_001}}]
    assert len(view._grid.value) < 70_000  # one PNG of 100,001 squares, base64 in the grid's HTML
    assert "square x100001" in view.dag_svg
