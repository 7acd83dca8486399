"""The payment provider fakes answer the real clients: the `stripe` SDK (StripeClient, httpx) and httpx for Fondy."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import httpx
import pytest
import stripe

from tests.payments.fakes import (
    FONDY_DUPLICATE_ORDER,
    FONDY_INVALID_SIGNATURE,
    FONDY_ORDER_NOT_FOUND,
    FakeFondy,
    FakeStripe,
    fondy_signature,
    parse_nested_form,
    sign_stripe,
)

# stripe's HTTPXClient passes the form body as `data=<str>`, which httpx 0.28 deprecates with a
# DeprecationWarning on every POST; under filterwarnings=error the SDK would turn it into an APIConnectionError.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Use 'content=<\.\.\.>' to upload raw bytes/text content:DeprecationWarning"
)

T = TypeVar("T")
API_KEY = "sk_test_fake_4242"
SECRET = "whsec_test_secret"


def run_stripe(
    fake: FakeStripe, body: Callable[[stripe.StripeClient], Awaitable[T]], api_key: str = API_KEY, retries: int = 0
) -> T:
    """Run `body(client)` in a fresh event loop with a StripeClient pointed at the fake, closing its httpx client."""

    async def main() -> T:
        http_client = stripe.HTTPXClient()
        client = stripe.StripeClient(
            api_key, base_addresses={"api": fake.url}, http_client=http_client, max_network_retries=retries
        )
        try:
            return await body(client)
        finally:
            await http_client.close_async()

    return asyncio.run(main())


# One expiry for every session of the run: a retry under an idempotency key must send the same parameters,
# and a clock second ticking between two calls would change them (seen as an IdempotencyError on a busy machine).
EXPIRES_AT = int(time.time()) + 23 * 3600


def session_params(intent: str = "int_1", unit_amount: int = 500, quantity: int = 2) -> Any:
    """Checkout Session parameters (Any: tests edit them in ways SessionCreateParams forbids)."""
    return {
        "mode": "payment",
        "line_items": [
            {
                "quantity": quantity,
                "price_data": {"currency": "USD", "unit_amount": unit_amount, "product_data": {"name": "Credits"}},
            }
        ],
        "client_reference_id": "acct_1",
        "metadata": {"tollgate_intent": intent},
        "payment_intent_data": {"metadata": {"tollgate_intent": intent}},
        "success_url": "https://example.test/ok",
        "cancel_url": "https://example.test/cancel",
        "expires_at": EXPIRES_AT,
    }


def test_parse_nested_form() -> None:
    parsed = parse_nested_form("a[0][b][c]=1&a[0][d]=2&a[1][b][c]=3&m[k]=v&e[]=x&e[]=y&s=&n[0]=z")
    assert parsed == {"a": [{"b": {"c": "1"}, "d": "2"}, {"b": {"c": "3"}}], "m": {"k": "v"}, "e": ["x", "y"],
                      "s": "", "n": ["z"]}  # fmt: skip
    with pytest.raises(ValueError):
        parse_nested_form("a=1&a[b]=2")


def test_stripe_session_create_replay_retrieve() -> None:
    with FakeStripe(api_key=API_KEY) as fake:
        params = session_params()

        async def create(client: stripe.StripeClient) -> tuple[Any, Any]:
            first = await client.v1.checkout.sessions.create_async(params, options={"idempotency_key": "k1"})
            again = await client.v1.checkout.sessions.create_async(params, options={"idempotency_key": "k1"})
            return first, again

        first, again = run_stripe(fake, create)
        assert first.id.startswith("cs_test_")
        assert again.id == first.id
        assert len(fake.sessions()) == 1
        assert first.amount_total == 1000
        assert first.currency == "usd"
        assert first.status == "open"
        assert first.payment_status == "unpaid"
        assert first.payment_intent is None
        assert first.metadata["tollgate_intent"] == "int_1"
        assert first.client_reference_id == "acct_1"
        assert first.expires_at == params["expires_at"]
        assert first.url == f"{fake.url}/pay/{first.id}"

        post = fake.requests[0]
        assert (post.method, post.path) == ("POST", "/v1/checkout/sessions")
        assert post.headers["authorization"] == f"Bearer {API_KEY}"
        assert post.headers["idempotency-key"] == "k1"
        assert post.headers["content-type"] == "application/x-www-form-urlencoded"
        assert post.body["line_items"] == [
            {
                "quantity": "2",
                "price_data": {"currency": "USD", "unit_amount": "500", "product_data": {"name": "Credits"}},
            }
        ]
        assert post.body["payment_intent_data"] == {"metadata": {"tollgate_intent": "int_1"}}
        assert b"line_items[0][price_data][currency]=USD" in post.raw_body

        # The hosted page exists (not an API call).
        assert httpx.get(first.url).status_code == 200

        async def retrieve(client: stripe.StripeClient) -> Any:
            return await client.v1.checkout.sessions.retrieve_async(
                first.id, params={"expand": ["payment_intent.latest_charge"]}
            )

        assert run_stripe(fake, retrieve).payment_intent is None
        get = fake.requests[-1]
        assert (get.method, get.path, get.query) == (
            "GET", f"/v1/checkout/sessions/{first.id}", {"expand": ["payment_intent.latest_charge"]}
        )  # fmt: skip

        paid = fake.pay(first.id)
        assert paid["status"] == "complete"
        assert paid["payment_status"] == "paid"
        assert paid["payment_intent"].startswith("pi_")

        session = run_stripe(fake, retrieve)
        pi = session.payment_intent
        assert session.payment_status == "paid"
        assert pi.id == paid["payment_intent"]
        assert (pi.object, pi.status, pi.amount, pi.amount_received, pi.currency) == (
            "payment_intent", "succeeded", 1000, 1000, "usd"
        )  # fmt: skip
        assert pi.metadata["tollgate_intent"] == "int_1"
        charge = pi.latest_charge
        assert (charge.object, charge.amount_refunded, charge.refunded, charge.payment_intent) == (
            "charge", 0, False, pi.id
        )  # fmt: skip

        refunded = fake.refund(first.id, 300)
        assert (refunded["amount_refunded"], refunded["refunded"]) == (300, False)
        charge = run_stripe(fake, retrieve).payment_intent.latest_charge
        assert (charge.amount_refunded, charge.refunded) == (300, False)
        fake.refund(first.id, 700)
        charge = run_stripe(fake, retrieve).payment_intent.latest_charge
        assert (charge.amount_refunded, charge.refunded) == (1000, True)
        with pytest.raises(ValueError):
            fake.refund(first.id, 1)

        # Without expand, payment_intent is the id.
        async def plain(client: stripe.StripeClient) -> Any:
            return await client.v1.checkout.sessions.retrieve_async(first.id)

        assert run_stripe(fake, plain).payment_intent == pi.id


def test_stripe_errors() -> None:
    with FakeStripe(api_key=API_KEY) as fake:

        async def create(client: stripe.StripeClient, params: Any, key: str) -> Any:
            return await client.v1.checkout.sessions.create_async(params, options={"idempotency_key": key})

        first = run_stripe(fake, lambda c: create(c, session_params(), "k1"))
        with pytest.raises(stripe.IdempotencyError):
            run_stripe(fake, lambda c: create(c, session_params(unit_amount=501), "k1"))

        no_currency = session_params()
        del no_currency["line_items"][0]["price_data"]["currency"]
        with pytest.raises(stripe.InvalidRequestError) as bad:
            run_stripe(fake, lambda c: create(c, no_currency, "k2"))
        assert bad.value.http_status == 400
        assert bad.value.param == "line_items[0][price_data][currency]"

        with pytest.raises(stripe.InvalidRequestError) as bad:
            run_stripe(fake, lambda c: create(c, session_params(unit_amount=0), "k3"))
        assert bad.value.param == "line_items[0][price_data][unit_amount]"

        no_mode = session_params()
        del no_mode["mode"]
        with pytest.raises(stripe.InvalidRequestError) as bad:
            run_stripe(fake, lambda c: create(c, no_mode, "k4"))
        assert bad.value.param == "mode"

        with pytest.raises(stripe.InvalidRequestError) as bad:
            run_stripe(fake, lambda c: create(c, {**session_params(), "line_items": None}, "k5"))
        assert bad.value.param == "line_items"

        with pytest.raises(stripe.AuthenticationError):
            run_stripe(fake, lambda c: create(c, session_params(), "k6"), api_key="sk_test_wrong")

        async def retrieve(client: stripe.StripeClient) -> Any:
            return await client.v1.checkout.sessions.retrieve_async("cs_test_nope")

        with pytest.raises(stripe.InvalidRequestError) as missing:
            run_stripe(fake, retrieve)
        assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")

        # A validation error is not saved under its key: the key is usable once the params are fixed.
        assert run_stripe(fake, lambda c: create(c, session_params(), "k2")).id != first.id
        assert len(fake.sessions()) == 2


def test_stripe_faults() -> None:
    with FakeStripe() as fake:

        async def create(client: stripe.StripeClient, key: str) -> Any:
            return await client.v1.checkout.sessions.create_async(session_params(), options={"idempotency_key": key})

        fake.fail_next(1, "500")
        with pytest.raises(stripe.APIError) as error:
            run_stripe(fake, lambda c: create(c, "k1"))
        assert error.value.http_status == 500
        assert fake.sessions() == []

        fake.fail_next(1, "close")
        with pytest.raises(stripe.APIConnectionError):
            run_stripe(fake, lambda c: create(c, "k1"))
        assert fake.sessions() == []

        # The answer is lost after the session was created: a retry with the same key gets the same session.
        fake.fail_next(1, "close_after")
        with pytest.raises(stripe.APIConnectionError):
            run_stripe(fake, lambda c: create(c, "k1"))
        [lost] = fake.sessions()
        assert run_stripe(fake, lambda c: create(c, "k1")).id == lost["id"]
        assert len(fake.requests) == 4

        # With SDK retries, the retry of a lost answer carries the SDK's own Idempotency-Key: still one session.
        async def create_unkeyed(client: stripe.StripeClient) -> Any:
            return await client.v1.checkout.sessions.create_async(session_params())

        fake.requests.clear()
        fake.fail_next(1, "close_after")
        retried = run_stripe(fake, create_unkeyed, retries=1)
        assert len(fake.sessions()) == 2
        assert fake.sessions()[1]["id"] == retried.id
        first_try, second_try = fake.requests
        assert first_try.headers["idempotency-key"] == second_try.headers["idempotency-key"]


def test_stripe_lifecycle_controls() -> None:
    with FakeStripe() as fake:

        async def create(client: stripe.StripeClient) -> Any:
            return await client.v1.checkout.sessions.create_async(session_params())

        sessions = [run_stripe(fake, create).id for _ in range(4)]

        mismatch = fake.pay(sessions[0], amount_total=999, currency="EUR")
        assert (mismatch["amount_total"], mismatch["currency"]) == (999, "eur")
        assert fake.payment_intent(sessions[0])["amount_received"] == 999

        pending = fake.pay_async_pending(sessions[1])
        assert (pending["status"], pending["payment_status"]) == ("complete", "unpaid")
        assert fake.payment_intent(sessions[1], expand_charge=True)["latest_charge"]["status"] == "pending"
        assert fake.pay(sessions[1])["payment_status"] == "paid"

        dispute = fake.dispute(sessions[1])
        assert (dispute["object"], dispute["status"], dispute["amount"], dispute["reason"]) == (
            "dispute", "needs_response", 1000, "fraudulent"
        )  # fmt: skip
        assert dispute["charge"] == fake.charge(sessions[1])["id"]
        assert fake.charge(sessions[1])["disputed"] is True
        assert fake.close_dispute(dispute["id"], won=False)["status"] == "lost"

        assert fake.expire(sessions[2])["status"] == "expired"
        with pytest.raises(ValueError):
            fake.pay(sessions[2])

        async def expire(client: stripe.StripeClient) -> Any:
            return await client.v1.checkout.sessions.expire_async(sessions[3])

        assert run_stripe(fake, expire).status == "expired"
        with pytest.raises(stripe.InvalidRequestError):
            run_stripe(fake, expire)


def test_stripe_webhook_signature() -> None:
    session = {"id": "cs_test_1", "object": "checkout.session", "payment_status": "paid"}
    event = FakeStripe.event("checkout.session.completed", session, event_id="evt_1")
    assert event["data"]["object"] == session
    body, headers = FakeStripe.delivery(event, SECRET)
    assert headers["Content-Type"] == "application/json"
    header = headers["Stripe-Signature"]
    assert stripe.WebhookSignature.verify_header(body, header, SECRET, tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body, header, "whsec_wrong", tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body + b" ", header, SECRET, tolerance=300)
    old = sign_stripe(body, SECRET, timestamp=int(time.time()) - 3600)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body, old, SECRET, tolerance=300)
    assert sign_stripe(body, SECRET, 1700000000) == stripe.WebhookSignature.generate_signature_header(
        body.decode(), SECRET, 1700000000
    )

    parsed = stripe.StripeClient(API_KEY).construct_event(body, header, SECRET)
    assert (parsed.id, parsed.type, parsed.data.object["id"]) == ("evt_1", "checkout.session.completed", "cs_test_1")


# --- Fondy -------------------------------------------------------------------------------------------------------

MERCHANT_ID = 1500001
PASSWORD = "fondy-key"


def fondy_request(fields: dict[str, Any], password: str = PASSWORD) -> dict[str, Any]:
    fields = {"merchant_id": MERCHANT_ID, **fields}
    return {"request": {**fields, "signature": fondy_signature(password, fields)}}


def checkout_fields(order_id: str = "ord-1", amount: int | str = 12_345, **extra: Any) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "order_desc": "Tollgate credits",
        "amount": amount,
        "currency": "UAH",
        "server_callback_url": "https://example.test/fondy/callback",
        "response_url": "https://example.test/return",
        "lifetime": 3600,
        "merchant_data": "int_1",
        **extra,
    }


def assert_signed(fields: dict[str, Any]) -> None:
    assert fields["signature"] == fondy_signature(PASSWORD, fields)
    assert fields["signature"] == hashlib.sha1(  # noqa: S324
        "|".join([PASSWORD, *(str(fields[k]) for k in sorted(fields) if k != "signature" and fields[k] != "")]).encode()
    ).hexdigest()


def run_fondy(body: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(timeout=5) as client:
            return await body(client)

    return asyncio.run(main())


def test_fondy_checkout_and_status() -> None:
    with FakeFondy(merchant_id=MERCHANT_ID, password=PASSWORD) as fake:
        checkout = f"{fake.url}/api/checkout/url/"
        status = f"{fake.url}/api/status/order_id"

        async def calls(client: httpx.AsyncClient) -> list[dict[str, Any]]:
            answers = []
            for url, payload in (
                (checkout, fondy_request(checkout_fields())),
                (checkout, fondy_request(checkout_fields(amount="12345"))),  # the same order again: same answer
                (checkout, fondy_request(checkout_fields(amount=12_346))),  # another amount: duplicate order_id
                (checkout, {"request": {**fondy_request(checkout_fields("ord-2"))["request"], "signature": "0" * 40}}),
                (checkout, fondy_request(checkout_fields("ord-3"), password="wrong")),
                (checkout, {"request": {**checkout_fields("ord-4"), "merchant_id": 42, "signature": "x"}}),
                (checkout, fondy_request({k: v for k, v in checkout_fields("ord-5").items() if k != "currency"})),
                (status, fondy_request({"order_id": "ord-1"})),
                (status, fondy_request({"order_id": "nope"})),
            ):
                response = await client.post(url, json=payload)
                assert response.status_code == 200
                answers.append(response.json()["response"])
            return answers

        created, again, duplicate, bad_sig, bad_password, bad_merchant, no_currency, state, unknown = run_fondy(calls)
        assert created["response_status"] == "success"
        assert created["checkout_url"].startswith(f"{fake.url}/merchant/checkout?token=")
        assert isinstance(created["payment_id"], int)
        assert again == created
        assert (duplicate["response_status"], duplicate["error_code"]) == ("failure", FONDY_DUPLICATE_ORDER)
        for failure in (bad_sig, bad_password):
            assert (failure["response_status"], failure["error_code"]) == ("failure", FONDY_INVALID_SIGNATURE)
        assert bad_merchant["response_status"] == "failure"
        assert no_currency["response_status"] == "failure"
        assert "currency" in no_currency["error_message"]
        assert (unknown["response_status"], unknown["error_code"]) == ("failure", FONDY_ORDER_NOT_FOUND)
        assert httpx.get(created["checkout_url"]).status_code == 200

        assert state["response_status"] == "success"
        assert (state["order_id"], state["order_status"], state["amount"], state["currency"]) == (
            "ord-1", "created", "12345", "UAH"
        )  # fmt: skip
        assert state["merchant_data"] == "int_1"
        assert state["payment_id"] == created["payment_id"]
        assert_signed(state)

        recorded = fake.requests[0]
        assert (recorded.method, recorded.path) == ("POST", "/api/checkout/url/")
        assert recorded.headers["content-type"] == "application/json"
        assert recorded.body == fondy_request(checkout_fields())

        async def order_status(client: httpx.AsyncClient) -> dict[str, Any]:
            response = await client.post(status, json=fondy_request({"order_id": "ord-1"}))
            answer: dict[str, Any] = response.json()["response"]
            return answer

        approved = fake.approve("ord-1")
        assert (approved["order_status"], approved["actual_amount"], approved["actual_currency"]) == (
            "approved", "12345", "UAH"
        )  # fmt: skip
        state = run_fondy(order_status)
        assert state == approved
        assert state["reversal_amount"] == "0"
        assert state["masked_card"]
        assert_signed(state)

        partial = fake.reverse("ord-1", 345)
        assert (partial["order_status"], partial["reversal_amount"]) == ("approved", "345")
        state = run_fondy(order_status)
        assert (state["order_status"], state["reversal_amount"]) == ("approved", "345")
        assert_signed(state)
        fake.reverse("ord-1", 12_000)
        state = run_fondy(order_status)
        assert (state["order_status"], state["reversal_amount"]) == ("reversed", "12345")
        assert_signed(state)
        with pytest.raises(ValueError):
            fake.reverse("ord-1", 1)

        # An approved order's id cannot be used again.
        async def recreate(client: httpx.AsyncClient) -> dict[str, Any]:
            response = await client.post(checkout, json=fondy_request(checkout_fields()))
            answer: dict[str, Any] = response.json()["response"]
            return answer

        assert run_fondy(recreate)["error_code"] == FONDY_DUPLICATE_ORDER


def test_fondy_controls_and_callbacks() -> None:
    with FakeFondy(merchant_id=MERCHANT_ID, password=PASSWORD) as fake:

        async def create(client: httpx.AsyncClient) -> None:
            for order_id in ("a", "b", "c"):
                payload = fondy_request(checkout_fields(order_id))
                response = await client.post(f"{fake.url}/api/checkout/url/", json=payload)
                assert response.json()["response"]["response_status"] == "success"

        run_fondy(create)
        mismatch = fake.approve("a", amount=100, currency="USD")
        assert (mismatch["amount"], mismatch["actual_amount"], mismatch["actual_currency"]) == ("12345", "100", "USD")
        assert fake.decline("b")["order_status"] == "declined"
        assert fake.expire("c")["order_status"] == "expired"
        with pytest.raises(ValueError):
            fake.approve("c")

        body, headers = fake.callback("a")
        assert headers == {"Content-Type": "application/json"}
        payload = json.loads(body)
        assert payload["order_status"] == "approved"
        assert payload["response_status"] == "success"
        assert_signed(payload)

        form_body, form_headers = fake.callback_form("a")
        assert form_headers == {"Content-Type": "application/x-www-form-urlencoded"}
        form = dict(parse_qsl(form_body.decode(), keep_blank_values=True))
        assert form["signature"] == payload["signature"]
        assert form["signature"] == fondy_signature(PASSWORD, form)
        assert fondy_signature(PASSWORD, {**form, "actual_amount": "12345"}) != form["signature"]


def test_fondy_faults() -> None:
    with FakeFondy(merchant_id=MERCHANT_ID, password=PASSWORD) as fake:

        async def attempts(client: httpx.AsyncClient) -> tuple[httpx.Response, BaseException | None, httpx.Response]:
            url = f"{fake.url}/api/checkout/url/"
            payload = fondy_request(checkout_fields())
            fake.fail_next(1, "500")
            fake.fail_next(1, "close")
            failed = await client.post(url, json=payload)
            closed: BaseException | None = None
            try:
                await client.post(url, json=payload)
            except httpx.TransportError as exc:
                closed = exc
            return failed, closed, await client.post(url, json=payload)

        failed, closed, ok = run_fondy(attempts)
        assert failed.status_code == 500
        assert failed.json()["response"]["response_status"] == "failure"
        assert isinstance(closed, httpx.RemoteProtocolError)
        assert ok.json()["response"]["response_status"] == "success"
        assert len(fake.requests) == 3
        assert [o["order_id"] for o in fake.orders()] == ["ord-1"]
