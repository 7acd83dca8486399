"""Tollgate: a prepaid, usage-based billing gateway whose ledger lives in PostgreSQL."""
