# The two commands a new machine needs: `make serve` and `make test`; `make help` lists the rest.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test
CLUSTER_STAMP := $(VENV)/.installed-cluster

# The fast checks `make check` runs after lint and mypy: the layer order and the documents tied to
# the code. Each file is small; none starts a server.
CHECK_TESTS := tests/unit/test_layers.py tests/unit/test_public_surface.py tests/unit/test_config_docs.py \
	tests/unit/test_readme.py tests/unit/test_filters_doc.py tests/unit/test_doc_references.py

.DEFAULT_GOAL := help
.PHONY: help install install-test serve cluster test check lint typecheck layers docs-test soak bench proto clean

help:  ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[server]'
	touch $@

# The test run covers every optional part: the local embedder (torch's CPU
# build, installed first so nothing pulls a CUDA one), LangGraph, LangChain, OpenTelemetry,
# Parquet (pyarrow, for export/import), the cluster's etcd client (etcd3gw).
$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[server,dev,local,langgraph,langchain,otel,parquet,cluster]'
	touch $@

install: $(SERVE_STAMP)  ## install the server into .venv
install-test: $(TEST_STAMP)  ## install everything the tests need into .venv

serve: install  ## start the server on 127.0.0.1:7878 (REST) and :7879 (gRPC), data in ./engramdb-data
	$(BIN)/engramdb serve

$(CLUSTER_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[server,cluster]'
	touch $@

# etcd is Debian's `etcd` (apt-get install etcd-server); the command says so when it is missing.
cluster: $(CLUSTER_STAMP)  ## a local etcd and 3 nodes on 127.0.0.1:7878, :7888, :7898 (data in ./cluster-data); Ctrl-C stops them
	$(BIN)/engramdb dev cluster --nodes 3 --dir ./cluster-data

test: install-test  ## the default test run (a few minutes on 2 cores)
	$(BIN)/python -m pytest

check: lint typecheck layers docs-test  ## lint, type check, layer order and docs tests (seconds, not the suite)

lint: install-test  ## ruff: lint and formatting
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install-test  ## mypy over the package
	$(BIN)/mypy src/engramdb

layers: install-test  ## the layer order test: no import runs up the layers, no import loops
	$(BIN)/python -m pytest -p no:cacheprovider tests/unit/test_layers.py

docs-test: install-test  ## the docs tied to the code: settings, README and filter examples, public surface
	$(BIN)/python -m pytest -p no:cacheprovider $(filter-out tests/unit/test_layers.py,$(CHECK_TESTS))

soak: install-test  ## long reliability soaks
	$(BIN)/python -m pytest -m soak -o addopts="" --timeout=7200

bench: install-test  ## search benchmark on ../shared/data (raw hnswlib measured in the same run)
	$(BIN)/python bench/bench_search.py

# protoc names its outputs after the proto path (engramdb/v1/...), which keeps the
# descriptor's file name stable for other protos that import it; the stubs are then
# moved flat into src/engramdb/grpc_codec (below the clients and the server, which both use them) and the stub's absolute sibling import
# (`from engramdb.v1 import engramdb_pb2`) is made relative. pyproject's ruff
# exclude covers the generated .py files but not the .pyi stub, so the stub is
# marked noqa and formatted to keep `make lint` clean.
PROTO_OUT := src/engramdb/grpc_codec
proto: install-test  ## regenerate the gRPC stubs in src/engramdb/grpc_codec from proto/
	rm -rf build/proto && mkdir -p build/proto
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=build/proto --pyi_out=build/proto \
		--grpc_python_out=build/proto proto/engramdb/v1/engramdb.proto
	cp build/proto/engramdb/v1/engramdb_pb2.py $(PROTO_OUT)/
	{ echo '# ruff: noqa'; cat build/proto/engramdb/v1/engramdb_pb2.pyi; } > $(PROTO_OUT)/engramdb_pb2.pyi
	$(BIN)/ruff format -q $(PROTO_OUT)/engramdb_pb2.pyi
	sed 's/^from engramdb\.v1 import engramdb_pb2 as/from . import engramdb_pb2 as/' \
		build/proto/engramdb/v1/engramdb_pb2_grpc.py > $(PROTO_OUT)/engramdb_pb2_grpc.py
	grep -q '^from \. import engramdb_pb2 as' $(PROTO_OUT)/engramdb_pb2_grpc.py

clean:  ## remove .venv and the tool caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
