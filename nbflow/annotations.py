"""Argument annotations: ``unmapped``, ``allow_failure``, ``quote``, ``opaque``.

An annotation wraps one argument of ``submit``/``map``/a call and changes how
nbflow treats it; the task itself receives the unwrapped value.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")


class BaseAnnotation(tuple, Generic[T]):
    """A wrapper around one value; ``unwrap()`` gives the value back.

    As in Prefect it is a one-element ``tuple`` (``(value,) = annotation``
    unpacks it), equal only to an annotation of the same type.
    """

    __slots__ = ()

    def __new__(cls, value: T) -> "BaseAnnotation[T]":
        return tuple.__new__(cls, (value,))

    @property
    def value(self) -> T:
        return tuple.__getitem__(self, 0)

    def unwrap(self) -> T:
        return tuple.__getitem__(self, 0)

    def rewrap(self, value: Any) -> "BaseAnnotation[Any]":
        return type(self)(value)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:  # by identity of the value, so unhashable values can be wrapped
        return hash((type(self), id(self.value)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"

    def __reduce__(self):
        return (type(self), (self.value,))


class unmapped(BaseAnnotation[T]):
    """Pass this argument whole to every run of ``Task.map`` instead of mapping over it."""

    __slots__ = ()

    def __getitem__(self, _: Any) -> T:  # an infinite array of the one value
        return tuple.__getitem__(self, 0)


class allow_failure(BaseAnnotation[T]):
    """Let the downstream run start even if this upstream failed.

    The downstream receives the upstream's exception instance (``None`` for an
    upstream that never ran). Works in arguments and in ``wait_for``.
    """

    __slots__ = ()


class quote(BaseAnnotation[T]):
    """Pass this argument untouched: futures inside it are not resolved."""

    __slots__ = ()

    def unquote(self) -> T:
        return self.value


class opaque(BaseAnnotation[T]):
    """Resolve a top-level future but do not look inside its value (cheap for big results)."""

    __slots__ = ()


__all__ = ["BaseAnnotation", "unmapped", "allow_failure", "quote", "opaque"]
