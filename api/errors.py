"""The root of every error Tollgate answers over HTTP: ``TollgateError`` carries the HTTP status and the
machine-readable ``code`` of the JSON body, so the gateway needs one exception handler, not one per class.

A leaf: it imports nothing from ``api``; every layer may subclass it (``api.ledger.errors.BillingError``,
the metering refusals, the payments errors, ``api.jsonio.JSONBodyError``, the HTTP API's ``ApiError``).
The gateway answers it as ``{"success": false, "error": {"code": code, "message": message, **extra}}`` with
``status`` and ``headers`` (``api.gateway.http.envelope.error_response``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class TollgateError(Exception):
    """An error answered over HTTP. Subclasses set ``status`` and ``code`` as class attributes; an instance
    may override either, add ``extra`` members to the error object and ``headers`` to the answer."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})
        self.extra: dict[str, Any] = extra
