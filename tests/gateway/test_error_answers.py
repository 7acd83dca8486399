"""Every error Tollgate answers over HTTP is a ``TollgateError`` (api/errors.py) carrying its status and code,
and the gateway answers all of them through its one handler.

Each subclass is raised inside the real app (``create_app``: its middleware and exception handlers), and a
few are provoked over real HTTP against a real `tollgate run`.
"""

from __future__ import annotations

import datetime as dt
import importlib
import pkgutil
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

import api
from api.errors import TollgateError
from api.jsonio import loads
from api.ledger import errors as ledger_errors
from api.ledger.roles import Authority
from api.tools.registry import ToolRegistry

pytestmark = pytest.mark.timeout(120)


def _all_subclasses(cls: type[TollgateError]) -> set[type[TollgateError]]:
    found: set[type[TollgateError]] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def _import_everything() -> None:
    for module in pkgutil.walk_packages(api.__path__, "api."):
        importlib.import_module(module.name)


def _examples() -> dict[str, tuple[TollgateError, int, str]]:
    """One instance of every answered error, with the status and code it must be answered with."""
    from api.abuse.config import LimitSpec
    from api.abuse.connections import BodyTimeout, SessionsExhausted, TooManySessions, TooManyStreams
    from api.abuse.ratelimit import RateLimited, Refusal
    from api.gateway.app import BodyTooLarge
    from api.gateway.http.envelope import ApiError
    from api.gateway.metering import AlreadyCompleted, CallRefused, LedgerUnavailable, UnknownTool
    from api.jsonio import JSONBodyError
    from api.payments.base import ProviderUnavailable, WebhookRejected
    from api.payments.providers.fondy import FondyRefused
    from api.payments.service import AmountOutOfBounds, PaymentsUnavailable
    from api.tools.registry import InvalidArguments

    examples: dict[str, tuple[TollgateError, int, str]] = {
        "ApiError": (ApiError(418, "teapot", "short and stout", field="spout"), 418, "teapot"),
        "BodyTooLarge": (BodyTooLarge(10), 413, "body_too_large"),
        "RateLimited": (RateLimited(Refusal(LimitSpec("billing_per_ip", 60, "minute", 5), 1500)), 429, "rate_limited"),
        "BodyTimeout": (BodyTimeout(30), 408, "body_timeout"),
        "TooManySessions": (TooManySessions("20 sessions open"), 429, "too_many_sessions"),
        "SessionsExhausted": (SessionsExhausted("1000 sessions open"), 503, "sessions_exhausted"),
        "TooManyStreams": (TooManyStreams("5 streams open"), 429, "too_many_streams"),
        "JSONBodyError": (JSONBodyError("malformed JSON"), 400, "invalid_json"),
        "UnknownTool": (UnknownTool("nope"), 404, "unknown_tool"),
        "InvalidArguments": (InvalidArguments("invalid arguments at text"), 422, "invalid_arguments"),
        "AlreadyCompleted": (AlreadyCompleted("r-1", "completed"), 409, "already_completed"),
        "LedgerUnavailable": (LedgerUnavailable(OSError("down")), 503, "ledger_unavailable"),
        "CallRefused": (
            CallRefused(ledger_errors.InsufficientFunds("not enough", {"available_usd": Decimal("0.01")})),
            402,
            "insufficient_funds",
        ),
        "PaymentsUnavailable": (PaymentsUnavailable("no provider"), 503, "payments_unavailable"),
        "AmountOutOfBounds": (AmountOutOfBounds("too small", field="amount_usd"), 422, "amount_out_of_range"),
        "ProviderUnavailable": (ProviderUnavailable("timeout"), 502, "payment_provider_unavailable"),
        "FondyRefused": (FondyRefused("Fondy refused", 1018), 502, "payment_provider_unavailable"),
        "WebhookRejected": (WebhookRejected("bad signature"), 400, "invalid_webhook"),
        "BillingError": (ledger_errors.BillingError("a refusal"), 500, "internal_error"),
        "LimitExceeded": (ledger_errors.LimitExceeded("a limit"), 500, "internal_error"),
        "PaymentRefused": (
            ledger_errors.PaymentRefused(
                "Top-up refused: too many", "payments.intents_per_hour_per_user",
                dt.datetime(2030, 3, 10, 13, tzinfo=dt.UTC), 3000,
            ),
            429,
            "payment_refused",
        ),
    }
    for code in ledger_errors.ERROR_CODES:
        cls = ledger_errors.EXCEPTIONS[code.sqlstate]
        examples[cls.__name__] = (
            cls(code.meaning, {"figure_usd": Decimal("1.5")}, "a hint"),
            code.http_status,
            code.name,
        )
    return examples


def test_every_answered_error_has_an_example_here() -> None:
    _import_everything()
    names = {cls.__name__ for cls in _all_subclasses(TollgateError)}
    assert names == set(_examples()), "a new TollgateError subclass: add it to _examples with its answer"


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    """The real app (middleware, exception handlers), never started: no pool opens, no request reaches one."""
    from api.gateway.app import create_app
    from api.gateway.config import load_settings

    data_dir: Path = tmp_path_factory.mktemp("errors")
    settings = load_settings({"TOLLGATE_DATA_DIR": str(data_dir), "TOLLGATE_JWT_SECRET": "s" * 64})
    logins = {authority: "postgresql://nobody@127.0.0.1:1/nothing" for authority in Authority}
    app = create_app(settings, logins, registry=ToolRegistry())
    examples = _examples()

    async def raise_example(request: Request) -> Response:
        raise examples[request.path_params["name"]][0]

    app.router.routes.append(Route("/raise/{name}", raise_example))
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("name", sorted(_examples()))
def test_each_error_is_answered_with_its_status_and_code_by_the_one_handler(app_client: TestClient, name: str) -> None:
    error, status, code = _examples()[name]
    reply = app_client.get(f"/raise/{name}")
    assert (error.status, error.code) == (status, code)
    assert reply.status_code == status
    body = loads(reply.content)
    assert body == {"success": False, "error": {"code": code, "message": error.message, **error.extra}}
    for header, value in error.headers.items():
        if header != "Retry-After":
            assert reply.headers[header] == value
    assert "x-request-id" in reply.headers


def test_a_billing_refusal_carries_its_figures_and_hint(app_client: TestClient) -> None:
    body = loads(app_client.get("/raise/UnknownUser").content)
    assert body["error"]["details"] == {"figure_usd": Decimal("1.5")}
    assert body["error"]["hint"] == "a hint"


def test_a_spend_limit_says_when_to_retry() -> None:
    from api.gateway.metering import CallRefused

    refused = CallRefused(ledger_errors.DailyLimitExceeded("limit", {"resets_at": "2999-01-01T00:00:00+00:00"}))
    assert refused.status == 429 and int(refused.headers["Retry-After"]) > 0


def test_an_unexpected_error_is_still_a_500_naming_the_request(app_client: TestClient) -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    app_client.app.router.routes.append(Route("/boom", boom))  # type: ignore[attr-defined]
    reply = app_client.get("/boom", headers={"X-Request-Id": "req-42"})
    assert reply.status_code == 500
    assert loads(reply.content)["error"] == {
        "code": "internal_error",
        "message": "the gateway failed to answer; the request id identifies it in the logs",
        "request_id": "req-42",
    }


# ---- over real HTTP ------------------------------------------------------------------------------


def test_errors_raised_deep_in_a_real_gateway_reach_the_client(gateway: Any) -> None:
    with gateway.client(gateway.token(admin=True)) as client:
        bad_json = client.post("/api/tools/echo", content=b"{", headers={"content-type": "application/json"})
        unknown_tool = client.post("/api/tools/no-such-tool", json={})
        unknown_user = client.get(f"/api/admin/users/{uuid.uuid4()}/billing")
        too_large = client.post("/api/tools/echo", content=b"x" * (2 << 20))
    assert (bad_json.status_code, loads(bad_json.content)["error"]["code"]) == (400, "invalid_json")
    assert (unknown_tool.status_code, loads(unknown_tool.content)["error"]["code"]) == (404, "unknown_tool")
    assert (unknown_user.status_code, loads(unknown_user.content)["error"]["code"]) == (404, "unknown_user")
    assert (too_large.status_code, loads(too_large.content)["error"]["code"]) == (413, "body_too_large")
