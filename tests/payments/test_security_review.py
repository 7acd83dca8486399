"""The payment holes of the security review, each replayed the way the reviewer found
it: an ordinary user's JWT, validly signed provider payloads, a real gateway over HTTP, the real ledger.

1. Fondy signs the sorted values only, so a payer can move the values of their own signed result onto
   other keys; a callback is confirmed with Fondy's order-status API before anything is recorded, and
   one payment state is one event however the callback is spelled.
2. A paid Stripe Checkout Session is credited only when it is the session recorded on the intent.
3. Anything but exactly what the intent asked goes to review, uncredited; an operator credits it, audited.
4. Replays store nothing new; bodies a provider never sends are 400, never 500.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.gateway.server import tollgate_command
from tests.payments.conftest import FONDY_PASSWORD, STRIPE_WEBHOOK_SECRET, provider_env
from tests.payments.fakes import FakeFondy, FakeStripe, fondy_signature, sign_stripe
from tests.payments.test_gateway_payments import (  # noqa: F401 - _ledger_clean_after: verify_ledger after each test
    _ledger_clean_after,
    balance,
    body,
    deliver,
    deliver_stripe,
    h_ledger_rows,
    reconcile,
    start_topup,
    stripe_event,
    user_client,
)

D = Decimal
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def intent_events(pdb: Any, intent_id: str) -> list[tuple[str, str, int]]:
    """(event_id, outcome, payload bytes) of every stored event of an intent."""
    rows = pdb.execute(
        "SELECT event_id, outcome, octet_length(payload) FROM billing.payment_events WHERE intent_id = %s ORDER BY id",
        (intent_id,),
    ).fetchall()
    return [(str(a), str(b), int(c)) for a, b, c in rows]


def all_events(pdb: Any) -> int:
    row = pdb.execute("SELECT count(*) FROM billing.payment_events").fetchone()
    assert row is not None
    return int(row[0])


def intent_row(pdb: Any, intent_id: str) -> dict[str, Any]:
    from psycopg.rows import dict_row

    with pdb.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM billing.payment_intents WHERE id = %s", (intent_id,)).fetchone()
    assert row is not None
    return dict(row)


def review_rows(pdb: Any, intent_id: str) -> list[tuple[str, str]]:
    rows = pdb.execute(
        "SELECT reason, detail FROM billing.payments_needing_review WHERE intent_id = %s", (intent_id,)
    ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


def fondy_fields(fondy_fake: FakeFondy, order_id: str) -> dict[str, Any]:
    payload, _ = fondy_fake.callback(order_id)
    fields: dict[str, Any] = json.loads(payload)
    return fields


def relabel(fields: dict[str, Any], target: str, source: str) -> dict[str, Any]:
    """The payer's trick on their own signed result: `source`'s value under the key `target`, with the
    signed value sequence (values of the non-empty fields, sorted by key) left exactly as it was.

    Every field up to `source` (in key order) is emptied, the values before `source` move to new keys that
    sort before `target`, and `target` takes `source`'s value; empty fields are not signed."""
    assert target < source
    unsigned = ("signature", "response_signature_string")
    before = [fields[k] for k in sorted(fields) if k not in unsigned and k < source and fields[k] not in ("", None)]
    fillers = {f"a{i:04d}": value for i, value in enumerate(before)}
    assert all(key < target for key in fillers)
    out = {k: ("" if k not in unsigned and k <= source else v) for k, v in fields.items()}
    out.update(fillers)
    out[target] = fields[source]
    return out


def run_cli(
    pay_gateway: Any, stripe_fake: FakeStripe, fondy_fake: FakeFondy, *args: str, database_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**pay_gateway.env, **provider_env(stripe_fake, fondy_fake)}
    if database_url is not None:
        env["TOLLGATE_DATABASE_URL"] = database_url
    return subprocess.run([*tollgate_command(), *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


# ---- 1. Fondy: relabelled signatures, server-to-server confirmation, one state = one event -------


def test_fondy_relabelled_callback_credits_only_what_the_intent_asked(pay_gateway, fondy_fake, pdb):
    # Before: the card BIN moved into actual_amount still verified, and 5.00 USD was credited 4444.55;
    # the genuine callback was then a duplicate. After: the status API's facts are recorded: 5.00 credited.
    client = user_client(pay_gateway)
    payment = start_topup(client, amount_usd="5.00", provider="fondy")["payment"]
    order = payment["intent_id"]
    fondy_fake.approve(order)
    genuine = fondy_fields(fondy_fake, order)
    forged = relabel(genuine, "actual_amount", "card_bin")
    assert forged["actual_amount"] == 444455 and fondy_signature(FONDY_PASSWORD, forged) == genuine["signature"]

    answer = deliver(pay_gateway, "fondy", json.dumps(forged).encode(), JSON)
    assert answer.status_code == 200, answer.text
    assert body(answer)["outcome"] == "credited"
    assert balance(client) == D("5.00")
    assert any(r.path.rstrip("/") == "/api/status/order_id" and r.body["request"]["order_id"] == order
               for r in fondy_fake.requests)
    again = deliver(pay_gateway, "fondy", json.dumps(genuine).encode(), JSON)
    assert again.status_code == 200 and body(again)["duplicate"] is True
    assert balance(client) == D("5.00")
    [topup] = [r for r in h_ledger_rows(pdb, order) if r["type"] == "topup"]
    assert topup["amount_usd"] == D(5)
    assert len(intent_events(pdb, order)) == 1


def test_fondy_payment_confirmed_with_another_amount_goes_to_review_uncredited(pay_gateway, fondy_fake, pdb):
    # Before: credited 4.00 at once and flagged. After: review, nothing credited.
    client = user_client(pay_gateway)
    order = start_topup(client, amount_usd="5.00", provider="fondy")["payment"]["intent_id"]
    fondy_fake.approve(order, amount=400)
    answer = deliver(pay_gateway, "fondy", *fondy_fake.callback(order))
    assert answer.status_code == 200, answer.text
    assert body(answer)["outcome"] == "review"
    assert balance(client) == 0
    assert intent_row(pdb, order)["status"] == "review"
    [(reason, detail)] = review_rows(pdb, order)
    assert reason == "review" and detail.endswith("asked 5.00 USD, paid 4.00 USD"), detail


def test_fondy_callback_is_not_trusted_while_the_status_api_cannot_confirm_it(pay_gateway, fondy_fake, pdb):
    # Before: the callback alone credited (Fondy was never asked). After: 503 (Fondy retries), nothing
    # stored; the retry, once Fondy answers, credits.
    client = user_client(pay_gateway)
    order = start_topup(client, amount_usd="7.00", provider="fondy")["payment"]["intent_id"]
    fondy_fake.approve(order)
    events = all_events(pdb)
    fondy_fake.fail_next(1, "500")
    down = deliver(pay_gateway, "fondy", *fondy_fake.callback(order))
    assert down.status_code == 503, down.text
    assert body(down)["error"]["code"] == "payment_provider_unavailable"
    assert down.headers.get("retry-after")
    assert all_events(pdb) == events and balance(client) == 0
    retried = deliver(pay_gateway, "fondy", *fondy_fake.callback(order))
    assert retried.status_code == 200 and body(retried)["outcome"] == "credited"
    assert balance(client) == D(7)


def test_fondy_reversal_is_confirmed_before_it_is_clawed_back(pay_gateway, fondy_fake, pdb):
    client = user_client(pay_gateway)
    order = start_topup(client, amount_usd="5.00", provider="fondy")["payment"]["intent_id"]
    fondy_fake.approve(order)
    assert body(deliver(pay_gateway, "fondy", *fondy_fake.callback(order)))["outcome"] == "credited"
    fondy_fake.reverse(order, 200)
    fondy_fake.fail_next(1, "close")
    down = deliver(pay_gateway, "fondy", *fondy_fake.callback(order))
    assert down.status_code == 503 and balance(client) == D(5)
    reversed_ = deliver(pay_gateway, "fondy", *fondy_fake.callback(order))
    assert body(reversed_)["outcome"] == "already_credited,reversed"
    assert balance(client) == D(3)


def test_a_signed_fondy_callback_for_an_order_fondy_does_not_know_is_refused_and_stores_nothing(
    pay_gateway, fondy_fake, pdb
):
    # Before: stored as an unknown_intent event (one more row per such callback). After: Fondy is asked,
    # knows no such order: 400, nothing stored.
    fields = {"order_id": str(uuid.uuid4()), "merchant_id": fondy_fake.merchant_id, "order_status": "approved",
              "amount": "500", "currency": "USD", "payment_id": 1}
    fields["signature"] = fondy_signature(FONDY_PASSWORD, fields)
    events = all_events(pdb)
    answer = deliver(pay_gateway, "fondy", json.dumps(fields).encode(), JSON)
    assert answer.status_code == 400 and "knows no order" in body(answer)["error"]["message"], answer.text
    assert all_events(pdb) == events


def test_one_fondy_payment_state_is_one_event_however_the_callback_is_spelled(
    pay_gateway, stripe_fake, fondy_fake, pdb
):
    # Before: a signature in capitals (or any other spelling that changed the derived id) stored a new
    # event, and reconcile stored another under its own id. After: one state, one row, both paths.
    client = user_client(pay_gateway)
    order = start_topup(client, amount_usd="6.00", provider="fondy")["payment"]["intent_id"]
    fondy_fake.approve(order)
    fields = fondy_fields(fondy_fake, order)
    spellings = [
        (json.dumps(fields).encode(), JSON),
        (json.dumps({**fields, "signature": fields["signature"].upper()}).encode(), JSON),
        (json.dumps({**fields, **{f"pad{i:03d}": "" for i in range(150)}}).encode(), JSON),
        (json.dumps(dict(reversed(list(fields.items())))).encode(), JSON),
        (urlencode(fields).encode(), FORM),
        (urlencode({**fields, "signature": fields["signature"].upper()}).encode(), FORM),
        (json.dumps({"response": fields}).encode(), JSON),
    ]
    answers = [deliver(pay_gateway, "fondy", payload, headers) for payload, headers in spellings]
    assert [a.status_code for a in answers] == [200] * len(spellings), [a.text for a in answers]
    assert [body(a)["duplicate"] for a in answers] == [False] + [True] * (len(spellings) - 1)
    assert len(intent_events(pdb, order)) == 1
    result = reconcile(pay_gateway, stripe_fake, fondy_fake, "--provider", "fondy")
    assert result.returncode == 0, result.stdout + result.stderr
    [(event_id, outcome, _)] = intent_events(pdb, order)
    assert outcome == "credited" and order in event_id
    assert balance(client) == D(6)


# ---- 2. Stripe: only the session recorded on the intent ------------------------------------------


def foreign_session(intent_id: str, amount_total: int, **changes: Any) -> dict[str, Any]:
    """A paid Checkout Session of another product of the same Stripe account (a Payment Link opened with
    ?client_reference_id=<our intent>)."""
    return {"id": f"cs_live_{uuid.uuid4().hex}", "object": "checkout.session", "mode": "payment",
            "payment_status": "paid", "status": "complete", "amount_total": amount_total, "currency": "usd",
            "client_reference_id": intent_id, "payment_intent": f"pi_{uuid.uuid4().hex[:24]}",
            "payment_link": "plink_1Other", "metadata": {}, **changes}


def test_stripe_session_of_another_product_naming_an_intent_is_not_credited(pay_gateway, stripe_fake, pdb):
    # Before: credited silently (the same amount: not even flagged). After: review, nothing credited,
    # and the intent's own session still credits it once.
    client = user_client(pay_gateway)
    payment = start_topup(client, amount_usd="25.00")["payment"]
    intent_id = payment["intent_id"]
    foreign = stripe_event(stripe_fake, "checkout.session.completed", foreign_session(intent_id, 2500))
    answer = deliver_stripe(pay_gateway, foreign)
    assert answer.status_code == 200, answer.text
    assert body(answer)["outcome"] == "review"
    assert balance(client) == 0
    [(reason, detail)] = review_rows(pdb, intent_id)
    assert reason == "review" and "not the intent's checkout" in detail
    # The customer then pays at the checkout Tollgate created: that one is credited, exactly once.
    session = stripe_fake.pay(payment["checkout_url"].rsplit("/", 1)[-1])
    own = deliver_stripe(pay_gateway, stripe_event(stripe_fake, "checkout.session.completed", session))
    assert body(own)["outcome"] == "credited"
    assert balance(client) == D(25)
    assert intent_row(pdb, intent_id)["payment_ref"] == session["payment_intent"]


def test_stripe_session_of_another_product_cannot_top_up_any_amount(pay_gateway, stripe_fake, pdb):
    # Before: a 900.00 payment for another product naming a 5.00 intent credited 900.00 (flagged).
    client = user_client(pay_gateway)
    intent_id = start_topup(client, amount_usd="5.00")["payment"]["intent_id"]
    foreign = stripe_event(stripe_fake, "checkout.session.completed", foreign_session(intent_id, 90000))
    assert body(deliver_stripe(pay_gateway, foreign))["outcome"] == "review"
    assert balance(client) == 0
    assert intent_row(pdb, intent_id)["status"] == "review"


# ---- 3. mismatches are review items; an operator credits them, audited -----------------------------


def test_amount_mismatch_goes_to_review_and_an_operator_credits_it_once(
    pay_gateway, stripe_fake, fondy_fake, pdb, gateway_db
):
    # Before: credited 40.00 at once (flagged) and no operator route existed. After: review, 0 credited;
    # an administrator credits it through POST /api/admin/payments/{id}/credit, once, audited.
    client = user_client(pay_gateway)
    payment = start_topup(client, amount_usd="50.00")["payment"]
    intent_id = payment["intent_id"]
    session = stripe_fake.pay(payment["checkout_url"].rsplit("/", 1)[-1], amount_total=4000)
    answer = deliver_stripe(pay_gateway, stripe_event(stripe_fake, "checkout.session.completed", session))
    assert body(answer)["outcome"] == "review"
    assert balance(client) == 0
    assert review_rows(pdb, intent_id) == [("review", "asked 50.00 USD, paid 40.00 USD")]
    # (The view is not the application role's to read: an operator lists it with the owner's connection.)
    listed = run_cli(pay_gateway, stripe_fake, fondy_fake, "payments", "review", database_url=gateway_db)
    assert listed.returncode == 0 and intent_id in listed.stdout, listed.stdout + listed.stderr
    assert client.get(f"/api/billing/payments/{intent_id}").json()["payment"]["status"] == "review"

    url = f"/api/admin/payments/{intent_id}/credit"
    refused = client.post(url, json={"reason": "let me in"})
    assert refused.status_code == 403, refused.text
    admin = user_client(pay_gateway, admin=True)
    credited = admin.post(url, json={"reason": "customer paid 40 of 50; ticket 1234"})
    assert credited.status_code == 200, credited.text
    result = body(credited)["payment"]
    assert (result["status"], result["credited_usd"], result["replayed"]) == ("succeeded", D(40), False)
    assert balance(client) == D(40)
    again = admin.post(url, json={"reason": "customer paid 40 of 50; ticket 1234"})
    assert again.status_code == 200 and body(again)["payment"]["replayed"] is True
    assert body(again)["payment"]["transaction_id"] == result["transaction_id"]
    assert balance(client) == D(40)
    [topup] = [r for r in h_ledger_rows(pdb, intent_id) if r["type"] == "topup"]
    assert topup["metadata"]["reviewed_by"].startswith("user:")
    assert topup["metadata"]["review_reason"] == "customer paid 40 of 50; ticket 1234"
    row = intent_row(pdb, intent_id)
    assert (row["status"], row["review_reason"]) == ("succeeded", "customer paid 40 of 50; ticket 1234")
    assert row["reviewed_by"] == topup["metadata"]["reviewed_by"]
    # A payment that is not in review cannot be credited by hand.
    pending = start_topup(client, amount_usd="3.00")["payment"]["intent_id"]
    not_review = admin.post(f"/api/admin/payments/{pending}/credit", json={"reason": "x"})
    assert not_review.status_code == 409 and body(not_review)["error"]["code"] == "invalid_state"
    assert admin.post(f"/api/admin/payments/{uuid.uuid4()}/credit", json={"reason": "x"}).status_code == 404


def test_operator_credits_a_review_payment_from_the_cli_with_another_amount(pay_gateway, stripe_fake, fondy_fake, pdb):
    client = user_client(pay_gateway)
    payment = start_topup(client, amount_usd="20.00")["payment"]
    intent_id = payment["intent_id"]
    session = stripe_fake.pay(payment["checkout_url"].rsplit("/", 1)[-1], amount_total=2000, currency="eur")
    assert body(deliver_stripe(pay_gateway, stripe_event(stripe_fake, "checkout.session.completed", session)))[
        "outcome"] == "review"
    done = run_cli(pay_gateway, stripe_fake, fondy_fake, "payments", "credit", intent_id,
                   "--reason", "paid 20 EUR; credited at 1.08", "--amount", "21.60", "--currency", "USD")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "credited_usd: 21.6" in done.stdout
    assert balance(client) == D("21.60")
    again = run_cli(pay_gateway, stripe_fake, fondy_fake, "payments", "credit", intent_id,
                    "--reason", "paid 20 EUR; credited at 1.08", "--amount", "21.60", "--currency", "USD")
    assert again.returncode == 0 and "replayed: True" in again.stdout, again.stdout + again.stderr
    other = run_cli(pay_gateway, stripe_fake, fondy_fake, "payments", "credit", intent_id, "--reason", "more",
                    "--amount", "99", "--currency", "USD")
    assert other.returncode != 0 and "conflict" in other.stderr.lower()
    assert balance(client) == D("21.60")


def test_a_refund_of_a_payment_in_review_takes_nothing_until_it_is_credited(pay_gateway, stripe_fake, pdb):
    client = user_client(pay_gateway)
    payment = start_topup(client, amount_usd="10.00")["payment"]
    session = stripe_fake.pay(payment["checkout_url"].rsplit("/", 1)[-1], amount_total=800)
    assert body(deliver_stripe(pay_gateway, stripe_event(stripe_fake, "checkout.session.completed", session)))[
        "outcome"] == "review"
    charge = stripe_fake.refund(session["id"], 800)
    refunded = deliver_stripe(pay_gateway, stripe_event(stripe_fake, "charge.refunded", charge))
    assert body(refunded)["outcome"] == "deferred"
    assert balance(client) == 0  # nothing was credited, so nothing is clawed back
    # The operator credits it after all: the refund the provider reported is applied with it.
    admin = user_client(pay_gateway, admin=True)
    credited = admin.post(f"/api/admin/payments/{payment['intent_id']}/credit", json={"reason": "late review"})
    assert credited.status_code == 200, credited.text
    assert body(credited)["payment"]["reversed_usd"] == D(8)
    assert balance(client) == 0


# ---- 4. replays and bodies a provider never sends --------------------------------------------------


def test_a_held_fondy_callback_replayed_padded_stores_nothing_more(pay_gateway, fondy_fake, pdb):
    # Before: each replay with the signature's letters in another case and ~900 KB of empty fields was a
    # new event storing ~900 KB. After: bodies over 64 KiB are 400 and nothing is stored; replays of the
    # callback as sent store no new row.
    client = user_client(pay_gateway)
    order = start_topup(client, amount_usd="2.00", provider="fondy")["payment"]["intent_id"]
    fondy_fake.approve(order)
    fields = fondy_fields(fondy_fake, order)
    assert body(deliver(pay_gateway, "fondy", json.dumps(fields).encode(), JSON))["outcome"] == "credited"
    stored = intent_events(pdb, order)
    events = all_events(pdb)
    padding = {f"p{i:06d}": "" for i in range(65_000)}
    for n in range(4):
        signature = "".join(c.upper() if (i + n) % 2 else c for i, c in enumerate(fields["signature"]))
        big = json.dumps({**fields, **padding, "signature": signature}).encode()
        assert 64 * 1024 < len(big) < 1024 * 1024
        answer = deliver(pay_gateway, "fondy", big, JSON)
        assert answer.status_code == 400, (answer.status_code, answer.text[:200])
        assert body(answer)["error"]["code"] == "invalid_webhook"
    assert all_events(pdb) == events and intent_events(pdb, order) == stored
    assert stored[0][2] <= 64 * 1024
    assert balance(client) == D(2)


def test_a_fondy_form_of_201_fields_is_a_400_not_a_500(pay_gateway, fondy_fake, pdb):
    client = user_client(pay_gateway)
    order = start_topup(client, amount_usd="2.00", provider="fondy")["payment"]["intent_id"]
    fondy_fake.approve(order)
    fields = fondy_fields(fondy_fake, order)
    events = all_events(pdb)
    padded = {**fields, **{f"x{i:03d}": "" for i in range(201 - len(fields))}}
    assert len(padded) == 201
    for payload, headers in ((urlencode(padded).encode(), FORM), (json.dumps(padded).encode(), JSON)):
        answer = deliver(pay_gateway, "fondy", payload, headers)
        assert answer.status_code == 400, (answer.status_code, answer.text)
        assert body(answer)["error"]["code"] == "invalid_webhook"
    # A form that repeats a field (which value is signed?) is not a callback either.
    twice = urlencode(fields).encode() + b"&order_status=declined"
    assert deliver(pay_gateway, "fondy", twice, FORM).status_code == 400
    assert all_events(pdb) == events and balance(client) == 0


HUGE = "9" * 4301  # one past int()'s default limit of 4300 digits


@pytest.mark.parametrize("where", ["fondy", "stripe", "topup", "admin_adjust", "settings", "tool"])
def test_a_json_integer_of_4300_digits_is_a_400_on_every_json_route(pay_gateway, pdb, where):
    # Before: Python's int-digits limit raised ValueError inside json.loads: 500 on every route.
    user = user_client(pay_gateway)
    admin = user_client(pay_gateway, admin=True)
    events = all_events(pdb)
    if where == "fondy":
        answer = deliver(pay_gateway, "fondy", f'{{"order_id": "x", "amount": {HUGE}}}'.encode(), JSON)
    elif where == "stripe":
        event = f'{{"id": "evt_1", "object": "event", "type": "charge.refunded", "created": {HUGE}}}'.encode()
        answer = deliver(pay_gateway, "stripe", event, {"Stripe-Signature": sign_stripe(event, STRIPE_WEBHOOK_SECRET)})
    elif where == "topup":
        answer = user.post("/api/billing/topup", content=f'{{"amount_usd": {HUGE}}}', headers=JSON)
    elif where == "admin_adjust":
        answer = admin.post(f"/api/admin/users/{uuid.uuid4()}/adjust", headers=JSON,
                            content=f'{{"amount_usd": {HUGE}, "reason": "x", "idempotency_key": "k"}}')
    elif where == "settings":
        answer = user.put("/api/billing/settings", content=f'{{"daily_limit_usd": {HUGE}}}', headers=JSON)
    else:
        answer = user.post("/api/tools/priced", content=f'{{"text": {HUGE}}}', headers=JSON)
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    assert body(answer)["error"]["code"] in ("invalid_json", "invalid_webhook")
    assert "Traceback" not in answer.text
    assert all_events(pdb) == events


# ---- more holes of the same classes ----------------------------------------------------------------


@pytest.mark.parametrize("number", ["1e999999999", "-1e999999999", "1e99999999999999999999"])
@pytest.mark.parametrize("where", ["topup", "admin_topup", "admin_adjust", "admin_refund", "admin_credit", "settings",
                                   "stripe"])
def test_an_amount_with_an_enormous_exponent_is_a_4xx_on_every_money_route(pay_gateway, pdb, where, number):
    # Before: 1e999999999 is short enough for every limit, parsed to a Decimal, and abs() of it raised
    # decimal.Overflow in the amount check (500 on every route that takes money); 1e99999999999999999999
    # made Decimal() raise InvalidOperation inside the JSON parser (500 even on a validly signed webhook).
    user = user_client(pay_gateway)
    admin = user_client(pay_gateway, admin=True)
    target = str(uuid.uuid4())
    events = all_events(pdb)
    if where == "topup":
        answer = user.post("/api/billing/topup", content=f'{{"amount_usd": {number}}}', headers=JSON)
    elif where == "admin_topup":
        answer = admin.post("/api/billing/topup", headers=JSON,
                            content=f'{{"user_id": "{target}", "amount_usd": {number}, "payment_id": "p-1"}}')
    elif where == "admin_adjust":
        answer = admin.post(f"/api/admin/users/{target}/adjust", headers=JSON,
                            content=f'{{"amount_usd": {number}, "reason": "x", "idempotency_key": "k"}}')
    elif where == "admin_refund":
        answer = admin.post("/api/admin/transactions/1/refund", headers=JSON,
                            content=f'{{"amount_usd": {number}, "reason": "x", "idempotency_key": "k"}}')
    elif where == "admin_credit":
        answer = admin.post(f"/api/admin/payments/{target}/credit", headers=JSON,
                            content=f'{{"amount": {number}, "reason": "x"}}')
    elif where == "settings":
        answer = user.put("/api/billing/settings", content=f'{{"monthly_limit_usd": {number}}}', headers=JSON)
    else:
        charge = f'{{"id": "ch_1", "object": "charge", "amount_refunded": {number}, "currency": "usd"}}'
        head = f'"id": "evt_{uuid.uuid4().hex}", "object": "event", "type": "charge.refunded"'
        event = f'{{{head}, "data": {{"object": {charge}}}}}'.encode()
        answer = deliver(pay_gateway, "stripe", event, {"Stripe-Signature": sign_stripe(event, STRIPE_WEBHOOK_SECRET)})
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    assert "Traceback" not in answer.text
    assert all_events(pdb) == events
