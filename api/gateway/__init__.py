"""The running gateway: one Starlette app serving MCP clients, users, operators and payment providers.

    app.py       the composition root: ``create_app`` builds pools, the context, routes and the lifespan
    context.py   ``Gateway``: everything a request handler needs, built once per app
    auth.py      JWT, API-key and anonymous callers (``Identity``), accounts
    apikeys.py   API-key format and digest (shared with the CLI)
    config.py    ``Settings`` from the environment
    metering.py  the metered call: begin, hold, run the tool, settle; refusals
    spool.py     completions the ledger could not take yet, on disk until it can
    metrics.py   Prometheus metrics
    mcp.py       the MCP transports (streamable HTTP, SSE) through the SDK
    ratelimits.py  where the rate limits (api.abuse.ratelimit) apply: route classes, subjects, middleware
    http/        the HTTP API: the endpoint table (which binds each route with its access check), the
                 handlers by concern, the envelope, parsing, OpenAPI

May import ``api.ledger``, ``api.tools``, ``api.payments`` and the leaves. Never ``api.ops``. Nothing in
this package imports ``app.py``: route modules take a ``Gateway`` (``context.py``).
"""
