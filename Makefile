# Contributor commands. Needs only python3 and GNU make: everything else goes into .venv.
#
#   make run          the gateway, on the embedded PostgreSQL unless TOLLGATE_DATABASE_URL is set
#   make test         lint, type-check, validate docker-compose.yml, then the test suite
#   make test-system  the test suite only (CI runs it against a system PostgreSQL 15)
#   make lint         ruff + mypy, and api/ledger/sync.py up to date with aio.py (python -m api.ledger.generate_sync)
#   make torture      the reliability suite (tests/reliability) run long: crash cycles, faults, races, fuzz
#   make soak         the mixed workload through the gateway for DURATION seconds, memory and size sampled
#   make bench        every benchmark (bench/harness.py): JSON + PNG plots in bench/results/
#   make bench-ledger   the ledger benchmarks alone (bench/run.py)
#   make bench-gateway  the gateway benchmarks alone (bench/gateway.py, bench/sse_sessions.py)
#   make bench-webhooks payment webhooks: Stripe deliveries verified and applied per second (bench/webhooks.py)
#   make bench-chain    what the ledger's hash chain costs billing.charge / settle, against the code before it
#   make bench-roles    what the role split costs: the same scripts as the metering login and as the superuser
#   make bench-abuse    what the abuse controls cost (on vs off) and a paying user's p50 during an anonymous flood
#   make bench-compare BEFORE=<rev>  one benchmark on <rev> and on this checkout, alternating: after/before ratios

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Rewritten after every successful install, so that editing pyproject.toml reinstalls.
STAMP := $(VENV)/.installed

BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: $(VENV) run test test-system lint torture soak bench bench-ledger bench-gateway bench-webhooks bench-chain bench-roles bench-abuse \
	bench-compare clean

$(VENV): $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The benchmarks also need matplotlib (the `bench` extra), which the tests do not.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

run: $(STAMP)
	$(BIN)/tollgate run

lint: $(STAMP)
	$(BIN)/python -m api.ledger.generate_sync --check
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(BIN)/pytest

test-system: $(STAMP)
	$(BIN)/pytest

# The reliability suite, long. Not part of `make test` (which runs the same tests short). Figures are appended
# to TORTURE_REPORT (JSON lines) and printed at the end. Example:
#   make torture DB_CYCLES=50 GATEWAY_CYCLES=20 FAULT_ROUNDS=200 DURATION=5 FUZZ_EXAMPLES=1000
DB_CYCLES ?= 50
GATEWAY_CYCLES ?= 20
FAULT_ROUNDS ?= 200
DURATION ?= 5
FUZZ_EXAMPLES ?= 500
ifndef TORTURE_REPORT
TORTURE_REPORT := .tollgate/torture-$(shell date -u +%Y%m%dT%H%M%SZ).jsonl
endif
torture: $(STAMP)
	mkdir -p .tollgate
	TOLLGATE_TORTURE=1 TOLLGATE_TORTURE_DB_CYCLES=$(DB_CYCLES) TOLLGATE_TORTURE_GATEWAY_CYCLES=$(GATEWAY_CYCLES) \
	TOLLGATE_TORTURE_FAULT_ROUNDS=$(FAULT_ROUNDS) TOLLGATE_TORTURE_DURATION=$(DURATION) \
	TOLLGATE_TORTURE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) TOLLGATE_TORTURE_REPORT=$(abspath $(TORTURE_REPORT)) \
	$(BIN)/pytest tests/reliability tests/payments/test_payments_fuzz.py -o timeout=0 -q
	@echo "figures: $(TORTURE_REPORT)"; cat $(TORTURE_REPORT)

# The mixed workload through a real gateway for DURATION seconds (default 600), sampling the gateway's memory
# and the database's size; fails on any error or on growth beyond the data written (bench/soak.py).
# DURATION here is the whole run in seconds (for torture it is seconds per cycle).
soak: $(STAMP)
	$(BIN)/python -m bench.soak --duration $(if $(filter command line,$(origin DURATION)),$(DURATION),600) $(SOAK_ARGS)

# Every benchmark, one command: JSON + PNG plots in bench/results/ (bench/README.md). Not part of `make test`.
# Options: make bench BENCH_ARGS="--quick" or BENCH_ARGS="--only ledger,growth"
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.harness $(BENCH_ARGS)

# The ledger benchmarks alone. Options: make bench-ledger BENCH_ARGS="--duration 20 --rounds 5"
bench-ledger: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The gateway: HTTP billed vs unmetered vs API key, then concurrent MCP SSE sessions (bench/README.md).
# Options: make bench-gateway BENCH_ARGS="--duration 30 --profile 10" SSE_ARGS="--sessions 1000 4000 --mode billed"
bench-gateway: $(STAMP)
	$(BIN)/python -m bench.gateway $(BENCH_ARGS)
	$(BIN)/python -m bench.sse_sessions $(SSE_ARGS)

# Payment webhooks on one gateway worker: signed Stripe deliveries applied per second against the same
# billing.record_payment_event calls over SQL, replays, 100 concurrent duplicates (bench/README.md).
# Options: make bench-webhooks BENCH_ARGS="--duration 20 --rounds 5 --connections 32"
bench-webhooks: $(STAMP)
	$(BIN)/python -m bench.webhooks $(BENCH_ARGS)

# The hash chain's cost: the same pgbench scripts on the db/ before it and on this checkout's, one server.
# Options: make bench-chain BENCH_ARGS="--duration 30 --rounds 7 --before <git revision>"
bench-chain: $(STAMP)
	$(BIN)/python -m bench.chain_cost $(BENCH_ARGS)

# The role split's cost (migration 0006): the same pgbench scripts on one server as the gateway's metering
# login and as the owner/superuser, then billing.charge in an in-server loop as each.
# Options: make bench-roles BENCH_ARGS="--duration 15 --rounds 4 --loop-calls 20000 --loop-rounds 4"
bench-roles: $(STAMP)
	$(BIN)/python -m bench.role_cost $(BENCH_ARGS)

# The abuse controls (issue 14): billed throughput with every control on vs off, and a paying user's p50 during
# a 500/s anonymous flood vs quiet, with the default controls and with none.
# Options: make bench-abuse BENCH_ARGS="--duration 15 --rounds 6 --flood-seconds 30 --flood-rate 500"
bench-abuse: $(STAMP)
	$(BIN)/python -m bench.abuse $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# One benchmark (COMPARE_ARGS: --bench gateway|webhooks, --rounds N, then -- and the benchmark's own options) on
# the revision BEFORE and on this checkout, alternating, with after/before ratios (bench/before_after.py).
#   make bench-compare BEFORE=main COMPARE_ARGS="--bench webhooks --rounds 4 -- --duration 5"
bench-compare: $(STAMP)
	@test -n "$(BEFORE)" || { echo "make bench-compare needs BEFORE=<rev>"; exit 2; }
	$(BIN)/python -m bench.before_after --before $(BEFORE) $(COMPARE_ARGS)
