# shardbroker: `make demo` runs a broker with publishers; `make test` runs the checks.
# Both create .venv and install what they need (Debian packages via apt-get when root).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

# Debian packages: python3-venv to make the venv; the rest are used by tests and tools.
BASE_DEBS = python3-venv
TEST_DEBS = ethtool iproute2 numactl procps shellcheck strace

BENCH_DEBS = iperf3 nats-server
BENCH_OUT ?= out/bench
# BENCH_BASELINE=DIR_OR_PYTHON: also run the broker of another checkout, side by side (@base).
BENCH_BASELINE ?=
BENCH_ARGS ?=
BENCH_FLAGS = $(BENCH_ARGS) $(if $(BENCH_BASELINE),--baseline $(BENCH_BASELINE))

.PHONY: venv demo test lint typecheck unit integration container clean bench bench-deps bench-quick bench-small bench-consumers

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || tools/system_deps.sh $(BASE_DEBS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/shardbroker demo

lint: venv
	$(BIN)/ruff check shardbroker tests

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/python -m pytest tests/unit -q

integration: venv
	$(BIN)/python -m pytest tests/integration -q

test: venv
	@tools/system_deps.sh $(TEST_DEBS)
	$(BIN)/ruff check shardbroker tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# Build the broker image with podman and smoke-test it (also part of `make test`).
container: venv
	tools/container/setup_podman.sh
	tools/container/base_image.sh
	tools/container/build.sh
	tools/container/smoke.sh

# Side-by-side benchmark (iperf3, pyzmq, NATS, staging, shardbroker epoll/uring, and the
# senders' own ceiling, sink). BENCH_ARGS: more `shardbroker bench` flags.
bench-deps: venv
	@tools/system_deps.sh $(BENCH_DEBS) || echo "bench: $(BENCH_DEBS) missing; limit/nats will be skipped" >&2
	$(BIN)/python -m pip install -q -e '.[test,bench]'

bench: bench-deps
	@mkdir -p $(BENCH_OUT) docs
	$(BIN)/shardbroker bench $(BENCH_FLAGS) --json $(BENCH_OUT)/bench.json \
	  --markdown $(BENCH_OUT)/bench.md --plot $(BENCH_OUT)/bench.png > $(BENCH_OUT)/bench.txt; \
	  s=$$?; cat $(BENCH_OUT)/bench.txt; cp $(BENCH_OUT)/bench.png docs/bench-s1s5.png; exit $$s

bench-quick: bench-deps
	$(BIN)/shardbroker bench --quick $(BENCH_FLAGS) --json $(BENCH_OUT)/quick.json

# Small batches only (S3 64 KiB, S4 4 KiB), each with the senders' ceiling (sink).
bench-small: bench-deps
	@mkdir -p $(BENCH_OUT)
	$(BIN)/shardbroker bench --scenario S3 --scenario S4 $(BENCH_FLAGS) \
	  --json $(BENCH_OUT)/small.json --markdown $(BENCH_OUT)/small.md

# Consumers (issue #9): read GB/s while publishing, `block` vs `overwrite`, futex vs backoff.
bench-consumers: venv
	@mkdir -p $(BENCH_OUT)
	$(BIN)/python -m shardbroker.bench.consumers --repeat 3 --total 2GiB \
	  --json $(BENCH_OUT)/consumers-2MiB.json
	$(BIN)/python -m shardbroker.bench.consumers --repeat 3 --total 1GiB --batch-size 64KiB \
	  --json $(BENCH_OUT)/consumers-64KiB.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
