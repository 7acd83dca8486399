"""Hostile input on every HTTP route of a real gateway: never a 5xx, no internal detail, nothing written.

tests/gateway/test_fuzz.py runs schemathesis over /openapi.json; this module makes sure that document
names every route the app serves (so no route escapes that run), then fuzzes what schemathesis
cannot reach well: JSON-RPC over the streamable MCP transport inside an open session, and hostile
bytes, content types and headers on the tool and billing endpoints. The caller is funded, and no
generated request names a real tool with valid arguments, so every request is a refusal and any
ledger write (transaction, hold, tracked call, balance change) is a failure.

Length: PARAMS.fuzz_examples Hypothesis examples per test, seeded by PARAMS.seed.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from starlette.routing import Mount, Route

from api.gateway.app import create_app
from api.gateway.config import load_settings
from api.ledger import sync as ledger
from api.ops import logins
from tests.reliability.params import PARAMS, report

pytestmark = pytest.mark.timeout(900)

PROTOCOL = "2025-06-18"
MCP_ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
# What must never reach a client: Python tracebacks, driver names, SQL object names.
LEAKS = ("Traceback", "psycopg", "billing.", 'File "')
STATUSES: Counter[int] = Counter()
MCP_STATUSES: Counter[int] = Counter()
CASES: Counter[str] = Counter()

FUZZ = settings(
    max_examples=PARAMS.fuzz_examples,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- helpers -----------------------------------------------------------------------------------------


def _served_routes(app: Any) -> set[tuple[str, str]]:
    served: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Mount):
            # A Mount takes every method; the SDK's message endpoint answers POST only.
            served.add((route.path + "/", "POST"))
        elif isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    served.add((route.path, method))
        else:  # pragma: no cover - a new kind of route must be added to the document and here
            raise AssertionError(f"unexpected route type {route!r}")
    return served


def _ledger_state(gdb: psycopg.Connection[Any], user_id: uuid.UUID) -> tuple[Any, ...]:
    row = gdb.execute(
        """
        SELECT (SELECT count(*) FROM billing.billing_transactions WHERE user_id = %(u)s),
               (SELECT count(*) FROM billing.reservations WHERE user_id = %(u)s),
               (SELECT count(*) FROM billing.cost_tracking WHERE user_id = %(u)s),
               (SELECT balance_usd FROM billing.user_billing WHERE user_id = %(u)s)
        """,
        {"u": user_id},
    ).fetchone()
    assert row is not None
    return tuple(row)


def _check(case: str, reply: httpx.Response, sent: str) -> None:
    STATUSES[reply.status_code] += 1
    if case == "mcp":
        MCP_STATUSES[reply.status_code] += 1
    CASES[case] += 1
    body = reply.text
    assert reply.status_code < 500, f"{case}: {reply.status_code} {body[:2000]}\nsent: {sent[:2000]}"
    for marker in LEAKS:
        if marker in body and marker not in sent:
            raise AssertionError(f"{case}: the answer leaks {marker!r}: {body[:2000]}\nsent: {sent[:2000]}")


class Caller:
    def __init__(self, gateway: Any, gdb: psycopg.Connection[Any], subject: str) -> None:
        self.user_id = ledger.ensure_account(gdb, subject)
        ledger.top_up(gdb, self.user_id, 5, "test", f"http-fuzz-{subject}")
        self.token = gateway.token(subject)
        self.http = httpx.Client(base_url=gateway.base_url, timeout=30)
        self.auth = {"Authorization": f"Bearer {self.token}"}
        tools = self.http.get("/api/tools").json()
        self.tool_names = {t["name"] for t in tools["tools"]} if isinstance(tools, dict) else set()
        assert self.tool_names, tools


@pytest.fixture(scope="module")
def caller(gateway: Any, gateway_db: str) -> Any:
    from api.ledger import db as api_db

    with api_db.connect(gateway_db) as conn:
        c = Caller(gateway, conn, f"http-fuzz-{uuid.uuid4().hex[:8]}")
    yield c
    c.http.close()


# --- A: the document names every route -----------------------------------------------------------


def test_openapi_names_every_served_route(gateway: Any, gateway_db: str) -> None:
    spec = httpx.get(f"{gateway.base_url}/openapi.json", timeout=10).json()
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    settings = load_settings(gateway.env)
    app = create_app(settings, logins.login_urls(settings))
    served = _served_routes(app)
    assert served == documented, f"served only: {served - documented}; documented only: {documented - served}"
    expected_paths = {
        "/health",
        "/metrics",
        "/openapi.json",
        "/sse",
        "/messages/",
        "/mcp",
        "/api/tools",
        "/api/tools/{name}",
        "/api/billing/balance",
        "/api/billing/history",
        "/api/billing/settings",
        "/api/billing/topup",
        "/api/billing/payments/{intent_id}",
        "/api/payments/{provider}/webhook",
        "/api/admin/users/{user_id}/billing",
        "/api/admin/users/{user_id}/adjust",
        "/api/admin/transactions/{transaction_id}/refund",
        "/api/admin/payments/{intent_id}/credit",
        "/api/admin/abuse/events",
        "/api/admin/abuse/flags",
        "/api/admin/abuse/flags/{flag_id}/clear",
        "/api/admin/abuse/flags/{flag_id}/confirm",
    }
    assert {path for path, _ in served} == expected_paths
    # Every route, bar the endless event streams, is fuzzed by tests/gateway/test_fuzz.py.
    operations = {op["operationId"] for ops in spec["paths"].values() for op in ops.values()}
    assert len(operations) == len(documented)


# --- B: JSON-RPC over streamable HTTP --------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**400)
    | st.integers(min_value=-(2**400), max_value=-(2**63))
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "0x10", "", "\u0000", "\ud7ff\ufffd"])
    | st.text(max_size=40)
)
_json = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": [value]}
    return value


_nested = st.integers(min_value=5, max_value=400).map(_deep)
_ids = st.none() | st.integers() | st.integers(min_value=2**64, max_value=2**200) | st.text(max_size=20) | _json


def _tool_names(real: set[str]) -> st.SearchStrategy[Any]:
    # Never a real tool: a refusal must not be charged, and no call here may succeed.
    near = st.sampled_from(sorted(real)).flatmap(
        lambda n: st.sampled_from([n.upper(), n + " ", " " + n, n + "\u0000", n + "/", "../" + n, n * 50])
    )
    return (near | st.text(max_size=60) | _scalars | _json).filter(lambda n: not (isinstance(n, str) and n in real))


def _messages(real: set[str]) -> st.SearchStrategy[dict[str, Any]]:
    call_params = st.fixed_dictionaries(
        {"name": _tool_names(real)},
        optional={"arguments": _json | _nested, "_meta": _json},
    )
    method = st.sampled_from(["tools/call", "tools/list", "initialize", "ping", "resources/list", "prompts/get"]) | (
        st.text(max_size=30)
    )
    # A real tool, but arguments that are not an object: refused by the SDK before any metering.
    wrong_arguments = st.fixed_dictionaries(
        {
            "name": st.sampled_from(sorted(real)),
            "arguments": _json.filter(lambda v: v is not None and not isinstance(v, dict)),
        }
    )
    params = st.one_of(call_params, wrong_arguments, _json, _nested, st.none())
    message = st.fixed_dictionaries(
        {"jsonrpc": st.sampled_from(["2.0", "1.0", ""]) | st.just("2.0") | _scalars, "method": method},
        optional={"id": _ids, "params": params},
    )
    # Mostly well-formed calls of unknown tools, plus arbitrary messages.
    return st.one_of(
        st.fixed_dictionaries(
            {
                "jsonrpc": st.just("2.0"),
                "id": st.integers(1, 10**6),
                "method": st.just("tools/call"),
                "params": call_params | wrong_arguments,
            }
        ),
        message,
    )


def _open_session(caller: Caller) -> str:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "1"}},
    }
    opened = caller.http.post("/mcp", json=init, headers={**caller.auth, **MCP_ACCEPT})
    assert opened.status_code == 200, opened.text
    session_id = opened.headers["mcp-session-id"]
    done = caller.http.post(
        "/mcp",
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers={**caller.auth, **MCP_ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": PROTOCOL},
    )
    assert done.status_code == 202, done.text
    return session_id


def test_hostile_jsonrpc_on_mcp(caller: Caller, gdb: psycopg.Connection[Any]) -> None:
    session_id = _open_session(caller)
    headers = {**caller.auth, **MCP_ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": PROTOCOL}
    before = _ledger_state(gdb, caller.user_id)

    @FUZZ
    @seed(PARAMS.seed)
    @given(message=_messages(caller.tool_names), batch=st.booleans())
    def run(message: dict[str, Any], batch: bool) -> None:
        payload: Any = [message] if batch else message
        # Python's encoder would write NaN; a client's would not: keep the body valid JSON.
        text = json.dumps(payload, allow_nan=False)
        reply = caller.http.post("/mcp", content=text.encode(), headers=headers)
        _check("mcp", reply, text)
        assert _ledger_state(gdb, caller.user_id) == before, f"a refused call wrote to the ledger: {text[:2000]}"

    run()
    # The session survived all of it.
    alive = caller.http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers)
    assert alive.status_code == 200, alive.text


# --- C: hostile bytes, content types and headers on the tool and billing endpoints -------------------


def _refused_body(body: bytes) -> bool:
    """A body no endpoint accepts: not a JSON object, and not empty or `null` (both mean "no arguments")."""
    if not body.strip():
        return False
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return True
    return value is not None and not isinstance(value, dict)


_bodies = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=50).map(lambda b: b'{"a": "' + b + b'\xff\xfe"}'),
    st.sampled_from([b"", b"{", b"[]", b"null", b"1e99999", b"NaN", b'{"a": NaN}', b"\xef\xbb\xbf{}x", b'"x"']),
    _json.map(lambda v: json.dumps(v).encode()),
    _nested.map(lambda v: json.dumps([v]).encode()),
).filter(_refused_body)

_header_value = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), min_size=1, max_size=300).map(
        lambda s: s.encode("latin-1")
    ),
    st.integers(min_value=200, max_value=8000).map(lambda n: b"k" * n),
    st.binary(min_size=1, max_size=60).map(lambda b: bytes(c for c in b if c > 0x20) or b"x"),
)
_content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=latin-1",
        "application/json; charset=nope",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "*/*",
        ";;;",
    ]
)


def _targets(real: set[str]) -> st.SearchStrategy[tuple[str, str]]:
    segment = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40).map(lambda n: quote(n, safe=""))
    real_tool = st.sampled_from(sorted(real)).map(lambda n: ("POST", f"/api/tools/{n}"))
    other_tool = segment.map(lambda n: ("POST", f"/api/tools/{n}"))
    fixed = [
        st.just(target)
        for target in [
            ("GET", "/api/billing/balance"),
            ("GET", "/api/billing/history"),
            ("PUT", "/api/billing/settings"),
            ("POST", "/api/billing/topup"),
            ("PUT", f"/api/admin/users/{uuid.uuid4()}/billing"),
            ("POST", f"/api/admin/users/{uuid.uuid4()}/adjust"),
            ("POST", "/api/admin/transactions/1/refund"),
            ("POST", f"/api/admin/payments/{uuid.uuid4()}/credit"),
            ("GET", "/api/admin/abuse/flags"),
            ("POST", "/api/admin/abuse/flags/1/clear"),
            ("POST", "/api/admin/abuse/flags/1/confirm"),
        ]
    ]
    # Every route equally likely, even in a short run.
    return st.sampled_from([real_tool, other_tool, *fixed]).flatmap(lambda chosen: chosen)


def test_hostile_requests_on_tools_and_billing(caller: Caller, gdb: psycopg.Connection[Any]) -> None:
    before = _ledger_state(gdb, caller.user_id)

    @FUZZ
    @seed(PARAMS.seed)
    @given(
        target=_targets(caller.tool_names),
        body=_bodies,
        content_type=_content_types,
        idempotency_key=st.none() | _header_value,
        extra=st.dictionaries(
            st.sampled_from(["X-Request-Id", "X-API-Key", "Accept", "Content-Encoding"]), _header_value, max_size=2
        ),
        query=st.dictionaries(
            st.sampled_from(["limit", "offset", "type", "from", "to", "before_id", "x"]),
            st.text(max_size=30),
            max_size=3,
        ),
    )
    def run(
        target: tuple[str, str],
        body: bytes,
        content_type: str | None,
        idempotency_key: bytes | None,
        extra: dict[str, bytes],
        query: dict[str, str],
    ) -> None:
        method, path = target
        headers: dict[str, Any] = {**caller.auth, **extra}
        if "X-API-Key" in extra:
            # Credentials of two kinds are refused (401) before anything else: keep them rare.
            headers.pop("Authorization")
        if content_type is not None:
            headers["Content-Type"] = content_type
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        reply = caller.http.request(method, path, content=body, headers=headers, params=query)
        sent = f"{method} {path} {query!r} {headers!r} {body!r}"
        _check(f"{method} {path.split('/')[2]}", reply, sent)
        assert _ledger_state(gdb, caller.user_id) == before, f"a refused request wrote to the ledger: {sent[:2000]}"

    run()
    report(
        "http_fuzz",
        cases=sum(CASES.values()),
        by_route=dict(CASES),
        statuses={str(k): v for k, v in sorted(STATUSES.items())},
        mcp_statuses={str(k): v for k, v in sorted(MCP_STATUSES.items())},
        examples=PARAMS.fuzz_examples,
    )
