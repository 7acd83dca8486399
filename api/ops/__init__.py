"""The operator's side: what runs the gateway and looks after its database.

    cli.py       the ``tollgate`` command
    migrate.py   the migrations runner (yoyo) and the re-applied functions and views of ``db/``
    embedded.py  the embedded PostgreSQL server of ``make run``
    logins.py    the owner's and the run-time logins' URLs, resolved from the settings

The top layer: may import every other. Only ``cli.py`` imports the composition root (``api.gateway.app``).
"""
