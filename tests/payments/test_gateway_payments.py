"""Top-ups end to end: a real gateway, the real Stripe SDK and httpx talking to local fakes of the
providers' APIs, webhooks signed with the providers' algorithms and secrets, the real ledger.

Each test uses its own users; the gateway and its database are shared by the module. After each test
verify_ledger() must be empty.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import threading
import time
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest

from api.jsonio import dumps, loads
from api.ledger import sync as ledger
from tests import helpers as h
from tests.gateway.server import tollgate_command
from tests.payments.conftest import STRIPE_WEBHOOK_SECRET, UAH_PER_USD, provider_env
from tests.payments.fakes import FakeStripe, fondy_signature, sign_stripe

WEEK = 7 * 24 * 3600

D = Decimal


OPEN_CLIENTS: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _ledger_clean_after(pdb):
    yield
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()
    assert ledger.verify_ledger(pdb) == []


def body(response: httpx.Response) -> Any:
    return loads(response.content)


def user_client(gw: Any, *, admin: bool = False) -> httpx.Client:
    """A new user's client (closed after the test)."""
    client: httpx.Client = gw.client(gw.token(admin=admin))
    OPEN_CLIENTS.append(client)
    return client


def start_topup(client: httpx.Client, expect: int = 201, **payload: Any) -> dict[str, Any]:
    response = client.post("/api/billing/topup", json=payload)
    assert response.status_code == expect, response.text
    answer: dict[str, Any] = body(response)
    return answer


def balance(client: httpx.Client) -> D:
    response = client.get("/api/billing/balance")
    assert response.status_code == 200, response.text
    value = body(response)["billing"]["balance_usd"]
    assert isinstance(value, D)
    return value


def deliver(gw: Any, provider: str, payload: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/api/payments/{provider}/webhook", content=payload, headers=headers, timeout=30)


def stripe_event(stripe_fake: FakeStripe, kind: str, obj: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return stripe_fake.event(kind, obj, **kw)


def deliver_stripe(gw: Any, event: dict[str, Any], timestamp: int | None = None) -> httpx.Response:
    payload, headers = FakeStripe.delivery(event, STRIPE_WEBHOOK_SECRET, timestamp)
    return deliver(gw, "stripe", payload, headers)


def events_stored(pdb) -> int:
    row = pdb.execute("SELECT count(*) FROM billing.payment_events").fetchone()
    assert row is not None
    return int(row[0])


def stripe_paid(
    pay_gateway, stripe_fake, client, amount: str = "25.00", **pay: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    started = start_topup(client, amount_usd=amount)["payment"]
    session_id = started["checkout_url"].rsplit("/", 1)[-1]
    session = stripe_fake.pay(session_id, **pay)
    return started, session


# ---- full top-ups ---------------------------------------------------------------------------------


def test_stripe_top_up_from_checkout_to_credited_balance(pay_gateway, stripe_fake, pdb):
    client = user_client(pay_gateway)
    answer = start_topup(client, amount_usd="25.00")
    payment = answer["payment"]
    assert (payment["provider"], payment["status"], payment["amount"], payment["currency"]) == (
        "stripe", "pending", D("25.00"), "USD")
    assert payment["checkout_url"].startswith(stripe_fake.url)
    assert balance(client) == 0  # nothing until the provider confirms

    # What the gateway asked Stripe for: one line item of 2500 cents, our intent as the reference.
    session_id = payment["checkout_url"].rsplit("/", 1)[-1]
    created = stripe_fake.session(session_id)
    assert created["amount_total"] == 2500 and created["currency"] == "usd"
    assert created["client_reference_id"] == payment["intent_id"]
    assert stripe_fake.requests[-1].headers["idempotency-key"] == f"tollgate-checkout-{payment['intent_id']}"

    session = stripe_fake.pay(session_id)
    response = deliver_stripe(pay_gateway, stripe_event(stripe_fake, "checkout.session.completed", session))
    assert response.status_code == 200, response.text
    assert (body(response)["outcome"], body(response)["duplicate"]) == ("credited", False)
    assert balance(client) == D(25)

    status = body(client.get(f"/api/billing/payments/{payment['intent_id']}"))["payment"]
    assert (status["status"], status["credited_usd"], status["reversed_usd"]) == ("succeeded", D(25), D(0))
    history = body(client.get("/api/billing/history"))["transactions"]
    assert [(t["type"], t["amount_usd"]) for t in history] == [("topup", D(25))]
    # Another user cannot read it.
    assert user_client(pay_gateway).get(f"/api/billing/payments/{payment['intent_id']}").status_code == 404


def test_fondy_top_up_in_uah_converted_at_the_stored_rate(pay_gateway, fondy_fake, pdb):
    client = user_client(pay_gateway)
    payment = start_topup(client, amount_uah="825.00", provider="fondy")["payment"]
    assert (payment["provider"], payment["currency"]) == ("fondy", "UAH")
    order = fondy_fake.order(payment["intent_id"])
    assert (int(order["amount"]), order["currency"]) == (82500, "UAH")
    fondy_fake.approve(payment["intent_id"])
    payload, headers = fondy_fake.callback(payment["intent_id"])
    response = deliver(pay_gateway, "fondy", payload, headers)
    assert response.status_code == 200, response.text
    assert body(response)["outcome"] == "credited"
    assert balance(client) == D("825.00") / UAH_PER_USD == D(20)
    rows = [r for r in h_ledger_rows(pdb, payment["intent_id"]) if r["type"] == "topup"]
    assert [(r["currency"], r["amount_uah"], r["exchange_rate"]) for r in rows] == [("UAH", D("825.00"), UAH_PER_USD)]
    # The same callback as a form post (Fondy's other encoding) is the same event: a replay.
    form_payload, form_headers = fondy_fake.callback_form(payment["intent_id"])
    replay = deliver(pay_gateway, "fondy", form_payload, form_headers)
    assert replay.status_code == 200 and body(replay)["duplicate"] is True
    assert balance(client) == D(20)


def h_ledger_rows(pdb, intent_id: str) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with pdb.cursor(row_factory=dict_row) as cur:
        rows: list[dict[str, Any]] = cur.execute(
            "SELECT * FROM billing.billing_transactions WHERE payment_id = %s ORDER BY id", (intent_id,)
        ).fetchall()
    return rows


# ---- exactly once ---------------------------------------------------------------------------------


def test_100_concurrent_deliveries_of_the_same_webhook_credit_once(pay_gateway, stripe_fake, pdb):
    client = user_client(pay_gateway)
    payment, session = stripe_paid(pay_gateway, stripe_fake, client, "10.00")
    payload, headers = FakeStripe.delivery(stripe_event(stripe_fake, "checkout.session.completed", session),
                                           STRIPE_WEBHOOK_SECRET)
    barrier = threading.Barrier(100)

    def one(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as own:  # its own connection
            barrier.wait(30)
            return own.post(f"{pay_gateway.base_url}/api/payments/stripe/webhook", content=payload, headers=headers)

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        responses = list(pool.map(one, range(100)))
    assert [r.status_code for r in responses] == [200] * 100
    assert sum(not body(r)["duplicate"] for r in responses) == 1
    assert balance(client) == D(10)
    assert len([r for r in h_ledger_rows(pdb, payment["intent_id"]) if r["type"] == "topup"]) == 1


def test_replay_a_week_later_credits_nothing_and_an_old_signature_is_refused(pay_gateway, stripe_fake, pdb):
    client = user_client(pay_gateway)
    _, session = stripe_paid(pay_gateway, stripe_fake, client, "7.00")
    event = stripe_event(stripe_fake, "checkout.session.completed", session)
    assert body(deliver_stripe(pay_gateway, event))["outcome"] == "credited"
    # Stripe re-delivers the same event a week later (freshly signed): acknowledged, ignored.
    later = deliver_stripe(pay_gateway, event, timestamp=int(time.time()))
    assert later.status_code == 200 and body(later)["duplicate"] is True
    # Someone replays the week-old delivery as it was captured: its signature is outside the tolerance.
    before = events_stored(pdb)
    stale = deliver_stripe(pay_gateway, event, timestamp=int(time.time()) - WEEK)
    assert stale.status_code == 400 and "tolerance" in stale.text
    assert events_stored(pdb) == before
    assert balance(client) == D(7)


def test_forged_and_tampered_deliveries_are_refused_and_nothing_is_stored(pay_gateway, stripe_fake, fondy_fake, pdb):
    client = user_client(pay_gateway)
    payment, session = stripe_paid(pay_gateway, stripe_fake, client, "9.00")
    payload, headers = FakeStripe.delivery(stripe_event(stripe_fake, "checkout.session.completed", session),
                                           STRIPE_WEBHOOK_SECRET)
    tampered = payload.replace(b'"amount_total": 900', b'"amount_total": 900000')
    assert tampered != payload
    now = int(time.time())
    attempts = [
        (payload, {"Content-Type": "application/json"}),  # no signature
        (payload, {"Stripe-Signature": sign_stripe(payload, "whsec_wrong")}),  # forged
        (tampered, headers),  # a valid signature over another body
        (payload, {"Stripe-Signature": sign_stripe(payload, STRIPE_WEBHOOK_SECRET, now + 3600)}),  # from the future
        (payload, {"Stripe-Signature": "t=abc,v1=zz"}),  # malformed header
        (b"\xff\xfe" + payload, headers),  # not UTF-8
    ]
    before = events_stored(pdb)
    for attempt, attempt_headers in attempts:
        response = deliver(pay_gateway, "stripe", attempt, attempt_headers)
        assert response.status_code == 400, (attempt_headers, response.text)
        assert body(response)["error"]["code"] == "invalid_webhook"
    # Fondy: a callback signed with the wrong key, and a genuine one with a changed amount.
    fondy_payment = start_topup(client, amount_usd="5.00", provider="fondy")["payment"]
    fondy_fake.approve(fondy_payment["intent_id"])
    genuine, fondy_headers = fondy_fake.callback(fondy_payment["intent_id"])
    fields = loads(genuine)
    forged = {**fields, "signature": fondy_signature("not-the-key", fields)}
    changed = {**fields, "actual_amount": "500000"}
    for attempt_fields in (forged, changed, {k: v for k, v in fields.items() if k != "signature"}):
        response = deliver(pay_gateway, "fondy", dumps(attempt_fields).encode(), fondy_headers)
        assert response.status_code == 400, response.text
    assert events_stored(pdb) == before
    assert balance(client) == 0
    assert "webhook rejected" in pay_gateway.logs()
    # The genuine deliveries still work afterwards.
    assert body(deliver(pay_gateway, "stripe", payload, headers))["outcome"] == "credited"
    assert body(deliver(pay_gateway, "fondy", genuine, fondy_headers))["outcome"] == "credited"
    assert balance(client) == D(14)
    del payment


def test_unknown_events_and_unknown_intents_are_acknowledged_and_credit_nothing(pay_gateway, stripe_fake, pdb):
    customer = {"id": "cus_1", "object": "customer"}
    other = deliver_stripe(pay_gateway, stripe_event(stripe_fake, "customer.created", customer))
    assert other.status_code == 200 and body(other)["outcome"] == "ignored"
    ghost_session = {"id": "cs_not_ours", "object": "checkout.session", "payment_status": "paid", "status": "complete",
                     "amount_total": 100000, "currency": "usd", "client_reference_id": str(uuid.uuid4()),
                     "payment_intent": "pi_not_ours", "metadata": {}}
    ghost = deliver_stripe(pay_gateway, stripe_event(stripe_fake, "checkout.session.completed", ghost_session))
    assert ghost.status_code == 200 and body(ghost)["outcome"] == "unknown_intent"
    review = pdb.execute("SELECT reason FROM billing.payments_needing_review WHERE event_id = %s",
                         (loads(FakeStripe.delivery(stripe_event(stripe_fake, "x", {}), "s")[0])["id"],)).fetchall()
    assert review == []  # (a different event id: nothing matches)
    assert pdb.execute(
        "SELECT count(*) FROM billing.payment_events WHERE outcome = 'unknown_intent' AND payload LIKE '%cs_not_ours%'"
    ).fetchone() == (1,)
    for provider, status in (("monobank", 404), ("Stripe", 404)):
        assert deliver(pay_gateway, provider, b"{}", {}).status_code == status


def test_oversized_webhook_body_is_refused(pay_gateway):
    response = deliver(pay_gateway, "stripe", b"{" + b" " * (2 * 1024 * 1024) + b"}", {"Stripe-Signature": "t=1,v1=0"})
    assert response.status_code == 413


# ---- refunds, chargebacks, mismatches -------------------------------------------------------------


def test_refund_after_success_is_clawed_back_and_further_calls_are_refused(pay_gateway, stripe_fake, pdb):
    client = user_client(pay_gateway)
    payment, session = stripe_paid(pay_gateway, stripe_fake, client, "10.00")
    deliver_stripe(pay_gateway, stripe_event(stripe_fake, "checkout.session.completed", session))
    spent = client.post("/api/tools/priced", json={"text": "hi"})
    assert spent.status_code == 200, spent.text
    charge = stripe_fake.refund(session["id"], 1000)
    response = deliver_stripe(pay_gateway, stripe_event(stripe_fake, "charge.refunded", charge))
    assert body(response)["outcome"] == "reversed"
    assert balance(client) < 0
    refused = client.post("/api/tools/priced", json={"text": "hi"})
    assert refused.status_code == 402, refused.text
    clawback = h_ledger_rows(pdb, payment["intent_id"])[-1]
    assert (clawback["type"], clawback["amount_usd"]) == ("adjustment", D(-10))
    assert clawback["refund_of"] == h_ledger_rows(pdb, payment["intent_id"])[0]["id"]


def test_dispute_is_clawed_back_and_reinstated_when_won(pay_gateway, stripe_fake):
    client = user_client(pay_gateway)
    _, session = stripe_paid(pay_gateway, stripe_fake, client, "12.00")
    deliver_stripe(pay_gateway, stripe_event(stripe_fake, "checkout.session.completed", session))
    dispute = stripe_fake.dispute(session["id"])
    assert body(deliver_stripe(pay_gateway, stripe_event(stripe_fake, "charge.dispute.created", dispute)))[
        "outcome"] == "reversed"
    assert balance(client) == 0
    won = stripe_fake.close_dispute(dispute["id"], won=True)
    assert body(deliver_stripe(pay_gateway, stripe_event(stripe_fake, "charge.dispute.closed", won)))[
        "outcome"] == "reinstated"
    assert balance(client) == D(12)


def test_fondy_reversal_is_clawed_back(pay_gateway, fondy_fake):
    client = user_client(pay_gateway)
    payment = start_topup(client, amount_usd="8.00", provider="fondy")["payment"]
    fondy_fake.approve(payment["intent_id"])
    assert body(deliver(pay_gateway, "fondy", *fondy_fake.callback(payment["intent_id"])))["outcome"] == "credited"
    fondy_fake.reverse(payment["intent_id"], 300)
    assert body(deliver(pay_gateway, "fondy", *fondy_fake.callback(payment["intent_id"])))["outcome"] == (
        "already_credited,reversed")
    assert balance(client) == D(5)


def test_refund_before_success_and_success_after_expiry_lose_nothing(pay_gateway, stripe_fake):
    client = user_client(pay_gateway)
    _, session = stripe_paid(pay_gateway, stripe_fake, client, "6.00")
    charge = stripe_fake.refund(session["id"], 200)
    paid_event = stripe_event(stripe_fake, "checkout.session.completed", session)
    expired_event = stripe_event(stripe_fake, "checkout.session.expired", {**session, "status": "expired"})
    refunded = stripe_event(stripe_fake, "charge.refunded", charge)
    assert body(deliver_stripe(pay_gateway, refunded))["outcome"] == "deferred"
    assert body(deliver_stripe(pay_gateway, expired_event))["outcome"] == "expired"
    assert body(deliver_stripe(pay_gateway, paid_event))["outcome"] == "credited,reversed"
    assert balance(client) == D(4)


# ---- starting payments: validation and configuration ----------------------------------------------


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"amount_usd": "0.50"}, 422, "amount_out_of_range"),
        ({"amount_usd": "1000.01"}, 422, "amount_out_of_range"),
        ({"amount_usd": "5.001"}, 422, "invalid_amount"),
        ({"amount_usd": "5", "amount_uah": "100"}, 422, "invalid_request"),
        ({}, 422, "invalid_request"),
        ({"amount_usd": "NaN"}, 422, "invalid_request"),
        ({"amount_usd": 5.5}, 201, None),  # a JSON number is parsed as a decimal, never a float
        ({"amount_usd": "5", "provider": "paypal"}, 503, "payments_unavailable"),
        ({"amount_usd": "5", "payment_id": "x"}, 422, "invalid_request"),
        ({"amount_usd": "5", "user_id": str(uuid.uuid4()), "payment_id": "x"}, 403, "topup_not_self_service"),
        ({"amount_uah": "49.99"}, 422, "amount_out_of_range"),
    ],
)
def test_topup_validation(pay_gateway, payload, status, code):
    response = user_client(pay_gateway).post("/api/billing/topup", json=payload)
    assert response.status_code == status, response.text
    if code is not None:
        assert body(response)["error"]["code"] == code


def test_topup_replays_by_idempotency_key(pay_gateway, stripe_fake):
    client = user_client(pay_gateway)
    first = client.post("/api/billing/topup", json={"amount_usd": "5.00"}, headers={"Idempotency-Key": "pay-1"})
    again = client.post("/api/billing/topup", json={"amount_usd": "5.00"}, headers={"Idempotency-Key": "pay-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert body(first)["payment"] == body(again)["payment"]
    conflict = client.post("/api/billing/topup", json={"amount_usd": "6.00"}, headers={"Idempotency-Key": "pay-1"})
    assert conflict.status_code == 409


def test_provider_down_answers_502_the_intent_fails_and_a_retry_of_the_request_pays(pay_gateway, stripe_fake, pdb):
    client = user_client(pay_gateway)
    key = {"Idempotency-Key": f"retry-{uuid.uuid4().hex}"}
    stripe_fake.fail_next(3, "500")  # the SDK retries twice
    response = client.post("/api/billing/topup", json={"amount_usd": "5.00"}, headers=key)
    assert response.status_code == 502 and body(response)["error"]["code"] == "payment_provider_unavailable"
    assert pdb.execute("SELECT status FROM billing.payment_intents ORDER BY created_at DESC LIMIT 1").fetchone() == (
        "failed",)
    retried = client.post("/api/billing/topup", json={"amount_usd": "5.00"}, headers=key)
    assert retried.status_code == 200, retried.text
    payment = body(retried)["payment"]
    assert payment["status"] == "pending" and payment["checkout_url"].startswith(stripe_fake.url)
    session = stripe_fake.pay(payment["checkout_url"].rsplit("/", 1)[-1])
    assert body(deliver_stripe(pay_gateway, stripe_event(stripe_fake, "checkout.session.completed", session)))[
        "outcome"] == "credited"
    assert balance(client) == D(5)


def test_admin_direct_credit_is_unchanged(pay_gateway, pdb):
    user = user_client(pay_gateway)
    assert balance(user) == 0  # creates the account
    user_id = pdb.execute("SELECT user_id FROM billing.user_billing ORDER BY created_at DESC LIMIT 1").fetchone()[0]
    admin = user_client(pay_gateway, admin=True)
    payload = {"user_id": str(user_id), "amount_usd": "1.5", "payment_id": f"wire-{uuid.uuid4()}"}
    credited = admin.post("/api/billing/topup", json=payload)
    assert credited.status_code == 200, credited.text
    assert body(credited)["transaction"]["amount_usd"] == D("1.5")
    assert balance(user) == D("1.5")
    unknown = admin.post("/api/billing/topup", json={**payload, "user_id": str(uuid.uuid4())})
    assert unknown.status_code == 404


def test_without_a_provider_the_gateway_says_so(gateway):
    response = user_client(gateway).post("/api/billing/topup", json={"amount_usd": "5.00"})
    assert response.status_code == 503
    assert "no payment provider is configured" in body(response)["error"]["message"]


# ---- reconciliation -------------------------------------------------------------------------------


def reconcile(pay_gateway, stripe_fake, fondy_fake, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**pay_gateway.env, **provider_env(stripe_fake, fondy_fake)}
    return subprocess.run([*tollgate_command(), "payments", "reconcile", "--min-age-minutes", "0", *extra],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_reconcile_credits_a_payment_whose_webhook_never_came_and_is_idempotent(pay_gateway, stripe_fake, fondy_fake):
    client = user_client(pay_gateway)
    stripe_paid(pay_gateway, stripe_fake, client, "15.00")
    fondy = start_topup(client, amount_usd="3.00", provider="fondy")["payment"]
    fondy_fake.approve(fondy["intent_id"])
    first = reconcile(pay_gateway, stripe_fake, fondy_fake)
    assert first.returncode == 0, first.stdout + first.stderr
    assert balance(client) == D(18)
    second = reconcile(pay_gateway, stripe_fake, fondy_fake)
    assert second.returncode == 0 and "0 new event(s) applied" in second.stdout, second.stdout
    assert balance(client) == D(18)


def test_reconcile_applies_refunds_and_disputes_whose_webhooks_never_came(pay_gateway, stripe_fake, fondy_fake):
    client = user_client(pay_gateway)
    _, session = stripe_paid(pay_gateway, stripe_fake, client, "20.00")
    deliver_stripe(pay_gateway, stripe_event(stripe_fake, "checkout.session.completed", session))
    stripe_fake.refund(session["id"], 500)
    dispute = stripe_fake.dispute(session["id"], 1500)
    assert reconcile(pay_gateway, stripe_fake, fondy_fake).returncode == 0
    assert balance(client) == 0  # 5.00 refunded + 15.00 disputed, no webhook for either
    stripe_fake.close_dispute(dispute["id"], won=True)
    again = reconcile(pay_gateway, stripe_fake, fondy_fake)
    assert again.returncode == 0, again.stdout + again.stderr
    assert balance(client) == D(15)  # the won dispute is given back; the refund stays
    assert "0 new event(s) applied" in reconcile(pay_gateway, stripe_fake, fondy_fake).stdout


def test_webhook_racing_reconcile_credits_once(pay_gateway, stripe_fake, fondy_fake, pdb):
    client = user_client(pay_gateway)
    sessions = [stripe_paid(pay_gateway, stripe_fake, client, "2.00") for _ in range(10)]
    deliveries = [stripe_event(stripe_fake, "checkout.session.completed", session) for _, session in sessions]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        job = pool.submit(reconcile, pay_gateway, stripe_fake, fondy_fake)
        webhooks = list(pool.map(lambda e: deliver_stripe(pay_gateway, e), deliveries))
        result = job.result()
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(r.status_code == 200 for r in webhooks)
    assert balance(client) == D(20)
    for payment, _ in sessions:
        assert len([r for r in h_ledger_rows(pdb, payment["intent_id"]) if r["type"] == "topup"]) == 1


def test_the_local_sandbox_pays_and_refunds_through_the_gateway(gateway_db, tmp_path, pdb):
    """`python -m tests.payments.sandbox` (docs/payments.md): the flow a person tries by hand."""
    from tests.gateway.server import start_gateway
    from tests.payments.sandbox import SandboxFondy, SandboxStripe, environment

    with SandboxStripe("http://gateway.invalid") as stripe, SandboxFondy("http://gateway.invalid") as fondy:
        # Rules off like the module's gateway: this one's start-up writes its figures to the shared ledger.
        server = start_gateway(gateway_db, tmp_path, **environment(stripe.url, fondy.url), **h.PAYMENT_RULES_OFF_ENV)
        stripe.gateway = fondy.gateway = server.base_url
        try:
            client = user_client(server)
            payment = start_topup(client, amount_usd="4.00")["payment"]
            assert httpx.get(payment["checkout_url"], timeout=10).status_code == 200  # the customer pays
            fondy_payment = start_topup(client, amount_usd="2.00", provider="fondy")["payment"]
            assert httpx.get(fondy_payment["checkout_url"], timeout=10).status_code == 200
            deadline = time.monotonic() + 20
            while balance(client) != D(6) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert balance(client) == D(6)
            session_id = payment["checkout_url"].rsplit("/", 1)[-1]
            assert httpx.get(f"{stripe.url}/refund/{session_id}?cents=150", timeout=10).status_code == 200
            while balance(client) != D("4.50") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert balance(client) == D("4.50")
            assert stripe.delivered == [200, 200] and fondy.delivered == [200]
        finally:
            server.stop()
