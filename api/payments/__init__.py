"""Money in: payment providers, the checkout a user pays at, verified webhooks, reconciliation.

The flow (README "Payments"):

1. ``POST /api/billing/topup`` by a user → ``service.start_payment``: ``billing.create_payment_intent``
   (nothing credited), the provider's checkout created, ``billing.attach_payment_checkout``; the answer
   carries the checkout URL.
2. The provider calls ``POST /api/payments/{provider}/webhook`` → ``service.handle_webhook``: the
   provider module verifies the signature over the raw body (refused: 400, nothing stored) and reduces
   the event to ``PaymentFacts``; ``billing.record_payment_event`` stores it raw and applies it in one
   transaction (credit once, fail, expire, claw back).
3. ``tollgate payments reconcile`` → ``service.reconcile``: asks each provider about open and recent
   intents and applies what it reports through the same SQL function, so a webhook that never came is
   made good and one that races it cannot credit twice.

A provider is one module in ``api.payments.providers`` exposing ``from_env(env, common)`` that returns
a configured ``PaymentProvider`` or None (not configured); ``api.payments.registry`` finds them all.
"""
