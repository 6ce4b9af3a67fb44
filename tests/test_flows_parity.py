"""Parity with Prefect 3 for flows: subflow ``wait_for``, reserved arguments, hook
decorators, runtime attributes.

References (PrefectHQ/prefect): tests/test_tasks.py (TestSubflowWaitForTasks),
src/prefect/flows.py (``Flow.on_completion`` etc., ``raise_for_reserved_arguments``),
src/prefect/runtime/flow_run.py.
"""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import pydantic
import pytest

import nbflow.runtime
from nbflow import allow_failure, flow, task
from nbflow.exceptions import ParameterTypeError, ReservedArgumentError
from nbflow.task_runners import ThreadPoolTaskRunner

pytestmark = [pytest.mark.parity, pytest.mark.timeout(30)]


@task
def boom():
    raise ValueError("Fail task!")


@flow
def child(y):
    return y


def test_subflow_waiting_for_a_failed_task_is_not_ready():
    @flow
    def parent():
        bad = boom.submit()
        return child(2, wait_for=[bad], return_state=True)

    state = parent(return_state=True).result(raise_on_failure=False)
    assert state.is_pending()
    assert state.name == "NotReady"


def test_subflow_wait_for_allow_failure_runs():
    @flow
    def parent():
        bad = boom.submit()
        return child(2, wait_for=[allow_failure(bad)], return_state=True)

    state = parent(return_state=True).result(raise_on_failure=False)
    assert state.result() == 2


def test_subflow_wait_for_a_plain_value():
    # TestSubflowWaitForTasks.test_downstream_runs_if_upstream_succeeds: wait_for=[f] where f
    # is the *value* another subflow returned.
    @flow
    def parent():
        f = child(1)
        return child(2, wait_for=[f])

    assert parent() == 2


@pytest.mark.parametrize("name", ["wait_for", "return_state"])
def test_reserved_argument_in_a_flow_is_rejected(name):
    with pytest.raises(ReservedArgumentError, match=f"'{name}' is a reserved argument name"):
        exec(f"def f({name}): pass", ns := {})
        flow(ns["f"])


def test_flow_hook_decorators():
    calls = []

    @flow
    def ok_flow():
        return 1

    @ok_flow.on_running
    def running(fl, flow_run, state):
        calls.append(("running", state.name))

    @ok_flow.on_completion
    def completed(fl, flow_run, state):
        calls.append(("completed", state.name))

    @flow
    def bad_flow():
        raise ValueError("x")

    @bad_flow.on_failure
    def failed(fl, flow_run, state):
        calls.append(("failed", state.name))

    assert ok_flow() == 1
    with pytest.raises(ValueError):
        bad_flow()
    assert calls == [("running", "Running"), ("completed", "Completed"), ("failed", "Failed")]
    assert hasattr(ok_flow, "on_cancellation") and hasattr(ok_flow, "on_crashed")


def test_async_flow_hooks_are_awaited():
    calls = []

    async def hook(fl, flow_run, state):
        calls.append(state.name)

    @flow(on_completion=[hook])
    def f():
        return 1

    f()
    assert calls == ["Completed"]


def test_flow_hook_messages_match_prefect():
    with pytest.raises(TypeError, match="Expected iterable for 'on_failure'; got function instead"):
        flow(on_failure=lambda *_: None)(lambda: None)
    with pytest.raises(TypeError, match="Expected callables in 'on_failure'; got str instead"):
        flow(on_failure=["test"])(lambda: None)


def test_runtime_flow_run_version_and_root():
    @flow(version="v2")
    def inner():
        return nbflow.runtime.flow_run.flow_version, nbflow.runtime.flow_run.root_flow_run_id

    @flow
    def outer():
        return nbflow.runtime.flow_run.id, inner()

    outer_id, (version, root) = outer()
    assert version == "v2"
    assert root == outer_id


def test_flow_options_are_attributes():
    @flow(persist_result=True, result_serializer="json", cache_result_in_memory=False)
    def f():
        pass

    assert f.persist_result is True
    assert f.result_serializer == "json"
    assert f.cache_result_in_memory is False
    assert f.with_options(persist_result=False).persist_result is False


# -- options: attributes, validation, with_options --------------------------------------------
def test_every_flow_option_is_an_attribute_with_prefects_default():
    # values printed by Prefect 3.9.1 for a bare @flow
    @flow
    def my_flow(x):
        return x

    expected = dict(
        name="my-flow", flow_run_name=None, retries=0, retry_delay_seconds=0, description=None,
        timeout_seconds=None, should_validate_parameters=True, persist_result=None, result_storage=None,
        result_serializer=None, cache_result_in_memory=True, log_prints=None, on_completion_hooks=[],
        on_failure_hooks=[], on_cancellation_hooks=[], on_crashed_hooks=[], on_running_hooks=[],
        isasync=False,
    )
    assert {name: getattr(my_flow, name) for name in expected} == expected
    assert isinstance(my_flow.task_runner, ThreadPoolTaskRunner)
    # the version defaults to the MD5 of the file that defines the flow
    assert my_flow.version == hashlib.md5(Path(__file__).read_bytes()).hexdigest()
    assert flow(version="v1")(lambda: None).version == "v1"
    nameless = flow(eval("lambda: None"))  # no source file
    assert (nameless.name, nameless.version) == ("unknown-lambda", None)
    # validate_parameters is the method that validates; the option is should_validate_parameters
    assert my_flow.validate_parameters({"x": 1}) == {"x": 1}
    assert flow(validate_parameters=False)(lambda: None).should_validate_parameters is False


def test_result_options_turn_flow_result_persistence_on():
    assert flow(result_serializer="json")(lambda: None).persist_result is True
    assert flow(result_storage="local-file-system/x")(lambda: None).persist_result is True
    assert flow(persist_result=False, result_serializer="json")(lambda: None).persist_result is False
    with pytest.raises(TypeError, match="^Result storage configuration must be persisted server-side."):
        flow(result_storage=object())(lambda: None)


def test_bad_flow_options_are_rejected_with_prefects_words():
    def get_name():
        return "n"

    with pytest.raises(TypeError) as info:
        flow(name=123)(lambda: None)
    assert str(info.value) == "Expected string for flow parameter 'name'; got int instead. "
    with pytest.raises(TypeError) as info:
        flow(name=get_name)(lambda: None)
    assert str(info.value) == (
        "Expected string for flow parameter 'name'; got function instead. Perhaps you meant to call it? "
        "e.g. '@flow(name=get_flow_run_name())'"
    )
    with pytest.raises(TypeError) as info:
        flow(flow_run_name=123)(lambda: None)
    assert str(info.value) == "Expected string or callable for 'flow_run_name'; got int instead."
    with pytest.raises(TypeError) as info:
        flow(on_crashed=get_name)(lambda: None)
    assert str(info.value) == (
        "Expected iterable for 'on_crashed'; got function instead. Please provide a list of hooks to "
        "'on_crashed':\n\n@flow(on_crashed=[hook1, hook2])\ndef my_flow():\n\tpass"
    )
    with pytest.raises(TypeError, match="^Expected callables in 'on_crashed'; got str instead."):
        flow(on_crashed=["x"])(lambda: None)
    with pytest.raises(TypeError, match="'fn' must be callable"):
        flow(5)


def test_flow_with_options_keeps_the_current_value_for_empty_or_none_as_prefect_does():
    def hook(*_):
        pass

    runner = ThreadPoolTaskRunner(max_workers=3)
    f = flow(name="orig", version="v1", retries=2, retry_delay_seconds=3, timeout_seconds=4,
             validate_parameters=False, log_prints=True, on_failure=[hook], flow_run_name="fr",
             description="d", task_runner=runner, persist_result=True, result_serializer="json",
             cache_result_in_memory=False)(lambda: None)
    g = f.with_options(name="", version="", retries=None, retry_delay_seconds=None, timeout_seconds=None,
                       validate_parameters=None, on_failure=[], flow_run_name=None, description=None,
                       task_runner=None, cache_result_in_memory=None)
    # printed by Prefect 3.9.1 for the same calls
    assert (g.name, g.version, g.retries, g.retry_delay_seconds, g.timeout_seconds) == ("orig", "v1", 2, 3, 4.0)
    assert (g.should_validate_parameters, g.on_failure_hooks, g.flow_run_name, g.description) == (
        False, [hook], "fr", "d")
    assert g.task_runner is runner and g.log_prints is True and g.cache_result_in_memory is False
    assert (g.persist_result, g.result_serializer) == (True, "json")
    assert f.with_options(log_prints=None).log_prints is None
    assert f.with_options(persist_result=None).persist_result is True  # result_serializer implies it
    assert type(f.with_options(task_runner=ThreadPoolTaskRunner).task_runner) is ThreadPoolTaskRunner
    assert f.with_options().on_failure_hooks is not f.on_failure_hooks


def test_invalid_parameters_are_listed_in_prefects_words():
    @flow
    def typed(x: int, items: list[int]):
        return x

    assert typed.validate_parameters({"x": "5", "items": ["1", 2]}) == {"x": 5, "items": [1, 2]}
    with pytest.raises(ParameterTypeError) as info:
        typed.validate_parameters({"x": "abc", "items": [1, "b"]})
    assert str(info.value).startswith(
        "Flow run received invalid parameters:\n"
        " - x: Input should be a valid integer, unable to parse string as an integer\n"
        " - items.1: Input should be a valid integer, unable to parse string as an integer\n"
    )


# -- flows as methods ---------------------------------------------------------------------------
def test_flow_defined_in_a_class_gets_self_or_cls():
    class Pipeline:
        def __init__(self, factor):
            self.factor = factor

        @flow
        def run(self, x):
            return self.factor * x, sorted(nbflow.runtime.flow_run.parameters)

        @flow
        @classmethod
        def describe(cls):
            return cls.__name__

        @flow
        @staticmethod
        def plain(x):
            return x

    assert Pipeline(3).run(2) == (6, ["self", "x"])
    assert Pipeline.describe() == "Pipeline" and Pipeline(1).describe() == "Pipeline"
    assert Pipeline.plain(4) == Pipeline(1).plain(4) == 4
    assert Pipeline(3).run.ismethod and Pipeline.describe.isclassmethod and Pipeline.plain.isstaticmethod


def test_a_flow_name_with_a_banned_character_is_an_invalid_name_error():
    from nbflow.exceptions import InvalidNameError

    for name in ("a/b", "50%", "x&y", "a>b", "a<b"):
        with pytest.raises(InvalidNameError, match=r"contains an invalid character\. Must not contain any of: "
                           r"\['/', '%', '&', '>', '<'\]\."):
            flow(name=name)(lambda: 1)
    assert issubclass(InvalidNameError, ValueError)
    assert flow(name="a b:c.d")(lambda: 1).name == "a b:c.d"


class Point(pydantic.BaseModel):
    a: int


def test_flow_parameters_is_prefects_json_schema_of_the_signature():
    @flow
    def typed(x: int, y: str = "a", z=None, w: list[int] = [1], d: datetime.date = None):  # noqa: B006
        pass

    @flow
    def variadic(m: Point, *args: int, k: float = 1.5, **kw):
        pass

    # Both dumps as Prefect 3.9.1 gives them for these flows.
    assert typed.parameters.model_dump() == {
        "title": "Parameters", "type": "object", "required": ["x"], "definitions": {},
        "properties": {
            "x": {"position": 0, "title": "x", "type": "integer"},
            "y": {"default": "a", "position": 1, "title": "y", "type": "string"},
            "z": {"default": None, "position": 2, "title": "z"},
            "w": {"default": [1], "items": {"type": "integer"}, "position": 3, "title": "w", "type": "array"},
            "d": {"default": None, "format": "date", "position": 4, "title": "d", "type": "string"},
        },
    }
    assert variadic.parameters.model_dump() == {
        "title": "Parameters", "type": "object", "required": ["m"],
        "properties": {
            "m": {"$ref": "#/definitions/Point", "position": 0, "title": "m"},
            "args": {"default": [], "items": {"type": "integer"}, "position": 1, "title": "args", "type": "array"},
            "k": {"default": 1.5, "position": 2, "title": "k", "type": "number"},
            "kw": {"additionalProperties": True, "default": {}, "position": 3, "title": "kw", "type": "object"},
        },
        "definitions": {"Point": {"properties": {"a": {"title": "A", "type": "integer"}}, "required": ["a"],
                                  "title": "Point", "type": "object"}},
    }
