"""The payment fraud rules through a real gateway (docs/abuse.md, "Payment fraud rules"): the attacks of issue 14
repeated against `tollgate run` with Stripe configured and pointed at the local fake (tests/payments/fakes.py),
the operators' views of the audit trail (admin API, CLI), and the figures the gateway writes at start-up.

The module's gateway runs the default payment rules (nothing configured) behind a trusted proxy (127.0.0.1):
each test's "attacker" sends its own X-Forwarded-For address, so the per-network counts of one test do not
spill into the next. The edge rate limits of top-ups are off here, so that what these tests see is the
ledger's rules, not the limiter in front of them.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from api.abuse.config import PaymentRules
from api.jsonio import loads
from api.ledger import db as api_db
from api.ledger import sync as ledger
from tests import helpers as h
from tests import helpers_concurrency as hc
from tests.gateway.server import Gateway, start_gateway, tollgate_command
from tests.payments.conftest import STRIPE_WEBHOOK_SECRET, provider_env
from tests.payments.fakes import FakeFondy, FakeStripe

D = Decimal
EDGE_LIMITS_OFF = {
    "TOLLGATE_ABUSE_RATE_LIMITS_TOPUPS_PER_USER": "off",
    "TOLLGATE_ABUSE_RATE_LIMITS_TOPUPS_PER_IP": "off",
    "TOLLGATE_ABUSE_RATE_LIMITS_BILLING_PER_USER": "off",
    "TOLLGATE_ABUSE_RATE_LIMITS_BILLING_PER_IP": "off",
    "TOLLGATE_ABUSE_RATE_LIMITS_TOOL_CALLS_PER_USER": "off",
    "TOLLGATE_ABUSE_RATE_LIMITS_TOOL_CALLS_PER_IP": "off",
}
OPEN_CLIENTS: list[httpx.Client] = []


@pytest.fixture(scope="module")
def fraud_gateway(
    gateway_db: str, stripe_fake: FakeStripe, fondy_fake: FakeFondy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with api_db.connect(gateway_db) as conn:
        # A tool of 1 USD a call, so that spending a top-up takes a few calls.
        ledger.set_tool_pricing(conn, "priced", D(1))
    server = start_gateway(
        gateway_db,
        tmp_path_factory.mktemp("fraud-gateway"),
        **provider_env(stripe_fake, fondy_fake),
        TOLLGATE_ABUSE_TRUSTED_PROXIES="127.0.0.1",
        **EDGE_LIMITS_OFF,
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _ledger_clean_after(pdb):
    yield
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()
    assert ledger.verify_ledger(pdb) == []


def user_client(gw: Gateway, ip: str, *, subject: str | None = None, admin: bool = False) -> httpx.Client:
    """A user's client whose requests come from `ip` (through the trusted proxy on loopback)."""
    client = gw.client(gw.token(subject, admin=admin))
    client.headers["X-Forwarded-For"] = ip
    OPEN_CLIENTS.append(client)
    return client


def unique_ip() -> str:
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"


def body(response: httpx.Response) -> Any:
    return loads(response.content)


def user_id_of(pdb, subject: str) -> uuid.UUID:
    row = pdb.execute("SELECT id FROM billing.users WHERE external_id = %s", (subject,)).fetchone()
    assert row is not None
    user_id: uuid.UUID = row[0]
    return user_id


def checkouts_created(stripe_fake: FakeStripe) -> int:
    return sum(1 for r in stripe_fake.requests if r.method == "POST" and r.path == "/v1/checkout/sessions")


def age_account(pdb, user_id: uuid.UUID, days: int = 30) -> None:
    """Make the account `days` old (the new-account rule no longer applies to it)."""
    pdb.execute(
        "UPDATE billing.users SET created_at = now() - make_interval(days => %s) WHERE id = %s", (days, user_id)
    )


def attack(client: httpx.Client, starts: int, amount: str = "5.00") -> list[httpx.Response]:
    """`starts` top-up starts at once (8 in flight), as the attacker of issue 14 sent them."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: client.post("/api/billing/topup", json={"amount_usd": amount}), range(starts)))


def pay(gw: Gateway, stripe_fake: FakeStripe, client: httpx.Client, amount: str) -> dict[str, Any]:
    started = client.post("/api/billing/topup", json={"amount_usd": amount})
    assert started.status_code == 201, started.text
    session = stripe_fake.pay(body(started)["payment"]["checkout_url"].rsplit("/", 1)[-1])
    delivered = deliver(gw, stripe_fake.event("checkout.session.completed", session))
    assert body(delivered)["outcome"] == "credited", delivered.text
    return session


def deliver(gw: Gateway, event: dict[str, Any]) -> httpx.Response:
    payload, headers = FakeStripe.delivery(event, STRIPE_WEBHOOK_SECRET)
    response = httpx.post(f"{gw.base_url}/api/payments/stripe/webhook", content=payload, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response


# ---- the card-testing surface ------------------------------------------------------------------------------


def test_300_top_up_starts_from_one_new_account_make_3_intents_and_3_checkouts(fraud_gateway, stripe_fake, pdb):
    """Issue 14: "300 top-up starts in 16 s from one user: 300 intents and 300 provider checkouts"."""
    subject = f"attacker-{uuid.uuid4().hex[:8]}"
    client = user_client(fraud_gateway, unique_ip(), subject=subject)
    before = checkouts_created(stripe_fake)
    began = time.monotonic()
    answers = attack(client, 300)
    elapsed = time.monotonic() - began
    statuses = [a.status_code for a in answers]
    assert statuses.count(201) == 3 and statuses.count(429) == 297, sorted(set(statuses))
    assert checkouts_created(stripe_fake) - before == 3  # a refused start never reaches the provider
    user_id = user_id_of(pdb, subject)
    assert hc.count_rows(pdb, "payment_intents", "user_id = %s", (user_id,)) == 3
    refused = next(a for a in answers if a.status_code == 429)
    error = body(refused)["error"]
    assert error["code"] == "payment_refused" and error["rule"] == "payments.new_account_topups"
    assert "an account in its first 7 days may have at most 3 top-ups open or paid" in error["message"]
    assert int(refused.headers["Retry-After"]) > 6 * 24 * 3600
    assert error["retry_at"].endswith("Z")
    events = ledger.list_abuse_events(pdb, user_id=user_id, limit=1000)
    assert len(events) == 297 and {e.rule for e in events} == {"payments.new_account_topups"}
    print(f"300 starts from one new account in {elapsed:.1f} s: 3 intents, 3 checkouts, 297 refused")


def test_300_top_up_starts_from_an_established_account_make_at_most_the_hourly_cap(fraud_gateway, stripe_fake, pdb):
    subject = f"attacker-{uuid.uuid4().hex[:8]}"
    client = user_client(fraud_gateway, unique_ip(), subject=subject)
    assert client.get("/api/billing/balance").status_code == 200  # the account exists
    age_account(pdb, user_id_of(pdb, subject))
    before = checkouts_created(stripe_fake)
    answers = attack(client, 300)
    statuses = [a.status_code for a in answers]
    cap = PaymentRules().intents_per_hour_per_user
    assert statuses.count(201) == cap and statuses.count(429) == 300 - cap
    assert checkouts_created(stripe_fake) - before == cap
    error = body(next(a for a in answers if a.status_code == 429))["error"]
    assert error["rule"] == "payments.intents_per_hour_per_user"
    assert f"this account started {cap} top-ups in the last hour" in error["message"]


def test_starts_of_many_accounts_from_one_address_are_capped_per_network(fraud_gateway, stripe_fake, pdb):
    ip = unique_ip()
    clients = [user_client(fraud_gateway, ip) for _ in range(25)]
    before = checkouts_created(stripe_fake)
    statuses = [c.post("/api/billing/topup", json={"amount_usd": "5.00"}).status_code for c in clients]
    cap = PaymentRules().intents_per_hour_per_ip
    assert statuses.count(201) == cap and statuses[cap:] == [429] * (25 - cap)
    assert checkouts_created(stripe_fake) - before == cap
    rows = pdb.execute("SELECT count(*) FROM billing.payment_intents WHERE client_ip = %s::inet", (ip,)).fetchone()
    assert rows == (cap,)  # the address behind the trusted proxy is what the ledger recorded


def test_a_replayed_start_answers_its_payment_even_past_the_cap(fraud_gateway, stripe_fake):
    client = user_client(fraud_gateway, unique_ip())
    first = client.post("/api/billing/topup", json={"amount_usd": "5.00"}, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    for _ in range(2):
        assert client.post("/api/billing/topup", json={"amount_usd": "5.00"}).status_code == 201
    assert client.post("/api/billing/topup", json={"amount_usd": "5.00"}).status_code == 429
    again = client.post("/api/billing/topup", json={"amount_usd": "5.00"}, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200, again.text
    assert body(again)["payment"]["intent_id"] == body(first)["payment"]["intent_id"]


# ---- pay, spend, dispute --------------------------------------------------------------------------------------


def spend_all(client: httpx.Client) -> tuple[int, httpx.Response]:
    """Calls the 1 USD tool until refused: (calls served, the refusal)."""
    for served in range(50):
        answer = client.post("/api/tools/priced", json={"text": "hi"})
        if answer.status_code != 200:
            return served, answer
    raise AssertionError("never refused")


def test_pay_spend_dispute_loses_at_most_the_cooling_limit(fraud_gateway, stripe_fake, pdb):
    """Issue 14: "a fresh top-up is spendable at once, so pay, spend it all, dispute: -10.00 that cannot be
    collected". Now 5 of the 10 cool off for a day: spend is refused past 5 with the reason, and the
    dispute leaves -5.00."""
    client = user_client(fraud_gateway, unique_ip())
    session = pay(fraud_gateway, stripe_fake, client, "10.00")
    billing = body(client.get("/api/billing/balance"))["billing"]
    assert (billing["balance_usd"], billing["cooling_usd"]) == (D(10), D(5))
    assert billing["cooling_until"].endswith("Z")

    served, refusal = spend_all(client)
    assert served == 5
    assert refusal.status_code == 402
    error = body(refusal)["error"]
    assert error["code"] == "insufficient_funds"
    assert f"5 USD of your recent top-up is cooling off until {billing['cooling_until']}" in error["message"]
    assert error["details"]["cooling_usd"] == D(5)

    deliver(fraud_gateway, stripe_fake.event("charge.dispute.created", stripe_fake.dispute(session["id"])))
    assert body(client.get("/api/billing/balance"))["billing"]["balance_usd"] == D(-5)


def test_two_disputes_deactivate_the_account_and_operators_see_why(fraud_gateway, stripe_fake, pdb):
    subject = f"disputer-{uuid.uuid4().hex[:8]}"
    ip = unique_ip()
    client = user_client(fraud_gateway, ip, subject=subject)
    sessions = [pay(fraud_gateway, stripe_fake, client, "4.00") for _ in range(2)]
    assert client.post("/api/tools/priced", json={"text": "hi"}).status_code == 200
    for session in sessions:
        deliver(fraud_gateway, stripe_fake.event("charge.dispute.created", stripe_fake.dispute(session["id"])))
    refused = client.post("/api/tools/priced", json={"text": "hi"})
    assert refused.status_code == 403 and body(refused)["error"]["code"] == "account_inactive"
    user_id = user_id_of(pdb, subject)

    # The admin API lists the event, with the figures and the reason.
    admin = user_client(fraud_gateway, unique_ip(), admin=True)
    listed = admin.get("/api/admin/abuse/events", params={"user_id": str(user_id), "rule": "payments"})
    assert listed.status_code == 200, listed.text
    events = body(listed)["events"]
    paused = [e for e in events if e["action"] == "paused"]
    assert len(paused) == 1 and paused[0]["rule"] == "payments.disputes_to_deactivate"
    assert (paused[0]["detail"]["count"], paused[0]["detail"]["limit"], paused[0]["client_ip"]) == (2, 2, ip)
    assert "Account deactivated pending review" in paused[0]["detail"]["message"]
    assert paused[0]["created_at"].endswith("Z") and paused[0]["user_id"] == str(user_id)
    assert body(listed)["count"] == len(events)
    only_paused = admin.get("/api/admin/abuse/events", params={"rule": "payments.disputes_to_deactivate"})
    assert str(user_id) in {e["user_id"] for e in body(only_paused)["events"]}
    assert admin.get("/api/admin/abuse/events", params={"user_id": "nope"}).status_code == 422
    assert admin.get("/api/admin/abuse/events", params={"rule": "Bad Rule"}).status_code == 422
    assert admin.get("/api/admin/abuse/events", params={"limit": "0"}).status_code == 422
    assert client.get("/api/admin/abuse/events").status_code == 403

    # And so does the CLI, by the user's external subject.
    listed_cli = subprocess.run(
        [*tollgate_command(), "abuse", "events", "--user", subject, "--rule", "payments"],
        env=fraud_gateway.env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert listed_cli.returncode == 0, listed_cli.stderr
    assert "payments.disputes_to_deactivate  paused" in listed_cli.stdout
    assert "Account deactivated pending review" in listed_cli.stdout
    assert f"ip={ip}" in listed_cli.stdout
    policy_cli = subprocess.run(
        [*tollgate_command(), "abuse", "policy"],
        env=fraud_gateway.env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert policy_cli.returncode == 0, policy_cli.stderr
    assert "payments.disputes_to_deactivate  2  (set by config" in policy_cli.stdout


# ---- the figures the gateway writes at start-up ------------------------------------------------------------


def test_the_gateway_writes_its_configured_figures_at_start_and_zeros_when_abuse_controls_are_off(db_url, tmp_path):
    first = start_gateway(db_url, tmp_path / "one", TOLLGATE_ABUSE_PAYMENTS_INTENTS_PER_HOUR_PER_USER="7")
    first.stop()
    with api_db.connect(db_url) as conn:
        policy = {p.name: (p.value, p.updated_by) for p in ledger.list_abuse_policy(conn)}
    assert policy["payments.intents_per_hour_per_user"] == (D(7), "config")
    assert policy["payments.cooling_off_spendable_usd"] == (D(5), "config")
    assert set(policy) >= {f"payments.{knob}" for knob in h.PAYMENT_KNOBS}
    assert "payments.intents_per_hour_per_user=7" in first.logs()

    second = start_gateway(db_url, tmp_path / "two", TOLLGATE_ABUSE_ENABLED="false")
    second.stop()
    with api_db.connect(db_url) as conn:
        assert {p.value for p in ledger.list_abuse_policy(conn)} == {D(0)}
    assert "abuse policy written" in second.logs()

    third = start_gateway(db_url, tmp_path / "three", TOLLGATE_ABUSE_ENABLED="false")
    third.stop()
    assert "abuse policy unchanged" in third.logs()
