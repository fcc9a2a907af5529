# MesoScan: `make test` sets everything up from scratch and runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# postgresql and redis-server: the tests start private instances of them when none answers on 127.0.0.1.
DEBIAN_PACKAGES := ffmpeg wrk chromium postgresql redis-server
PYTEST_ARGS ?=
NODE_STAMP := extension/node_modules/.installed

.PHONY: setup system test scan bench lint lock clean train train-status extension

setup: system $(STAMP) $(NODE_STAMP)

# Debian packages the project needs. ffmpeg remuxes downloaded HLS locally and makes the test media; yt-dlp never runs
# it (scanner/download.py refuses that hand-off).
system:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi
	@# Node.js for the extension's tools (web-ext, node's test runner): Debian's, unless a node is installed already.
	@command -v npm >/dev/null || { $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q nodejs npm; }

# The extension's development tools from npm (web-ext), into the ignored extension/node_modules.
$(NODE_STAMP): extension/package.json extension/package-lock.json
	cd extension && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Reinstalls only when pyproject.toml or constraints.txt changed; constraints.txt records what resolved.
$(STAMP): pyproject.toml constraints.txt
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; fi; exit $$rc

# Scan one video URL or local file: `make scan URL=https://...` (extra options: ARGS="--json --frames 64").
scan: setup
	@[ -n "$(URL)" ] || { echo "usage: make scan URL=<video URL or file> [ARGS='--json']"; exit 2; }
	$(BIN)/mesoscan scan "$(URL)" $(ARGS)

# The long training runs of the shipped models: in the background, niced, on one core (TRAIN_CPUS=0,1 for two),
# resumed from their last epoch by running the same target again. Logs: $(TRAIN_LOG).
TRAIN_DATA ?= ../shared/data/crops
TRAIN_CPUS ?= 1
# Sized to finish within one working session on one core (~6 min an epoch on 27k crops); checkpoints resume it.
TRAIN_EPOCHS ?= 16
# Which shipped model: `make train TRAIN_ARCH=mesoinception4 TRAIN_NAME=mesoinception4_dfdc` for the other one.
TRAIN_ARCH ?= meso4
TRAIN_NAME ?= meso4_dfdc
TRAIN_LOG ?= $(HOME)/.cache/mesoscan/train.log
# A machine does not outlive a session, nor do checkpoints: TRAIN_INIT=meso4_dfdc goes on from the shipped weights
# in a new run (e.g. TRAIN_LR=5e-4 for its restart), and the card counts every epoch.
TRAIN_LR ?= 1e-3
TRAIN_INIT ?=
TRAIN_RECIPE := --schedule cosine --lr $(TRAIN_LR) --warmup-epochs 1 --patience 1000 \
  --jpeg-prob 0.2 --blur-prob 0.1 --downscale-prob 0.2 --out serving/weights $(if $(TRAIN_INIT),--init-from $(TRAIN_INIT))
train: setup
	@mkdir -p $(dir $(TRAIN_LOG))
	@if [ -f $(TRAIN_LOG).pid ] && kill -0 $$(cat $(TRAIN_LOG).pid) 2>/dev/null; then \
	  echo "already running (see $(TRAIN_LOG))"; \
	else threads=$$(echo $(TRAIN_CPUS) | tr , '\n' | wc -l); \
	  TF_NUM_INTRAOP_THREADS=$$threads TF_NUM_INTEROP_THREADS=1 MESOSCAN_COMPUTE_THREADS=$$threads \
	  nohup nice -n 19 taskset -c $(TRAIN_CPUS) $(BIN)/mesoscan train --data $(TRAIN_DATA) --arch $(TRAIN_ARCH) \
	    --name $(TRAIN_NAME) --epochs $(TRAIN_EPOCHS) $(TRAIN_RECIPE) >>$(TRAIN_LOG) 2>&1 </dev/null & echo $$! >$(TRAIN_LOG).pid; \
	  echo "training in the background: tail -f $(TRAIN_LOG)"; fi

train-status:
	@grep -E "^Epoch|resuming|registered|val_auc" $(TRAIN_LOG) | tail -n 6

# Benchmarks (not timed tests): medians printed as Markdown tables and written to bench/results/*.json.
bench: setup
	$(BIN)/python -m tests.bench.bench_backends
	$(BIN)/python -m tests.bench.bench_detect
	$(BIN)/python -m tests.bench.bench_scan
	$(BIN)/python -m tests.bench.bench_cli
	$(BIN)/python -m tests.bench.bench_batch
	$(BIN)/python -m tests.bench.bench_gateway
	$(BIN)/python -m tests.bench.bench_extension
	$(BIN)/python -m tests.bench.bench_upload

# The browser extension packaged for Chromium and Firefox: dist/<browser>/ and dist/mesoscan-<browser>-<version>.zip.
extension: setup
	$(BIN)/python extension/package.py --out dist

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Re-resolve the dependency ranges of pyproject.toml and record the result.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip && .lock-venv/bin/python -m pip install -q ".[dev]"
	.lock-venv/bin/python -m pip freeze --exclude mesoscan | sort > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
