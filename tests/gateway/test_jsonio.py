"""api.jsonio on its own: what every JSON route of the gateway parses with."""

from __future__ import annotations

from decimal import Decimal

import pytest

from api.jsonio import MAX_NUMBER_CHARS, JSONBodyError, loads


@pytest.mark.parametrize(
    "text",
    [
        "9" * 4301,  # past int()'s digit limit: a ValueError inside json.loads (was a 500 on every route)
        '{"amount_usd": ' + "1" * (MAX_NUMBER_CHARS + 1) + "}",
        "[-" + "1" * MAX_NUMBER_CHARS + "]",
        "1." + "0" * MAX_NUMBER_CHARS,
        "1e" + "9" * MAX_NUMBER_CHARS,
        "[" * 100_000 + "]" * 100_000,
        "NaN",
        '{"a": 1, "a": 2}',
    ],
)
def test_what_no_client_needs_is_a_body_error(text):
    with pytest.raises(JSONBodyError):
        loads(text)


def test_numbers_within_the_bound_parse_exactly():
    assert loads("[12345678901234567890, 0.30000000000000004, 1e12]") == [
        12345678901234567890, Decimal("0.30000000000000004"), Decimal("1e12")]
    assert loads("9" * MAX_NUMBER_CHARS) == int("9" * MAX_NUMBER_CHARS)


@pytest.mark.parametrize("text", ["1e999999999", "-1E+1001", "1e-1001", "1e99999999999999999999", "0e999999999"])
def test_numbers_with_exponents_no_arithmetic_survives_are_a_body_error(text):
    # 1e999999999 parsed, and the first abs() of it raised decimal.Overflow (a 500); 1e99999999999999999999
    # raised decimal.InvalidOperation inside the parser, which is not a ValueError (a 500).
    with pytest.raises(JSONBodyError, match="out of range"):
        loads(text)
    assert loads("[1e308, 1e-320, 1E+1000]") == [Decimal("1e308"), Decimal("1e-320"), Decimal("1E+1000")]
