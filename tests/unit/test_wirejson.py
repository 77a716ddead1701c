"""anchor_link.wirejson: JSON objects from untrusted bytes, bounded before parsing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anchor_link.wirejson import MAX_CONTAINERS, loads_object


def test_objects_parse_and_everything_else_is_a_value_error() -> None:
    assert loads_object('{"op": "send", "body": {"a": [1, 2]}}', max_size=100) == {
        "op": "send", "body": {"a": [1, 2]},
    }  # fmt: skip
    for bad in ("[1]", "3", "not json", b"\xff\xfe", "[" * 60000, "{" * 300, "x" * 101):
        with pytest.raises(ValueError):
            loads_object(bad, max_size=100 if bad == "x" * 101 else 100_000)
    nested = "[" * MAX_CONTAINERS + "]" * MAX_CONTAINERS
    assert loads_object('{"a": ' + nested[2:-2] + "}", max_size=10_000)["a"]


@given(st.binary(max_size=300))
def test_any_bytes_give_an_object_or_a_value_error(data: bytes) -> None:
    try:
        assert isinstance(loads_object(data, max_size=200), dict)
    except ValueError:
        pass


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=8))
def test_round_trip(value: dict[str, object]) -> None:
    assert loads_object(json.dumps(value), max_size=10_000) == value
