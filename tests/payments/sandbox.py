"""A local payment sandbox: try the whole top-up flow with no network and no provider account.

It serves the test doubles of the Stripe and Fondy APIs (tests/payments/fakes.py) and makes their
"hosted pages" act like a customer: opening a checkout URL pays it and delivers the provider's signed
webhook to the gateway; a refund page refunds and delivers that too.

    .venv/bin/python -m tests.payments.sandbox            # prints the environment for `tollgate run`
    env $(.venv/bin/python -m tests.payments.sandbox --print-env) make run   # in another terminal

Pages (GET):
    /pay/{session}                         Stripe: pay the session → checkout.session.completed
    /refund/{session}?cents=N              Stripe: refund N cents → charge.refunded
    /merchant/checkout?token=…             Fondy: approve the order → its callback
    /fondy-refund/{order_id}?cents=N       Fondy: reverse N kopiykas → its callback

Never for production: anyone who can reach it can "pay".
"""

from __future__ import annotations

import argparse
import re
import threading
import time
from typing import Any

import httpx

from tests.payments.fakes import FakeFondy, FakeStripe, RecordedRequest, _Reply, _text_reply

STRIPE_KEY = "sk_test_sandbox"
STRIPE_WEBHOOK_SECRET = "whsec_sandbox"
FONDY_MERCHANT = 1396424
FONDY_PASSWORD = "sandbox-payment-key"


class _Deliverer:
    """Runs a customer action after the page's answer (the fake serves one request at a time under its
    lock, and the action takes that lock) and posts the resulting webhook to the gateway."""

    gateway: str
    delivered: list[int]

    def later(self, action: Any) -> None:
        def run() -> None:
            payload, headers, provider = action()
            response = httpx.post(
                f"{self.gateway}/api/payments/{provider}/webhook", content=payload, headers=headers, timeout=30
            )
            self.delivered.append(response.status_code)

        threading.Thread(target=run, daemon=True).start()


class SandboxStripe(FakeStripe, _Deliverer):
    def __init__(self, gateway: str) -> None:
        super().__init__(api_key=STRIPE_KEY)
        self.gateway = gateway.rstrip("/")
        self.delivered = []

    def _route(self, request: RecordedRequest, parse_error: str | None) -> _Reply:
        pay = re.fullmatch(r"/pay/([A-Za-z0-9_]+)", request.path)
        refund = re.fullmatch(r"/refund/([A-Za-z0-9_]+)", request.path)
        if request.method == "GET" and pay and pay.group(1) in self._sessions:
            self.later(lambda: self._deliver("checkout.session.completed", self.pay(pay.group(1))))
            return _text_reply(200, "Paid (sandbox): the gateway is being told.\n")
        if request.method == "GET" and refund and refund.group(1) in self._sessions:
            cents = int(str(request.query.get("cents", "0")) or 0)
            self.later(lambda: self._deliver("charge.refunded", self.refund(refund.group(1), cents)))
            return _text_reply(200, f"Refunded {cents} cents (sandbox).\n")
        return super()._route(request, parse_error)

    def _deliver(self, kind: str, obj: dict[str, Any]) -> tuple[bytes, dict[str, str], str]:
        payload, headers = self.delivery(self.event(kind, obj), STRIPE_WEBHOOK_SECRET)
        return payload, headers, "stripe"


class SandboxFondy(FakeFondy, _Deliverer):
    def __init__(self, gateway: str) -> None:
        super().__init__(merchant_id=FONDY_MERCHANT, password=FONDY_PASSWORD)
        self.gateway = gateway.rstrip("/")
        self.delivered = []

    def _route(self, request: RecordedRequest, parse_error: str | None) -> _Reply:
        path = request.path.rstrip("/")
        if request.method == "GET" and path == "/merchant/checkout":
            order_id = self._tokens.get(str(request.query.get("token", "")))
            if order_id is not None:
                self.later(lambda: self._deliver(order_id, lambda: self.approve(order_id)))
                return _text_reply(200, "Paid (sandbox): the gateway is being told.\n")
        refund = re.fullmatch(r"/fondy-refund/([A-Za-z0-9-]+)", path)
        if request.method == "GET" and refund and refund.group(1) in self._orders:
            cents = int(str(request.query.get("cents", "0")) or 0)
            order = refund.group(1)
            self.later(lambda: self._deliver(order, lambda: self.reverse(order, cents)))
            return _text_reply(200, f"Reversed {cents} kopiykas (sandbox).\n")
        return super()._route(request, parse_error)

    def _deliver(self, order_id: str, act: Any) -> tuple[bytes, dict[str, str], str]:
        act()
        payload, headers = self.callback(order_id)
        return payload, headers, "fondy"


def environment(stripe_url: str, fondy_url: str) -> dict[str, str]:
    """The gateway's environment for a sandbox at these URLs."""
    return {
        "TOLLGATE_STRIPE_SECRET_KEY": STRIPE_KEY,
        "TOLLGATE_STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
        "TOLLGATE_STRIPE_API_BASE": stripe_url,
        "TOLLGATE_FONDY_MERCHANT_ID": str(FONDY_MERCHANT),
        "TOLLGATE_FONDY_PASSWORD": FONDY_PASSWORD,
        "TOLLGATE_FONDY_API_BASE": fondy_url,
        "TOLLGATE_PAYMENT_DEFAULT_PROVIDER": "stripe",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.payments.sandbox", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:8000", help="where the gateway listens")
    parser.add_argument("--stripe-port", type=int, default=12111)
    parser.add_argument("--fondy-port", type=int, default=12112)
    parser.add_argument("--print-env", action="store_true", help="print KEY=VALUE lines and exit")
    args = parser.parse_args(argv)
    stripe = SandboxStripe(args.gateway)
    fondy = SandboxFondy(args.gateway)
    stripe.port, fondy.port = args.stripe_port, args.fondy_port
    env = environment(f"http://127.0.0.1:{args.stripe_port}", f"http://127.0.0.1:{args.fondy_port}")
    if args.print_env:
        print(" ".join(f"{key}={value}" for key, value in env.items()))
        return 0
    with stripe, fondy:
        print("payment sandbox: give `tollgate run` this environment (never use it in production):")
        for key, value in env.items():
            print(f"  export {key}={value}")
        print("open a top-up's checkout_url to pay it; Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
