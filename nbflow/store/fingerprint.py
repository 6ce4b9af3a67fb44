"""Fingerprints of task inputs: a hex digest that is equal for equal values, in any kernel.

>>> fingerprint({"b": 2, "a": 1}) == fingerprint({"a": 1, "b": 2})
True
>>> len({fingerprint(v) for v in (1, 1.0, True, "1")})
4

A value is encoded as a stream of tagged, length-prefixed pieces fed to one
SHA-1 (the fastest of hashlib's digests on large buffers here), so that the
type of every piece counts (``1``, ``1.0``, ``True`` and ``"1"`` differ):

- ``None``, bools, ints, floats (by their bits), complex, str and bytes
  directly; tuples and lists item by item (``(1, 2)`` and ``[1, 2]`` alike, as
  Prefect's JSON-based hash has them); dicts and sets in the order of
  their keys' (items') fingerprints, so insertion order never matters;
- dataclasses, named tuples and pydantic models by their type's qualified
  name and their fields;
- numpy arrays by dtype, shape and the raw bytes of a C-contiguous view (a
  copy only for a non-contiguous array); object arrays element by element;
- pandas DataFrames, Series and Indexes by column names, index and each
  column's values (numpy columns as arrays, categoricals by categories and
  codes, strings element by element, other extension arrays pickled);
- anything else pickled (cloudpickle, protocol 5) straight into the digest,
  large buffers out of band, classes by name (so that an instance of a class
  defined in a notebook has the same fingerprint in every kernel). A value
  that cannot be pickled (a lock, a socket, a generator) or an open file raises
  :class:`UnhashableInput`. Sets nested in such an object are pickled in
  their iteration order, which for strings depends on the process's hash seed.

numpy and pandas are used only when the program has already imported them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable
from operator import itemgetter
from typing import Any

import cloudpickle

Update = Callable[[Any], None]

_LENGTH = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_COMPLEX = struct.Struct("<dd").pack
_FIRST = itemgetter(0)


class UnhashableInput(TypeError):
    """A value that cannot be fingerprinted; the message says which type and why."""


def fingerprint(value: Any) -> str:
    """The hex digest of ``value``: equal for equal values, across processes and runs.

    Raises :class:`UnhashableInput` for a value that cannot be pickled.
    """
    hasher = hashlib.sha1()
    try:
        _feed(hasher.update, value)
    except RecursionError:  # a container that holds itself (or nests deeper than the stack)
        hasher = hashlib.sha1()
        _feed_pickle(hasher.update, value)
    return hasher.hexdigest()


def _digest(value: Any) -> bytes:
    hasher = hashlib.sha1()
    _feed(hasher.update, value)
    return hasher.digest()


def _feed(update: Update, value: Any) -> None:
    handler = _EXACT.get(type(value))
    if handler is not None:
        handler(update, value)
    else:
        _feed_other(update, value)


# -- the built-in types, by exact type ---------------------------------------------------------
def _feed_none(update: Update, value: None) -> None:
    update(b"N")


def _feed_bool(update: Update, value: bool) -> None:
    update(b"T" if value else b"F")


def _feed_int(update: Update, value: int) -> None:
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    update(b"i" + _LENGTH(len(data)) + data)


def _feed_float(update: Update, value: float) -> None:
    update(b"f" + _DOUBLE(value))


def _feed_complex(update: Update, value: complex) -> None:
    update(b"c" + _COMPLEX(value.real, value.imag))


def _feed_text(update: Update, value: str) -> None:
    data = value.encode("utf-8", "surrogatepass")
    update(b"s" + _LENGTH(len(data)))
    update(data)


def _feed_bytes(update: Update, value: bytes | bytearray) -> None:
    update((b"b" if type(value) is bytes else b"B") + _LENGTH(len(value)))
    update(value)


def _feed_sequence(update: Update, value: list[Any] | tuple[Any, ...]) -> None:
    update(b"l" + _LENGTH(len(value)))  # a tuple and an equal list are one key, as in Prefect
    for item in value:
        _feed(update, item)


def _feed_dict(update: Update, value: dict[Any, Any]) -> None:
    # Sorted by the keys' digests (never comparing values), so insertion order does not count.
    items = sorted(((_digest(key), item) for key, item in value.items()), key=_FIRST)
    update(b"d" + _LENGTH(len(items)))
    for key_digest, item in items:
        update(key_digest)
        _feed(update, item)


def _feed_set(update: Update, value: set[Any] | frozenset[Any]) -> None:
    update((b"e" if type(value) is set else b"E") + _LENGTH(len(value)))
    for item_digest in sorted(_digest(item) for item in value):
        update(item_digest)


_EXACT: dict[type, Callable[[Update, Any], None]] = {
    type(None): _feed_none,
    bool: _feed_bool,
    int: _feed_int,
    float: _feed_float,
    complex: _feed_complex,
    str: _feed_text,
    bytes: _feed_bytes,
    bytearray: _feed_bytes,
    list: _feed_sequence,
    tuple: _feed_sequence,
    dict: _feed_dict,
    set: _feed_set,
    frozenset: _feed_set,
}


# -- everything else --------------------------------------------------------------------------
def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _feed_other(update: Update, value: Any) -> None:
    cls = type(value)
    np = sys.modules.get("numpy")
    if np is not None:
        if cls is np.ndarray or cls is np.memmap:  # a memmap is its data; other subclasses pickle
            _feed_array(update, np, value)
            return
        if isinstance(value, np.generic):
            update(b"g")
            _feed_text(update, _dtype_name(value.dtype))
            _feed_bytes(update, value.tobytes())
            return
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, (pd.DataFrame, pd.Series, pd.Index)):
        _feed_pandas(update, np, pd, value)
        return
    if isinstance(value, tuple) and hasattr(cls, "_fields"):  # a named tuple
        update(b"n")
        _feed_text(update, _type_name(cls))
        _feed_sequence(update, tuple(value._fields))
        _feed_sequence(update, tuple(value))
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        update(b"D")
        _feed_text(update, _type_name(cls))
        for item in dataclasses.fields(value):
            _feed_text(update, item.name)
            _feed(update, getattr(value, item.name))
        return
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        update(b"P")
        _feed_text(update, _type_name(cls))
        _feed_dict(update, dict(value))  # fields and extras, nested models left as models
        return
    if isinstance(value, dict):  # a dict subclass: OrderedDict's order counts, as in its ==
        update(b"o" if isinstance(value, OrderedDict) else b"m")
        _feed_text(update, _type_name(cls))
        if isinstance(value, OrderedDict):
            _feed_sequence(update, list(value.items()))
        else:
            _feed_dict(update, value)
        return
    _feed_pickle(update, value)


# -- numpy ------------------------------------------------------------------------------------
def _dtype_name(dtype: Any) -> str:
    return str(dtype.descr) if dtype.names else dtype.str


def _feed_array(update: Update, np: Any, array: Any) -> None:
    update(b"a")
    _feed_text(update, _dtype_name(array.dtype))
    _feed_sequence(update, array.shape)
    if array.dtype.hasobject:
        _feed_sequence(update, array.reshape(-1).tolist())
        return
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    # A flat byte view: hashed in place (hashlib releases the GIL), any dtype (datetimes too).
    update(array.reshape(-1).view(np.uint8))


# -- pandas -----------------------------------------------------------------------------------
def _feed_pandas(update: Update, np: Any, pd: Any, value: Any) -> None:
    if isinstance(value, pd.DataFrame):
        update(b"W" + _LENGTH(value.shape[1]))
        _feed_index(update, np, pd, value.columns)
        _feed_index(update, np, pd, value.index)
        for position in range(value.shape[1]):
            _feed_values(update, np, pd, value.iloc[:, position])
    elif isinstance(value, pd.Series):
        update(b"S")
        _feed(update, value.name)
        _feed_index(update, np, pd, value.index)
        _feed_values(update, np, pd, value)
    else:
        _feed_index(update, np, pd, value)


def _feed_index(update: Update, np: Any, pd: Any, index: Any) -> None:
    if isinstance(index, pd.RangeIndex):  # never materialised
        update(b"R")
        _feed_sequence(update, (index.start, index.stop, index.step, index.name))
    elif isinstance(index, pd.MultiIndex):
        update(b"M")
        _feed_sequence(update, list(index.names))
        for level in range(index.nlevels):
            _feed_values(update, np, pd, index.get_level_values(level))
    else:
        update(b"I")
        _feed(update, index.name)
        _feed_values(update, np, pd, index)


def _feed_values(update: Update, np: Any, pd: Any, values: Any) -> None:
    """The values of a Series or an Index (not its name or index)."""
    dtype = values.dtype
    if isinstance(dtype, np.dtype):
        _feed_array(update, np, values.to_numpy())  # a view, no copy
    elif isinstance(dtype, pd.CategoricalDtype):
        update(b"C")
        _feed(update, dtype.ordered)
        _feed_index(update, np, pd, dtype.categories)
        _feed_array(update, np, values.array.codes)
    elif isinstance(dtype, pd.StringDtype):
        update(b"X")
        _feed_text(update, str(dtype))
        # Element by element: a pickle would depend on which equal strings are the same object.
        _feed_sequence(update, values.to_numpy(dtype=object).tolist())
    else:  # nullable, tz-aware, period, interval, sparse...: their pickles hold their arrays
        update(b"x")
        _feed_text(update, str(dtype))
        _feed_pickle(update, values.array)


# -- pickling ---------------------------------------------------------------------------------
def _class_reference(qualified_name: str) -> str:
    """Stands for a class in a pickle made for hashing (never unpickled): the class by name."""
    return qualified_name


class _HashPickler(cloudpickle.CloudPickler):
    """cloudpickle, but classes by name: a notebook's class is not re-pickled with its code's file names."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type):
            return _class_reference, (_type_name(obj),)
        if isinstance(obj, io.IOBase):  # cloudpickle would read a whole readable file into the pickle
            raise TypeError("an open file has no value to fingerprint; pass its path instead")
        return super().reducer_override(obj)


class _Sink:
    """A file whose ``write`` feeds the digest: the pickle is hashed as it is made, never held."""

    __slots__ = ("write",)

    def __init__(self, write: Update) -> None:
        self.write = write


def _feed_pickle(update: Update, value: Any) -> None:
    update(b"p")

    def out_of_band(buffer: Any) -> bool:
        raw = buffer.raw()
        update(b"r" + _LENGTH(raw.nbytes))
        update(raw)
        return False

    try:
        _HashPickler(_Sink(update), protocol=5, buffer_callback=out_of_band).dump(value)
    except Exception as exc:
        raise UnhashableInput(
            f"{_type_name(type(value))} value cannot be fingerprinted: pickling it failed ({exc})"
        ) from exc


__all__ = ["UnhashableInput", "fingerprint"]
