# gpufleet: every target sets up what it needs. `make demo` and `make test` work on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROTO_DIR := proto
PROTO_OUT := proto/gpufleet/proto/v1
PROTOS := $(wildcard $(PROTO_OUT)/*.proto)
PYTEST_ARGS ?=

.PHONY: all venv etcd proto check-proto lint type unit test demo sim bench clean fmt

all: test

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]'
	@touch $(STAMP)

venv: $(STAMP)

# etcd comes from Debian's etcd-server package; tests start their own etcd on 127.0.0.1 ports.
etcd:
	@command -v etcd >/dev/null 2>&1 || { \
	  echo "installing etcd-server from Debian"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq etcd-server >/dev/null; }
	@etcd --version | head -1

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I$(PROTO_DIR) \
	  --python_out=$(PROTO_DIR) --grpc_python_out=$(PROTO_DIR) \
	  --mypy_out=$(PROTO_DIR) --mypy_grpc_out=$(PROTO_DIR) \
	  --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
	  $(PROTOS)

check-proto: proto
	@git diff --exit-code -- $(PROTO_OUT) >/dev/null && test -z "$$(git status --porcelain -- $(PROTO_OUT))" \
	  || { echo "generated protobuf code is stale: run 'make proto' and commit"; git status --short -- $(PROTO_OUT); exit 1; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

type: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

test: $(STAMP) etcd lint type check-proto
	$(BIN)/pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m gpufleet.common.demo

sim: $(STAMP)
	$(BIN)/gpufleet sim generate --out /tmp/gpufleet-sim && \
	$(BIN)/gpufleet sim --cluster /tmp/gpufleet-sim/cluster.json --jobs /tmp/gpufleet-sim/jobs.jsonl --out /tmp/gpufleet-sim/result.json

# Benchmarks print tables with ratios against baselines measured in the same run (BENCH_ARGS=--quick for less).
BENCH_ARGS ?=
bench: $(STAMP)
	@set -e; for b in control_plane scheduler leader agent autoscaler; do \
	  echo "== bench/$$b.py"; $(PY) bench/$$b.py $(BENCH_ARGS); done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
