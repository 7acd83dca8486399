"""The reliability suite: crashes, connection faults, races and hostile input against real processes.

Every test here runs in `make test` in a short form; `make torture` runs the same tests long (see
`tests/reliability/params.py` for the knobs and docs/reliability.md for the figures).
"""
