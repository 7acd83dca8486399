"""Abuse controls (docs/abuse.md): rate limits, anonymous policy, connection hygiene, metrics hygiene,
payment fraud rules and velocity flags.

    api.abuse.config      the [abuse] section of tollgate.toml and its TOLLGATE_ABUSE_* overrides (one place)
    api.abuse.clientip    who the client is at the edge: the peer, or X-Forwarded-For past trusted proxies
    api.abuse.ratelimit   keyed GCRA rate limits over a bounded in-process store or Redis (shared by gateways)
    api.abuse.connections connection hygiene: head and body deadlines, MCP session and event-stream caps

The rules about money (payment caps, cooling-off, disputes, velocity, refund caps) are enforced by the
ledger's own functions, reading their figures from billing.abuse_policy; this package writes the configured
figures there and answers what the ledger decides. What is about traffic (rates, sessions, sockets) is
enforced here, at the edge, before a request costs the ledger anything.

May import: ``api.ledger`` and the leaves (``api.errors``, ``api.jsonio``, ``api.logs``). ``api.gateway``
and ``api.ops`` import it, never the other way round.
"""
