# Every target works on a fresh Debian/Ubuntu machine with python3 (3.11+), python3-venv and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PACKAGE_STAMP := $(VENV)/.package-stamp

.PHONY: demo demo-serve test lint typecheck unit clean bench package soak fleet

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The `package` extra (PyInstaller) only for `make package`: `make test` neither needs nor builds it.
$(PACKAGE_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,package]'
	touch $(PACKAGE_STAMP)

demo: $(STAMP)
	$(BIN)/python demo/flow.py

demo-serve: $(STAMP)
	$(BIN)/python demo/flow.py --serve

lint: $(STAMP)
	$(BIN)/ruff check agent authority tests packaging demo benchmarks
	$(BIN)/ruff format --check agent authority tests packaging demo benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

test: lint typecheck
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache

# dist/holdfast/holdfast (PyInstaller, one folder) and dist/holdfast_<version>_<arch>.deb.
package: $(PACKAGE_STAMP)
	$(BIN)/python packaging/build.py

bench: $(STAMP)
	$(BIN)/python benchmarks/backup_vs_restic.py

# 10,000 simulated devices against a real authority, then a 30-minute outage (docs/performance.md).
fleet: $(STAMP)
	$(BIN)/python -m benchmarks.fleet_storm

# Hours, not minutes: 500 seeded kill -9 iterations (HOLDFAST_SOAK_ITERATIONS to change it),
# then the long footprint run (20,000 policy retries, 3,000 backups; benchmarks/soak.py).
soak: $(STAMP)
	HOLDFAST_SOAK_ITERATIONS=$${HOLDFAST_SOAK_ITERATIONS:-500} $(BIN)/pytest -q tests/faults/test_agent_kill.py -k random_moments
	$(BIN)/python benchmarks/soak.py --long
