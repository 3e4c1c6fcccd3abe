# gpu-orchestrator: `make run` serves on 127.0.0.1:8000, `make test` passes every test.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: venv run test test-deps test-fast lint typecheck engine-env tiny-model bench demo clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/gpu-orchestrator serve --host $(HOST) --port $(PORT)

# The real-engine tests need vLLM's CPU build in its own venv and a tiny local model; both are
# built once and cached under ~/.cache/gpu-orchestrator.
engine-env:
	bash scripts/engine-env.sh

tiny-model: engine-env
	bash scripts/tiny-model.sh

# System packages the tests drive (Chromium, promtool, logrotate, PostgreSQL), installed if missing.
test-deps:
	bash scripts/test-deps.sh

# The store-level tiers run a second time on a real PostgreSQL that the tests start themselves
# (tests/pg_server.py; docs/operations/postgresql.md).
PG_TIERS := tests/lifecycle tests/unit/test_store_backends.py tests/api/test_models_api.py \
	tests/api/test_events_api.py tests/api/test_manifests_api.py

test: venv test-deps tiny-model lint typecheck
	GPU_ORCH_TEST_ENGINE_PYTHON="$$(bash scripts/engine-env.sh)/bin/python" \
	GPU_ORCH_TEST_TINY_MODEL="$$(bash scripts/tiny-model.sh)" \
	$(BIN)/pytest -q -p no:cacheprovider
	GPU_ORCH_TEST_ENGINE_PYTHON="$$(bash scripts/engine-env.sh)/bin/python" \
	GPU_ORCH_TEST_TINY_MODEL="$$(bash scripts/tiny-model.sh)" \
	$(BIN)/pytest -q -p no:cacheprovider --database=postgresql $(PG_TIERS)

test-fast: venv
	$(BIN)/pytest -q -m "not engine"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

bench: venv tiny-model
	GPU_ORCH_TEST_ENGINE_PYTHON="$$(bash scripts/engine-env.sh)/bin/python" \
	GPU_ORCH_TEST_TINY_MODEL="$$(bash scripts/tiny-model.sh)" \
	$(BIN)/python -m bench

demo: venv tiny-model
	$(BIN)/python scripts/demo.py "$$(bash scripts/engine-env.sh)/bin/python" "$$(bash scripts/tiny-model.sh)"

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

-include mk/*.mk
