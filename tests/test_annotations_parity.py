"""Parity with Prefect 3 for argument annotations (``unmapped``, ``allow_failure``, ``quote``).

References (PrefectHQ/prefect): src/prefect/utilities/annotations.py (``BaseAnnotation`` is
a one-element ``tuple`` subclass; ``quote.unquote()``), tests/utilities/test_annotations.py.
"""

from __future__ import annotations

import random

import pytest

from nbflow import allow_failure, quote, unmapped
from nbflow.annotations import BaseAnnotation

pytestmark = pytest.mark.parity


def test_unmapped_acts_as_an_infinite_array():
    thing = unmapped("hello")
    for _ in range(10):
        assert thing[random.randint(0, 100)] == "hello"


def test_quote_unquote_returns_the_value():
    assert quote(1).unquote() == 1
    payload = [1, 2]
    assert quote(payload).unquote() is payload


def test_annotations_are_one_element_tuples():
    for cls in (unmapped, allow_failure, quote):
        a = cls([1, 2])
        assert isinstance(a, tuple) and isinstance(a, BaseAnnotation)
        (inner,) = a
        assert inner == [1, 2] == a.value == a.unwrap()


def test_annotation_equality_needs_the_same_type():
    assert quote(1) == quote(1)
    assert quote(1) != unmapped(1)
    assert repr(allow_failure(3)) == "allow_failure(3)"
