"""Payment provider modules: each defines ``from_env(env, common) -> PaymentProvider | None``."""
