"""Tollgate test suite (a package, so tests share tests.helpers and mypy applies the tests.* overrides)."""
