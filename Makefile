# The two commands a newcomer needs: `make serve` and `make test`.
# Everything else here is what they depend on.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench bench-gpu clean

TEST_STAMP := $(VENV)/.installed-test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The tests also run the real diffusers pipelines (tiny random weights, CPU) and the google-genai SDK.
# torch is pinned first: the CPU build, since an unpinned torch pulls gigabytes of CUDA packages.
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,gpu,google]'
	touch $(TEST_STAMP)

serve: $(STAMP)
	$(BIN)/safelight serve --host 127.0.0.1 --port 8000 --data-dir ./.safelight

test: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/api.py

bench-gpu: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/gpu.py

clean:
	rm -rf $(VENV) .pytest_cache
