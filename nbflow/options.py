"""The options of ``@task`` and ``@flow``, declared once.

Each class has one table of :class:`Option` rows: the option's name, its
default, the attribute that holds it, the check that validates and normalises
it (with Prefect 3.9's exception types and wording, at decoration time), and
which values ``with_options`` takes to mean "keep the current one" (Prefect's
rule differs from option to option). ``Task.__init__``, ``Flow.__init__`` and
both ``with_options`` are driven by these tables; the typed decorator
overloads in ``tasks.py`` and ``flows.py`` list the same keywords for type
checkers, and a test holds them to the tables.

Caching and result options are stored and exposed as Prefect has them; what
they do is another module's business.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nbflow.exceptions import InvalidNameError, ReservedArgumentError

logger = logging.getLogger("nbflow")
task_logger = logging.getLogger("nbflow.tasks")  # where Prefect warns of a task's options

RESERVED_ARGUMENTS = ("wait_for", "return_state")
MAX_RETRY_DELAYS = 50
BANNED_NAME_CHARACTERS = ("/", "%", "&", ">", "<")  # in flow names, as Prefect


class NotSet:
    """Sentinel (the class itself) for an option the user did not give, where ``None`` means something."""


_SAME = object()


@dataclass(frozen=True)
class Option:
    """One option of a Task or a Flow.

    ``check(value, owner, given)`` returns the attribute's value or raises;
    ``owner`` is the object being built (its ``fn`` and the options before
    this one are set), ``given`` every option's value as the user gave it.
    ``keep`` says which values ``with_options`` reads as "keep the current
    one": ``"notset"`` (only leaving the option out), ``"none"`` (also
    ``None``), ``"falsy"`` (any false value), or ``"fixed"`` (``with_options``
    does not take the option and always keeps it). ``with_options`` carries
    the attribute forward, or with ``carry_given`` the value the user gave
    (for an attribute derived from other options).
    """

    name: str
    default: Any = None
    check: Callable[[Any, Any, Mapping[str, Any]], Any] | None = None
    attr: str = ""
    keep: str = "notset"
    carry_given: bool = False
    decorator_default: Any = _SAME

    @property
    def attribute(self) -> str:
        return self.attr or self.name

    @property
    def in_decorator(self) -> Any:
        """The default the decorator (``@task``/``@flow``) gives this option."""
        return self.default if self.decorator_default is _SAME else self.decorator_default


# -- the table machinery -------------------------------------------------------------------------
class OptionTable:
    """The options of one class, in order; drives its ``__init__``, ``with_options`` and decorator."""

    def __init__(self, *options: Option) -> None:
        self.options = options
        self.names = frozenset(o.name for o in options)
        self.defaults = {o.name: o.default for o in options}
        self.decorator_defaults = {o.name: o.in_decorator for o in options if o.decorator_default is not _SAME}
        self._steps = tuple((o.name, o.check, o.attribute) for o in options)
        self._carried = tuple(o.name for o in options if o.carry_given)

    def __iter__(self) -> Any:
        return iter(self.options)

    def check_names(self, options: Mapping[str, Any], where: str, with_options: bool = False) -> None:
        """TypeError, worded as Python's, for a keyword that is not one of the options."""
        unknown = options.keys() - self.names
        if with_options:
            unknown |= {o.name for o in self.options if o.keep == "fixed" and o.name in options}
        if unknown:
            name = sorted(unknown)[0]
            known = [o.name for o in self.options if not (with_options and o.keep == "fixed")]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f". Did you mean {close[0]!r}?" if close else ""  # as Python words it
            raise TypeError(f"{where} got an unexpected keyword argument {name!r}{hint}")

    def apply(self, owner: Any, options: Mapping[str, Any], where: str) -> None:
        """Check ``options`` and set every option's attribute on ``owner`` (defaults for those not given).

        What the user gave for a derived option is kept in ``owner._given_options`` for ``with_options``.
        """
        if options:
            self.check_names(options, where)
        given = self.defaults.copy()
        given.update(options)
        for name, check, attribute in self._steps:
            value = given[name]
            if check is not None:
                value = check(value, owner, given)
            setattr(owner, attribute, value)
        owner._given_options = {name: given[name] for name in self._carried}

    def merge(self, owner: Any, changes: Mapping[str, Any], where: str) -> dict[str, Any]:
        """The options of a copy of ``owner`` with ``changes``, by each option's ``with_options`` rule."""
        self.check_names(changes, where, with_options=True)
        merged = {}
        for option in self.options:
            if option.carry_given:
                current = owner._given_options[option.name]
            else:
                current = getattr(owner, option.attribute)
            value = changes.get(option.name, current)
            if value is NotSet:  # what Prefect's with_options defaults to: keep the option
                value = current
            if (option.keep == "none" and value is None) or (option.keep == "falsy" and not value):
                value = current
            merged[option.name] = value
        return merged

    def signature(self, *leading: inspect.Parameter) -> inspect.Signature:
        """Every option as a keyword with the decorator's default (for ``help()`` and IPython's ``?``)."""
        keywords = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.in_decorator) for o in self]
        return inspect.Signature([*leading, *keywords])


# -- checks shared by tasks and flows -------------------------------------------------------------
def unwrap_method(fn: Any) -> tuple[Any, str | None]:
    """``(function, "classmethod" | "staticmethod" | None)`` for ``@task``/``@flow`` stacked on a method decorator."""
    if isinstance(fn, classmethod):
        return fn.__func__, "classmethod"
    if isinstance(fn, staticmethod):
        return fn.__func__, "staticmethod"
    return fn, None


def check_reserved(names: Iterable[str], what: str) -> None:
    """ReservedArgumentError if the function has a parameter named ``wait_for`` or ``return_state``."""
    for reserved in RESERVED_ARGUMENTS:
        if reserved in names:
            raise ReservedArgumentError(
                f"{reserved!r} is a reserved argument name and cannot be used ({what}); "
                "rename the parameter."
            )


def hook_decorator(option: str) -> Callable[[Any, Callable], Callable]:
    """The method ``obj.on_x(fn)``: append ``fn`` to ``obj.on_x_hooks``, return it (so it decorates)."""
    attribute = f"{option}_hooks"

    def add(self: Any, fn: Callable) -> Callable:
        getattr(self, attribute).append(fn)
        return fn

    add.__name__ = add.__qualname__ = option
    add.__doc__ = f"Decorator adding ``fn`` to the {option} hooks, called as ``fn(owner, run, state)``."
    return add


def fn_name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _hooks(option: str, kind: str) -> Callable[[Any, Any, Mapping[str, Any]], list]:
    def check(value: Any, owner: Any, given: Mapping[str, Any]) -> list:
        if value is None:
            return []
        fix = (
            f"Please provide a list of hooks to {option!r}:\n\n"
            f"@{kind}({option}=[hook1, hook2])\ndef my_{kind}():\n\tpass"
        )
        try:
            hooks = list(value)
        except TypeError:
            raise TypeError(f"Expected iterable for {option!r}; got {type(value).__name__} instead. {fix}") from None
        for hook in hooks:
            if not callable(hook):
                raise TypeError(f"Expected callables in {option!r}; got {type(hook).__name__} instead. {fix}")
        return hooks

    return check


def _run_name(option: str) -> Callable[[Any, Any, Mapping[str, Any]], Any]:
    def check(value: Any, owner: Any, given: Mapping[str, Any]) -> Any:
        if value is not None and not isinstance(value, str) and not callable(value):
            raise TypeError(f"Expected string or callable for {option!r}; got {type(value).__name__} instead.")
        return value

    return check


def _description(value: Any, owner: Any, given: Mapping[str, Any]) -> Any:
    return value or inspect.getdoc(owner.fn)


def _zero_if_none(value: Any, owner: Any, given: Mapping[str, Any]) -> Any:
    return 0 if value is None else value


def _timeout(value: Any, owner: Any, given: Mapping[str, Any]) -> float | None:
    return float(value) if value else None


def _result_storage(value: Any, owner: Any, given: Mapping[str, Any]) -> Any:
    if value and not isinstance(value, (str, os.PathLike)) and getattr(value, "_block_document_id", None) is None:
        raise TypeError(
            "Result storage configuration must be persisted server-side. nbflow has no server: "
            "use a string reference like 'local-file-system/my-storage' or a path instead."
        )
    return value


# -- Task ----------------------------------------------------------------------------------------
def _task_name(value: Any, owner: Any, given: Mapping[str, Any]) -> Any:
    return value or fn_name(owner.fn)


def _tags(value: Any, owner: Any, given: Mapping[str, Any]) -> set[str]:
    return set(value) if value else set()


def _retry_delays(value: Any, owner: Any, given: Mapping[str, Any]) -> Any:
    if value is None:
        value = 0
    if callable(value):
        value = value(owner.retries)  # Prefect computes the delays once, for the task's retries
    elif not isinstance(value, (list, int, float)):
        raise TypeError(
            "Invalid `retry_delay_seconds` provided; must be an int, float, list or callable. "
            f"Received type {type(value)}"
        )
    if isinstance(value, list) and len(value) > MAX_RETRY_DELAYS:
        raise ValueError(f"Can not configure more than {MAX_RETRY_DELAYS} retry delays per task.")
    return value


def _jitter(value: Any, owner: Any, given: Mapping[str, Any]) -> Any:
    if value is not None and value < 0:
        raise ValueError("`retry_jitter_factor` must be >= 0.")
    return value


def _task_persist_result(value: Any, owner: Any, given: Mapping[str, Any]) -> Any:
    if value is None and (
        given["cache_key_fn"] is not None
        or given["result_storage_key"] is not None
        or given["result_storage"] is not None
        or given["result_serializer"] is not None
        or given["cache_policy"] not in (NotSet, None)
    ):
        return True  # asking for a cache or a result location turns persistence on
    return value


def _task_cache_policy(value: Any, owner: Any, given: Mapping[str, Any]) -> Any:
    """The policy in force, derived as Prefect 3.9 does from ``cache_policy``, ``cache_key_fn``,
    ``persist_result`` and ``result_storage_key`` (``DEFAULT`` when none is given)."""
    from nbflow import cache_policies

    name = owner.name
    if value is not NotSet and value is not None and not isinstance(value, cache_policies.CachePolicy):
        raise TypeError(
            f"Task {name!r}: cache_policy must be a cache policy, got {type(value).__name__} {value!r}. "
            "Use one from nbflow.cache_policies (INPUTS, TASK_SOURCE, CODE, INPUTS + CODE, NO_CACHE...) "
            "or a CachePolicy subclass."
        )
    key_fn = given["cache_key_fn"]
    if key_fn is not None:
        if value is not NotSet:
            task_logger.warning("Both `cache_policy` and `cache_key_fn` are set on task %r. `cache_key_fn` will be used.", name)
        value = cache_policies.CachePolicy.from_cache_key_fn(key_fn)
    storage_key = given["result_storage_key"]
    if _task_persist_result(given["persist_result"], owner, given) is False:
        if value not in (NotSet, None) and value != cache_policies.NO_CACHE:
            task_logger.warning("Ignoring `cache_policy` because `persist_result` is False (task %r).", name)
        return None if value is None else cache_policies.NO_CACHE
    if value is NotSet and storage_key is None:
        return cache_policies.DEFAULT
    if value != cache_policies.NO_CACHE and storage_key:
        return None  # the run is stored under result_storage_key instead
    return value


def _retry_condition(value: Any, owner: Any, given: Mapping[str, Any]) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"Expected `retry_condition_fn` to be callable, got {type(value).__name__} instead.")
    return value


def _asset_deps(value: Any, owner: Any, given: Mapping[str, Any]) -> list[Any]:
    if not value:
        return []
    from nbflow.assets import as_assets  # pydantic: imported only by tasks that name assets

    return as_assets(value)


TASK_OPTIONS = OptionTable(
    Option("name", check=_task_name, keep="falsy"),
    Option("description", check=_description, keep="falsy"),
    Option("tags", check=_tags, keep="none"),
    Option("version", keep="fixed"),
    Option("cache_policy", default=NotSet, check=_task_cache_policy, carry_given=True),
    Option("cache_key_fn", keep="falsy"),
    Option("cache_expiration", keep="falsy"),
    Option("task_run_name", check=_run_name("task_run_name")),
    Option("retries", check=_zero_if_none),
    Option("retry_delay_seconds", check=_retry_delays),
    Option("retry_jitter_factor", check=_jitter),
    Option("persist_result", check=_task_persist_result, carry_given=True),
    Option("result_storage", check=_result_storage),
    Option("result_serializer"),
    Option("result_storage_key"),
    Option("cache_result_in_memory", default=True, keep="none"),
    Option("timeout_seconds", check=_timeout, keep="none"),
    # Task() opts out of the flow's log_prints; @task inherits it (None), as in Prefect.
    Option("log_prints", default=False, decorator_default=None),
    Option("refresh_cache"),
    Option("on_completion", check=_hooks("on_completion", "task"), attr="on_completion_hooks", keep="falsy"),
    Option("on_failure", check=_hooks("on_failure", "task"), attr="on_failure_hooks", keep="falsy"),
    Option("on_running", check=_hooks("on_running", "task"), attr="on_running_hooks", keep="falsy"),
    Option("retry_condition_fn", check=_retry_condition, keep="falsy"),
    Option("viz_return_value", keep="falsy"),
    # Prefect 3.9 records assets for its server's lineage graph; nbflow checks and keeps them.
    Option("asset_deps", check=_asset_deps, keep="falsy"),
)


# -- Flow ----------------------------------------------------------------------------------------
def _flow_name(value: Any, owner: Any, given: Mapping[str, Any]) -> str:
    if value is not None and not isinstance(value, str):
        hint = "Perhaps you meant to call it? e.g. '@flow(name=get_flow_run_name())'" if callable(value) else ""
        raise TypeError(f"Expected string for flow parameter 'name'; got {type(value).__name__} instead. {hint}")
    if value and any(c in value for c in BANNED_NAME_CHARACTERS):
        raise InvalidNameError(
            f"Name {value!r} contains an invalid character. Must not contain any of: {list(BANNED_NAME_CHARACTERS)}."
        )
    return value or fn_name(owner.fn).replace("_", "-").replace("<lambda>", "unknown-lambda")


def _flow_version(value: Any, owner: Any, given: Mapping[str, Any]) -> str | None:
    """The given version, else (as Prefect) the MD5 of the file that defines the flow, if it has one."""
    if value:
        return value
    try:
        path = inspect.getsourcefile(owner.fn)
        if path is None:
            return None
        with open(path, "rb") as source:
            return hashlib.md5(source.read(), usedforsecurity=False).hexdigest()
    except (TypeError, OSError):  # a builtin, a callable object, code typed at a prompt
        return None


def _task_runner(value: Any, owner: Any, given: Mapping[str, Any]) -> Any:
    from nbflow.task_runners import TaskRunner, ThreadPoolTaskRunner

    if value is None:
        return ThreadPoolTaskRunner()
    if isinstance(value, type) and issubclass(value, TaskRunner):
        value = value()
    if not isinstance(value, TaskRunner):
        raise TypeError(
            f"Flow {owner.name!r}: task_runner must be a TaskRunner (e.g. ThreadPoolTaskRunner()), got {value!r}"
        )
    return value


def _flow_persist_result(value: Any, owner: Any, given: Mapping[str, Any]) -> Any:
    if value is None and (given["result_storage"] is not None or given["result_serializer"] is not None):
        return True
    return value


FLOW_OPTIONS = OptionTable(
    Option("name", check=_flow_name, keep="falsy"),
    Option("version", check=_flow_version, keep="falsy"),
    Option("flow_run_name", check=_run_name("flow_run_name"), keep="falsy"),
    Option("retries", check=_zero_if_none, keep="none"),
    Option("retry_delay_seconds", check=_zero_if_none, keep="none"),
    Option("task_runner", check=_task_runner, keep="none"),
    Option("description", check=_description, keep="falsy"),
    Option("timeout_seconds", check=_timeout, keep="none"),
    Option("validate_parameters", default=True, attr="should_validate_parameters", keep="none"),
    Option("persist_result", check=_flow_persist_result),
    Option("result_storage", check=_result_storage),
    Option("result_serializer"),
    Option("cache_result_in_memory", default=True, keep="none"),
    Option("log_prints"),
    Option("on_completion", check=_hooks("on_completion", "flow"), attr="on_completion_hooks", keep="falsy"),
    Option("on_failure", check=_hooks("on_failure", "flow"), attr="on_failure_hooks", keep="falsy"),
    Option("on_cancellation", check=_hooks("on_cancellation", "flow"), attr="on_cancellation_hooks", keep="falsy"),
    Option("on_crashed", check=_hooks("on_crashed", "flow"), attr="on_crashed_hooks", keep="falsy"),
    Option("on_running", check=_hooks("on_running", "flow"), attr="on_running_hooks", keep="falsy"),
)


# -- tasks and flows defined in a class body -----------------------------------------------------
class MethodDescriptor:
    """Makes a task or flow defined in a class body behave as a method, as Prefect's do.

    ``instance.attr`` gives a view whose calls get the instance as their
    first argument, a ``classmethod`` the class (``@task`` stacked on
    ``@classmethod`` or ``@staticmethod`` works); the parameters include it
    (``self``/``cls``), so ``cache_key_fn`` and ``task_run_name="{self.x}"``
    see it. The view is a shallow copy sharing everything else, made without
    re-validating, so attribute access stays cheap.
    """

    fn: Any
    _method: str | None
    signature: Any

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        kind = self._method
        if kind == "staticmethod":
            return self
        first = (owner if owner is not None else type(instance)) if kind == "classmethod" else instance
        if first is None:
            return self
        view = object.__new__(type(self))
        view.__dict__ = self.__dict__.copy()
        view.signature = self.signature.bound(first)
        return view

    def _copy_with(self, options: Mapping[str, Any]) -> Any:
        """A new object of this class with ``options``, the same function, method kind and bound instance."""
        new = type(self)(self.fn, **options)
        new._method = self._method
        if self.signature.first:
            new.signature = new.signature.bound(*self.signature.first)
        return new

    @property
    def ismethod(self) -> bool:
        """Bound to an instance (accessed as ``instance.attr``)."""
        return bool(self.signature.first) and self._method is None

    @property
    def isclassmethod(self) -> bool:
        return self._method == "classmethod"

    @property
    def isstaticmethod(self) -> bool:
        return self._method == "staticmethod"

