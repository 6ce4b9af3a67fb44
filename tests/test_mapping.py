""".map(): semantics checklist "Calling, submitting, mapping" and the mapping rows of the edge-case table."""

from __future__ import annotations

import io

import pytest

from nbflow import allow_failure, flow, quote, task, unmapped
from nbflow.exceptions import MappingLengthMismatch, MappingMissingIterable, UpstreamTaskError
from nbflow.futures import PrefectFutureList
from nbflow.runs import last_flow_run
from nbflow.states import Failed, State


@task
def ident(x):
    return x


@task
def pair(x, y):
    return (x, y)


def in_flow(body):
    """Run ``body()`` inside a flow run and return what it returns."""

    @flow
    def f():
        return body()

    return f()


# -- what is mapped over -----------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", b"ab", 5, None, 1.5])
def test_map_over_non_iterable_raises_mapping_missing_iterable(value):
    def body():
        with pytest.raises(MappingMissingIterable) as info:
            ident.map(value)
        assert not isinstance(info.value, ValueError)  # a PrefectException only, as in Prefect 3.9.1
        assert "ident" in str(info.value)
        return len(last_flow_run().task_runs)

    assert in_flow(body) == 0


def test_map_with_no_arguments_raises_mapping_missing_iterable():
    @task
    def noargs():
        return 1

    def body():
        with pytest.raises(MappingMissingIterable):
            noargs.map()

    in_flow(body)


def test_map_missing_iterable_message_names_the_task_and_the_fix():
    def body():
        with pytest.raises(MappingMissingIterable) as info:
            pair.map("abc", 3)
        return str(info.value)

    message = in_flow(body)
    assert "pair" in message
    assert "submit" in message or "unmapped" in message or "list" in message


def test_io_objects_are_static():
    buf = io.StringIO("data")

    def body():
        return pair.map(buf, [1, 2]).result()

    out = in_flow(body)
    assert out == [(buf, 1), (buf, 2)]


def test_str_is_static_next_to_a_list():
    assert in_flow(lambda: pair.map("prefix", [1, 2]).result()) == [("prefix", 1), ("prefix", 2)]


def test_bytes_is_static_next_to_a_list():
    assert in_flow(lambda: pair.map(b"pre", [1, 2]).result()) == [(b"pre", 1), (b"pre", 2)]


def test_map_over_dict_maps_over_its_keys():
    assert in_flow(lambda: ident.map({"a": 1, "b": 2}).result()) == ["a", "b"]


@pytest.mark.parametrize(
    "make",
    [lambda: (i for i in [1, 2, 3]), lambda: range(1, 4), lambda: (1, 2, 3)],
    ids=["generator", "range", "tuple"],
)
def test_map_consumes_generators_ranges_tuples(make):
    assert in_flow(lambda: ident.map(make()).result()) == [1, 2, 3]


def test_map_over_set():
    assert sorted(in_flow(lambda: ident.map({3, 1, 2}).result())) == [1, 2, 3]


def test_map_over_empty_list_gives_empty_future_list():
    def body():
        futures = ident.map([])
        assert isinstance(futures, PrefectFutureList)
        return futures.result(), len(futures)

    assert in_flow(body) == ([], 0)


def test_map_returns_future_list_in_input_order():
    def body():
        futures = ident.map(list(range(20)))
        assert isinstance(futures, PrefectFutureList) and isinstance(futures, list)
        assert len(futures) == 20
        assert [r.map_index for r in (f.task_run for f in futures)] == list(range(20))
        return futures.result()

    assert in_flow(body) == list(range(20))


# -- lengths ------------------------------------------------------------------------------
def test_length_mismatch_raises_before_any_run_is_submitted():
    calls = []

    @task
    def t(x, y):
        calls.append((x, y))

    def body():
        with pytest.raises(MappingLengthMismatch) as info:
            t.map([1, 2, 3], [1, 2])
        assert not isinstance(info.value, ValueError)  # a PrefectException only, as in Prefect 3.9.1
        return str(info.value), len(last_flow_run().task_runs)

    message, runs = in_flow(body)
    assert runs == 0 and calls == []
    # the message names the task, the lengths and the fix
    assert "'t'" in message or " t " in message or "t." in message
    assert "3" in message and "2" in message
    assert "unmapped" in message


# -- static arguments -----------------------------------------------------------------------
def test_non_iterable_values_are_static():
    assert in_flow(lambda: pair.map([1, 2, 3], 5).result()) == [(1, 5), (2, 5), (3, 5)]


def test_unmapped_passes_the_same_object_to_every_run():
    static = [9]

    def body():
        return pair.map(x=[1, 2], y=unmapped(static)).result()

    out = in_flow(body)
    assert out == [(1, [9]), (2, [9])]
    assert out[0][1] is static and out[1][1] is static


def test_defaults_are_not_mapped_over():
    @task
    def t(x, y=(10, 20, 30)):
        return x, y

    assert in_flow(lambda: t.map([1, 2]).result()) == [(1, (10, 20, 30)), (2, (10, 20, 30))]


def test_var_keyword_entries_are_mapped_like_named_parameters():
    @task
    def t(x, **kwargs):
        return x, kwargs

    out = in_flow(lambda: t.map([1, 2], k=["a", "b"], s=unmapped([0])).result())
    assert out == [(1, {"k": "a", "s": [0]}), (2, {"k": "b", "s": [0]})]


def test_quote_does_not_make_an_iterable_static():
    assert in_flow(lambda: ident.map(quote([1, 2, 3])).result()) == [1, 2, 3]


# -- futures given to .map ----------------------------------------------------------------------
def test_map_over_a_future_of_a_list_maps_over_its_elements():
    @task
    def make():
        return [1, 2, 3]

    assert in_flow(lambda: ident.map(make.submit()).result()) == [1, 2, 3]


def test_map_over_future_list_is_element_wise():
    @task
    def double(x):
        return 2 * x

    def body():
        firsts = double.map([1, 2, 3])
        return ident.map(firsts).result()

    assert in_flow(body) == [2, 4, 6]


def test_map_futlist_with_unmapped_futlist():
    @task
    def double(x):
        return 2 * x

    @task
    def with_all(x, everything):
        return x, everything

    def body():
        firsts = double.map([1, 2])
        return with_all.map(firsts, unmapped(firsts)).result()

    assert in_flow(body) == [(2, [2, 4]), (4, [2, 4])]


def test_allow_failure_of_mapped_futures_hands_each_failed_element_its_exception():
    @task
    def maybe(x):
        if x == 2:
            raise ValueError(f"bad {x}")
        return x

    def body():
        firsts = maybe.map([1, 2, 3])
        return ident.map(allow_failure(firsts)).result()

    out = in_flow(body)
    assert out[0] == 1 and out[2] == 3
    assert isinstance(out[1], ValueError) and str(out[1]) == "bad 2"


def test_failure_in_one_mapped_element_blocks_only_its_own_downstream():
    @task
    def maybe(x):
        if x == 2:
            raise ValueError("bad")
        return x

    seen = []

    @task
    def after(x):
        seen.append(x)
        return x * 10

    states = {}

    @flow
    def f():
        firsts = maybe.map([1, 2, 3])
        seconds = after.map(firsts)
        seconds.wait()
        states["s"] = [s.state for s in seconds]

    f()
    s = states["s"]
    assert s[0].is_completed() and s[0].result() == 10
    assert s[2].is_completed() and s[2].result() == 30
    assert s[1].is_pending() and s[1].name == "NotReady"
    assert sorted(seen) == [1, 3]


def test_map_with_wait_for_makes_every_mapped_run_wait(gate):
    order = []

    @task
    def first():
        gate.wait()
        order.append("first")

    @task
    def later(x):
        order.append(x)

    @flow
    def f():
        a = first.submit()
        futures = later.map([1, 2, 3], wait_for=[a])
        assert all(r.upstream == (a.task_run,) for r in (fu.task_run for fu in futures))
        gate.open()
        futures.wait()

    f()
    assert order[0] == "first" and sorted(order[1:]) == [1, 2, 3]


def test_map_with_wait_for_failed_upstream_leaves_every_run_not_ready():
    @task
    def bad():
        raise ValueError("x")

    out = {}

    @flow
    def f():
        a = bad.submit()
        futures = ident.map([1, 2], wait_for=[a])
        futures.wait()
        out["states"] = [fu.state for fu in futures]

    f()
    assert [s.name for s in out["states"]] == ["NotReady", "NotReady"]


def test_map_of_plain_function_via_task_wrapper():
    def op(text):
        return text.upper()

    assert in_flow(lambda: task(op).map(["a", "b"]).result()) == ["A", "B"]


def test_mapped_runs_have_map_index_and_parameters():
    def body():
        futures = pair.map([1, 2], "s")
        futures.wait()
        return [(f.task_run.map_index, f.task_run.parameters) for f in futures]

    assert in_flow(body) == [(0, {"x": 1, "y": "s"}), (1, {"x": 2, "y": "s"})]


def test_map_return_state_list_of_states_including_failures():
    @task
    def maybe(x):
        if x:
            raise ValueError("x")
        return x

    out = {}

    @flow
    def f():
        out["states"] = maybe.map([0, 1], return_state=True)

    f()
    states = out["states"]
    assert type(states) is list and all(isinstance(s, State) for s in states)
    assert states[0].is_completed() and states[1].is_failed()


@pytest.mark.timeout(60)
def test_large_map_and_diamonds_keep_order_and_values():
    @task
    def inc(x):
        return x + 1

    @task
    def add(a, b):
        return a + b

    def body():
        big = inc.map(range(2000)).result()
        a = inc.map(range(200))
        b = inc.map(a)
        c = inc.map(a)
        d = add.map(b, c)
        return big, d.result()

    big, diamonds = in_flow(body)
    assert big == list(range(1, 2001))
    assert diamonds == [2 * (x + 2) for x in range(200)]


# -- what did not complete cannot be mapped over (Prefect 3.9.1: .map() raises UpstreamTaskError) --------
@task
def explode() -> list[int]:
    raise ValueError("no list today")


def test_map_with_a_failed_state_as_a_static_argument_raises_upstream_task_error():
    def body():
        with pytest.raises(UpstreamTaskError, match="did not reach a 'COMPLETED' state") as info:
            pair.map([1, 2], Failed(message="nope"))
        return str(info.value), len(last_flow_run().task_runs)

    message, runs = in_flow(body)
    assert "pair" in message and "y" in message and runs == 0


def test_map_over_a_failed_future_raises_upstream_task_error_naming_its_run():
    def body():
        items = explode.submit()
        with pytest.raises(UpstreamTaskError) as info:
            ident.map(items)
        return str(info.value), len(last_flow_run().task_runs)

    message, runs = in_flow(body)
    assert "explode" in message and "ValueError('no list today')" in message
    assert runs == 1  # only explode's own run: nothing was mapped


def test_allow_failure_lets_a_failed_static_argument_reach_every_mapped_run():
    def body():
        bad = explode.submit()
        return [type(y).__name__ for _, y in pair.map([1, 2], allow_failure(bad)).result()]

    assert in_flow(body) == ["ValueError", "ValueError"]
