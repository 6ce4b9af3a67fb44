"""Binding call arguments to a task's or flow's parameters, fast.

``inspect.Signature.bind`` costs microseconds per call; a task submitted ten
thousand times binds ten thousand times. :class:`CallSignature` precomputes
what it needs once and binds plain functions (no ``*args``, ``**kwargs`` or
positional-only parameters) with a few dict operations, falling back to
``inspect`` for everything else, and for every call that does not fit, so
errors carry ``inspect``'s wording in Prefect's ``ParameterBindError`` form.
Parameters are a ``{name: value}`` dict, as Prefect has them: ``*args`` under
its name as a tuple, ``**kwargs`` as a dict; a method's ``self`` (or a
classmethod's ``cls``) is a parameter like the others.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from nbflow.exceptions import ParameterBindError

_P = inspect.Parameter


class CallSignature:
    """The parameters of one function, ready for repeated binding."""

    def __init__(self, fn: Callable) -> None:
        self.signature = inspect.signature(fn)
        self.fn_name = getattr(fn, "__name__", None) or type(fn).__name__
        params = list(self.signature.parameters.values())
        self.names = tuple(p.name for p in params)
        self.positional = tuple(
            p.name for p in params if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)
        )
        self.defaults = {p.name: p.default for p in params if p.default is not _P.empty}
        self.required = tuple(
            p.name
            for p in params
            if p.default is _P.empty and p.kind not in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD)
        )
        self.keywords = frozenset(self.names)
        self.var_positional = next((p.name for p in params if p.kind is _P.VAR_POSITIONAL), None)
        self.var_keyword = next((p.name for p in params if p.kind is _P.VAR_KEYWORD), None)
        self.positional_only = tuple(p.name for p in params if p.kind is _P.POSITIONAL_ONLY)
        self.simple = not (self.var_positional or self.var_keyword or self.positional_only)
        self.first: tuple = ()  # the bound instance (or class) of a method, passed before ``args``

    def bound(self, first: Any) -> "CallSignature":
        """The same signature with ``first`` (a method's instance or class) as the first argument of every call."""
        copy = object.__new__(CallSignature)
        copy.__dict__ = self.__dict__.copy()  # share what was precomputed: a method view is made per access
        copy.first = (first,)
        return copy

    def bind(self, args: tuple, kwargs: dict, apply_defaults: bool = True) -> dict[str, Any]:
        """``{name: value}`` for a call with ``args`` and ``kwargs``; ParameterBindError if they do not fit."""
        if self.first:
            args = self.first + args
        if not self.simple:
            return self._bind_slow(args, kwargs, apply_defaults)
        positional = self.positional
        if len(args) > len(positional):
            return self._bind_slow(args, kwargs, apply_defaults)
        params = dict(zip(positional, args))
        if kwargs:
            keywords = self.keywords
            for name in kwargs:
                if name in params or name not in keywords:
                    return self._bind_slow(args, kwargs, apply_defaults)
            params.update(kwargs)
        if len(params) < len(self.names):
            for name in self.required:
                if name not in params:
                    return self._bind_slow(args, kwargs, apply_defaults)
            if apply_defaults:
                for name, default in self.defaults.items():
                    if name not in params:
                        params[name] = default
        return params

    def _bind_slow(self, args: tuple, kwargs: dict, apply_defaults: bool) -> dict[str, Any]:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise self.bind_error(exc, args, kwargs) from None
        if apply_defaults:
            bound.apply_defaults()
        return dict(bound.arguments)

    def bind_error(self, exc: TypeError, args: tuple, kwargs: dict) -> ParameterBindError:
        """Prefect's ``ParameterBindError`` for ``inspect``'s ``exc``: the problem, the signature, what came."""
        return ParameterBindError.for_signature(self.fn_name, self.signature, exc, args, kwargs)

    def apply_defaults(self, params: dict[str, Any]) -> dict[str, Any]:
        """Fill in defaults (and empty ``*args``/``**kwargs``) missing from ``params``, in place."""
        for name, default in self.defaults.items():
            if name not in params:
                params[name] = default
        if self.var_positional and self.var_positional not in params:
            params[self.var_positional] = ()
        if self.var_keyword and self.var_keyword not in params:
            params[self.var_keyword] = {}
        return params

    def call_arguments(self, params: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        """``(args, kwargs)`` to call the function with ``params``."""
        if self.simple:
            return (), params
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for name in self.names:
            if name not in params:
                continue
            value = params[name]
            if name == self.var_positional:
                args.extend(value)
            elif name == self.var_keyword:
                kwargs.update(value)
            elif name in self.positional and (self.var_positional or name in self.positional_only):
                args.append(value)
            else:
                kwargs[name] = value
        return tuple(args), kwargs


def render_run_name(template: Any, parameters: dict[str, Any], owner: str, option: str) -> str:
    """The run name a ``*_run_name`` option gives: a ``str.format`` template or a callable.

    A callable is called with ``parameters=`` if it takes that keyword, else
    with no arguments; it must return a string.
    """
    if callable(template):
        try:
            accepts = "parameters" in inspect.signature(template).parameters
        except (TypeError, ValueError):
            accepts = False
        name = template(parameters=parameters) if accepts else template()
        if not isinstance(name, str):
            raise TypeError(
                f"Callable {template!r} for {option!r} of {owner} returned type "
                f"{type(name).__name__} but a string is required."
            )
        return name
    from nbflow.exceptions import TaskRunNameError

    try:
        return template.format(**parameters)
    except KeyError as exc:
        raise TaskRunNameError(
            f"{option} {template!r} of {owner} names {exc.args[0]!r}, which this run's "
            f"parameters ({', '.join(parameters) or 'none'}) do not have."
        ) from None
