# The two promises of the README: `make demo` (the main job on synthetic data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/convplat demo-data
	$(BIN)/convplat prepare --shard-size 100
	$(BIN)/convplat train alexnet --config demo --workers 2
	$(BIN)/convplat evaluate --mode ten-crop
	$(BIN)/convplat report
	$(BIN)/convplat transfer caltech101 --train-per-class 15 --test-per-class 15 --splits 3 --mode head,scratch
	$(BIN)/convplat transfer voc2012 --mode head

test: install
	$(BIN)/ruff check convplat tests benchmarks
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check convplat tests benchmarks
	$(BIN)/ruff format --check convplat tests benchmarks

bench: install
	$(BIN)/python benchmarks/prepare.py
	$(BIN)/python benchmarks/models.py
	$(BIN)/python benchmarks/dense.py

clean-demo:
	rm -rf data shards runs
