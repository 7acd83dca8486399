"""Benchmarks of the billing ledger; `make bench` runs bench/run.py."""
