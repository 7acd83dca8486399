"""Who may call an endpoint: the access kinds of the endpoint table, and the check the binding runs before
the handler (``api.gateway.http.endpoints``), so a handler is only ever given a caller of the right kind.

    PUBLIC    anyone, anonymous included, even when the gateway refuses anonymous callers elsewhere
    PROVIDER  a payment provider: no credentials of ours; the handler verifies the signature over the body
    CALLER    a JWT user or an API key (anonymous: 401 credentials_required)
    USER      a JWT user (anonymous or an API key: 401 jwt_required)
    ADMIN     a JWT user holding the admin scope, TOLLGATE_ADMIN_SCOPE (no JWT: 401; no scope: 403)
    METRICS   an administrator, or the metrics scraper: ``Authorization: Bearer <[abuse.metrics] token>``
              (anyone else: 401 with a challenge; a user without the admin scope: 403)
"""

from __future__ import annotations

import enum

from starlette.requests import Request

from api.gateway.auth import Identity, identity_of
from api.gateway.http.envelope import ApiError


class Access(enum.Enum):
    PUBLIC = "public"
    PROVIDER = "provider"
    CALLER = "caller"
    USER = "user"
    ADMIN = "admin"
    METRICS = "metrics"

    @property
    def open(self) -> bool:
        """Served without our credentials (the anonymous guard lets these paths through)."""
        return self in (Access.PUBLIC, Access.PROVIDER)


def authorize(access: Access, request: Request) -> Identity:
    """The request's caller, if it may use an endpoint of ``access``; otherwise the 401 or 403 to answer."""
    caller = identity_of(request)
    if access.open:
        return caller
    if access is Access.METRICS:
        if caller.kind == "metrics" or (caller.kind == "user" and caller.admin):
            return caller
        if caller.kind == "user":
            raise ApiError(403, "admin_required", "this endpoint is for administrators (a JWT with the admin scope)")
        raise ApiError(
            401,
            "metrics_token_required",
            "/metrics needs the metrics token (Authorization: Bearer <token>) or an administrator's JWT",
        ).with_auth_header()
    if access is Access.CALLER:
        if caller.kind not in ("user", "api_key"):
            # Only the tool call is CALLER today, hence the wording.
            raise ApiError(
                401,
                "credentials_required",
                "calling tools over HTTP needs a JWT or an API key: send 'Authorization: Bearer <token>', "
                "'Authorization: Bearer tg_...' or 'X-API-Key: tg_...'",
            ).with_auth_header()
        return caller
    if caller.kind != "user":
        raise ApiError(
            401, "jwt_required", "this endpoint needs a user's JWT (Authorization: Bearer <token>)"
        ).with_auth_header()
    if access is Access.ADMIN and not caller.admin:
        raise ApiError(403, "admin_required", "this endpoint is for administrators (a JWT with the admin scope)")
    return caller
