"""Which field an error names: msgspec's path and the field's own name, kept whole."""

from __future__ import annotations

import pytest

from mongars_edge.web.schemas.common import param_of


@pytest.mark.parametrize(
    ("error", "param"),
    [
        ("Object contains unknown field `.`", "."),  # found by tests/web/test_wire_fuzz.py
        ("Object contains unknown field `..x`", "..x"),
        ("Object contains unknown field `z` - at `$.messages[0]`", "messages[0].z"),
        ("Object missing required field `role` - at `$.messages[1]`", "messages[1].role"),
        ("Expected `str`, got `int` - at `$.model`", "model"),
        ("Expected `object`, got `int`", None),
    ],
)
def test_the_field_at_fault_is_named_as_sent(error: str, param: str | None) -> None:
    assert param_of(error)[0] == param
