# shardbroker: `make demo` runs a broker with publishers; `make test` runs the checks.
# Both create .venv and install what they need (Debian packages via apt-get when root).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

# Debian packages: python3-venv to make the venv; the rest are used by tests and tools.
BASE_DEBS = python3-venv
TEST_DEBS = ethtool iproute2 numactl procps shellcheck strace

.PHONY: venv demo test lint typecheck unit integration container clean

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
