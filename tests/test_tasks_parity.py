"""Parity with Prefect 3 for tasks: decoration checks, options as attributes, methods,
hooks, mapping over states / allow_failure, runtime parameters, cache-key context.

References (PrefectHQ/prefect): tests/test_tasks.py (TestTaskCall, TestTaskRunName,
TestTaskSubmit, TestTaskWithOptions, TestTaskMap, TestTaskHooks*, TestTaskCaching,
TestNestedTasks), src/prefect/tasks.py, src/prefect/task_engine.py
(``compute_transaction_key``, ``call_hooks``), src/prefect/utilities/callables.py.
"""

from __future__ import annotations

import datetime
import inspect
import re
import threading
from unittest.mock import MagicMock

import pytest

import nbflow.runtime
from nbflow import Task, allow_failure, flow, task
from nbflow.exceptions import ParameterBindError
from nbflow.runs import last_flow_run

pytestmark = [pytest.mark.parity, pytest.mark.timeout(30)]


@task
def boom():
    raise ValueError("Fail task!")


@task
def identity(x):
    return x


# -- decoration-time validation ------------------------------------------------------------
def test_task_run_name_of_wrong_type_is_rejected_at_decoration():
    class NotAName:
        def format(self, *args, **kwargs):
            pass

    with pytest.raises(TypeError, match="Expected string or callable for 'task_run_name'"):

        @task(task_run_name=NotAName())
        def t():
            pass


def test_retry_condition_fn_must_be_callable():
    with pytest.raises(TypeError):

        @task(retry_condition_fn="not a callable")
        def t():
            pass


def test_non_iterable_hook_message_matches_prefect():
    def hook(*_):
        pass

    with pytest.raises(TypeError, match="Expected iterable for 'on_completion'; got function instead"):
        task(on_completion=hook)(lambda: None)


def test_non_callable_hook_message_matches_prefect():
    with pytest.raises(TypeError, match="Expected callables in 'on_failure'; got str instead"):
        task(on_failure=["test"])(lambda: None)


def test_bind_error_for_missing_argument_uses_inspect_wording():
    @task
    def add(x, y):
        return x + y

    with pytest.raises(ParameterBindError, match="missing a required argument: 'y'"):
        add(42)
    with pytest.raises(ParameterBindError, match="multiple values for argument 'x'"):
        add(42, x=42)


def test_task_run_name_that_is_neither_str_nor_callable_is_rejected_with_prefects_words():
    with pytest.raises(TypeError) as info:
        task(task_run_name=42)(lambda: None)
    assert str(info.value) == "Expected string or callable for 'task_run_name'; got int instead."


def test_retry_condition_fn_message_matches_prefect():
    with pytest.raises(TypeError) as info:
        task(retry_condition_fn="not a callable")(lambda: None)
    assert str(info.value) == "Expected `retry_condition_fn` to be callable, got str instead."


@pytest.mark.parametrize("delays", ["5", (1, 2)])
def test_retry_delay_seconds_of_another_type_is_rejected(delays):
    # a tuple is rejected too: Prefect accepts int, float, list or a callable
    with pytest.raises(TypeError) as info:
        task(retry_delay_seconds=delays)(lambda: None)
    assert str(info.value) == (
        "Invalid `retry_delay_seconds` provided; must be an int, float, list or callable. "
        f"Received type {type(delays)}"
    )


def test_more_than_fifty_retry_delays_are_rejected_from_a_list_or_a_callable():
    for delays in ([1] * 51, lambda retries: [1] * 51):
        with pytest.raises(ValueError, match="^Can not configure more than 50 retry delays per task.$"):
            task(retries=2, retry_delay_seconds=delays)(lambda: None)
    assert len(task(retry_delay_seconds=[1] * 50)(lambda: None).retry_delay_seconds) == 50


def test_a_retry_delay_callable_is_called_once_with_the_retries():
    calls = []

    def backoff(retries):
        calls.append(retries)
        return [2**r for r in range(retries)]

    t = task(retries=3, retry_delay_seconds=backoff)(lambda: None)
    assert t.retry_delay_seconds == [1, 2, 4]
    # with_options carries the computed list, as Prefect does
    assert t.with_options(retries=5).retry_delay_seconds == [1, 2, 4]
    assert calls == [3]


def test_negative_retry_jitter_factor_is_rejected():
    with pytest.raises(ValueError, match="^`retry_jitter_factor` must be >= 0.$"):
        task(retry_jitter_factor=-1)(lambda: None)
    assert task(retry_jitter_factor=0)(lambda: None).retry_jitter_factor == 0


def test_hook_errors_show_the_decorator_to_write():
    def hook(*_):
        pass

    with pytest.raises(TypeError) as info:
        task(on_running=hook)(lambda: None)
    assert str(info.value) == (
        "Expected iterable for 'on_running'; got function instead. Please provide a list of hooks to "
        "'on_running':\n\n@task(on_running=[hook1, hook2])\ndef my_task():\n\tpass"
    )
    with pytest.raises(TypeError, match="^Expected callables in 'on_completion'; got str instead"):
        task(on_completion="abc")(lambda: None)  # a string is iterable: its characters are not hooks


def test_result_storage_object_that_is_not_a_saved_block_is_rejected():
    with pytest.raises(TypeError, match="^Result storage configuration must be persisted server-side."):
        task(result_storage=object())(lambda: None)
    assert task(result_storage="local-file-system/my-storage")(lambda: None).result_storage == (
        "local-file-system/my-storage"
    )


def test_callable_argument_that_is_not_callable_is_rejected():
    with pytest.raises(TypeError, match="'fn' must be callable"):
        task(5)


# -- options are attributes, with_options copies them ----------------------------------------
def test_version_is_an_attribute():
    @task(version="test-dev")
    def t():
        pass

    assert t.version == "test-dev"
    assert task(lambda: None).version is None


def test_result_options_are_attributes_and_with_options_overrides_them():
    @task(persist_result=True, result_serializer="pickle", cache_result_in_memory=False,
          result_storage_key="foo")
    def t():
        pass

    assert t.persist_result is True
    assert t.result_serializer == "pickle"
    assert t.cache_result_in_memory is False
    assert t.result_storage_key == "foo"
    u = t.with_options(persist_result=False, result_serializer="json", cache_result_in_memory=True,
                       result_storage_key=None)
    assert u.persist_result is False
    assert u.result_serializer == "json"
    assert u.cache_result_in_memory is True
    assert u.result_storage_key is None


def test_with_options_overrides_every_engine_option():
    def first_key(*_):
        return "first"

    def second_key(*_):
        return "second"

    @task(name="Initial", description="before", tags=["a"], cache_key_fn=first_key,
          cache_expiration=datetime.timedelta(days=1), retries=2, retry_delay_seconds=5,
          timeout_seconds=None, refresh_cache=False, log_prints=False)
    def t():
        pass

    u = t.with_options(name="Copied", description="after", tags=["b", "c"], cache_key_fn=second_key,
                       cache_expiration=datetime.timedelta(days=2), retries=0, retry_delay_seconds=0,
                       timeout_seconds=42, refresh_cache=True, log_prints=True)
    assert (u.name, u.description, set(u.tags)) == ("Copied", "after", {"b", "c"})
    assert u.cache_key_fn is second_key and u.cache_expiration == datetime.timedelta(days=2)
    assert (u.retries, u.retry_delay_seconds, u.timeout_seconds) == (0, 0, 42)
    assert u.refresh_cache is True and u.log_prints is True
    assert (t.name, t.retries, t.retry_delay_seconds) == ("Initial", 2, 5)


def test_tags_are_a_mutable_set_copied_by_with_options():
    # TestTaskWithOptions.test_tags_are_copied_from_original_task
    @task(name="Initial", tags=["tag1", "tag2"])
    def t():
        pass

    u = t.with_options(name="Other")
    t.tags.add("tag3")
    assert t.tags == {"tag1", "tag2", "tag3"}
    assert u.tags == {"tag1", "tag2"}


def test_every_option_is_an_attribute_with_prefects_default():
    # values printed by Prefect 3.9.1 for a bare @task
    from nbflow.cache_policies import DEFAULT

    @task
    def t(x):
        return x

    expected = dict(
        name="t", description=None, tags=set(), version=None, cache_key_fn=None, cache_expiration=None,
        refresh_cache=None, persist_result=None, result_storage=None, result_serializer=None,
        result_storage_key=None, cache_result_in_memory=True, task_run_name=None, retries=0,
        retry_delay_seconds=0, retry_jitter_factor=None, retry_condition_fn=None, timeout_seconds=None,
        log_prints=None, on_completion_hooks=[], on_failure_hooks=[], on_running_hooks=[],
        viz_return_value=None, isasync=False,
    )
    assert {name: getattr(t, name) for name in expected} == expected
    assert type(t.tags) is set and type(t.retries) is int and t.cache_policy is DEFAULT
    assert t.fn.__name__ == "t" and re.fullmatch(r"t-[0-9a-f]{8}", t.task_key)
    assert Task(fn=lambda: None).log_prints is False  # Task() opts out; @task inherits the flow's


def test_values_are_normalised_as_prefect_does():
    t = task(name="", tags="ab", retries=-1, timeout_seconds="5")(lambda: None)
    assert (t.name, t.tags, t.retries, t.timeout_seconds) == ("<lambda>", {"a", "b"}, -1, 5.0)
    assert task(timeout_seconds=0)(lambda: None).timeout_seconds is None
    assert task(on_failure=(print,))(lambda: None).on_failure_hooks == [print]


def test_a_cache_key_or_result_location_turns_result_persistence_on():
    for options in ({"cache_key_fn": lambda c, p: "k"}, {"result_storage_key": "k"},
                    {"result_serializer": "json"}, {"result_storage": "local-file-system/x"}):
        assert task(**options)(lambda: None).persist_result is True, options
    assert task(persist_result=False, cache_key_fn=lambda c, p: "k")(lambda: None).persist_result is False
    # with_options carries what the user gave, so dropping the storage key drops the implied persistence
    keyed = task(result_storage_key="k")(lambda: None)
    assert keyed.with_options(name="other").persist_result is True
    assert keyed.with_options(result_storage_key=None).persist_result is None


def test_with_options_keeps_the_current_value_for_empty_or_none_as_prefect_does():
    def hook(*_):
        pass

    def key(*_):
        return "k"

    t = task(name="orig", description="d", tags=["a"], retries=2, retry_delay_seconds=[1, 2],
             timeout_seconds=5, cache_key_fn=key, on_completion=[hook], retry_condition_fn=key,
             log_prints=True, version="v1", retry_jitter_factor=0.5, task_run_name="n", refresh_cache=True,
             cache_expiration=datetime.timedelta(1), viz_return_value=3)(lambda x: x)
    u = t.with_options(name="", description="", tags=None, retries=None, timeout_seconds=None,
                       cache_key_fn=None, on_completion=[], retry_condition_fn=None, log_prints=None,
                       task_run_name=None, retry_jitter_factor=None, refresh_cache=None,
                       cache_expiration=None, viz_return_value=None, retry_delay_seconds=None)
    # printed by Prefect 3.9.1 for the same calls
    assert (u.name, u.description, u.tags, u.timeout_seconds, u.cache_key_fn, u.on_completion_hooks) == (
        "orig", "d", {"a"}, 5.0, key, [hook])
    assert (u.retry_condition_fn, u.version, u.cache_expiration, u.viz_return_value) == (
        key, "v1", datetime.timedelta(1), 3)
    assert (u.retries, u.retry_delay_seconds, u.log_prints, u.task_run_name) == (0, 0, None, None)
    assert (u.retry_jitter_factor, u.refresh_cache, u.persist_result) == (None, None, True)
    assert t.with_options().on_completion_hooks is not t.on_completion_hooks


def test_with_options_takes_every_option_but_version():
    t = task(lambda: None)
    with pytest.raises(TypeError, match="^Task.with_options\\(\\) got an unexpected keyword argument 'version'"):
        t.with_options(version="2")
    with pytest.raises(TypeError, match="^Task.__init__\\(\\) got an unexpected keyword argument 'foo'"):
        Task(lambda: None, foo=1)


def test_a_task_has_its_functions_name_doc_and_signature():
    def fn(x: int, y=2):
        """Doc."""

    t = task(fn)
    assert (t.__name__, t.__doc__, t.__wrapped__, t.description) == ("fn", "Doc.", fn, "Doc.")
    assert str(inspect.signature(t)) == "(x: 'int', y=2)"


# -- tasks as methods --------------------------------------------------------------------------
def test_instance_method_task_gets_the_instance_itself():
    class Foo:
        def __init__(self, x):
            self.x = x

        @task
        def me(self):
            return self

    f = Foo(1)
    assert f.me() is f
    assert isinstance(Foo(2).me, Task)


def test_classmethod_applied_on_top_of_task():
    class Foo:
        @classmethod
        @task
        def class_method(cls):
            return cls.__name__

    assert Foo.class_method() == "Foo"
    assert isinstance(Foo.class_method, Task)


def test_staticmethod_applied_on_top_of_task():
    class Foo:
        @staticmethod
        @task
        def static_method():
            return "static"

    assert Foo.static_method() == "static"
    assert isinstance(Foo.static_method, Task)


def test_task_applied_on_top_of_classmethod_or_staticmethod_works():
    # Prefect 3.9.1 unwraps them (older versions raised "@classmethod should be applied on top of @task")
    class Foo:
        @task
        @classmethod
        def class_method(cls, a):
            return cls.__name__, a, dict(nbflow.runtime.task_run.parameters)

        @task
        @staticmethod
        def static_method(a):
            return a, dict(nbflow.runtime.task_run.parameters)

    class Sub(Foo):
        pass

    assert Foo.class_method(1) == ("Foo", 1, {"cls": Foo, "a": 1})
    assert Foo().class_method(2) == ("Foo", 2, {"cls": Foo, "a": 2})
    assert Sub.class_method(3)[0] == "Sub"
    assert Foo.static_method(4) == Foo().static_method(4) == (4, {"a": 4})
    assert isinstance(Foo.class_method, Task) and Foo.class_method.isclassmethod
    assert isinstance(Foo.static_method, Task) and Foo.static_method.isstaticmethod
    assert Foo.class_method.name == "class_method"


def test_bound_method_parameters_include_self():
    # TestTaskCaching.test_cache_key_fn_receives_self_if_method: parameters == dict(self=f1, a=5)
    seen = []

    def key(context, parameters):
        seen.append(dict(parameters))
        return None

    class Foo:
        def __init__(self, x):
            self.x = x

        @task(cache_key_fn=key)
        def add(self, a):
            return a + self.x

    f1 = Foo(1)
    assert f1.add(5) == 6
    assert seen == [dict(self=f1, a=5)]


def test_method_task_run_name_can_use_attributes_of_self():
    class Model:
        def __init__(self, label):
            self.label = label

        @task(task_run_name="fit-{self.label}-{n}")
        def fit(self, n):
            return nbflow.runtime.task_run.name

    assert Model("small").fit(3) == "fit-small-3"


def test_method_tasks_submit_and_map_with_self_among_the_parameters():
    class Counter:
        def __init__(self, start):
            self.start = start

        @task
        def add(self, a):
            return self.start + a, sorted(nbflow.runtime.task_run.parameters)

    counter = Counter(10)

    @flow
    def f():
        return counter.add.submit(1).result(), counter.add.map([1, 2]).result()

    single, mapped = f()
    assert single == (11, ["a", "self"])
    assert mapped == [(11, ["a", "self"]), (12, ["a", "self"])]


def test_each_instance_keeps_its_own_bound_task():
    # Prefect 3.9.1 stores the instance on the shared function, so a view taken earlier
    # runs with the instance accessed last; nbflow keeps each view's own instance.
    class Foo:
        def __init__(self, x):
            self.x = x

        @task
        def get(self):
            return self.x

    a_get, b_get = Foo(1).get, Foo(2).get
    assert (a_get(), b_get()) == (1, 2)
    assert Foo.get is Foo.__dict__["get"] and Foo.get(Foo(3)) == 3  # unbound: self passed explicitly
    assert a_get.fn is Foo.get.fn and a_get.ismethod and not Foo.get.ismethod


def test_a_bound_task_keeps_its_instance_through_with_options():
    class Foo:
        x = 5

        @task
        def get(self, y):
            return self.x + y

        @task
        @classmethod
        def name_of(cls):
            return cls.__name__

    assert Foo().get.with_options(retries=1)(1) == 6
    assert Foo.name_of.with_options(name="other")() == "Foo"


# -- callable objects ---------------------------------------------------------------------------
def test_callable_object_task_in_a_flow():
    class Greeter:
        message = "hello"

        def __call__(self, prefix: str, suffix: str):
            return prefix + self.message + suffix

    obj = Greeter()
    t = Task(fn=obj, name="Task")

    @flow
    def f():
        return t("a", suffix="b")

    assert t.fn is obj
    assert f() == "ahellob"


def test_run_name_callable_is_called_once_across_retries():
    # test_sets_run_name_once (a MagicMock as the task function)
    namer = MagicMock(return_value="some-string")
    fn = MagicMock(side_effect=RuntimeError("Oh-no!, anyway"))
    t = task(task_run_name=namer, retries=3)(fn)

    @flow
    def f(name):
        return t()

    state = f(name="x", return_state=True)
    assert state.is_failed()
    assert fn.call_count == 4
    assert namer.call_count == 1


# -- hooks ---------------------------------------------------------------------------------------
def test_async_hooks_are_awaited():
    calls = []

    async def async_hook(task, task_run, state):
        calls.append(("async", state.name))

    def sync_hook(task, task_run, state):
        calls.append(("sync", state.name))

    @task(on_completion=[async_hook, sync_hook], on_failure=[async_hook])
    def t(fail):
        if fail:
            raise ValueError("x")

    @flow
    def f():
        t(False)
        t.submit(True).wait()

    f()
    assert calls == [("async", "Completed"), ("sync", "Completed"), ("async", "Failed")]


def test_hook_task_run_exposes_flow_run_id_and_id():
    seen = {}

    def hook(task, task_run, state):
        seen.update(flow_run_id=task_run.flow_run_id, id=task_run.id, name=task_run.name)

    @task(on_completion=[hook])
    def t():
        return nbflow.runtime.flow_run.id

    @flow
    def f():
        return t()

    flow_run_id = f()
    assert str(seen["flow_run_id"]) == flow_run_id


# -- mapping -------------------------------------------------------------------------------------
@task
def pair(y, z):
    return y, z


def test_map_with_allow_failure_of_a_failed_static_future():
    # TestTaskSubmit.test_allow_failure_mapped_with_noniterable_upstream
    @flow
    def f():
        bad = boom.submit()
        return pair.map([1, 2, 3], allow_failure(bad)).result()

    results = f()
    assert [y for y, _ in results] == [1, 2, 3]
    assert all(isinstance(z, ValueError) and "Fail task!" in str(z) for _, z in results)


def test_map_over_a_task_state_maps_over_its_result():
    # TestTaskMap.test_map_can_take_state_as_input
    @task
    def numbers():
        return [1, 2, 3]

    @flow
    def f():
        return identity.map(numbers(return_state=True)).result()

    assert f() == [1, 2, 3]


def test_map_over_a_subflow_state_maps_over_its_result():
    # TestTaskMap.test_map_can_take_flow_state_as_input
    @flow
    def child():
        return [1, 2, 3]

    @flow
    def f():
        return identity.map(child(return_state=True)).result()

    assert f() == [1, 2, 3]


def test_allow_failure_around_a_collection_with_a_failed_future():
    @flow
    def f():
        bad = boom.submit()
        return identity.submit(allow_failure([bad, 1, 2])).result()

    result = f()
    assert isinstance(result[0], ValueError)
    assert result[1:] == [1, 2]


def _run_guarded(fn, limit=5.0):
    """Run ``fn`` in a daemon thread; fail (instead of hanging the suite) if it never returns."""
    done = threading.Event()
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(limit), "flow run hung: a task run whose cache_key_fn raised never finished"
    return outcome


# -- runtime and cache-key context ------------------------------------------------------------------
def test_runtime_parameters_inside_a_task_are_resolved_values():
    @task
    def reads_parameters(x):
        return dict(nbflow.runtime.task_run.parameters)

    @flow
    def f():
        return reads_parameters.submit(identity.submit(7)).result(), reads_parameters(identity.submit(8))

    assert f() == ({"x": 7}, {"x": 8})


def test_run_name_callable_reading_runtime_parameters_sees_resolved_values():
    def namer():
        return f"got-{nbflow.runtime.task_run.parameters['x']}"

    @task(task_run_name=namer)
    def t(x):
        return nbflow.runtime.task_run.name

    @flow
    def f():
        return t.submit(identity.submit(3)).result()

    assert f() == "got-3"


def test_cache_key_fn_context_exposes_the_task_runs_flow_run_id():
    # TestTaskCaching.test_cache_key_fn_receives_context: context.task_run.flow_run_id
    @task(cache_key_fn=lambda context, parameters: str(context.task_run.flow_run_id))
    def t(x):
        return x

    @flow
    def f():
        return t("something", return_state=True), t("different", return_state=True)

    outcome = _run_guarded(f)
    assert "error" not in outcome, outcome
    first, second = outcome["value"]
    assert first.name == "Completed" and second.name == "Cached"
    assert second.result() == "something"


@pytest.mark.timeout(15)
def test_cache_key_fn_that_raises_does_not_fail_or_hang_the_run(caplog):
    # task_engine.compute_transaction_key: the error is logged ("Error encountered when
    # computing cache key - result will not be persisted.") and the run goes on uncached.
    def bad_key(context, parameters):
        raise KeyError("nope")

    @task(cache_key_fn=bad_key)
    def t(x):
        return x * 2

    @flow
    def f():
        return t(2), t.submit(3).result()

    assert _run_guarded(f) == {"value": (4, 6)}


def test_nested_inline_task_inside_task_returning_state_name():
    count = 0

    @task(retries=1)
    def inner():
        nonlocal count
        count += 1
        raise Exception("oops")

    @task(retries=1)
    def outer():
        inner()

    @flow
    def f():
        return outer(return_state=True).name

    assert f() == "Failed"
    assert count == 4


def test_completion_hooks_run_for_runs_served_from_the_cache():
    # Prefect 3.9.1: on_completion sees "Completed", then "Cached".
    from nbflow.tasks import task_input_hash

    seen = []

    @task(cache_key_fn=task_input_hash, on_completion=[lambda t, r, s: seen.append(s.name)])
    def cached(x):
        return x

    @flow
    def f():
        return cached(1), cached(1)

    assert f() == (1, 1)
    assert seen == ["Completed", "Cached"]


def test_the_timeout_error_is_the_same_type_inline_in_threads_and_for_async_tasks():
    import asyncio
    import time

    from nbflow.exceptions import TaskRunTimeoutError

    @task(timeout_seconds=0.01)
    def slow():
        time.sleep(0.5)  # the workload the deadline cuts short

    @task(timeout_seconds=0.01)
    async def aslow():
        await asyncio.sleep(0.5)

    @flow
    def f():
        raised = []
        for call in (lambda: slow(), lambda: slow.submit().result(), lambda: asyncio.run(aslow())):
            try:
                call()
            except BaseException as exc:  # noqa: BLE001 - the type is what is checked
                raised.append(type(exc))
        return raised

    assert f() == [TaskRunTimeoutError] * 3
    assert issubclass(TaskRunTimeoutError, TimeoutError)


def test_a_failed_state_passed_as_an_argument_leaves_the_run_not_ready():
    from nbflow.states import Completed, Failed

    from nbflow import quote

    @task
    def take(x):
        return x

    @task
    def describe(x):
        return type(x).__name__, x.name, x.message

    @flow
    def f():
        blocked = take.submit(Failed(message="upstream broke"))
        fine = take.submit(Completed(data=3))
        quoted = describe.submit(quote(Failed(message="kept")))
        blocked.wait()
        return blocked.state, fine.result(), quoted.result()

    state, value, passed = f()
    assert state.is_pending() and state.name == "NotReady"
    assert value == 3
    assert passed == ("State", "Failed", "kept")  # quote hands the State itself over


def test_asset_deps_is_accepted_and_kept_through_with_options():
    # Prefect 3.9.1 turns strings into Assets; more in tests/test_assets_parity.py
    from nbflow.assets import Asset

    t = task(asset_deps=["s3://bucket/raw.csv"])(lambda: 1)
    assert t.asset_deps == [Asset(key="s3://bucket/raw.csv")]
    assert t.with_options(name="renamed").asset_deps == t.asset_deps
    assert task(lambda: 1).asset_deps == []


def test_an_async_task_called_from_a_sync_flow_and_never_awaited_leaves_no_run_to_wait_for():
    # Prefect 3.9.1: the call returns a coroutine; dropping it leaves the flow to complete.
    @task
    async def later(x):
        return x

    @flow
    def f():
        coroutine = later(3)
        kind = type(coroutine).__name__
        coroutine.close()
        return kind

    assert f() == "coroutine"
    assert last_flow_run().task_runs == []
