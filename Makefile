# `make demo` and `make test` do all set-up themselves: system packages (as root),
# a virtualenv in .venv and the package with what it needs. A second run reuses what is there.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tether-installed

.PHONY: demo test lint system-deps clean bench bench-quick bench-web

system-deps:
	@PYTHON=$(PYTHON) bash scripts/ensure-system-deps.sh

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The main job: one workload under injected faults through naive code, the peers and tether.
demo: system-deps $(STAMP)
	$(BIN)/tether demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The whole suite: unit tests (the interruption proof among them), integration and fault
# tests against private throwaway servers, the quick benchmark.
test: system-deps $(STAMP) lint
	$(BIN)/python -m pytest

# Benchmarks (not part of the set-up): tether beside the peers on a throwaway server, about
# 30 minutes (bench/RESULTS.md); bench-quick is the short run the tests make (under a minute,
# into a temporary directory). The web part loads gunicorn with wrk, which bench/web.py
# installs when it runs as root on Debian (else a Python load generator stands in).
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-web: $(STAMP)
	$(BIN)/python bench/web.py $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
