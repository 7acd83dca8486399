"""The gateway's HTTP API: the routes, the table of endpoints, and the OpenAPI document built from it.

    envelope.py   the answer's shape (success / error), ``ApiError``, the request id of an idempotent call
    parsing.py    bodies, money, query and path parameters, the Idempotency-Key header
    access.py     the access kinds (PUBLIC, PROVIDER, CALLER, USER, ADMIN) and the check for each
    endpoints.py  the table: each endpoint's handler, method, path and access; ``routes`` binds them with the
                  check, ``is_public`` answers the anonymous guard
    openapi.py    ``/openapi.json``, from the table
    tools.py, billing.py, payments.py, admin.py, ops.py   the handlers, by concern

A handler is ``(gateway, request, caller) -> Response``; it never checks who calls (the binding did).
May import ``api.gateway`` (but not ``api.gateway.app``), ``api.ledger``, ``api.tools``, ``api.payments``
and the leaves.
"""
