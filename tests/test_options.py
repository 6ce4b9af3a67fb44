"""Task options: run names, tags, with_options, caching; and nbflow.runtime inside and outside runs."""

from __future__ import annotations

import datetime
import inspect
import re
import time
import typing
from dataclasses import dataclass

import pytest

import nbflow
import nbflow.runtime
from nbflow import flow, tags, task
from nbflow.exceptions import ReservedArgumentError, TaskRunNameError
from nbflow.options import FLOW_OPTIONS, TASK_OPTIONS
from nbflow.runs import last_flow_run
from nbflow.tasks import task_input_hash


@task
def ident(x):
    return x


# -- run names ----------------------------------------------------------------------------------
def test_task_run_name_template_uses_resolved_arguments():
    @dataclass
    class Dataset:
        name: str

    @task
    def make():
        return Dataset("orders")

    @task(task_run_name="train on {dataset.name} #{n}")
    def train(dataset, n):
        return nbflow.runtime.task_run.name

    @flow
    def f():
        return train.submit(make.submit(), 3).result(), train(Dataset("inline"), 4)

    assert f() == ("train on orders #3", "train on inline #4")


def test_task_run_name_callable_without_and_with_parameters():
    def no_args():
        return f"no-args-{nbflow.runtime.task_run.parameters['x']}"

    def with_params(parameters):
        return f"with-params-{parameters['x']}"

    @flow
    def f():
        a = ident.with_options(task_run_name=no_args)
        b = ident.with_options(task_run_name=with_params)
        fa, fb = a.submit(1), b.submit(2)
        nbflow.wait([fa, fb])
        return fa.task_run.name, fb.task_run.name

    assert f() == ("no-args-1", "with-params-2")


def test_task_run_name_callable_returning_non_str_is_type_error():
    @task(task_run_name=lambda: 42)
    def t():
        return 1

    @flow
    def f():
        with pytest.raises(TypeError):
            t.submit().result()
        with pytest.raises(TypeError):
            t()

    f()


def test_default_run_name_inside_flow_and_outside():
    @task
    def named():
        return nbflow.runtime.task_run.name

    assert named() == "named"

    @flow
    def f():
        return named.submit().result(), named()

    submitted, inline = f()
    for name in (submitted, inline):
        assert re.fullmatch(r"named-[0-9a-f]{3}", name), name


def test_task_run_name_missing_field_raises_task_run_name_error_at_submit_time():
    """nbflow promise (semantics 4.5): names the task, the field and the parameters."""
    ran = []

    @task(task_run_name="process {missing} of {x}")
    def process(x, y=1):
        ran.append(x)

    @flow
    def f():
        with pytest.raises(TaskRunNameError) as info:
            process.submit(1)
        assert isinstance(info.value, KeyError)
        with pytest.raises(TaskRunNameError):
            process.map([1, 2])
        return str(info.value)

    message = f()
    assert "process" in message and "missing" in message
    assert "x" in message and "y" in message
    assert ran == []
    # inline calls raise too, inside and outside flows
    with pytest.raises(KeyError):
        process(1)


def test_task_run_name_error_is_a_key_error_with_readable_str():
    @task(task_run_name="{nope}")
    def t(a):
        pass

    with pytest.raises(KeyError) as info:
        t(1)
    text = str(info.value)
    assert not text.startswith('"') and "nope" in text and "'t'" in text


# -- tags and with_options -----------------------------------------------------------------------
def test_tags_decorator_and_context():
    @task(tags=["base"])
    def tagged():
        return nbflow.runtime.task_run.tags

    @flow
    def f():
        with tags("ctx", "more"):
            submitted = tagged.submit().result()
            inline = tagged()
        outside = tagged.submit().result()
        return submitted, inline, outside

    submitted, inline, outside = f()
    assert sorted(submitted) == ["base", "ctx", "more"]
    assert sorted(inline) == ["base", "ctx", "more"]
    assert sorted(outside) == ["base"]


def test_tags_context_outside_a_flow_applies_to_the_flows_runs():
    @task
    def tagged():
        return sorted(nbflow.runtime.task_run.tags)

    @flow
    def f():
        return tagged.submit().result(), nbflow.runtime.flow_run.tags

    with tags("outer"):
        task_tags, flow_tags = f()
    assert task_tags == ["outer"] and "outer" in flow_tags


def test_with_options_returns_new_task_and_tags_replace():
    @task(tags=["a"], retries=0, name="orig")
    def t():
        return nbflow.runtime.task_run.tags

    t2 = t.with_options(tags=["b"], retries=3, name="copy")
    assert t2 is not t
    assert t2.name == "copy" and t2.retries == 3 and set(t2.tags) == {"b"}
    assert t.name == "orig" and t.retries == 0 and set(t.tags) == {"a"}
    assert t2() == ["b"]
    assert t() == ["a"]


def test_with_options_keeps_unchanged_options():
    hook_calls = []

    @task(retries=2, on_completion=[lambda *a: hook_calls.append(1)], task_run_name="keep-{x}")
    def t(x):
        return nbflow.runtime.task_run.name

    t2 = t.with_options(tags=["z"])
    assert t2.retries == 2
    assert t2(5) == "keep-5"
    assert hook_calls == [1]


# -- cache ---------------------------------------------------------------------------------------------
def _key_on_x(context, parameters):
    return f"x={parameters['x']}"


def test_cache_key_fn_returns_stored_value_in_later_flow_runs(nbflow_home):
    calls = []

    @task(cache_key_fn=_key_on_x)
    def expensive(x):
        calls.append(x)
        return x * 10

    @flow
    def f(x):
        fut = expensive.submit(x)
        return fut.result(), fut.state.name

    assert f(1) == (10, "Completed")
    assert f(1) == (10, "Cached")
    assert f(2) == (20, "Completed")
    assert calls == [1, 2]
    assert (nbflow_home / "results").is_dir()  # results are persisted under NBFLOW_HOME/results
    # inline calls use the cache too
    assert expensive(1) == 10 and calls == [1, 2]


def test_cache_expiration_bounds_the_cache(monkeypatch):
    calls = []

    @task(cache_key_fn=_key_on_x, cache_expiration=datetime.timedelta(milliseconds=1))
    def short_lived(x):
        calls.append(x)
        return x

    @task(cache_key_fn=lambda c, p: f"long-{p['x']}", cache_expiration=datetime.timedelta(hours=1))
    def long_lived(x):
        calls.append(("long", x))
        return x

    short_lived(1)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 1)  # a second later: past the 1 ms expiration
    short_lived(1)
    assert calls == [1, 1]
    long_lived(1)
    assert long_lived(1, return_state=True).name == "Cached"
    assert calls == [1, 1, ("long", 1)]


def test_cache_key_none_means_no_caching():
    calls = []

    @task(cache_key_fn=lambda c, p: None)
    def t(x):
        calls.append(x)

    t(1)
    t(1)
    assert calls == [1, 1]


def test_nothing_is_cached_unless_asked():
    calls = []

    @task
    def t(x):
        calls.append(x)
        return x

    @flow
    def f():
        return t.submit(1).result(), t.submit(1).result()

    f()
    f()
    assert calls == [1, 1, 1, 1]


def test_task_input_hash_as_cache_key_fn():
    calls = []

    @task(cache_key_fn=task_input_hash)
    def t(x):
        calls.append(x)
        return x

    t(1)
    t(1)
    t(2)
    assert calls == [1, 2]


def test_cache_key_fn_receives_context_and_parameters():
    seen = []

    def key(context, parameters):
        seen.append((context.task.name, dict(parameters)))
        return "k"

    @task(cache_key_fn=key)
    def t(x, y=2):
        return x

    t(1)
    assert seen == [("t", {"x": 1, "y": 2})]


# -- runtime -------------------------------------------------------------------------------------------
def test_runtime_outside_runs():
    tr, fr = nbflow.runtime.task_run, nbflow.runtime.flow_run
    assert tr.id is None and tr.name is None and tr.task_name is None
    assert tr.parameters == {} and tr.run_count == 0
    assert fr.id is None and fr.name is None and fr.flow_name is None
    assert fr.parameters == {} and fr.run_count == 0


def test_runtime_inside_task_run():
    @task(task_run_name="rt-{a}", tags=["t1"])
    def t(a, b=2):
        tr = nbflow.runtime.task_run
        fr = nbflow.runtime.flow_run
        return dict(
            name=tr.name, task_name=tr.task_name, parameters=tr.parameters, run_count=tr.run_count,
            tags=tr.tags, id=tr.id, flow_name=fr.flow_name,
        )

    @flow
    def my_flow():
        return t.submit(1).result()

    info = my_flow()
    assert info["name"] == "rt-1" and info["task_name"] == "t"
    assert info["parameters"] == {"a": 1, "b": 2}
    assert info["run_count"] == 1 and info["tags"] == ["t1"]
    assert isinstance(info["id"], str)
    assert info["flow_name"] == "my-flow"
    assert last_flow_run().task_runs[0].name == "rt-1"


def test_runtime_in_flow_body_has_no_task_run():
    @flow
    def f():
        return nbflow.runtime.task_run.id, nbflow.runtime.flow_run.name

    tid, fname = f()
    assert tid is None and fname == last_flow_run().name


def test_task_rejects_unknown_option():
    with pytest.raises(TypeError):
        task(lambda: None, not_an_option=True)


# -- options declared once ------------------------------------------------------------------------
@pytest.mark.parametrize("decorator, table", [(task, TASK_OPTIONS), (flow, FLOW_OPTIONS)])
def test_typed_decorator_overload_lists_every_option_with_the_tables_default(decorator, table):
    (keyword_overload,) = [o for o in typing.get_overloads(decorator) if len(inspect.signature(o).parameters) > 1]
    listed = list(inspect.signature(keyword_overload).parameters.values())[1:]
    assert [(p.name, p.kind, p.default) for p in listed] == [
        (o.name, inspect.Parameter.KEYWORD_ONLY, o.in_decorator) for o in table
    ]


@pytest.mark.parametrize("decorator, table", [(task, TASK_OPTIONS), (flow, FLOW_OPTIONS)])
def test_decorator_signature_shows_every_option_for_help_and_completion(decorator, table):
    shown = inspect.signature(decorator).parameters
    assert list(shown) == ["__fn", *(o.name for o in table)]
    assert shown["retries"].default is None


def test_an_unknown_option_is_rejected_when_the_decorator_runs_with_a_close_match():
    with pytest.raises(TypeError) as info:
        task(retry=3)  # before any function is decorated
    assert str(info.value) == "task() got an unexpected keyword argument 'retry'. Did you mean 'retries'?"
    with pytest.raises(TypeError, match="^flow\\(\\) got an unexpected keyword argument 'zzz'$"):
        flow(zzz=1)
    with pytest.raises(TypeError, match="^Flow.with_options\\(\\) got an unexpected keyword argument 'tags'"):
        flow(lambda: None).with_options(tags=["a"])


@pytest.mark.parametrize("make", [task, flow])
def test_hook_decorators_append_and_return_the_hook(make):
    obj = make(lambda: None)
    names = [o.name for o in (TASK_OPTIONS if make is task else FLOW_OPTIONS) if o.name.startswith("on_")]
    for name in names:
        def hook(*_):
            pass

        assert getattr(obj, name)(hook) is hook
        assert getattr(obj, f"{name}_hooks") == [hook]
    copy = obj.with_options()
    copy.on_completion(print)
    assert print not in obj.on_completion_hooks


@pytest.mark.parametrize("make, kind", [(task, "task"), (flow, "flow")])
@pytest.mark.parametrize("reserved", ["wait_for", "return_state"])
def test_reserved_argument_names_are_rejected_for_tasks_and_flows(make, kind, reserved):
    fn = eval(f"lambda {reserved}: None")
    with pytest.raises(ReservedArgumentError, match=f"^'{reserved}' is a reserved argument name and cannot be used"):
        make(fn)


def test_a_method_view_is_made_without_validating_options_again(monkeypatch):
    class Foo:
        @task(retries=2)
        def get(self):
            return self

    def no_revalidation(*_):
        raise AssertionError("options validated again")

    monkeypatch.setattr(TASK_OPTIONS, "apply", no_revalidation)
    foo = Foo()
    view = foo.get
    assert view() is foo and view.retries == 2 and view.signature.first == (foo,)
    assert Foo.__dict__["get"].signature.first == ()


def test_prefect_only_options_are_accepted():
    @task(persist_result=True, cache_policy=None, refresh_cache=False, version="1")
    def t():
        return 1

    assert t() == 1


def test_refresh_cache_true_ignores_the_cached_value():
    """Prefect's documented ``refresh_cache=True``: cached results for the key are not used
    (the run executes and refreshes the entry). nbflow accepts the option, so ported code
    must not silently get stale values."""
    calls = []

    @task(cache_key_fn=lambda c, p: "same-key")
    def t(x):
        calls.append(x)
        return x

    assert t(1) == 1
    refreshed = t.with_options(refresh_cache=True)
    assert refreshed(2) == 2
    assert calls == [1, 2]
    assert t(3) == 2  # the refreshed entry is what the key now holds
