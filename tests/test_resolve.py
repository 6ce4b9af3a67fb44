"""nbflow.resolve: finding upstream runs in arguments at any depth, and resolving them to values."""

from __future__ import annotations

import dataclasses

import pydantic
import pytest

from nbflow import allow_failure, opaque, quote, task
from nbflow import states as S
from nbflow.futures import PrefectFuture
from nbflow.records import TaskRun
from nbflow.resolve import collect, dependencies, find, resolve, visit


@task
def source(x):
    return x


def finished(value=None, state=None) -> PrefectFuture:
    """A future of a run that already ended (Completed with ``value``, or in ``state``)."""
    run = TaskRun(source, None, {})
    run.claim()
    run.finish(state if state is not None else S.Completed(data=value))
    return PrefectFuture(run)


@dataclasses.dataclass
class Pair:
    left: object
    right: object


class Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
    item: object


def test_plain_arguments_need_no_resolution():
    assert dependencies({"x": 1, "y": "a", "z": None}) is None
    assert dependencies({"x": [1, [2, {"k": 3}]]}) is None  # looked through: nothing to resolve


def test_futures_are_found_at_any_depth_with_duplicates_kept_in_order():
    a, b = finished(1), finished(2)
    parameters = {"x": [a, {"k": (b,)}], "y": {a: Pair(b, Model(item={b}))}}
    deps = dependencies(parameters)
    assert [run for run, _ in deps] == [a.task_run, b.task_run, a.task_run, b.task_run, b.task_run]
    assert all(not allowed for _, allowed in deps)


def test_allow_failure_marks_its_runs_and_wait_for_adds_runs():
    a, b, c = finished(1), finished(2), finished(3)
    deps, special = collect({"x": allow_failure(a)}, wait_for=[b, allow_failure(c)])
    assert deps == [(a.task_run, True), (b.task_run, False), (c.task_run, True)]
    assert special


def test_resolve_replaces_futures_and_states_and_rebuilds_only_what_changed():
    a = finished(10)
    untouched = [1, 2, 3]
    resolved = resolve({"x": [a, 1], "y": untouched, "z": S.Completed(data=5), "p": Pair(a, 2)})
    assert resolved["x"] == [10, 1]
    assert resolved["y"] is untouched
    assert resolved["z"] == 5
    assert resolved["p"] == Pair(10, 2)


def test_dict_keys_sets_and_pydantic_models_are_resolved():
    a = finished("k")
    resolved = resolve({"d": {a: 1}, "s": {a}, "m": Model(item=a)})
    assert resolved == {"d": {"k": 1}, "s": {"k"}, "m": Model(item="k")}


def test_quote_passes_its_value_untouched_and_opaque_resolves_only_the_top():
    a = finished(1)
    inner = [a]
    resolved = resolve({"q": quote(inner), "o": opaque(a), "o2": opaque(inner)})
    assert resolved["q"] is inner
    assert resolved["o"] == 1
    assert resolved["o2"] is inner


def test_allow_failure_gives_the_exception_of_a_failed_run_and_none_for_a_not_ready_one():
    error = ValueError("boom")
    failed = finished(state=S.Failed(data=error))
    blocked = TaskRun(source, None, {})
    blocked.claim()
    blocked.finish(S.NotReady(message="upstream failed"))
    resolved = resolve({"f": allow_failure(failed), "n": allow_failure(PrefectFuture(blocked))})
    assert resolved == {"f": error, "n": None}


def test_a_run_given_its_own_future_is_an_error_naming_it():
    run = TaskRun(source, None, {})
    with pytest.raises(ValueError, match="depending on itself"):
        resolve({"x": PrefectFuture(run)}, current_run=run)


def test_visit_and_find_reach_futures_inside_annotations():
    a = finished(1)
    value = {"k": [allow_failure(a), quote(3)]}
    assert find(value, PrefectFuture) == [a]
    replaced = visit(value, on_future=lambda f: "F")
    assert replaced["k"][0].value == "F"


def test_an_argument_that_fails_to_rebuild_raises_from_resolve():
    @dataclasses.dataclass
    class Strict:
        value: object

        def __post_init__(self) -> None:
            if isinstance(self.value, str):
                raise TypeError("Strict takes no strings")

    a = finished("a string")
    with pytest.raises(TypeError, match="Strict takes no strings"):
        resolve({"s": Strict(a)})


def test_a_gather_of_many_futures_resolves_each_in_order_keeping_the_container_kind():
    from nbflow.futures import PrefectFutureList

    futures = [finished(i) for i in range(1_000)]
    as_list, as_tuple, as_future_list = futures, tuple(futures), PrefectFutureList(futures)
    deps, needs_resolve = collect({"xs": as_list, "ys": as_tuple, "zs": as_future_list})
    assert needs_resolve and len(deps) == 3_000
    assert [dep for dep, _ in deps[:3]] == [f.task_run for f in futures[:3]]
    resolved = resolve({"xs": as_list, "ys": as_tuple, "zs": as_future_list})
    assert resolved["xs"] == list(range(1_000)) and type(resolved["xs"]) is list
    assert resolved["ys"] == tuple(range(1_000))
    assert type(resolved["zs"]) is list and resolved["zs"] == list(range(1_000))


def test_a_gather_that_holds_the_running_task_s_own_future_is_refused():
    future = finished(1)
    with pytest.raises(ValueError, match="depending on itself"):
        resolve({"xs": [future, finished(2)]}, current_run=future.task_run)


def test_a_hand_made_completed_state_with_no_data_given_as_an_argument_raises_missing_result():
    from nbflow.exceptions import MissingResult

    with pytest.raises(MissingResult, match="State data is missing"):
        resolve({"x": S.Completed()})
    assert resolve({"x": S.Completed(data=0)}) == {"x": 0}


def test_a_frozenset_is_left_as_it_is_and_a_set_is_resolved_as_in_prefect():
    future = finished(1)
    frozen = frozenset([future])
    resolved = resolve({"f": frozen, "s": {future}})
    assert resolved["f"] is frozen and resolved["s"] == {1}  # Prefect 3.9.1 visits list, tuple and set
    assert dependencies({"f": frozen}) is None
