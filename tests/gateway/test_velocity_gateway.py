"""Velocity flags and refund caps through a real gateway (`tollgate run` on loopback, real PostgreSQL, real HTTP
and MCP): the caller's address reaches the ledger (behind a trusted proxy: the forwarded client), the
detector runs in the gateway's background, a paused account's tool call says so and names the operator's
contact, administrators list, clear and confirm flags, and a refund past the cap is a 409 that is recorded.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from api.gateway.mcp import BILLING_META
from api.jsonio import loads
from api.ledger import sync as ledger
from tests.gateway.server import Gateway, start_gateway
from tests.gateway.test_mcp import TRANSPORTS, mcp_session, text_of
from tests.helpers import tracking_row

pytestmark = pytest.mark.timeout(120)

D = Decimal
CONTACT = "abuse-desk@tollgate.test"


@pytest.fixture(scope="module")
def gateway(gateway_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """This module's gateway: loopback is a trusted proxy (its X-Forwarded-For is believed), the detector runs
    every second, and a paused account is told to write to CONTACT."""
    with psycopg.connect(gateway_db, autocommit=True) as conn:
        # The ledger's figure of the interval (the gateway's start-up writes its configuration there once the
        # payments rules land; until then the test sets it): a run within half of it is skipped.
        ledger.set_abuse_policy(conn, "velocity.check_interval_seconds", D(1), "test")
    server = start_gateway(
        gateway_db,
        tmp_path_factory.mktemp("velocity-gateway"),
        TOLLGATE_ABUSE_TRUSTED_PROXIES="127.0.0.1",
        TOLLGATE_ABUSE_VELOCITY_CHECK_INTERVAL_SECONDS="1",
        TOLLGATE_ABUSE_VELOCITY_REVIEW_CONTACT=CONTACT,
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def body(response: Any) -> Any:
    return loads(response.content)


def spender(gdb: psycopg.Connection[Any]) -> tuple[str, uuid.UUID]:
    """A funded account with room under its limits: its JWT subject and id."""
    subject = f"vel-{uuid.uuid4().hex[:10]}"
    user_id = ledger.ensure_account(gdb, subject)
    ledger.top_up(gdb, user_id, D(1000), "test", uuid.uuid4().hex)
    ledger.update_settings(gdb, user_id, daily_limit_usd=D(10_000), monthly_limit_usd=D(100_000))
    return subject, user_id


def spike(gdb: psycopg.Connection[Any], user_id: uuid.UUID) -> None:
    """11 USD at once from an account with no history: past 10 x the 1 USD floor."""
    ledger.charge(gdb, user_id, f"spike-{uuid.uuid4().hex}", D(11))


def flag_of(gdb: psycopg.Connection[Any], user_id: uuid.UUID, timeout: float = 20) -> ledger.AccountFlag:
    """The user's open flag, waiting for a detector run to raise it."""
    deadline = time.monotonic() + timeout
    while True:
        flags = ledger.list_account_flags(gdb, user_id=user_id)
        if flags:
            return flags[0]
        assert time.monotonic() < deadline, "no flag was raised"
        time.sleep(0.2)


def paused(gdb: psycopg.Connection[Any]) -> tuple[str, uuid.UUID, ledger.AccountFlag]:
    ledger.set_abuse_policy(gdb, "velocity.pause", D(1), "test")
    try:
        subject, user_id = spender(gdb)
        spike(gdb, user_id)
        flag = flag_of(gdb, user_id)
    finally:
        ledger.set_abuse_policy(gdb, "velocity.pause", D(0), "test")
    assert (flag.paused, flag.account_active) == (True, False)
    return subject, user_id, flag


def test_the_gateway_runs_the_detector_in_the_background(gateway: Gateway, gdb: psycopg.Connection[Any]) -> None:
    _, user_id = spender(gdb)
    spike(gdb, user_id)
    flag = flag_of(gdb, user_id)  # nobody but the gateway's loop runs the detector here
    assert (flag.rule, flag.detail["spent_usd"], flag.paused) == ("velocity.spend_spike", D(11), False)
    assert "velocity flags raised" in gateway.logs()


def test_a_paused_accounts_http_call_says_it_is_paused_pending_review(
    gateway: Gateway, gdb: psycopg.Connection[Any]
) -> None:
    subject, _, flag = paused(gdb)
    with gateway.client(gateway.token(subject)) as client:
        reply = client.post("/api/tools/priced", json={"text": "x"})
    assert reply.status_code == 403, reply.text
    error = body(reply)["error"]
    assert error["code"] == "account_inactive"
    assert error["message"].startswith("Account paused pending review")
    assert f"review flag #{flag.id}" in error["message"]
    assert CONTACT in error["message"]
    assert (error["details"]["paused"], error["details"]["flag_id"]) == (True, flag.id)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_paused_accounts_mcp_call_says_it_is_paused_pending_review(
    gateway: Gateway, gdb: psycopg.Connection[Any], transport: str
) -> None:
    subject, _, flag = paused(gdb)
    headers = {"Authorization": f"Bearer {gateway.token(subject)}"}
    async with mcp_session(gateway, transport, headers) as session:
        result = await session.call_tool("priced", {"text": "x"})
    assert result.is_error
    assert "Account paused pending review" in text_of(result)
    assert f"#{flag.id}" in text_of(result) and CONTACT in text_of(result)
    assert (result.structured_content or {})["error"]["code"] == "account_inactive"


def test_the_callers_address_is_recorded_and_a_fan_out_over_addresses_is_flagged(
    gateway: Gateway, gdb: psycopg.Connection[Any]
) -> None:
    subject, user_id = spender(gdb)
    request_ids = []
    with gateway.client(gateway.token(subject)) as client:
        for i in range(21):  # 20 distinct addresses a window are allowed
            reply = client.post("/api/tools/free", json={}, headers={"X-Forwarded-For": f"198.51.100.{i}"})
            assert reply.status_code == 200, reply.text
            request_ids.append(body(reply)["billing"]["request_id"])
    assert tracking_row(gdb, request_ids[7])["client_ip"] == ipaddress.ip_address("198.51.100.7")
    flag = flag_of(gdb, user_id)
    assert (flag.rule, flag.detail["client_ips"]) == ("velocity.fanout_ips", 21)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_mcp_calls_address_is_recorded(gateway: Gateway, gdb: psycopg.Connection[Any], transport: str) -> None:
    subject, _ = spender(gdb)
    headers = {"Authorization": f"Bearer {gateway.token(subject)}", "X-Forwarded-For": "192.0.2.44"}
    async with mcp_session(gateway, transport, headers) as session:
        result = await session.call_tool("priced", {"text": "x"})
    assert not result.is_error, text_of(result)
    request_id = (result.meta or {})[BILLING_META]["request_id"]
    assert tracking_row(gdb, request_id)["client_ip"] == ipaddress.ip_address("192.0.2.44")


def test_administrators_list_clear_and_confirm_flags(gateway: Gateway, gdb: psycopg.Connection[Any]) -> None:
    subject, user_id, flag = paused(gdb)
    other_subject, other_id, other = paused(gdb)
    with gateway.client(gateway.token(subject)) as user:
        assert user.get("/api/admin/abuse/flags").status_code == 403
        assert user.post(f"/api/admin/abuse/flags/{flag.id}/clear", json={"reason": "me"}).status_code == 403
    with gateway.client(gateway.token("ops-velocity", admin=True)) as admin:
        listed = body(admin.get("/api/admin/abuse/flags", params={"user_id": str(user_id)}))["flags"]
        assert [(f["id"], f["rule"], f["status"], f["paused"]) for f in listed] == [
            (flag.id, "velocity.spend_spike", "open", True)
        ]
        assert listed[0]["detail"]["spent_usd"] == D(11)
        assert flag.id in {f["id"] for f in body(admin.get("/api/admin/abuse/flags"))["flags"]}
        for params in ({"status": "closed"}, {"user_id": "nope"}, {"limit": "0"}):
            assert admin.get("/api/admin/abuse/flags", params=params).status_code == 422
        assert admin.post(f"/api/admin/abuse/flags/{flag.id}/clear", json={}).status_code == 422
        assert admin.post("/api/admin/abuse/flags/999999999/clear", json={"reason": "x"}).status_code == 404

        cleared = admin.post(f"/api/admin/abuse/flags/{flag.id}/clear", json={"reason": "a load test"})
        assert cleared.status_code == 200, cleared.text
        decided = body(cleared)["flag"]
        assert (decided["status"], decided["account_active"], decided["replayed"]) == ("cleared", True, False)
        assert decided["decided_by"] == "user:ops-velocity"
        again = admin.post(f"/api/admin/abuse/flags/{flag.id}/clear", json={"reason": "again"})
        assert body(again)["flag"]["replayed"] is True and body(again)["flag"]["reason"] == "a load test"
        conflict = admin.post(f"/api/admin/abuse/flags/{flag.id}/confirm", json={"reason": "no"})
        assert (conflict.status_code, body(conflict)["error"]["code"]) == (409, "invalid_state")

        confirmed = admin.post(f"/api/admin/abuse/flags/{other.id}/confirm", json={"reason": "card testing"})
        assert body(confirmed)["flag"]["account_active"] is False
        history = body(admin.get("/api/admin/abuse/flags", params={"status": "all", "user_id": str(other_id)}))
        assert [f["status"] for f in history["flags"]] == ["confirmed"]
    with gateway.client(gateway.token(subject)) as user:
        assert user.post("/api/tools/priced", json={"text": "x"}).status_code == 200
    with gateway.client(gateway.token(other_subject)) as user:
        refused = user.post("/api/tools/priced", json={"text": "x"})
        assert refused.status_code == 403 and "paused" not in body(refused)["error"]["message"]
    [event] = ledger.list_abuse_events(gdb, user_id=user_id, rule="velocity.spend_spike", limit=1)
    assert (event.action, event.actor, event.detail["reason"]) == ("cleared", "user:ops-velocity", "a load test")


def test_an_admin_refund_past_the_cap_is_409_and_recorded(gateway: Gateway, gdb: psycopg.Connection[Any]) -> None:
    _, user_id = spender(gdb)
    first = ledger.charge(gdb, user_id, f"rf-{uuid.uuid4().hex}", D(3))
    second = ledger.charge(gdb, user_id, f"rf-{uuid.uuid4().hex}", D(3))
    ledger.set_abuse_policy(gdb, "velocity.refund_cap_usd", D(4), "test")
    try:
        with gateway.client(gateway.token("ops-refunds", admin=True)) as admin:
            done = admin.post(
                f"/api/admin/transactions/{first.transaction_id}/refund",
                json={"amount_usd": "3", "reason": "the tool was down", "idempotency_key": "vel-rf-1"},
            )
            assert done.status_code == 200, done.text
            refused = admin.post(
                f"/api/admin/transactions/{second.transaction_id}/refund",
                json={"amount_usd": "1.5", "reason": "also down", "idempotency_key": "vel-rf-2"},
            )
            blank = admin.post(
                f"/api/admin/transactions/{second.transaction_id}/refund",
                json={"amount_usd": "0.5", "reason": "   ", "idempotency_key": "vel-rf-3"},
            )
    finally:
        ledger.set_abuse_policy(gdb, "velocity.refund_cap_usd", D(100), "test")
    assert refused.status_code == 409, refused.text
    error = body(refused)["error"]
    assert error["code"] == "refund_cap_exceeded"
    assert (error["details"]["cap_usd"], error["details"]["refunded_usd"], error["details"]["remaining_usd"]) == (
        D(4), D(3), D(1))
    assert blank.status_code == 422
    row = gdb.execute(
        "SELECT actor, description FROM billing.billing_transactions WHERE id = %s",
        (body(done)["transaction"]["transaction_id"],),
    ).fetchone()
    assert row == ("user:ops-refunds", "the tool was down")
    [event] = ledger.list_abuse_events(gdb, user_id=user_id, rule="velocity.refund_cap")
    assert (event.action, event.actor, event.detail["requested_usd"]) == ("refused", "user:ops-refunds", D("1.5"))


def test_the_cli_runs_the_detector_and_decides_flags(
    gateway_db: str, gdb: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path
) -> None:
    from api.ops import cli

    monkeypatch.setenv("TOLLGATE_DATABASE_URL", gateway_db)
    monkeypatch.setenv("TOLLGATE_DATA_DIR", str(tmp_path))
    subject, user_id = spender(gdb)
    spike(gdb, user_id)
    assert cli.main(["abuse", "detect"]) == 0
    assert capsys.readouterr().out.startswith("velocity: ")
    flag = flag_of(gdb, user_id)
    assert cli.main(["abuse", "flags", "list", "--user", subject]) == 0
    out = capsys.readouterr().out
    assert f"#{flag.id} " in out and "velocity.spend_spike" in out and "spent_usd=11" in out
    with pytest.raises(SystemExit):  # --reason is required
        cli.main(["abuse", "flags", "clear", str(flag.id)])
    capsys.readouterr()
    assert cli.main(["abuse", "flags", "confirm", str(flag.id), "--reason", "fraud", "--actor", "cli:ops"]) == 0
    out = capsys.readouterr().out
    assert "status: confirmed" in out and "account_active: False" in out and "decided_by: cli:ops" in out
    assert cli.main(["abuse", "flags", "clear", str(flag.id), "--reason", "oops"]) == cli.EXIT_ERROR
    assert "already confirmed" in capsys.readouterr().err
    assert cli.main(["abuse", "flags", "list", "--status", "confirmed", "--user", str(user_id)]) == 0
    assert "cli:ops: fraud" in capsys.readouterr().out
