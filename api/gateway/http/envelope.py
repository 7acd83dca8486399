"""The answer's envelope: ``{"success": true, ...}`` or ``{"success": false, "error": {"code", "message", ...}}``,
the ``ApiError`` a handler raises for a refusal of its own, and the request id of an idempotent tool call.
"""

from __future__ import annotations

import hashlib
from typing import Any

from starlette.responses import Response

from api.errors import TollgateError
from api.jsonio import dumps


class ApiError(TollgateError):
    """A refusal a route words itself: HTTP status, stable code, a message that says what was wrong."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message, status=status, code=code, **extra)

    def with_auth_header(self) -> ApiError:
        """Add the WWW-Authenticate challenge a 401 must carry."""
        self.headers["WWW-Authenticate"] = 'Bearer realm="tollgate"'
        return self


def json_response(payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(payload), status_code=status, media_type="application/json", headers=headers)


def ok(**payload: Any) -> Response:
    return json_response({"success": True, **payload})


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message, **extra}}


def error_response(error: TollgateError) -> Response:
    """The answer to any ``TollgateError``: its status, code, message, extra members and headers."""
    body = error_body(error.code, error.message, **error.extra)
    return json_response(body, error.status, headers=error.headers or None)


def scoped_request_id(principal: str, key: str) -> str:
    """The request id of a tool call sent with ``Idempotency-Key: key`` by ``principal`` (``Identity.label``:
    ``user:<sub>``, ``key:<name>``). Keys belong to the principal that sent them, as Stripe scopes them
    per account: the same key from two principals names two calls, so nobody can squat another's key
    or learn what it was used for. Derived, not stored: ``idem-`` + 40 hex of SHA-256 over
    ``principal + "\n" + key`` (neither contains a newline), so an operator can find a call from the key."""
    digest = hashlib.sha256(f"{principal}\n{key}".encode()).hexdigest()[:40]
    return f"idem-{digest}"
