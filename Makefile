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

proto: install
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=src/engramdb/server/grpc --pyi_out=src/engramdb/server/grpc \
		--grpc_python_out=src/engramdb/server/grpc proto/engramdb/v1/engramdb.proto

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
