"""Tollgate: a prepaid, usage-based billing gateway for MCP tool servers, its ledger in PostgreSQL.

The package is grouped by layer; each subpackage's docstring says what lives there and what it may import
(``tests/test_layers.py`` fails when an import crosses a layer the wrong way):

    api.ledger     the SQL API: queries.sql, the typed call wrappers, errors, connections, roles, anchors
    api.tools      the tool registry: in-process tools, the tool configuration file, upstream MCP servers
    api.payments   money in: providers (Stripe, Fondy), their registry, the payments service
    api.abuse      abuse controls: their configuration ([abuse]), client addresses, rate limits, hygiene
    api.gateway    the running gateway: composition root (app), the Gateway context, auth, metering, spool,
                   metrics, MCP transports, and api.gateway.http (the HTTP routes and their table)
    api.ops        the operator's side: the CLI, the migrations runner, the embedded PostgreSQL, login URLs

Lower layers never import higher ones: ledger < tools, payments, abuse < gateway < ops. ``api.errors``,
``api.jsonio`` and ``api.logs`` are leaves any layer may use. Only ``api.ops.cli`` imports the
composition root, ``api.gateway.app``.
"""
