"""The view model: counts per task group and state, edges, rows, summaries -- no widgets."""

from __future__ import annotations

import sys

import pytest

from nbflow import flow, task
from nbflow import states as S
from nbflow.notebook.viewmodel import Tracker
from nbflow.report import model as vm
from nbflow.report.model import RunModel
from nbflow.runs import last_flow_run


@task
def square(x: int) -> int:
    return x * x


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


@pytest.fixture
def tracked():
    """A started Tracker that tracks every top-level flow run as it starts (models refreshed by hand)."""
    models: list[RunModel] = []
    tracker = Tracker()

    def on_flow_state(flow_run, state):
        if state.is_running() and tracker.model(flow_run) is None:
            models.append(tracker.track(flow_run))

    tracker.on_flow_state = on_flow_state
    tracker.start()
    yield models
    tracker.stop()


def refreshed(model: RunModel) -> RunModel:
    model.refresh()
    return model


def test_state_codes_follow_names_then_types():
    assert vm.state_code(S.Cached()) == vm.CACHED
    assert vm.state_code(S.TimedOut()) == vm.FAILED
    assert vm.state_code(S.NotReady()) == vm.NOT_READY
    assert vm.state_code(S.Retrying()) == vm.RUNNING
    assert vm.state_code(S.AwaitingRetry()) == vm.SCHEDULED
    custom = S.State(S.StateType.FAILED, name="Exploded")
    assert vm.category(custom).name == "Failed"
    assert all(c.done == (c.code in vm.DONE_CODES) for c in vm.CATEGORIES)


def test_a_map_is_one_group_counted_by_state(tracked):
    @flow
    def fan_out() -> int:
        squares = square.map(range(100))
        return add.submit(squares[0], squares[1]).result()

    assert fan_out() == 1
    model = refreshed(tracked[0])
    assert [(g.name, len(g)) for g in model.groups] == [("square", 100), ("add", 1)]
    assert vm.counts_dict(model.counts()) == {"Completed": 101}
    assert model.task_run_count() == 101
    assert model.edges(complete=True) == {(0, 1)}
    assert model.settled()


def test_edges_of_runs_registered_since_the_last_read_come_one_read_later(tracked):
    @flow
    def chain() -> int:
        return add.submit(square.submit(2), 1).result()

    chain()
    model = refreshed(tracked[0])
    assert model.edges() == set()  # runs registered since the last call are read next time
    assert model.edges() == {(0, 1)}


def test_rows_list_failed_then_running_then_the_rest(tracked, gate):
    @task
    def hold() -> None:
        gate.wait()

    @flow
    def mixed() -> None:
        square.map(range(3)).wait()
        boom.submit(1).wait()
        held = hold.submit()
        rows = model_rows()
        gate.open()
        held.wait()
        return rows

    def model_rows():
        from tests.conftest import wait_until

        model = tracked[0]
        assert wait_until(lambda: vm.counts_dict(refreshed(model).counts()).get("Running") == 1)
        return [(r.task.name, r.states[-1].name) for r in model.rows(10)]

    rows = mixed()
    assert rows[:2] == [("boom", "Failed"), ("hold", "Running")]
    assert sorted(rows[2:]) == [("square", "Completed")] * 3
    assert refreshed(tracked[0]).rows(2) == tracked[0].rows(10)[:2]


def test_a_subflow_keeps_its_own_groups_and_the_counts_are_the_parents_own(tracked):
    @flow
    def child(n: int) -> int:
        return sum(square.map(range(n)).result())

    @flow
    def parent() -> int:
        total = sum(square.map(range(20)).result())
        return total + child(200)

    parent()
    model = refreshed(tracked[0])
    assert model.flow_run.flow_name == "parent"
    assert [(g.name, len(g), g.flow) for g in model.groups] == [("square", 20, None), ("square", 200, 0)]
    assert [(s.flow_run.flow_name, s.parent) for s in model.subflows] == [("child", None)]
    assert vm.counts_dict(model.counts()) == {"Completed": 20}  # as `%nbflow runs` counts it
    assert model.task_run_count() == 20 == len(model.flow_run.task_runs)
    assert vm.counts_dict(model.flow_counts(0)) == {"Completed": 200}
    assert [g.name for g in model.groups_of(0)] == ["square"]
    assert len(model.rows(1000)) == 20


def test_nested_subflows_are_counted_in_their_parents_node(tracked):
    @flow
    def leaf() -> int:
        return square.submit(2).result()

    @flow
    def middle() -> int:
        return leaf() + add.submit(1, 1).result()

    @flow
    def top() -> int:
        return middle()

    assert top() == 6
    model = refreshed(tracked[0])
    assert [(s.flow_run.flow_name, s.parent) for s in model.subflows] == [("middle", None), ("leaf", 0)]
    assert model.counts() == [0] * len(vm.CATEGORIES) and model.children() == model.subflows[:1]
    assert vm.counts_dict(model.flow_counts(0)) == {"Completed": 2}  # its add and leaf's square
    assert vm.counts_dict(model.flow_counts(1)) == {"Completed": 1}
    assert [g.name for g in model.groups_of(0, deep=True)] == ["add", "square"]


def test_refresh_reads_only_what_changed():
    @flow
    def finished() -> list[int]:
        return square.map(range(5)).result()

    finished()
    model = RunModel.of(last_flow_run())
    changes = model.changes
    assert model.refresh() == changes  # nothing new: no change, no run read twice
    assert model.task_run_count() == 5 and model.unfinished() == []
    assert vm.counts_dict(model.counts()) == {"Completed": 5}
    assert model.settled()


def test_a_watched_run_costs_its_tasks_nothing():
    """The tracker asks for flow-run events only: task runs publish to no one."""
    from nbflow import events

    seen = []
    tracker = Tracker(lambda flow_run, state: seen.append(state.name))
    tracker.start()
    try:
        assert tracker not in events.task_state and tracker in events.flow_state

        @flow
        def watched() -> int:
            return square.submit(2).result()

        assert watched() == 4
    finally:
        tracker.stop()
    assert seen == ["Pending", "Running", "Completed"]
    assert tracker not in events.flow_state


def test_summaries_are_bounded_and_never_raise():
    class Array:
        shape = (3, 4)

        def __repr__(self) -> str:
            return "Array(" + "x" * 1000 + ")"

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    s = vm.summarize(Array())
    assert s.shape == "3×4" and s.length is None and len(s.text) <= 200
    assert vm.summarize(list(range(1000))).length == 1000
    assert vm.summarize(list(range(1000))).text.endswith("...]")
    assert vm.summarize("abc").length is None
    assert "Broken" in vm.summarize(Broken()).text


def test_tracebacks_start_outside_nbflow(tracked):
    @flow
    def failing() -> None:
        boom.submit(7).result()

    with pytest.raises(ValueError):
        failing()
    run = refreshed(tracked[0]).rows(1)[0]
    text = vm.format_exception(run.states[-1].data)
    assert "ValueError: boom 7" in text
    assert "nbflow/engine.py" not in text.replace("\\", "/")
    assert sys.modules[__name__].__file__ in text


def test_a_map_counts_in_the_total_from_its_first_run():
    from nbflow.notebook import reprs
    from nbflow.report.model import PENDING, RunModel
    from nbflow.runs import last_flow_run

    seen: list[tuple[int, int, str]] = []

    @task
    def item(i: int) -> int:
        return i

    @flow
    def announced():
        flow_run = last_flow_run()
        flow_run.expect(item.task_key, 100)  # what a .map of 100 items records before it submits
        item.submit(0).wait()
        model = RunModel.of(flow_run)
        counts = model.counts()
        seen.append((sum(counts), counts[PENDING], reprs.header_html(model, counts)))

    announced()
    ((total, pending, header),) = seen
    assert (total, pending) == (100, 99)
    assert 'data-done="1" data-total="100"' in header
    assert "ETA" in header  # while it runs, a rate and an estimate of what is left
