"""Money in: payment providers, the checkout a user pays at, verified webhooks, reconciliation.

The flow (docs/payments.md):

1. ``POST /api/billing/topup`` by a user → ``service.start_payment``: ``billing.create_payment_intent``
   (nothing credited), the provider's checkout created, ``billing.attach_payment_checkout``; the answer
   carries the checkout URL.
2. The provider calls ``POST /api/payments/{provider}/webhook`` → ``service.handle_webhook``: the
   provider module verifies the signature over the raw body (refused: 400, nothing stored), reduces the
   event to ``PaymentFacts`` and confirms them where a signed body alone cannot be trusted (Fondy: its
   order-status API, server to server; unreachable: 503, nothing stored, the provider retries);
   ``billing.record_payment_event`` stores the facts' payload and applies them in one transaction: it
   credits only exactly what the intent asked (amount, currency, its recorded checkout), once; anything
   else goes to review uncredited (``billing.credit_reviewed_payment``: an operator credits it, audited);
   fail, expire, claw back.
3. ``tollgate payments reconcile`` → ``service.reconcile``: asks each provider about open and recent
   intents and applies what it reports through the same SQL function, so a webhook that never came is
   made good and one that races it cannot credit twice.

A provider is one module in ``api.payments.providers`` exposing ``from_env(env, common)`` that returns
a configured ``PaymentProvider`` or None (not configured); ``api.payments.registry`` finds them all.

May import ``api.ledger`` (the SQL calls and their types) and the leaves; never ``api.tools``,
``api.gateway`` or ``api.ops``: the gateway's routes and the CLI call into this package, not the reverse.
"""
