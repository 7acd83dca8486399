"""JSON in and out of the gateway with money as Decimal end to end.

Parsing: numbers with a fraction or exponent become ``Decimal`` straight from their text (never a
float), NaN/Infinity are refused, and so are duplicate keys (which JSON parsers resolve
differently, so a body could mean two things) and numbers written with more than
``MAX_NUMBER_CHARS`` characters or with an exponent beyond ``MAX_EXPONENT`` (no amount, id or count
needs them; a 4,301-digit integer would otherwise make ``int()`` raise ValueError deep inside the
parser, and ``1e999999999`` overflow the first Decimal arithmetic on it: 500s instead of 400s).

Rendering: ``Decimal`` is written as a JSON number with its exact digits, at least two decimals
(``10.00``, ``0.0003``), never in exponent form.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from api.errors import TollgateError

# The longest number text accepted: 1e12 with 8 decimals is 21 characters, a 64-bit id 20.
MAX_NUMBER_CHARS = 100
# The largest decimal exponent accepted (a double reaches 1e308): 1e999999999 is short text, but Decimal
# arithmetic on it overflows (abs() raises decimal.Overflow) and 1e99999999999999999999 cannot even be
# constructed (decimal.InvalidOperation, not a ValueError): 500s instead of 400s.
MAX_EXPONENT = 1000


class JSONBodyError(TollgateError, ValueError):
    """The text is not acceptable JSON; the message says why. Answered 400 invalid_json."""

    status = 400
    code = "invalid_json"


def _integer(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise JSONBodyError(f"a number of {len(text)} characters is not accepted (at most {MAX_NUMBER_CHARS})")
    return int(text)


def _decimal(text: str) -> Decimal:
    if len(text) > MAX_NUMBER_CHARS:
        raise JSONBodyError(f"a number of {len(text)} characters is not accepted (at most {MAX_NUMBER_CHARS})")
    try:
        value = Decimal(text)
    except ArithmeticError:  # decimal.InvalidOperation: an exponent beyond what Decimal can hold
        raise JSONBodyError(f"the number {text[:40]} is out of range") from None
    if not -MAX_EXPONENT <= value.adjusted() <= MAX_EXPONENT:
        raise JSONBodyError(f"the number {text[:40]} is out of range (exponent beyond ±{MAX_EXPONENT})")
    return value


def _refuse_constant(name: str) -> Any:
    raise JSONBodyError(f"{name} is not a valid JSON number")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JSONBodyError(f"duplicate key {key!r} in a JSON object")
        result[key] = value
    return result


def loads(data: bytes | str) -> Any:
    """Parse JSON text, numbers with a fraction or exponent as Decimal. Raises JSONBodyError."""
    try:
        return json.loads(
            data,
            parse_float=_decimal,
            parse_int=_integer,
            parse_constant=_refuse_constant,
            object_pairs_hook=_unique_object,
        )
    except JSONBodyError:
        raise
    except UnicodeDecodeError:
        raise JSONBodyError("the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise JSONBodyError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise JSONBodyError("JSON nested too deeply") from None
    except ValueError as exc:  # anything else the parser's conversions refuse: a 400, never a 500
        raise JSONBodyError(f"unacceptable JSON: {str(exc)[:200]}") from None


def format_decimal(value: Decimal) -> str:
    """Exact digits, no exponent, at least two decimals: 10 -> 10.00, 0.00030000 -> 0.0003."""
    if not value.is_finite():
        raise ValueError(f"{value} cannot be rendered as a JSON number")
    text = format(value.normalize(), "f")
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, Decimal):
        out.append(format_decimal(value))
    elif isinstance(value, float):
        raise TypeError("floats are not rendered: money and figures must be Decimal")
    elif isinstance(value, Mapping):
        out.append("{")
        first = True
        for key, item in value.items():
            if not first:
                out.append(",")
            first = False
            out.append(_string(str(key)))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, Sequence):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, dt.datetime):
        out.append(json.dumps(iso_utc(value)))
    elif isinstance(value, dt.date):
        out.append(json.dumps(value.isoformat()))
    elif isinstance(value, uuid.UUID):
        out.append(f'"{value}"')
    else:
        raise TypeError(f"cannot render {type(value).__name__} as JSON")


def _string(value: str) -> str:
    """A JSON string. Lone surrogates (from a "\\ud800" escape in some input, echoed back) have no UTF-8
    form: such a string is written with ASCII escapes, so the answer can always be encoded."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True)
    return text


def dumps(value: Any) -> str:
    """Render ``value`` as compact JSON (Decimal as exact numbers, datetimes as UTC ISO 8601)."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def iso_utc(value: dt.datetime) -> str:
    """``2026-01-28T16:42:00Z`` (microseconds kept when present)."""
    text = value.astimezone(dt.UTC).isoformat()
    return text.replace("+00:00", "Z")
