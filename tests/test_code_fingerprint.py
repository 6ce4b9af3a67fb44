"""The CODE fingerprint: all the code a task runs, its globals and the versions it reaches, and why it changed."""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy
import pytest

from nbflow import task
from nbflow.store.code import code_fingerprint, describe_change


def define(source: str, **names: object) -> dict:
    """Run ``source`` as a notebook cell would: in a fresh namespace acting as ``__main__``, with no source file."""
    namespace = {"__name__": "__main__", **names}
    exec(compile(source, "<cell>", "exec"), namespace)  # noqa: S102 - a notebook cell
    return namespace


def redefine(namespace: dict, source: str) -> None:
    """Run another cell in the same namespace (a helper edited and run again)."""
    exec(compile(source, "<cell 2>", "exec"), namespace)  # noqa: S102 - a notebook cell


def digest(fn) -> str:
    return code_fingerprint(fn).digest


PIPELINE = """
THRESHOLD = 2

def clean(x):
    return x - 1

def parse(x):
    return clean(x) + 1

def score(x):
    return parse(x) * THRESHOLD
"""


def test_repeated_calls_give_the_same_digest_and_parts():
    ns = define(PIPELINE)
    first, second = code_fingerprint(ns["score"]), code_fingerprint(ns["score"])
    assert first == second
    assert list(first.parts) == [
        "python", "source of task score", "source of helper parse", "global THRESHOLD", "source of helper clean",
    ]


def test_comments_blank_lines_and_formatting_do_not_change_it():
    plain = define("def f(x):\n    y = x + 1\n    return [y, {'a': y}]\n")
    formatted = define(
        "\n\n# a cell with a comment\n\ndef f(x):\n    # why\n\n    y = (x +\n         1)   # trailing\n"
        "    return [\n        y,\n        {'a': y},\n    ]\n"
    )
    assert digest(plain["f"]) == digest(formatted["f"])


def test_a_body_change_changes_it():
    assert digest(define("def f(x):\n    return x + 1\n")["f"]) != digest(define("def f(x):\n    return x + 2\n")["f"])


def test_a_change_in_a_transitively_called_helper_changes_it_and_names_the_helper():
    ns = define(PIPELINE)
    before = code_fingerprint(ns["score"])
    redefine(ns, "def clean(x):\n    return x - 2\n")  # score -> parse -> clean
    after = code_fingerprint(ns["score"])
    assert after.digest != before.digest
    assert describe_change(before.parts, after.parts) == "the source of helper clean changed"


def test_a_redefined_helper_is_seen_even_with_the_same_body():
    ns = define(PIPELINE)
    before = code_fingerprint(ns["score"])
    old_parse = ns["parse"]
    redefine(ns, "def parse(x):\n    # reformatted\n    return (clean(x)\n            + 1)\n")
    assert ns["parse"] is not old_parse
    assert digest(ns["score"]) == before.digest  # a new function object, but the same code
    redefine(ns, "def parse(x):\n    return clean(x) + 10\n")
    assert describe_change(before.parts, code_fingerprint(ns["score"]).parts) == "the source of helper parse changed"


def test_a_changed_global_value_is_named():
    ns = define(PIPELINE)
    before = code_fingerprint(ns["score"])
    ns["THRESHOLD"] = 3
    after = code_fingerprint(ns["score"])
    assert after.digest != before.digest
    assert describe_change(before.parts, after.parts) == "the global THRESHOLD changed"


def test_a_mutable_global_changed_in_place_is_hashed_again():
    ns = define("WEIGHTS = [1, 2]\nGRID = numpy.zeros(3)\n\ndef f(x):\n    return sum(WEIGHTS) * GRID * x\n",
                numpy=numpy)
    first = code_fingerprint(ns["f"])
    ns["WEIGHTS"].append(3)
    second = code_fingerprint(ns["f"])
    assert describe_change(first.parts, second.parts) == "the global WEIGHTS changed"
    ns["GRID"][1] = 5.0
    assert describe_change(second.parts, code_fingerprint(ns["f"]).parts) == "the global GRID changed"


def test_closure_variables_count():
    ns = define("def make(n):\n    def scaled(x):\n        return x * n\n    return scaled\n")
    two, three = code_fingerprint(ns["make"](2)), code_fingerprint(ns["make"](3))
    assert "closure variable n" in two.parts
    assert two.digest != three.digest
    assert describe_change(two.parts, three.parts) == "the closure variable n changed"
    assert digest(ns["make"](2)) == two.digest


def test_a_helper_reached_through_a_closure_is_walked():
    ns = define(
        "def make(step):\n    def run(x):\n        return step(x)\n    return run\n"
        "def inc(x):\n    return x + 1\n"
    )
    parts = code_fingerprint(ns["make"](ns["inc"])).parts
    assert "source of helper inc" in parts


def test_mutual_and_self_recursion_terminate():
    ns = define(
        "def even(n):\n    return True if n == 0 else odd(n - 1)\n"
        "def odd(n):\n    return False if n == 0 else even(n - 1)\n"
        "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n"
    )
    assert list(code_fingerprint(ns["even"]).parts) == ["python", "source of task even", "source of helper odd"]
    assert list(code_fingerprint(ns["fact"]).parts) == ["python", "source of task fact"]


def test_a_function_with_no_source_file_has_a_fingerprint_that_does_not_depend_on_the_file_name():
    source = "def f(x):\n    return x * 7\n"
    first, second = {}, {}
    exec(compile(source, "<string>", "exec"), first)  # noqa: S102 - code with no source file
    exec(compile(source, "<another string>", "exec"), second)  # noqa: S102 - the same, elsewhere
    with pytest.raises(OSError):
        inspect.getsource(first["f"])
    assert digest(first["f"]) == digest(second["f"])


def test_third_party_code_is_summarised_by_its_version():
    ns = define("import numpy as np\nfrom numpy import mean\n\ndef f(x):\n    return np.sum(x) + mean(x)\n")
    parts = code_fingerprint(ns["f"]).parts
    assert parts["version of numpy"] == numpy.__version__
    assert [label for label in parts if label.startswith("source of")] == ["source of task f"]  # numpy not walked


def test_a_third_party_version_change_is_worded_with_both_versions():
    old = {"version of pandas": "2.1.0", "python": "3.11.7"}
    new = {"version of pandas": "2.2.1", "python": "3.11.7"}
    assert describe_change(old, new) == "the version of pandas changed (2.1.0 -> 2.2.1)"


def test_the_standard_library_is_summarised_by_python():
    ns = define("import json\nfrom json import loads\n\ndef f(x):\n    return loads(json.dumps(x))\n")
    parts = code_fingerprint(ns["f"]).parts
    assert parts["python"] == ".".join(map(str, sys.version_info[:3]))
    assert list(parts) == ["python", "source of task f"]


def test_an_import_inside_the_function_counts():
    parts = code_fingerprint(define("def f(x):\n    import numpy\n    return numpy.sum(x)\n")["f"]).parts
    assert parts["version of numpy"] == numpy.__version__


def test_methods_and_attributes_of_a_user_class_count():
    source = """
class Base:
    def clean(self, x):
        return x

class Model(Base):
    SCALE = 2

    def predict(self, x):
        return self.clean(x) * self.SCALE

def f(x):
    return Model().predict(x)
"""
    ns = define(source)
    before = code_fingerprint(ns["f"])
    assert {"source of helper Model.predict", "source of helper Base.clean", "global Model.SCALE"} <= set(before.parts)
    ns["Base"].clean.__code__ = (lambda self, x: x + 1).__code__  # the method edited in place
    assert describe_change(before.parts, code_fingerprint(ns["f"]).parts) == "the source of helper Base.clean changed"
    ns["Model"].SCALE = 3
    assert "the global Model.SCALE changed" in describe_change(before.parts, code_fingerprint(ns["f"]).parts)


def test_the_class_of_an_instance_global_is_walked():
    ns = define("class Scaler:\n    def __call__(self, x):\n        return x * 2\n\nSCALE = Scaler()\n\n"
                "def f(x):\n    return SCALE(x)\n")
    assert "source of helper Scaler.__call__" in code_fingerprint(ns["f"]).parts


def test_a_partial_or_a_bound_method_counts_its_function_and_what_it_is_bound_to():
    ns = define("""
import functools

def scale(x, factor):
    return x * factor

class Counter:
    def __init__(self):
        self.n = 0

    def add(self, x):
        return x + self.n

TIMES = functools.partial(scale, factor=2)
ADD = Counter().add

def f(x):
    return TIMES(x) + ADD(x)
""")
    before = code_fingerprint(ns["f"])
    assert {"source of helper scale", "source of helper Counter.add", "global TIMES", "global ADD"} <= set(before.parts)
    ns["TIMES"] = functools.partial(ns["scale"], factor=3)
    middle = code_fingerprint(ns["f"])
    assert describe_change(before.parts, middle.parts) == "the global TIMES changed"
    ns["ADD"].__self__.n = 1
    assert describe_change(middle.parts, code_fingerprint(ns["f"]).parts) == "the global ADD changed"


def test_default_arguments_count_and_a_lambda_default_is_a_helper():
    one = code_fingerprint(define("def f(x, key=lambda v: v + 1, n=3):\n    return key(x) * n\n")["f"])
    other_lambda = code_fingerprint(define("def f(x, key=lambda v: v + 2, n=3):\n    return key(x) * n\n")["f"])
    other_default = code_fingerprint(define("def f(x, key=lambda v: v + 1, n=4):\n    return key(x) * n\n")["f"])
    assert "source of helper key" in one.parts
    assert describe_change(one.parts, other_lambda.parts) == "the source of helper key changed"
    assert describe_change(one.parts, other_default.parts) == "the source of task f changed"


def test_a_lock_global_does_not_raise_and_gives_a_stable_digest():
    source = "LOCK = threading.Lock()\n\ndef f(x):\n    with LOCK:\n        return x\n"
    first, second = define(source, threading=threading), define(source, threading=threading)
    assert first["LOCK"] is not second["LOCK"]
    parts = code_fingerprint(first["f"]).parts
    assert parts["global LOCK"] == "<unhashable _thread.lock>"
    assert digest(first["f"]) == digest(second["f"]) == digest(first["f"])


def test_many_threads_at_once_get_the_same_digest():
    ns = define(PIPELINE)
    expected = digest(define(PIPELINE)["score"])  # a twin, so that the threads race to build the cache
    threads = 8
    barrier = threading.Barrier(threads)

    def compute(_: int) -> str:
        barrier.wait(timeout=10)
        return digest(ns["score"])

    with ThreadPoolExecutor(threads) as pool:
        assert set(pool.map(compute, range(threads))) == {expected}


def test_a_task_reached_from_a_function_is_walked_as_a_helper():
    source = "@task\ndef load(x):\n    return x + {n}\n\ndef run(x):\n    return load(x) * 2\n"
    before = code_fingerprint(define(source.format(n=1), task=task)["run"])
    after = code_fingerprint(define(source.format(n=2), task=task)["run"])
    assert "source of helper load" in before.parts
    assert describe_change(before.parts, after.parts) == "the source of helper load changed"


def test_a_task_given_directly_is_its_function():
    ns = define("@task\ndef load(x):\n    return x\n", task=task)
    assert code_fingerprint(ns["load"]) == code_fingerprint(ns["load"].fn)


def test_replacing_a_functions_code_is_seen():
    ns = define("def f(x):\n    return x\n\ndef g(x):\n    return -x\n")
    before = digest(ns["f"])
    ns["f"].__code__ = ns["g"].__code__
    assert digest(ns["f"]) != before


def test_helpers_of_a_user_module_beside_the_notebook(tmp_path, monkeypatch):
    (tmp_path / "nbflow_test_helpers.py").write_text("LIMIT = 5\n\ndef clean(x):\n    return min(x, LIMIT)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("nbflow_test_helpers")
    monkeypatch.setitem(sys.modules, "nbflow_test_helpers", module)  # so that it is forgotten afterwards
    by_attribute = define("import nbflow_test_helpers as h\n\ndef f(x):\n    return h.clean(x) + h.LIMIT\n")
    imported_inside = define("def f(x):\n    from nbflow_test_helpers import clean\n    return clean(x)\n")
    for ns in (by_attribute, imported_inside):
        before = code_fingerprint(ns["f"])
        assert {"source of helper clean", "global LIMIT"} <= set(before.parts)
        module.LIMIT = 6
        assert describe_change(before.parts, code_fingerprint(ns["f"]).parts) == "the global LIMIT changed"
        module.LIMIT = 5


def test_globals_of_the_same_name_in_two_modules_are_both_counted():
    library = define("N = 1\n\ndef helper(x):\n    return x * N\n")
    library["__name__"] = "library"
    redefine(library, "def helper(x):\n    return x * N\n")  # now defined in "library"
    ns = define("N = 1\n\ndef f(x):\n    return helper(x) + N\n", helper=library["helper"])
    before = code_fingerprint(ns["f"])
    library["N"] = 2
    assert describe_change(before.parts, code_fingerprint(ns["f"]).parts) == "the global N (library) changed"


def test_describe_change_wording():
    old = {"source of task f": "1", "source of helper x": "2", "global N": "3", "version of numpy": "1.26.4"}
    new = {"source of task f": "9", "source of helper clean": "4", "global N": "3", "version of numpy": "2.0.0"}
    assert describe_change(old, dict(old)) is None
    assert describe_change(old, new) == (
        "the source of task f changed, helper clean is new, the version of numpy changed (1.26.4 -> 2.0.0)"
        " and helper x is no longer called"
    )
    assert describe_change({"python": "3.11.7"}, {"python": "3.12.1"}) == "the Python version changed (3.11.7 -> 3.12.1)"


def test_a_helper_redefined_in_an_ipython_cell_changes_the_digest_and_is_named():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        assert shell.run_cell("def tidy(x):\n    return x.strip()\n").success
        assert shell.run_cell("def job(x):\n    return tidy(x).upper()\n").success
        before = code_fingerprint(shell.user_ns["job"])
        assert "source of helper tidy" in before.parts
        assert shell.run_cell("def tidy(x):\n    # same code, a comment added\n    return x.strip()\n").success
        assert digest(shell.user_ns["job"]) == before.digest
        assert shell.run_cell("def tidy(x):\n    return x.strip().lower()\n").success
        after = code_fingerprint(shell.user_ns["job"])
        assert after.digest != before.digest
        assert describe_change(before.parts, after.parts) == "the source of helper tidy changed"
    finally:
        for name in ("tidy", "job"):
            shell.user_ns.pop(name, None)
