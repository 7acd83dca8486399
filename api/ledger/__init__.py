"""The ledger's SQL API, as Python calls: everything that talks to schema ``billing``.

    queries.sql / queries.py  every SQL statement the package runs, by name
    types.py                  the pure part: row dataclasses and parameter building (money, JSON, anchors)
    aio.py                    typed async wrappers of the SQL functions, one call each (the gateway's)
    sync.py                   the same wrappers, blocking (CLI, tests, bench): generated from aio.py
    generate_sync.py          writes sync.py from aio.py; ``--check`` fails when sync.py is stale
    errors.py                 the SQLSTATE registry: each ``BLnnn`` refusal as a ``BillingError`` subclass
    db.py                     connections and pools configured once (JSON in and out with Decimal numbers)
    roles.py                  the authorities, their group and login roles, and the checks of a login
    anchors.py                ledger anchors: chain heads written out and verified later

The wrappers are written once, async, in ``aio.py``; ``sync.py`` is generated from it by
``python -m api.ledger.generate_sync`` (psycopg's async-to-sync idea, a handful of textual rewrites:
``async def`` to ``def``, ``await`` dropped, ``AsyncConn`` to ``Conn``) under a "do not edit" header, and
``make lint`` runs the generator with ``--check``, so the twins cannot drift apart. Change a wrapper in
``aio.py``, run the generator, commit both. Whatever is neither I/O nor ``await`` (row types, turning
arguments into parameters) lives in ``types.py``, which both import and re-export. JSON arguments carry no
``dumps=``: ``db.py`` sets ``api.jsonio.dumps`` on every connection it makes, sync and async.

May import: psycopg and the leaves (``api.errors``, ``api.jsonio``, ``api.logs``). Never the tools,
payments, gateway or ops layers: other languages call the same SQL functions, and so may any Python code
with only this package.
"""
