"""The fingerprint of all the code a task runs: the key of the ``CODE`` cache policy.

In a notebook cell (or any user code)::

    def parse(x):
        return x + 1

    def score(x):
        return parse(x) * THRESHOLD

    code_fingerprint(score).parts  # {'python': '3.11.7', 'source of task score': '...',
                                   #  'source of helper parse': '...', 'global THRESHOLD': '...'}

A function's fingerprint is made of labelled parts (label -> short digest or
version), which is how a cache miss explains itself (:func:`describe_change`):

- ``source of task NAME``: the task's own code, and ``source of helper NAME``
  for every user function it reaches, transitively: by a global name, a
  closure cell, a default argument, an attribute of a user module, a method of
  a user class it uses (its own or an instance's), an nbflow task it calls (its
  ``.fn``), ``functools.wraps`` wrappers (their ``__wrapped__``);
- ``global NAME`` and ``closure variable NAME``: the values of the globals and
  closure variables it reads that are data (``global Cls.attr`` for the data
  attributes of a user class), hashed by :func:`nbflow.store.fingerprint.fingerprint`;
  a bound method is its instance's state and a partial its arguments, each with
  its function as a helper;
- ``version of DIST``: the version of each installed distribution whose code
  it reaches (a function, class, module or an object of its types), and
  ``python``: the Python version, which stands for the standard library (and
  for the bytecode, which changes with it).

Two things with one label (a global ``N`` of the notebook and one of a module)
are told apart by where they are from: ``global N (mylib)``.

"User code" is code that is neither in the standard library nor in an
installed distribution: ``__main__`` (a script, a notebook's or IPython's
cells, ``python -i``), code run with ``exec`` and modules outside the Python
installation and its site-packages (a module beside the notebook).

Code is hashed as code objects, not source text: bytecode, constants (nested
code objects too), names, argument counts and flags, never file names or line
numbers. So comments, blank lines and formatting do not change a fingerprint
(a docstring does), and functions with no source file (``exec``, a plain REPL)
have one. Default argument values count as part of their function's source.

Cost: which helpers, globals and imports a function reads is found once per
function object (from its bytecode) and kept in a weakly keyed cache, until its
``__code__`` is replaced. What those names refer to is looked up again on every
call, since a notebook cell can rebind a global or redefine a helper at any
time: the hash of an immutable value (numbers, strings, tuples of those...) is
reused while the name refers to the same object, other values are hashed again.

Values that cannot be hashed never raise: a value that cannot be pickled (a
lock, a socket, an open file, or an object holding one) is the part
``<unhashable TYPE>``, the same in every run, so it neither changes the key
each run nor fails the task; a change in its state is not seen. Limits: only
the first level of a list, tuple or dict global is searched for functions, a
large object is hashed on every call (numpy arrays and pandas frames quickly,
others by pickling), and a user module imported inside a function counts only
once it has been imported.
"""

from __future__ import annotations

import dis
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import site
import struct
import sys
import sysconfig
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

from nbflow.cache_policies import digest_parts
from nbflow.flows import Flow
from nbflow.store.fingerprint import fingerprint
from nbflow.tasks import Task

PYTHON = "python"
_PYTHON_VERSION = (
    platform.python_version()
    if sys.implementation.name == "cpython"
    else f"{platform.python_implementation()} {platform.python_version()}"
)
_SHORT = 16  # hex digits of a part's digest: 64 bits tell one version of a thing from another
_MISSING = object()
_NOTHING: frozenset[str] = frozenset()  # no attribute names
_LENGTH = struct.Struct("<Q").pack


class CodeFingerprint(NamedTuple):
    """All the code a function runs, as one digest and the labelled parts it is made of."""

    digest: str
    """Hex digest of ``parts``: equal digests mean the same code, globals and versions."""
    parts: dict[str, str]
    """Label (``source of helper parse``, ``global THRESHOLD``, ``version of numpy``...) -> digest or version."""


def code_fingerprint(fn: Callable[..., Any]) -> CodeFingerprint:
    """The fingerprint of ``fn`` (a function, an nbflow task, or any callable) and everything it reaches.

    Safe to call from many threads at once; see the module's notes for what
    is cached and what is read again on each call.
    """
    walk = _Walk()
    plan = walk.root(fn)
    parts = walk.parts
    last = plan.last if plan is not None else None
    if last is not None and last[0] == parts:
        digest = last[1]
    else:
        digest = digest_parts(parts)
        if plan is not None:
            plan.last = (parts, digest)
    return CodeFingerprint(digest, dict(parts))  # the caller's copy: ``plan.last`` stays as it was


# -- what code belongs to ---------------------------------------------------------------------
Origin = tuple[tuple[str, str], ...]  # the parts that stand for code that is not the user's

_lock = threading.Lock()
_origins: dict[str | None, Origin | None] = {}
_distributions: dict[str, tuple[str, ...]] | None = None
_PYTHON_ORIGIN: Origin = ((PYTHON, _PYTHON_VERSION),)


def _packages() -> dict[str, tuple[str, ...]]:
    """Top-level module name -> the distributions that install it (read once: it takes milliseconds)."""
    global _distributions
    if _distributions is None:
        with _lock:
            if _distributions is None:
                found = importlib.metadata.packages_distributions()
                _distributions = {top: tuple(sorted(set(dists))) for top, dists in found.items()}
    return _distributions


@functools.cache
def _version(distribution: str) -> str:
    # Once per process: a package upgraded under a running kernel still runs the code it imported.
    try:
        return importlib.metadata.version(distribution)
    except Exception:  # noqa: BLE001 - metadata missing or unreadable: the key must still be made
        return "unknown"


@functools.cache
def _installed_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the standard library's folders, every other folder of the Python installation)."""
    paths = sysconfig.get_paths()
    stdlib = {paths["stdlib"], paths["platstdlib"]}
    other = {paths["purelib"], paths["platlib"], sys.prefix, sys.exec_prefix, sys.base_prefix, *site.getsitepackages()}
    if site.ENABLE_USER_SITE:
        other.add(site.getusersitepackages())

    def folders(dirs: set[str]) -> tuple[str, ...]:
        return tuple(os.path.join(os.path.realpath(d), "") for d in dirs if d)

    return folders(stdlib), folders(other)


def _origin(module_name: str | None) -> Origin | None:
    """The parts that stand for the code of module ``module_name``, or None for user code."""
    try:
        return _origins[module_name]
    except KeyError:
        pass
    origin, decided = _find_origin(module_name)
    if decided:
        _origins[module_name] = origin
    return origin


def _find_origin(module_name: str | None) -> tuple[Origin | None, bool]:
    """(origin, whether that is final): a module not imported yet is decided once it is."""
    if module_name is None or module_name == "__main__":
        return None, True
    top = module_name.partition(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return _PYTHON_ORIGIN, True
    distributions = _packages().get(top)
    if distributions:
        return tuple((f"version of {d}", _version(d)) for d in distributions), True
    module = sys.modules.get(module_name) or sys.modules.get(top)
    if module is None:
        return None, False
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):  # a namespace package or a module made in memory
        return None, True
    path = os.path.realpath(file)
    stdlib, other = _installed_dirs()
    if path.startswith(stdlib):
        return _PYTHON_ORIGIN, True
    if path.startswith(other):  # installed without metadata: its own version string, if any
        version = getattr(sys.modules.get(top), "__version__", None)
        return ((f"version of {top}", str(version) if version is not None else "unknown"),), True
    return None, True


def _function_module(fn: types.FunctionType) -> str | None:
    # Where its globals come from, not ``__module__``, which functools.wraps copies from the wrapped.
    return fn.__globals__.get("__name__")


# -- the structure of one function, found once -------------------------------------------------
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"})
_ATTRIBUTE_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD", "LOAD_SUPER_ATTR", "IMPORT_FROM"})


class _Plan:
    """What a function's code reads, found from its bytecode: kept while ``fn.__code__`` is this code."""

    __slots__ = (
        "attributes",
        "code",
        "digest",
        "globals",
        "helper_label",
        "imports",
        "is_lambda",
        "last",
        "memo",
        "task_label",
    )

    def __init__(self, fn: types.FunctionType) -> None:
        code = fn.__code__
        self.code = code
        hasher = hashlib.sha1()
        _feed_code(hasher.update, code)
        self.digest = hasher.hexdigest()[:_SHORT]
        names: dict[str, str] = {}  # name -> its label, in the order the code reads them
        attributes: set[str] = set()
        imports: dict[str, None] = {}
        for each in _code_objects(code):
            _read_names(each, fn.__globals__, names, attributes, imports)
        self.globals = tuple(names.items())
        self.attributes = frozenset(attributes)
        self.imports = tuple(imports)
        self.task_label = f"source of task {fn.__qualname__}"
        # A functools.wraps wrapper has the name of what it wraps (a helper too): it goes by its own code's.
        name = code.co_qualname if "__wrapped__" in fn.__dict__ else fn.__qualname__
        self.helper_label = f"source of helper {name}"
        self.is_lambda = fn.__name__ == "<lambda>"
        # Label -> (value, its digest), for immutable values only: holds no function, so no cycle.
        self.memo: dict[str, tuple[Any, str]] = {}
        self.last: tuple[dict[str, str], str] | None = None  # the last parts of this root and their digest


def _code_objects(code: types.CodeType) -> list[types.CodeType]:
    found = [code]
    for item in found:  # grows as nested functions, lambdas, comprehensions and classes are found
        found.extend(c for c in item.co_consts if isinstance(c, types.CodeType))
    return found


def _read_names(code: types.CodeType, namespace: dict[str, Any], names: dict[str, str],
                attributes: set[str], imports: dict[str, None]) -> None:
    constants: list[Any] = []  # the last two constants loaded: an import's level and from-list
    for instruction in dis.get_instructions(code):
        op = instruction.opname
        if op in _GLOBAL_OPS:
            names.setdefault(instruction.argval, f"global {instruction.argval}")
        elif op in _ATTRIBUTE_OPS:
            attributes.add(instruction.argval)
        elif op == "IMPORT_NAME":
            level = constants[-2] if len(constants) >= 2 and isinstance(constants[-2], int) else 0
            name = _absolute(instruction.argval, level, namespace)
            if name:
                imports.setdefault(name, None)
        if op == "LOAD_CONST":
            constants = [*constants[-1:], instruction.argval]


def _absolute(name: str, level: int, namespace: dict[str, Any]) -> str | None:
    if not level:
        return name
    try:
        return importlib.util.resolve_name("." * level + name, namespace.get("__package__"))
    except (ImportError, ValueError):  # a relative import outside a package: it fails when run, too
        return None


def _feed_code(update: Callable[[bytes], Any], code: types.CodeType) -> None:
    """What a code object does, without where it is: no file name, first line or line table."""
    update(b"%d,%d,%d,%d;" % (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags))
    for data in (code.co_code, code.co_exceptiontable):
        update(_LENGTH(len(data)))
        update(data)
    for strings in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        text = "\0".join(strings).encode("utf-8", "surrogatepass")
        update(_LENGTH(len(text)))
        update(text)
    update(_LENGTH(len(code.co_consts)))
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            update(b"c")
            _feed_code(update, constant)
        else:  # sets are ordered by their items' digests: a frozenset constant is the same in every process
            update(b"k" + fingerprint(constant).encode())


_plans: weakref.WeakKeyDictionary[types.FunctionType, _Plan] = weakref.WeakKeyDictionary()


def _plan(fn: types.FunctionType) -> _Plan:
    plan = _plans.get(fn)
    if plan is None or plan.code is not fn.__code__:
        plan = _Plan(fn)
        with _lock:
            _plans[fn] = plan
    return plan


# -- values -----------------------------------------------------------------------------------
_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None), type(Ellipsis)})
_CONTAINERS = frozenset({list, tuple, dict, set, frozenset})
# What a class's body holds besides its own functions and data: nothing to hash.
_SLOT_TYPES = (types.MemberDescriptorType, types.GetSetDescriptorType, types.WrapperDescriptorType,
               types.MethodDescriptorType)
_memos: weakref.WeakKeyDictionary[Any, dict[str, tuple[Any, str]]] = weakref.WeakKeyDictionary()


def _immutable(value: Any) -> bool:
    kind = type(value)
    return kind in _SCALARS or ((kind is tuple or kind is frozenset) and all(_immutable(v) for v in value))


def _type_name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _value_digest(value: Any) -> str:
    try:
        return fingerprint(value)[:_SHORT]
    except Exception:  # noqa: BLE001 - cannot be pickled: the same label every run, never an error
        return f"<unhashable {_type_name(type(value))}>"


def _memo(owner: Any) -> dict[str, tuple[Any, str]]:
    memo = _memos.get(owner)
    if memo is None:
        with _lock:
            memo = _memos.setdefault(owner, {})
    return memo


def _wrapped(value: Any) -> Any:
    """What ``functools.wraps`` says ``value`` wraps, read without running any ``__getattr__``."""
    try:
        return object.__getattribute__(value, "__dict__").get("__wrapped__", _MISSING)
    except AttributeError:
        return _MISSING


def _is_code(value: Any) -> bool:
    """Whether ``value`` is code to follow (a function, class, module, task...) rather than data."""
    kind = type(value)
    if kind in _CODE_TYPES:
        return True
    if kind in _SCALARS or kind in _CONTAINERS:
        return False
    return isinstance(value, (type, Task, Flow)) or _wrapped(value) is not _MISSING


# Bound methods and partials are not here: what they are bound to is data (see ``_Walk.stand_in``).
_CODE_TYPES = frozenset({types.FunctionType, types.BuiltinFunctionType, types.ModuleType,
                         staticmethod, classmethod, property, functools.cached_property})


class _Marker(NamedTuple):
    """Stands for a function inside a data value: the function itself is a part of its own."""

    qualified_name: str


def _marker(value: Any) -> _Marker:
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None) or type(value).__qualname__
    return _Marker(str(name))


# -- one walk: the parts of one call ----------------------------------------------------------
class _Walk:
    """Collects the parts of one ``code_fingerprint`` call, following code from the root."""

    def __init__(self) -> None:
        self.parts: dict[str, str] = {PYTHON: _PYTHON_VERSION}
        self.owners: dict[str, Any] = {}  # label -> what it belongs to, so that two things never share one
        self.seen: set[int] = set()  # ids of the functions, classes and modules followed (alive meanwhile)
        self.pending: list[tuple[types.FunctionType, _Plan, str]] = []

    def root(self, fn: Any) -> _Plan | None:
        """Walk everything ``fn`` reaches; its plan, if it is a function (where its last digest is kept)."""
        if isinstance(fn, (Task, Flow)):
            fn = fn.fn
        if type(fn) is not types.FunctionType:  # a bound method, a partial, a builtin, a callable object...
            label = f"source of task {getattr(fn, '__qualname__', type(fn).__qualname__)}"
            self.parts[label] = _value_digest(self.stand_in(fn, ""))
            self.drain()
            return None
        plan = _plan(fn)
        self.seen.add(id(fn))
        self.owners[plan.task_label] = fn
        origin = _origin(_function_module(fn))
        if origin is not None:  # a library function as a task: its code and its version, not what it calls
            self.parts.update(origin)
            self.parts[plan.task_label] = plan.digest
        else:
            self.pending.append((fn, plan, plan.task_label))
            self.drain()
        return plan

    def drain(self) -> None:
        # Breadth first: the parts come in the order a reader meets them (the task, what it calls...).
        for item in self.pending:  # grows while it is walked
            self.function(*item)
        self.pending.clear()

    def claim(self, label: str, owner: Any, context: str | None) -> str | None:
        """The label for ``owner``'s part: None if it has its part already; another one if taken."""
        held = self.owners.setdefault(label, owner)
        if held is owner:
            return None if label in self.parts else label
        base, number = f"{label} ({context or '?'})", 1
        candidate = base
        while True:
            held = self.owners.setdefault(candidate, owner)
            if held is owner:
                return None if candidate in self.parts else candidate
            number += 1
            candidate = f"{base} #{number}"

    # -- functions
    def function(self, fn: types.FunctionType, plan: _Plan, label: str) -> None:
        """The parts of one user function: its code, then whatever its names refer to now."""
        memo, attributes = plan.memo, plan.attributes
        defaults, keyword_defaults = fn.__defaults__, fn.__kwdefaults__
        if defaults or keyword_defaults:
            self.parts[label] = self.with_defaults(fn, plan, defaults or (), keyword_defaults or {})
        else:
            self.parts[label] = plan.digest
        namespace = fn.__globals__
        module = namespace.get("__name__")
        for name, global_label in plan.globals:
            value = namespace.get(name, _MISSING)
            if value is not _MISSING:  # else a builtin (python's part), or not defined yet
                self.reference(value, name, global_label, namespace, module, attributes, memo)
        closure = fn.__closure__
        if closure:
            context = fn.__qualname__
            for name, cell in zip(fn.__code__.co_freevars, closure):
                try:
                    value = cell.cell_contents
                except ValueError:  # a cell not assigned yet
                    continue
                self.reference(value, name, f"closure variable {name}", cell, context, attributes, memo)
        for name in plan.imports:
            origin = _origin(name)
            if origin is not None:
                self.parts.update(origin)
            else:
                imported = sys.modules.get(name)
                if imported is not None:
                    self.module(imported, attributes)

    def with_defaults(self, fn: types.FunctionType, plan: _Plan, defaults: tuple[Any, ...],
                      keyword_defaults: dict[str, Any]) -> str:
        """The source digest of a function with default arguments: its code and their values."""
        code = fn.__code__
        names = code.co_varnames[code.co_argcount - len(defaults):code.co_argcount]
        hasher = hashlib.sha1(plan.digest.encode())
        for name, value in (*zip(names, defaults), *sorted(keyword_defaults.items())):
            piece = self.memoised(plan.memo, f"default {name}", self.stand_in(value, name))
            hasher.update(f"\0{name}={piece}".encode("utf-8", "surrogatepass"))
        return hasher.hexdigest()[:_SHORT]

    def helper(self, fn: types.FunctionType, hint: str) -> None:
        """Follow a function reached by the name ``hint``: walk it if it is user code, else its version."""
        if id(fn) in self.seen:
            return
        self.seen.add(id(fn))
        wrapped = fn.__dict__.get("__wrapped__", _MISSING)
        if wrapped is not _MISSING:
            self.code(wrapped, hint, _NOTHING)
        origin = _origin(_function_module(fn))
        if origin is not None:
            self.parts.update(origin)
            return
        plan = _plan(fn)
        label = plan.helper_label
        if plan.is_lambda and hint:  # a lambda is better known by the name it is reached by
            label = f"source of helper {hint}"
        label = self.claim(label, fn, _function_module(fn))
        if label is not None:
            self.parts[label] = plan.digest  # its place in the order of parts; the walk completes it
            self.pending.append((fn, plan, label))

    # -- what a name refers to
    def reference(self, value: Any, hint: str, label: str, owner: Any, context: str | None,
                  attributes: frozenset[str], memo: dict[str, tuple[Any, str]]) -> None:
        """Follow ``value``, reached by the name ``hint``: code is followed, data is the part ``label``."""
        kind = type(value)
        if kind in _SCALARS:  # the common cases first: a constant, a function
            claimed = self.claim(label, owner, context)
            if claimed is not None:
                self.parts[claimed] = self.memoised(memo, claimed, value)
        elif kind is types.FunctionType:
            self.helper(value, hint)
        elif _is_code(value):
            self.code(value, hint, attributes)
        else:
            self.data(value, hint, label, owner, context, memo)

    def code(self, value: Any, hint: str, attributes: frozenset[str]) -> None:
        """Follow a code-like value: a function, task, method, class, module, wrapper..."""
        kind = type(value)
        if kind is types.FunctionType:
            self.helper(value, hint)
        elif isinstance(value, (Task, Flow)):
            self.code(value.fn, hint, attributes)
        elif kind is types.ModuleType:
            self.module(value, attributes)
        elif isinstance(value, type):
            self.klass(value)
        elif kind is types.MethodType:  # reached as what a wrapper wraps: its class's code, not its instance
            self.code(value.__func__, hint, attributes)
            self.code(value.__self__ if isinstance(value.__self__, type) else type(value.__self__), hint, attributes)
        elif kind is staticmethod or kind is classmethod:
            self.code(value.__func__, hint, attributes)
        elif kind is property:
            for accessor in (value.fget, value.fset, value.fdel):
                if accessor is not None:
                    self.code(accessor, hint, attributes)
        elif kind is functools.cached_property:
            self.code(value.func, hint, attributes)
        elif kind is types.BuiltinFunctionType:
            bound = value.__self__
            module = value.__module__ or (None if bound is None else type(bound).__module__)
            self.parts.update(_origin(module) or ())
        else:  # a callable object wrapping a function (functools.lru_cache...)
            self.code(type(value), hint, attributes)
            wrapped = _wrapped(value)
            if wrapped is not _MISSING:
                self.code(wrapped, hint, attributes)

    def module(self, module: types.ModuleType, attributes: frozenset[str]) -> None:
        """A module: its version, or, for a user module, the attributes the code reads from it.

        An attribute is one of the module's globals, labelled as its functions label it.
        """
        origin = _origin(module.__name__)
        if origin is not None:
            self.parts.update(origin)
            return
        namespace = vars(module)
        name = module.__name__
        memo = _memo(module)
        for attribute in attributes:
            value = namespace.get(attribute, _MISSING)
            if value is not _MISSING:
                self.reference(value, attribute, f"global {attribute}", namespace, name, attributes, memo)

    def klass(self, cls: type) -> None:
        """A class: its version, or, for a user class, its methods (helpers) and data attributes."""
        if id(cls) in self.seen:
            return
        self.seen.add(id(cls))
        origin = _origin(cls.__module__)
        if origin is not None:
            self.parts.update(origin)
            return
        for base in cls.__mro__[1:-1]:  # not itself, not object
            self.klass(base)
        memo = _memo(cls)
        qualified, module = cls.__qualname__, cls.__module__
        for name, value in list(vars(cls).items()):
            if isinstance(value, _SLOT_TYPES):
                continue
            if name[:2] == "__" == name[-2:]:  # __module__, __doc__, __dict__...: only its own methods count
                if _is_code(value) and not isinstance(value, type):
                    self.code(value, name, _NOTHING)
                continue
            if name[0] == "_" == name[-1]:  # an enum's _member_map_ and such: what its members say already
                continue
            self.reference(value, name, f"global {qualified}.{name}", cls, module, _NOTHING, memo)

    def data(self, value: Any, hint: str, label: str, owner: Any, context: str | None,
             memo: dict[str, tuple[Any, str]]) -> None:
        """A data value reached by the name ``hint``: the part ``label``, made of its :meth:`stand_in`."""
        claimed = self.claim(label, owner, context)
        if claimed is not None:
            self.parts[claimed] = self.memoised(memo, claimed, self.stand_in(value, hint))

    def stand_in(self, value: Any, hint: str) -> Any:
        """What is hashed of ``value``: the value itself, with the code in it followed and named instead.

        Code is a function, class, module...; in the first level of a list,
        tuple or dict, a bound method's instance or a partial's arguments.
        """
        if _is_code(value):
            self.code(value, hint, _NOTHING)
            return _marker(value)
        kind = type(value)
        if kind is types.MethodType:  # the instance's state is data, its class's methods are helpers
            self.code(value.__func__, hint, _NOTHING)
            return (self.stand_in(value.__self__, "self"), _marker(value.__func__))
        if kind is functools.partial:
            self.code(value.func, hint, _NOTHING)
            return (_marker(value.func), self.items(value.args), self.items(value.keywords))
        if (kind is list or kind is tuple or kind is dict) and any(map(_is_code, value.values() if kind is dict else value)):
            return self.items(value)
        if kind.__module__ != "builtins":  # what its type's code does counts too
            self.code(kind, hint, _NOTHING)
        return value

    def items(self, value: list[Any] | tuple[Any, ...] | dict[Any, Any]) -> Any:
        """A list, tuple or dict whose code items are followed and named (one level only)."""
        def one(item: Any, key: Any) -> Any:
            if not _is_code(item):
                return item
            self.code(item, key if isinstance(key, str) else "", _NOTHING)
            return _marker(item)

        if type(value) is dict:
            return {key: one(item, key) for key, item in value.items()}
        return type(value)(one(item, "") for item in value)

    @staticmethod
    def memoised(memo: dict[str, tuple[Any, str]], key: str, value: Any) -> str:
        """The digest of ``value``, reused while ``key`` names the same immutable object."""
        known = memo.get(key)
        if known is not None and known[0] is value:
            return known[1]
        digest = _value_digest(value)
        if _immutable(value):
            memo[key] = (value, digest)
        return digest


# -- explaining a miss ------------------------------------------------------------------------
def describe_change(old: dict[str, str], new: dict[str, str]) -> str | None:
    """A sentence naming what changed between two ``parts``, or None if equal.

    >>> describe_change({"global N": "1", "version of numpy": "1.26.4"}, {"global N": "2", "version of numpy": "2.0.0"})
    'the global N changed and the version of numpy changed (1.26.4 -> 2.0.0)'
    """
    if old == new:
        return None
    changes = [_changed(label, old[label], value) if label in old else _added(label, value)
               for label, value in new.items() if old.get(label) != value]
    changes += [_removed(label) for label in old if label not in new]
    if len(changes) == 1:
        return changes[0]
    return f"{', '.join(changes[:-1])} and {changes[-1]}"


def _changed(label: str, old: str, new: str) -> str:
    if label == PYTHON:
        return f"the Python version changed ({old} -> {new})"
    if label.startswith("version of "):
        return f"the {label} changed ({old} -> {new})"
    return f"the {label} changed"


def _added(label: str, value: str) -> str:
    if label.startswith("source of "):
        return f"{label.removeprefix('source of ')} is new"
    if label.startswith("version of "):
        return f"it now uses {label.removeprefix('version of ')} {value}"
    return f"the {label} is new"


def _removed(label: str) -> str:
    if label.startswith("source of "):
        return f"{label.removeprefix('source of ')} is no longer called"
    if label.startswith("version of "):
        return f"it no longer uses {label.removeprefix('version of ')}"
    if label.startswith(("global ", "closure variable ")):
        return f"the {label} is no longer read"
    return f"the {label} is gone"


__all__ = ["CodeFingerprint", "code_fingerprint", "describe_change"]
