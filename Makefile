# Every target works on a fresh Debian/Ubuntu machine with python3 (3.11+), python3-venv and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo demo-serve test lint typecheck unit clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python demo/flow.py

demo-serve: $(STAMP)
	$(BIN)/python demo/flow.py --serve

lint: $(STAMP)
	$(BIN)/ruff check agent authority tests demo benchmarks
	$(BIN)/ruff format --check agent authority tests demo benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

test: lint typecheck
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache

bench: $(STAMP)
	$(BIN)/python benchmarks/backup_vs_restic.py
