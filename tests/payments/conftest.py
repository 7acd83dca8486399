"""A real gateway with Stripe and Fondy configured, both pointed at the local fakes (tests/payments/fakes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from api.ledger import db as api_db
from api.ledger import sync as ledger
from tests import helpers as h
from tests.payments.fakes import FakeFondy, FakeStripe

STRIPE_KEY = "sk_test_tollgate"
STRIPE_WEBHOOK_SECRET = "whsec_test_tollgate_secret"
FONDY_MERCHANT = 1396424
FONDY_PASSWORD = "test-fondy-payment-key"
UAH_PER_USD = Decimal("41.25")


@pytest.fixture(scope="module")
def stripe_fake() -> Iterator[FakeStripe]:
    with FakeStripe(api_key=STRIPE_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def fondy_fake() -> Iterator[FakeFondy]:
    with FakeFondy(merchant_id=FONDY_MERCHANT, password=FONDY_PASSWORD) as fake:
        yield fake


def provider_env(stripe_fake: FakeStripe, fondy_fake: FakeFondy) -> dict[str, str]:
    return {
        "TOLLGATE_STRIPE_SECRET_KEY": STRIPE_KEY,
        "TOLLGATE_STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
        "TOLLGATE_STRIPE_API_BASE": stripe_fake.url,
        "TOLLGATE_FONDY_MERCHANT_ID": str(FONDY_MERCHANT),
        "TOLLGATE_FONDY_PASSWORD": FONDY_PASSWORD,
        "TOLLGATE_FONDY_API_BASE": fondy_fake.url,
        "TOLLGATE_PAYMENT_DEFAULT_PROVIDER": "stripe",
        "TOLLGATE_PUBLIC_URL": "https://tollgate.example",
    }


@pytest.fixture(scope="module")
def pay_gateway(
    gateway_db: str, stripe_fake: FakeStripe, fondy_fake: FakeFondy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """`tollgate run` over the gateway's three logins with both providers configured (module-scoped)."""
    from tests.gateway.server import start_gateway

    with api_db.connect(gateway_db) as conn:
        ledger.set_exchange_rate(conn, UAH_PER_USD)
    data_dir = tmp_path_factory.mktemp("pay-gateway")
    # The payment fraud rules off: these tests start many top-ups per account and spend fresh card credit at
    # once (the rules themselves: tests/payments/test_fraud_*.py).
    server = start_gateway(gateway_db, data_dir, **provider_env(stripe_fake, fondy_fake), **h.PAYMENT_RULES_OFF_ENV)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(gateway_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """tests/conftest.py's gateway (no provider), with the payment fraud rules off like pay_gateway's: both
    serve the module's ledger, and each writes its [abuse] figures to it when it starts."""
    from tests.gateway.server import start_gateway

    server = start_gateway(gateway_db, tmp_path_factory.mktemp("gateway"), **h.PAYMENT_RULES_OFF_ENV)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pdb(gateway_db: str) -> Iterator[psycopg.Connection[Any]]:
    """Owner connection to the payment gateway's database (JSON numbers as Decimal)."""
    with api_db.connect(gateway_db) as connection:
        yield connection
