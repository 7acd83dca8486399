"""Payment provider modules: each defines ``from_env(env, common) -> PaymentProvider | None``.

May import ``api.payments.base`` and the leaves (as the rest of ``api.payments``).
"""
