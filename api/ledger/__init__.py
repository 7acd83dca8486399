"""The ledger's SQL API, as Python calls: everything that talks to schema ``billing``.

    queries.sql / queries.py  every SQL statement the package runs, by name
    sync.py / aio.py          typed wrappers of the SQL functions (blocking, and async for the gateway)
    errors.py                 the SQLSTATE registry: each ``BLnnn`` refusal as a ``BillingError`` subclass
    db.py                     connections and pools configured once (JSON numbers as Decimal)
    roles.py                  the authorities, their group and login roles, and the checks of a login
    anchors.py                ledger anchors: chain heads written out and verified later

May import: psycopg and the leaves (``api.errors``, ``api.jsonio``, ``api.logs``). Never the tools,
payments, gateway or ops layers: other languages call the same SQL functions, and so may any Python code
with only this package.
"""
