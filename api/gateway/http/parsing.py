"""Reading a request: JSON bodies (money as Decimal, size-capped upstream, validated against a schema with
unknown fields refused), exact money amounts, query and path parameters, the Idempotency-Key header.
Every refusal is a 4xx ``ApiError`` that names the field.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

import jsonschema
from starlette.requests import Request

from api.gateway.http.envelope import ApiError
from api.jsonio import loads

MAX_MONEY = Decimal("1e12")
DECIMAL_TEXT = re.compile(r"^-?[0-9]{1,13}(\.[0-9]{1,20})?$")
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:\-]{1,200}")


MONEY_SCHEMA: dict[str, Any] = {
    "type": ["number", "string"],
    "pattern": r"^-?[0-9]{1,12}(\.[0-9]{1,8})?$",
    "description": "USD amount: a JSON number or a decimal string, at most 8 decimals (parsed as decimal)",
}
UAH_SCHEMA: dict[str, Any] = {
    "type": ["number", "string"],
    "pattern": r"^[0-9]{1,13}(\.[0-9]{1,2})?$",
    "description": "UAH amount: a JSON number or a decimal string, at most 2 decimals",
}
TEXT = {"type": "string", "minLength": 1, "maxLength": 200}


def object_schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


async def read_json(request: Request) -> Any:
    """The body as JSON (money as Decimal); an empty body is None."""
    body = await request.body()
    if not body.strip():
        return None
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", "") and not content_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", f"send the body as application/json, not {content_type}")
    return loads(body)  # JSONBodyError: a TollgateError, 400 invalid_json


async def read_body(request: Request, schema: dict[str, Any], *, empty_ok: bool = False) -> dict[str, Any]:
    data = await read_json(request)
    if data is None:
        if empty_ok:
            return {}
        raise ApiError(400, "missing_body", "a JSON object body is required")
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_body", f"the body must be a JSON object, not {type(data).__name__}")
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(part) for part in first.absolute_path) or "(body)"
        raise ApiError(422, "invalid_request", f"{where}: {first.message}", field=where)
    return data


def money(value: Any, field_name: str, *, places: int = 8, signed: bool = False, positive: bool = False) -> Decimal:
    """A JSON number or decimal string as an exact Decimal, refusing what the ledger would refuse."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ApiError(422, "invalid_amount", f"{field_name} must be a number", field=field_name)
    if isinstance(value, str):
        if not DECIMAL_TEXT.match(value.strip()):
            raise ApiError(
                422, "invalid_amount", f"{field_name} is not a decimal amount: {value[:40]!r}", field=field_name
            )
        value = value.strip()
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ApiError(422, "invalid_amount", f"{field_name} is not a decimal amount", field=field_name) from None
    if not amount.is_finite():
        raise ApiError(422, "invalid_amount", f"{field_name} must be finite", field=field_name)
    # Decide on magnitude before any arithmetic: abs() or quantize() of 1e999999999 raise decimal errors.
    if amount.adjusted() >= MAX_MONEY.adjusted():
        raise ApiError(422, "invalid_amount", f"{field_name} must be below 1e12", field=field_name)
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -places and amount != amount.quantize(Decimal(1).scaleb(-places)):
        raise ApiError(
            422, "invalid_amount", f"{field_name} has more than {places} decimal places: {amount}", field=field_name
        )
    if abs(amount) >= MAX_MONEY:
        raise ApiError(422, "invalid_amount", f"{field_name} must be below 1e12", field=field_name)
    if not signed and amount < 0:
        raise ApiError(422, "invalid_amount", f"{field_name} must not be negative", field=field_name)
    if positive and amount <= 0:
        raise ApiError(422, "invalid_amount", f"{field_name} must be greater than zero", field=field_name)
    return amount.quantize(Decimal(1).scaleb(-places)) if exponent != -places else amount


def int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,9}", raw):
        raise ApiError(422, "invalid_parameter", f"{name} must be a whole number", field=name)
    value = int(raw)
    if not low <= value <= high:
        raise ApiError(422, "invalid_parameter", f"{name} must be between {low} and {high}", field=name)
    return value


def time_param(request: Request, name: str) -> dt.datetime | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(422, "invalid_parameter", f"{name} must be an ISO 8601 date or time", field=name) from None
    if value.year < 1970 or value.year > 9000:
        raise ApiError(422, "invalid_parameter", f"{name} is out of range", field=name)
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def path_uuid(request: Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params[name])
    except ValueError:
        raise ApiError(422, "invalid_parameter", f"{name} must be a UUID", field=name) from None


def path_int(request: Request, name: str) -> int:
    raw = request.path_params[name]
    if not re.fullmatch(r"[0-9]{1,18}", raw) or int(raw) < 1:
        raise ApiError(422, "invalid_parameter", f"{name} must be a positive whole number", field=name)
    return int(raw)


def idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key header, if any, refused unless 1-200 of A-Z a-z 0-9 . _ : -."""
    key = request.headers.get("idempotency-key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(422, "invalid_idempotency_key", "Idempotency-Key must be 1-200 of A-Z a-z 0-9 . _ : -")
    return key
