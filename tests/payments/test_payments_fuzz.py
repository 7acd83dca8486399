"""Hostile input on the payment routes of a gateway with both providers configured: random bodies,
signature headers and content types on the webhooks (never a 5xx, never a stored event, never money),
and random top-up bodies (never a 5xx, never a credit).

Length: PARAMS.fuzz_examples examples per test (`make torture FUZZ_EXAMPLES=…`), seeded by PARAMS.seed.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from api.ledger import sync as ledger
from tests.payments.conftest import STRIPE_WEBHOOK_SECRET
from tests.payments.fakes import sign_stripe
from tests.reliability.params import PARAMS

FUZZ = settings(
    max_examples=PARAMS.fuzz_examples,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
EVENT_LIKE = st.fixed_dictionaries(
    {
        "id": st.text(max_size=30) | st.integers(),
        "object": st.sampled_from(["event", "charge", ""]) | st.text(max_size=8),
        "type": st.sampled_from(
            ["checkout.session.completed", "charge.refunded", "charge.dispute.closed", "checkout.session.expired"]
        )
        | st.text(max_size=30),
        "data": st.fixed_dictionaries({"object": JSON_VALUES}) | JSON_VALUES,
    }
)
BODIES = st.one_of(
    st.binary(max_size=300),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    EVENT_LIKE.map(lambda v: json.dumps(v).encode()),
)
SIGNATURES = st.one_of(
    st.none(),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80).map(str.strip),  # a header value
    st.builds(lambda t, v: f"t={t},v1={v}", st.integers(-(10**12), 10**12), st.text("0123456789abcdef", max_size=64)),
)


def _events(pdb: Any) -> int:
    row = pdb.execute("SELECT count(*) FROM billing.payment_events").fetchone()
    assert row is not None
    return int(row[0])


def test_hostile_webhooks_are_refused_and_store_nothing(pay_gateway, pdb):
    before = _events(pdb)
    seen: set[int] = set()

    @seed(PARAMS.seed)
    @FUZZ
    @given(
        provider=st.sampled_from(["stripe", "fondy"]),
        body=BODIES,
        signature=SIGNATURES,
        content_type=st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain", ""]),
    )
    def attempt(provider: str, body: bytes, signature: str | None, content_type: str) -> None:
        headers = {"Content-Type": content_type} if content_type else {}
        if signature is not None:
            headers["Stripe-Signature"] = signature
        response = httpx.post(
            f"{pay_gateway.base_url}/api/payments/{provider}/webhook", content=body, headers=headers, timeout=30
        )
        seen.add(response.status_code)
        assert response.status_code == 400, (response.status_code, response.text)
        assert "Traceback" not in response.text and "psycopg" not in response.text

    attempt()
    assert _events(pdb) == before
    assert seen == {400}


def test_validly_signed_garbage_events_never_credit(pay_gateway, pdb):
    """What a leaked signing secret could send: well-signed, malformed events. Never a 5xx, and only an
    event that really names a paid intent of ours could credit (none does here)."""
    from psycopg.rows import dict_row

    with pdb.cursor(row_factory=dict_row) as cur:
        before = cur.execute("SELECT count(*) AS n FROM billing.billing_transactions").fetchone()

    @seed(PARAMS.seed)
    @FUZZ
    @given(event=EVENT_LIKE)
    def attempt(event: dict[str, Any]) -> None:
        body = json.dumps(event).encode()
        headers = {"Stripe-Signature": sign_stripe(body, STRIPE_WEBHOOK_SECRET, int(time.time()))}
        response = httpx.post(f"{pay_gateway.base_url}/api/payments/stripe/webhook", content=body, headers=headers,
                              timeout=30)
        assert response.status_code in (200, 400), (response.status_code, response.text)
        if response.status_code == 200:
            assert json.loads(response.content)["outcome"] in ("ignored", "unknown_intent")

    attempt()
    with pdb.cursor(row_factory=dict_row) as cur:
        assert cur.execute("SELECT count(*) AS n FROM billing.billing_transactions").fetchone() == before
    assert ledger.verify_ledger(pdb) == []


def test_hostile_topup_bodies_never_fail_the_gateway(pay_gateway, pdb):
    client = pay_gateway.client(pay_gateway.token())

    @seed(PARAMS.seed)
    @FUZZ
    @given(
        body=st.one_of(
            st.binary(max_size=200),
            st.dictionaries(
                st.sampled_from(["amount_usd", "amount_uah", "provider", "user_id", "payment_id", "description", "x"]),
                JSON_VALUES,
                max_size=4,
            ).map(lambda v: json.dumps(v).encode()),
        )
    )
    def attempt(body: bytes) -> None:
        response = client.post("/api/billing/topup", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code < 500 or response.status_code in (502, 503), (response.status_code, response.text)
        assert "Traceback" not in response.text

    try:
        attempt()
    finally:
        client.close()
    # Starting payments credits nothing (this module's database is its own).
    assert pdb.execute("SELECT count(*) FROM billing.billing_transactions WHERE type = 'topup'").fetchone() == (0,)
    assert ledger.verify_ledger(pdb) == []
