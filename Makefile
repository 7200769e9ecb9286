# The two commands a newcomer needs: `make serve` and `make test`.
# Everything else here is what they depend on.
#
# Install sets (pyproject.toml): `pip install safelight` is the SDK and the client commands only;
# the server is the `server` extra.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
DEV_STAMP := $(VENV)/.installed-dev
TEST_STAMP := $(VENV)/.installed-test

.PHONY: serve test check lint client-models bench bench-gpu chaos clean fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# `make serve`: the server and nothing else.
$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server]'
	touch $@

# Lint and developer tools: the server (the catalog, the API's types) and the dev extra.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server,dev]'
	touch $@

# The tests also run the real diffusers pipelines (tiny random weights, CPU), the google-genai SDK and
# PostgreSQL. torch is pinned first: the CPU build, since an unpinned torch pulls gigabytes of CUDA packages.
$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[server,postgres,s3,otel,dev,gpu,google]'
	touch $@

# `make serve HOST=0.0.0.0 PORT=9000` to listen elsewhere.
HOST ?= 127.0.0.1
PORT ?= 8000

serve: $(SERVE_STAMP)
	$(BIN)/safelight serve --host $(HOST) --port $(PORT) --data-dir ./.safelight

# The browser tests (tests/web/) drive Debian's Chromium: Playwright's own browser download is not
# used. Installed once with apt-get (as root, or through sudo).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -q chromium || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

# `make check` first, then the whole suite, the packaging test included (`-m packaging` runs it alone).
test: check $(CHROMIUM)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# Lint and type-check ([tool.mypy] in pyproject.toml). Type-checking src/ needs torch and the
# other optional packages installed, hence the test install.
check: $(TEST_STAMP)
	$(BIN)/ruff check src tests bench tools
	$(BIN)/mypy

# The fuzz tests (tests/test_fuzz.py: hypothesis on createTask, schemathesis on every documented operation)
# at length: 5000 examples instead of the suite's CI-sized run; SAFELIGHT_FUZZ_EXAMPLES=N sets another count.
fuzz: $(TEST_STAMP)
	SAFELIGHT_FUZZ_EXAMPLES=$${SAFELIGHT_FUZZ_EXAMPLES:-5000} HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests/test_fuzz.py

# kill -9 under load, long form (the suite runs a short one): SQLite, then PostgreSQL with 2 API + 2 workers.
chaos: $(TEST_STAMP)
	$(BIN)/python bench/chaos.py --mode sqlite --seconds 120 --kills 40
	$(BIN)/python bench/chaos.py --mode postgres --seconds 120 --kills 40

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench tools

# Re-render the SDK's typed inputs (src/safelight/client/models.py) from the server catalog.
client-models: $(DEV_STAMP)
	$(BIN)/python -m tools.render_client_models

bench: $(DEV_STAMP)
	$(BIN)/python bench/api.py

bench-gpu: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/gpu.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
