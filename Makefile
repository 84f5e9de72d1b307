# The two commands a new machine needs: `make serve` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= server,dev

.PHONY: install serve test lint soak bench proto clean

$(BIN)/.installed-$(subst $(comma),-,$(EXTRAS)): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $@

comma := ,
install: $(BIN)/.installed-$(subst $(comma),-,$(EXTRAS))

serve: install  ## start the server on 127.0.0.1:7878 (REST) and :7879 (gRPC), data in ./engramdb-data
	$(BIN)/engramdb serve

test: install  ## the default test run (a few minutes on 2 cores)
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src/engramdb

soak: install  ## long reliability soaks
	$(BIN)/python -m pytest -m soak -o addopts="" --timeout=7200

bench: install
	$(BIN)/python bench/bench_search.py

# protoc names its outputs after the proto path (engramdb/v1/...), which keeps the
# descriptor's file name stable for other protos that import it; the stubs are then
# moved flat into the package and the stub's absolute sibling import
# (`from engramdb.v1 import engramdb_pb2`) is made relative. pyproject's ruff
# exclude covers the generated .py files but not the .pyi stub, so the stub is
# marked noqa and formatted to keep `make lint` clean.
proto: install  ## regenerate the gRPC stubs in src/engramdb/server/grpc from proto/
	rm -rf build/proto && mkdir -p build/proto
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=build/proto --pyi_out=build/proto \
		--grpc_python_out=build/proto proto/engramdb/v1/engramdb.proto
	cp build/proto/engramdb/v1/engramdb_pb2.py src/engramdb/server/grpc/
	{ echo '# ruff: noqa'; cat build/proto/engramdb/v1/engramdb_pb2.pyi; } > src/engramdb/server/grpc/engramdb_pb2.pyi
	$(BIN)/ruff format -q src/engramdb/server/grpc/engramdb_pb2.pyi
	sed 's/^from engramdb\.v1 import engramdb_pb2 as/from . import engramdb_pb2 as/' \
		build/proto/engramdb/v1/engramdb_pb2_grpc.py > src/engramdb/server/grpc/engramdb_pb2_grpc.py
	grep -q '^from \. import engramdb_pb2 as' src/engramdb/server/grpc/engramdb_pb2_grpc.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
