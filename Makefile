# Two entry points: `make demo` (index, search and evaluate SciFact) and `make test`.
# Each creates .venv with Python 3.11 and installs what it needs.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
EXTRAS := dev
RETK_DATA_DIR ?= ../shared/datasets
export RETK_DATA_DIR

.PHONY: install demo test

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/activate
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"

demo: install
	$(BIN)/retk index $(RETK_DATA_DIR)/scifact --out runs/scifact-minilm --overwrite
	$(BIN)/retk search runs/scifact-minilm "ACE inhibitors reduce mortality" -k 5
	$(BIN)/retk eval --dataset $(RETK_DATA_DIR)/scifact --split test --index runs/scifact-minilm \
		--output results/scifact-minilm.json --run runs/scifact-minilm.trec

test: install
	$(BIN)/python -m pytest -ra
