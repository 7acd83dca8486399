"""The endpoint table enforces who may call each endpoint: the binding checks the access kind before the
handler runs, whatever the handler itself checks, and the public paths are the table's open endpoints.

Driven over real HTTP against a real `tollgate run` (the ``gateway`` fixture), every endpoint of the table
with every kind of caller; the binder alone with handlers that check nothing.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from api.gateway import apikeys
from api.gateway.auth import GatewayUser, Identity, MetricsScraper
from api.gateway.http.access import Access
from api.gateway.http.endpoints import ENDPOINTS, Endpoint, bind, is_public, routes
from api.gateway.http.envelope import ok
from api.jsonio import loads
from api.ledger import sync as ledger
from tests.gateway.server import start_gateway

pytestmark = pytest.mark.timeout(120)

SAMPLE_PARAMETERS = {"name": "no-such-tool", "provider": "stripe", "transaction_id": "1"}
REFUSALS = {
    "credentials_required": "calling tools over HTTP needs a JWT or an API key: send 'Authorization: Bearer "
    "<token>', 'Authorization: Bearer tg_...' or 'X-API-Key: tg_...'",
    "jwt_required": "this endpoint needs a user's JWT (Authorization: Bearer <token>)",
    "admin_required": "this endpoint is for administrators (a JWT with the admin scope)",
    "metrics_token_required": (
        "/metrics needs the metrics token (Authorization: Bearer <token>) or an administrator's JWT"
    ),
}


def concrete(path: str) -> str:
    """The template with harmless values: unknown tool, unknown ids (an answer of 404, never a change)."""
    return re.sub(r"{(\w+)}", lambda m: SAMPLE_PARAMETERS.get(m.group(1), str(uuid.uuid4())), path)


def expected_refusal(access: Access, caller: str) -> tuple[int, str] | None:
    """What the table promises ``caller`` (anonymous, user, admin) on an endpoint of ``access``."""
    if access.open or caller == "admin":
        return None
    if caller == "anonymous":
        if access is Access.METRICS:
            return (401, "metrics_token_required")
        return (401, "credentials_required") if access is Access.CALLER else (401, "jwt_required")
    return (403, "admin_required") if access in (Access.ADMIN, Access.METRICS) else None


def ask(client: httpx.Client, endpoint: Endpoint) -> httpx.Response:
    # No body: every endpoint refuses it (400/404/422) after the access check, so nothing changes.
    return client.request(endpoint.method, concrete(endpoint.path))


@pytest.mark.parametrize("caller", ["anonymous", "user", "admin"])
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[f"{e.method} {e.path}" for e in ENDPOINTS])
def test_every_endpoint_answers_each_kind_of_caller_as_the_table_says(
    gateway: Any, endpoint: Endpoint, caller: str
) -> None:
    token = None if caller == "anonymous" else gateway.token(admin=caller == "admin")
    with gateway.client(token) as client:
        reply = ask(client, endpoint)
    refusal = expected_refusal(endpoint.access, caller)
    if refusal is None:
        assert reply.status_code not in (401, 403), reply.text
        assert reply.status_code < 500, reply.text
        return
    status, code = refusal
    assert (reply.status_code, loads(reply.content)) == (
        status,
        {"success": False, "error": {"code": code, "message": REFUSALS[code]}},
    )
    if status == 401:
        assert reply.headers["www-authenticate"] == 'Bearer realm="tollgate"'


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[f"{e.method} {e.path}" for e in ENDPOINTS])
def test_an_api_key_is_a_caller_but_not_a_user(gateway: Any, gdb: psycopg.Connection[Any], endpoint: Endpoint) -> None:
    key = apikeys.generate_key()
    ledger.create_api_key(gdb, f"access-{uuid.uuid4().hex[:8]}", apikeys.hash_key(key), apikeys.key_prefix(key))
    with gateway.client() as client:
        reply = client.request(endpoint.method, concrete(endpoint.path), headers={"X-API-Key": key})
    if endpoint.access in (Access.USER, Access.ADMIN):
        assert (reply.status_code, loads(reply.content)["error"]["code"]) == (401, "jwt_required")
    elif endpoint.access is Access.METRICS:
        assert (reply.status_code, loads(reply.content)["error"]["code"]) == (401, "metrics_token_required")
    else:
        assert reply.status_code not in (401, 403) and reply.status_code < 500, reply.text


def test_the_open_paths_are_the_tables_public_and_provider_endpoints() -> None:
    for endpoint in ENDPOINTS:
        assert is_public(concrete(endpoint.path)) is endpoint.access.open, endpoint.path
    assert not is_public("/api/payments/Not-A-Provider/webhook")
    assert not is_public("/api/tools/")
    assert not is_public("/mcp") and not is_public("/sse")


def test_a_gateway_refusing_anonymous_callers_serves_exactly_the_open_endpoints(
    gateway_db: str, tmp_path: Path
) -> None:
    server = start_gateway(gateway_db, tmp_path, TOLLGATE_ALLOW_ANONYMOUS="false")
    try:
        with server.client() as client:
            for endpoint in ENDPOINTS:
                reply = ask(client, endpoint)
                is_json = reply.headers.get("content-type", "").startswith("application/json")
                error = (loads(reply.content).get("error") or {}) if is_json else {}
                guarded = reply.status_code == 401 and error.get("message") == (
                    "this gateway does not serve anonymous callers"
                )
                assert guarded is not endpoint.access.open, (endpoint.path, reply.text)
    finally:
        server.stop()


def test_every_route_of_the_app_is_bound_through_the_access_check() -> None:
    bound = routes(cast(Any, None))
    assert [(r.path, r.methods) for r in bound] == [
        (e.path, {e.method, "HEAD"} if e.method == "GET" else {e.method}) for e in ENDPOINTS
    ]
    assert all(r.endpoint.__qualname__.startswith("bind.<") for r in bound)


class _FixedCaller:
    """Sets the request's user from the X-Test-Caller header, as the authentication middleware would."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = dict(scope.get("headers", [])).get(b"x-test-caller", b"").decode()
        if kind == "user":
            scope["user"] = GatewayUser(Identity(kind="user", subject="u"), "t", [], None)
        elif kind == "admin":
            scope["user"] = GatewayUser(Identity(kind="user", subject="a", admin=True), "t", [], None)
        elif kind == "api_key":
            scope["user"] = GatewayUser(Identity(kind="api_key", client_key="k"), "", [], None)
        elif kind == "metrics":
            scope["user"] = MetricsScraper()
        await self.app(scope, receive, send)


async def _checks_nothing(gateway: Any, request: Request, caller: Identity) -> Response:
    return ok(caller=caller.label)


@pytest.mark.parametrize(
    "access,answers",
    [
        (Access.PUBLIC, {"": 200, "api_key": 200, "user": 200, "admin": 200}),
        (Access.PROVIDER, {"": 200, "api_key": 200, "user": 200, "admin": 200}),
        (Access.CALLER, {"": 401, "api_key": 200, "user": 200, "admin": 200}),
        (Access.USER, {"": 401, "api_key": 401, "user": 200, "admin": 200}),
        (Access.ADMIN, {"": 401, "api_key": 401, "user": 403, "admin": 200, "metrics": 401}),
        (Access.METRICS, {"": 401, "api_key": 401, "user": 403, "admin": 200, "metrics": 200}),
        (Access.CALLER, {"metrics": 401}),
        (Access.USER, {"metrics": 401}),
    ],
)
def test_the_binding_enforces_access_for_a_handler_that_checks_nothing(access: Access, answers: dict[str, int]) -> None:
    endpoint = Endpoint("GET", "/dummy", _checks_nothing, "checks nothing", access)
    app = Starlette(routes=[bind(cast(Any, None), endpoint)])
    from api.errors import TollgateError
    from api.gateway.http.envelope import error_response

    async def answer(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TollgateError)
        return error_response(exc)

    app.add_exception_handler(TollgateError, answer)
    with TestClient(_FixedCaller(app)) as client:
        for kind, status in answers.items():
            reply = client.get("/dummy", headers={"X-Test-Caller": kind} if kind else {})
            assert reply.status_code == status, (kind, reply.text)
            if status == 200:
                labels = {"": "anonymous", "api_key": "key:k", "metrics": "metrics"}
                assert loads(reply.content)["caller"] == labels.get(kind, f"user:{'a' if kind == 'admin' else 'u'}")
