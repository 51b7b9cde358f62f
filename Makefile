# The two commands a fresh machine needs: `make run` (local pipeline, tiny profile) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# torch first and pinned: its CPU wheel is local, while an unpinned torch pulls gigabytes of CUDA.
TORCH := torch==2.13.0

.PHONY: install run test lint unit integration bench clean golden images

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(INSTALLED)

run: $(INSTALLED)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/vidprior local repro

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: $(INSTALLED)
	$(BIN)/pytest tests/unit

integration: $(INSTALLED)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest tests/integration

test: lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

bench: $(INSTALLED)
	$(BIN)/python benchmarks/dedup.py
	$(BIN)/python benchmarks/flow.py
	$(BIN)/python benchmarks/guidance.py
	$(BIN)/python benchmarks/pixelplanes.py
	$(BIN)/python benchmarks/udpdiff_overhead.py

# Regenerate the compiled-pipeline goldens (tests/golden/) after an intended pipeline or params change.
golden: $(INSTALLED)
	VIDPRIOR_UPDATE_GOLDEN=1 $(BIN)/pytest -q tests/unit/test_pipeline_golden.py

# The runtime images with the tags in params.images (see images/build.sh for --push, --params).
images: $(INSTALLED)
	images/build.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
