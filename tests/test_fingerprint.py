"""Input fingerprints: equal values give equal digests, in any process; different values differ.

The type of every piece counts (``1``, ``1.0``, ``True``, ``"1"``), the order
of a dict or a set never does, numpy arrays and pandas frames are hashed from
their memory, and a value that cannot be pickled is refused with the reason.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pydantic
import pytest

from nbflow.store.fingerprint import UnhashableInput, fingerprint

# Values built the same way here and in a subprocess (as a notebook cell would build them).
VALUES_SOURCE = """
import collections, dataclasses
import numpy as np
import pandas as pd

@dataclasses.dataclass
class Point:
    x: float
    y: float

class Plain:
    def __init__(self, tags):
        self.tags = tags

Pair = collections.namedtuple("Pair", "left right")

VALUES = {
    "int": 12345678901234567890,
    "float": 0.1 + 0.2,
    "str": "héllo \\udc80",
    "nested": {"b": [1, (2, 3)], "a": {"z": None, "y": b"raw"}},
    "set": {"pear", "apple", "fig", "plum"},
    "frozenset": frozenset({"x", "y", ("t", 1)}),
    "dataclass": Point(1.5, -2.0),
    "namedtuple": Pair("a", 2),
    "plain": Plain(["a", "b"]),
    "array": np.arange(24, dtype="int32").reshape(2, 3, 4),
    "object array": np.array([{"k": 1}, "s", None], dtype=object),
    "frame": pd.DataFrame({"n": [1.5, 2.5], "s": ["a", "b"], "c": pd.Categorical(["u", "v"])},
                          index=pd.Index(["r1", "r2"], name="row")),
    "series": pd.Series([1, 2, 3], name="s"),
}
"""

SUBPROCESS_SCRIPT = VALUES_SOURCE + """
import json
from nbflow.store.fingerprint import fingerprint
print(json.dumps({name: fingerprint(value) for name, value in VALUES.items()}))
"""


def _values() -> dict:
    namespace: dict = {"__name__": "__main__"}  # as in a notebook: classes of the module __main__
    exec(compile(VALUES_SOURCE, "<notebook cell>", "exec"), namespace)  # noqa: S102 - a notebook cell
    return namespace["VALUES"]


def _run(script: str, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        env={**os.environ, **env},
    )
    return out.stdout.strip().splitlines()[-1]


# -- determinism ------------------------------------------------------------------------------
def test_equal_values_have_equal_fingerprints_in_another_process():
    """Another interpreter (another hash seed, another file name for the classes) agrees on every value."""
    here = {name: fingerprint(value) for name, value in _values().items()}
    there = json.loads(_run(SUBPROCESS_SCRIPT, PYTHONHASHSEED="12345"))
    assert there == here


def test_fingerprint_is_a_hex_digest_and_repeats():
    digest = fingerprint({"a": [1, 2]})
    assert digest == fingerprint({"a": [1, 2]})
    assert len(digest) == 40
    int(digest, 16)


def test_dict_and_set_order_do_not_count():
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({1: "x", "1": "y"}) == fingerprint({"1": "y", 1: "x"})
    assert fingerprint({3, 1, 2}) == fingerprint({2, 3, 1})
    assert fingerprint({"a": 1, "b": 2}) != fingerprint({"a": 2, "b": 1})


def test_types_are_tagged():
    values = [1, 1.0, True, "1", b"1", bytearray(b"1"), [1], {1}, frozenset({1}), {1: 1},
              None, 0, False, "", b"", [], 1 + 0j]
    assert len({fingerprint(v) for v in values}) == len(values)
    # a tuple is keyed as the equal list, as Prefect's JSON-based input hash has it
    assert fingerprint((1, (2,))) == fingerprint([1, [2]]) and fingerprint(()) == fingerprint([])
    assert fingerprint(("ab", "c")) != fingerprint(("a", "bc"))  # pieces are length-prefixed


def test_ints_of_any_size_and_floats_by_their_bits():
    big = 7 ** 20_000  # more digits than int -> str allows
    assert fingerprint(big) != fingerprint(big + 1)
    assert fingerprint(-1) != fingerprint(255)
    assert fingerprint(0.1 + 0.2) != fingerprint(0.3)
    assert fingerprint(float("nan")) == fingerprint(float("nan"))


def test_a_container_that_holds_itself():
    def looped():
        items: list = [1]
        items.append(items)
        return items

    assert fingerprint(looped()) == fingerprint(looped())


# -- structured values ------------------------------------------------------------------------
@dataclasses.dataclass
class Point:
    x: float
    y: float


@dataclasses.dataclass
class Other:
    x: float
    y: float


class Model(pydantic.BaseModel):
    a: int
    b: dict


def test_dataclasses_by_type_and_fields():
    assert fingerprint(Point(1, 2)) == fingerprint(Point(1, 2))
    assert fingerprint(Point(1, 2)) != fingerprint(Point(1, 3))
    assert fingerprint(Point(1, 2)) != fingerprint(Other(1, 2))


def test_namedtuples_differ_from_tuples_and_by_type():
    pair = collections.namedtuple("pair", "a b")
    other = collections.namedtuple("other", "a b")
    assert fingerprint(pair(1, 2)) == fingerprint(pair(1, 2))
    assert fingerprint(pair(1, 2)) != fingerprint((1, 2))
    assert fingerprint(pair(1, 2)) != fingerprint(other(1, 2))


def test_pydantic_models_by_type_and_fields():
    assert fingerprint(Model(a=1, b={"x": 1, "y": 2})) == fingerprint(Model(a=1, b={"y": 2, "x": 1}))
    assert fingerprint(Model(a=1, b={})) != fingerprint(Model(a=2, b={}))


def test_dict_subclasses_keep_their_type_and_ordered_dicts_their_order():
    assert fingerprint(collections.Counter(a=1)) != fingerprint({"a": 1})
    assert fingerprint(collections.defaultdict(list, a=1, b=2)) == fingerprint(collections.defaultdict(list, b=2, a=1))
    ordered = collections.OrderedDict
    assert fingerprint(ordered(a=1, b=2)) != fingerprint(ordered(b=2, a=1))


def test_a_class_counts_by_name_not_by_where_its_code_was_compiled():
    """The same notebook class in two kernels: different cell file names, the same fingerprint."""
    source = "class Box:\n    def __init__(self, v):\n        self.v = v\n"
    boxes = []
    for filename in ("/tmp/ipykernel_1/cell.py", "/tmp/ipykernel_2/cell.py"):
        namespace: dict = {"__name__": "__main__"}
        exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - a cell of each kernel
        boxes.append(namespace["Box"](1))
    assert fingerprint(boxes[0]) == fingerprint(boxes[1])
    assert fingerprint(boxes[0]) != fingerprint(type(boxes[1])(2))


# -- numpy ------------------------------------------------------------------------------------
def test_numpy_dtype_shape_and_values_count():
    a = np.arange(12, dtype="float64").reshape(3, 4)
    assert fingerprint(a) == fingerprint(a.copy())
    assert fingerprint(a) != fingerprint(a.reshape(4, 3))
    assert fingerprint(a) != fingerprint(a.astype("float32"))
    assert fingerprint(a) != fingerprint(a.astype("int64"))
    changed = a.copy()
    changed[2, 3] = -1
    assert fingerprint(a) != fingerprint(changed)
    assert fingerprint(a) != fingerprint(a.tolist())


def test_a_non_contiguous_array_equals_its_contiguous_copy():
    a = np.arange(20, dtype="int16").reshape(4, 5)
    for view in (a.T, a[:, ::2], a[::-1]):
        assert not view.flags.c_contiguous
        assert fingerprint(view) == fingerprint(np.ascontiguousarray(view))
    assert fingerprint(a.T) != fingerprint(a)


def test_datetime_structured_and_object_arrays():
    dates = np.array(["2024-01-01", "2024-06-30"], dtype="datetime64[ns]")
    assert fingerprint(dates) != fingerprint(dates.astype("datetime64[s]"))
    records = np.zeros(2, dtype=[("x", "i4"), ("y", "f8")])
    assert fingerprint(records) != fingerprint(np.zeros(2, dtype=[("x", "i4"), ("z", "f8")]))
    objects = np.array([{"a": 1, "b": 2}, None], dtype=object)
    assert fingerprint(objects) == fingerprint(np.array([{"b": 2, "a": 1}, None], dtype=object))
    assert fingerprint(objects) != fingerprint(np.array([{"a": 1}, None], dtype=object))


def test_numpy_scalars_are_not_python_numbers():
    assert fingerprint(np.float64(1.0)) != fingerprint(1.0)
    assert fingerprint(np.float64(1.0)) != fingerprint(np.float32(1.0))
    assert fingerprint(np.int64(3)) == fingerprint(np.int64(3))


def test_a_memmap_counts_as_its_data(tmp_path):
    data = np.arange(10, dtype="int32")
    mapped = np.memmap(tmp_path / "data.bin", dtype="int32", mode="w+", shape=(10,))
    mapped[:] = data
    assert fingerprint(mapped) == fingerprint(data)


# -- pandas -----------------------------------------------------------------------------------
def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": [1.0, 2.0, 3.0],
            "s": ["a", "b", "c"],
            "c": pd.Categorical(["u", "v", "u"]),
            "n": pd.array([1, None, 3], dtype="Int64"),
            "t": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]).tz_localize("UTC"),
            "o": pd.Series([{"k": 1}, None, (1, 2)], dtype=object),
        }
    )


def test_equal_frames_have_equal_fingerprints():
    assert fingerprint(_frame()) == fingerprint(_frame())
    assert fingerprint(_frame()) == fingerprint(_frame().copy())


@pytest.mark.parametrize(
    "change",
    [
        lambda f: f[["s", "x", "c", "n", "t", "o"]],  # column order
        lambda f: f.rename(columns={"x": "y"}),  # a column name
        lambda f: f.set_axis([10, 11, 12]),  # the index
        lambda f: f.rename_axis("row"),  # the index's name
        lambda f: f.astype({"x": "float32"}),  # a dtype
        lambda f: f.assign(x=[1.0, 2.0, 4.0]),  # a float
        lambda f: f.assign(s=["a", "b", "d"]),  # a string
        lambda f: f.assign(c=pd.Categorical(["u", "v", "v"])),  # a category
        lambda f: f.assign(n=pd.array([1, 2, 3], dtype="Int64")),  # a missing value
        lambda f: f.assign(o=pd.Series([{"k": 2}, None, (1, 2)], dtype=object)),  # an object
    ],
    ids=["order", "name", "index", "index-name", "dtype", "float", "string", "category", "na", "object"],
)
def test_what_changes_a_frame_changes_its_fingerprint(change):
    assert fingerprint(change(_frame())) != fingerprint(_frame())


def test_series_and_index_names_and_multiindex():
    s = pd.Series([1.0, 2.0], name="a")
    assert fingerprint(s) != fingerprint(s.rename("b"))
    assert fingerprint(s) != fingerprint(s.to_numpy())
    multi = pd.MultiIndex.from_product([[1, 2], ["a", "b"]], names=["n", "l"])
    assert fingerprint(multi) == fingerprint(pd.MultiIndex.from_product([[1, 2], ["a", "b"]], names=["n", "l"]))
    assert fingerprint(multi) != fingerprint(multi.set_names(["n", "m"]))
    assert fingerprint(pd.Series([1], index=pd.RangeIndex(1))) != fingerprint(pd.Series([1], index=[1]))


# -- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, named",
    [
        (threading.Lock(), "_thread.lock"),
        ((x for x in range(3)), "generator"),
        ({"inner": [threading.Lock()]}, "_thread.lock"),
    ],
    ids=["lock", "generator", "nested lock"],
)
def test_an_unpicklable_value_is_refused_with_its_type_and_reason(value, named):
    with pytest.raises(UnhashableInput, match=named) as caught:
        fingerprint(value)
    assert "cannot pickle" in str(caught.value)
    assert isinstance(caught.value, TypeError)


def test_an_open_file_is_refused(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("content")
    with open(path) as handle, pytest.raises(UnhashableInput, match="open file"):
        fingerprint(handle)


def test_fingerprinting_a_plain_value_does_not_import_numpy_or_pandas():
    script = (
        "import sys\n"
        "from nbflow.store.fingerprint import fingerprint\n"
        "fingerprint(1); fingerprint({'a': [1.5, 'x']}); fingerprint(object())\n"
        "print(sorted(name for name in ('numpy', 'pandas') if name in sys.modules))\n"
    )
    assert _run(script) == "[]"
