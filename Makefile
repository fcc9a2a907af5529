# MesoScan: `make test` sets everything up from scratch and runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := ffmpeg wrk
PYTEST_ARGS ?=

.PHONY: setup system test scan bench lint lock clean

setup: system $(STAMP)

# Debian packages the project needs (yt-dlp fixes up HLS downloads with ffmpeg).
system:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

# Reinstalls only when pyproject.toml or constraints.txt changed; constraints.txt records what resolved.
$(STAMP): pyproject.toml constraints.txt
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

test: setup
	$(BIN)/ruff check .
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; fi; exit $$rc

# Scan one video URL or local file: `make scan URL=https://...` (extra options: ARGS="--json --frames 64").
scan: setup
	@[ -n "$(URL)" ] || { echo "usage: make scan URL=<video URL or file> [ARGS='--json']"; exit 2; }
	$(BIN)/mesoscan scan "$(URL)" $(ARGS)

# Benchmarks (not timed tests): medians printed as Markdown tables and written to bench/results/*.json.
bench: setup
	$(BIN)/python -m tests.bench.bench_backends
	$(BIN)/python -m tests.bench.bench_detect
	$(BIN)/python -m tests.bench.bench_scan
	$(BIN)/python -m tests.bench.bench_gateway

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true

# Re-resolve the dependency ranges of pyproject.toml and record the result.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip && .lock-venv/bin/python -m pip install -q ".[dev]"
	.lock-venv/bin/python -m pip freeze --exclude mesoscan | sort > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
