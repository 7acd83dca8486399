"""The gateway's HTTP API: the routes, the table of endpoints, and the OpenAPI document built from it.

May import ``api.gateway`` (but not ``api.gateway.app``), ``api.ledger``, ``api.tools``, ``api.payments``
and the leaves.
"""
