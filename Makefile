# Contributor commands. Needs only python3 and GNU make: everything else goes into .venv.
#
#   make run          the gateway, on the embedded PostgreSQL unless TOLLGATE_DATABASE_URL is set
#   make test         lint, type-check, validate docker-compose.yml, then the test suite
#   make test-system  the test suite only (CI runs it against a system PostgreSQL 15)
#   make lint         ruff + mypy
#   make bench        the ledger benchmarks in bench/run.py
#   make bench-gateway  the gateway benchmarks (bench/gateway.py, bench/sse_sessions.py)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Rewritten after every successful install, so that editing pyproject.toml reinstalls.
STAMP := $(VENV)/.installed

.PHONY: $(VENV) run test test-system lint bench bench-gateway clean

$(VENV): $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: $(STAMP)
	$(BIN)/tollgate run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(BIN)/pytest

test-system: $(STAMP)
	$(BIN)/pytest

# Not part of `make test`. Options: make bench BENCH_ARGS="--duration 20 --rounds 5" (see bench/README.md).
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The gateway: HTTP billed vs unmetered vs API key, then concurrent MCP SSE sessions (bench/README.md).
# Options: make bench-gateway BENCH_ARGS="--duration 30 --profile 10" SSE_ARGS="--sessions 1000 4000 --mode billed"
bench-gateway: $(STAMP)
	$(BIN)/python -m bench.gateway $(BENCH_ARGS)
	$(BIN)/python -m bench.sse_sessions $(SSE_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
