"""CallSignature: binding call arguments to parameters (fast path and inspect's path).

Error messages are Prefect 3.9.1's ``ParameterBindError.from_bind_failure`` form with
``inspect``'s wording; each expected string below was printed by Prefect 3.9.1's
``prefect.utilities.callables.get_call_parameters`` for the same call.
"""

import inspect

import pytest

from nbflow.exceptions import ParameterBindError
from nbflow.signature import CallSignature


def add(x, y):
    return x + y


def with_defaults(x, y=2, *, z=3):
    return x, y, z


def keyword_only(x, *, y, z=3):
    return x, y, z


def variadic(a, *args, b=1, **kwargs):
    return a, args, b, kwargs


def positional_only(a, /, b, c=2):
    return a, b, c


def annotated(x: int) -> int:
    return x


def quoted_default(x="a"):
    return x


def _inspect_bind(fn, args, kwargs, apply_defaults=True):
    bound = inspect.signature(fn).bind(*args, **kwargs)
    if apply_defaults:
        bound.apply_defaults()
    return dict(bound.arguments)


@pytest.mark.parametrize(
    "fn, args, kwargs",
    [
        (add, (1, 2), {}),
        (add, (1,), {"y": 2}),
        (add, (), {"y": 2, "x": 1}),
        (with_defaults, (1,), {}),
        (with_defaults, (1, 5), {"z": 6}),
        (keyword_only, (1,), {"y": 2}),
        (variadic, (1, 2, 3), {"b": 4, "c": 5}),
        (variadic, (1,), {}),
        (positional_only, (1, 2), {}),
        (positional_only, (1,), {"b": 2, "c": 3}),
    ],
)
@pytest.mark.parametrize("apply_defaults", [True, False])
def test_bind_gives_what_inspect_gives(fn, args, kwargs, apply_defaults):
    signature = CallSignature(fn)
    assert signature.bind(args, kwargs, apply_defaults) == _inspect_bind(fn, args, kwargs, apply_defaults)


def test_plain_functions_take_the_fast_path_others_inspects():
    assert CallSignature(add).simple and CallSignature(with_defaults).simple
    assert CallSignature(keyword_only).simple
    assert not CallSignature(variadic).simple
    assert not CallSignature(positional_only).simple


def test_defaults_are_applied_only_when_asked():
    signature = CallSignature(with_defaults)
    assert signature.bind((1,), {}) == {"x": 1, "y": 2, "z": 3}
    assert signature.bind((1,), {}, apply_defaults=False) == {"x": 1}
    assert signature.apply_defaults({"x": 1}) == {"x": 1, "y": 2, "z": 3}


def test_apply_defaults_fills_empty_star_args_and_kwargs():
    assert CallSignature(variadic).apply_defaults({"a": 1}) == {"a": 1, "b": 1, "args": (), "kwargs": {}}


@pytest.mark.parametrize(
    "fn, params, result",
    [
        (add, {"x": 1, "y": 2}, 3),
        (variadic, {"a": 1, "args": (2, 3), "b": 4, "kwargs": {"c": 5}}, (1, (2, 3), 4, {"c": 5})),
        (positional_only, {"a": 1, "b": 2, "c": 3}, (1, 2, 3)),
    ],
)
def test_call_arguments_call_the_function_with_the_parameters(fn, params, result):
    args, kwargs = CallSignature(fn).call_arguments(params)
    assert fn(*args, **kwargs) == result


@pytest.mark.parametrize(
    "fn, args, kwargs, message",
    [
        (add, (42,), {}, "Error binding parameters for function 'add': missing a required argument: 'y'.\n"
         "Function 'add' has signature 'x, y' but received args: (42,) and kwargs: []."),
        (add, (42,), {"x": 42}, "Error binding parameters for function 'add': multiple values for argument 'x'.\n"
         "Function 'add' has signature 'x, y' but received args: (42,) and kwargs: ['x']."),
        (add, (1, 2, 3), {}, "Error binding parameters for function 'add': too many positional arguments.\n"
         "Function 'add' has signature 'x, y' but received args: (1, 2, 3) and kwargs: []."),
        (add, (1,), {"z": 1}, "Error binding parameters for function 'add': missing a required argument: 'y'.\n"
         "Function 'add' has signature 'x, y' but received args: (1,) and kwargs: ['z']."),
        (keyword_only, (1,), {"y": 2, "w": 0},
         "Error binding parameters for function 'keyword_only': got an unexpected keyword argument 'w'.\n"
         "Function 'keyword_only' has signature 'x, *, y, z=3' but received args: (1,) and kwargs: ['y', 'w']."),
        (keyword_only, (1, 2), {},
         "Error binding parameters for function 'keyword_only': too many positional arguments.\n"
         "Function 'keyword_only' has signature 'x, *, y, z=3' but received args: (1, 2) and kwargs: []."),
        (variadic, (), {}, "Error binding parameters for function 'variadic': missing a required argument: 'a'.\n"
         "Function 'variadic' has signature 'a, *args, b=1, **kwargs' but received args: () and kwargs: []."),
        (positional_only, (), {"a": 1, "b": 2},
         "Error binding parameters for function 'positional_only': 'a' parameter is positional only, but was "
         "passed as a keyword.\nFunction 'positional_only' has signature 'a, /, b, c=2' but received args: () "
         "and kwargs: ['a', 'b']."),
        (annotated, (), {}, "Error binding parameters for function 'annotated': missing a required argument: "
         "'x'.\nFunction 'annotated' has signature 'x: int) -> int' but received args: () and kwargs: []."),
        (quoted_default, (1, 2), {}, "Error binding parameters for function 'quoted_default': too many "
         "positional arguments.\nFunction 'quoted_default' has signature 'x='a'' but received args: (1, 2) "
         "and kwargs: []."),
    ],
)
def test_bind_errors_are_prefects_with_inspects_wording(fn, args, kwargs, message):
    with pytest.raises(ParameterBindError) as info:
        CallSignature(fn).bind(args, kwargs)
    assert str(info.value) == message
    assert isinstance(info.value, TypeError)


def test_callable_object_is_named_by_its_class():
    class Greeter:
        def __call__(self, who):
            return who

    with pytest.raises(ParameterBindError, match="for function 'Greeter': missing a required argument: 'who'"):
        CallSignature(Greeter()).bind((), {})


def test_bound_signature_passes_the_instance_first_and_names_it():
    class Foo:
        def method(self, a, b=2):
            return a

        def __repr__(self):
            return "Foo()"

    foo = Foo()
    plain = CallSignature(Foo.method)
    bound = plain.bound(foo)
    assert bound.bind((1,), {}) == {"self": foo, "a": 1, "b": 2}
    assert bound.bind((), {"a": 1}, apply_defaults=False) == {"self": foo, "a": 1}
    assert bound.names == plain.names == ("self", "a", "b")
    assert plain.first == () and plain.bind((foo, 1), {}) == {"self": foo, "a": 1, "b": 2}
    with pytest.raises(ParameterBindError, match=r"received args: \(Foo\(\), 1, 2, 3\)"):
        bound.bind((1, 2, 3), {})


def test_bound_signature_of_a_variadic_method_calls_it_with_the_instance_first():
    class Foo:
        def method(self, /, *values):
            return self, values

    foo = Foo()
    signature = CallSignature(Foo.method).bound(foo)
    params = signature.bind((1, 2), {})
    assert params == {"self": foo, "values": (1, 2)}
    args, kwargs = signature.call_arguments(params)
    assert Foo.method(*args, **kwargs) == (foo, (1, 2))
