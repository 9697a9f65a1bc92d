# The study as one command: `make all` (on a CUDA machine), `make test` (anywhere).
# Every target sets up the Python environment first (.venv, from requirements.txt).
# On a machine that already has the packages (an offline GPU box, say): make all PY=python3
SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
ifeq ($(origin PY), undefined)
  PY := $(VENV)/bin/python
  ENV := $(VENV)/.installed
else
  ENV :=
endif

DATA_DIR ?= data
RUNS_DIR ?= runs
DEVICE ?= auto
CHECKPOINT ?= last
EXTRA_FLAGS ?=
# Which study: the main one, the second variant, or the synthetic smoke run. A study is a recipe
# (models and the improvement) with a default dataset; DATASET runs the recipe on other data.
STUDY ?= resnet18-cifar100

ifeq ($(STUDY),resnet18-cifar100)
  DATASET ?= cifar100
  EPOCHS ?= 50
  # A shorter schedule scales the lr milestones with it, e.g. EPOCHS=10 MILESTONES="5 8".
  MILESTONES ?=
  TRAIN_FLAGS := --arch resnet18 --dataset $(DATASET) --epochs $(EPOCHS) \
                 $(if $(MILESTONES),--milestones $(MILESTONES))
  BASELINE_FLAGS ?=
  IMPROVED_FLAGS ?= --cutmix-prob 0.5 --label-smoothing 0.1
  NUM_CASES ?= 5
else ifeq ($(STUDY),simplecnn-cifar10)
  DATASET ?= cifar10
  EPOCHS ?= 30
  TRAIN_FLAGS := --arch simplecnn --dataset $(DATASET) --optimizer adam --milestones --epochs $(EPOCHS)
  BASELINE_FLAGS ?= --augment none
  IMPROVED_FLAGS ?= --augment crop-flip
  NUM_CASES ?= 3
else ifeq ($(STUDY),smoke)
  DATASET := synthetic
  # CutMix + label smoothing needs about 8 epochs to take off on the synthetic set.
  EPOCHS ?= 12
  TRAIN_FLAGS := --arch simplecnn --dataset synthetic --optimizer adam --milestones \
                 --batch-size 64 --epochs $(EPOCHS)
  BASELINE_FLAGS ?=
  IMPROVED_FLAGS ?= --cutmix-prob 0.5 --label-smoothing 0.1
  NUM_CASES ?= 3
  # Subsets keep the smoke chain within its few minutes on a CPU.
  CORRUPT_FLAGS ?= --limit-test 300 --severities 1 3 5
  FAITH_FLAGS ?= --sample 100
else
  $(error unknown STUDY=$(STUDY): use resnet18-cifar100, simplecnn-cifar10 or smoke)
endif

# The ablation of an improvement that changes two things at once: each change on its own.
ifneq ($(filter resnet18-cifar100 smoke,$(STUDY)),)
  ABLATION_FLAGS_cutmix-only ?= --cutmix-prob 0.5
  ABLATION_FLAGS_ls-only ?= --label-smoothing 0.1
  ABLATIONS := cutmix-only ls-only
endif
# make seeds: both models once per seed; seed 42 is the main runs' (train.py's default).
SEEDS ?= 42 43 44

ifneq ($(filter seeds,$(MAKECMDGOALS)),)
  ifeq ($(strip $(SEEDS)),)
    $(error SEEDS is empty; give at least one seed, for example SEEDS="42 43 44")
  endif
endif
ifneq ($(filter ablation,$(MAKECMDGOALS)),)
  ifeq ($(ABLATIONS),)
    $(error STUDY=$(STUDY) changes one thing only; there is nothing to ablate)
  endif
endif

# The study's folder is named for its recipe and its data: runs/resnet18-cifar100 by default,
# runs/resnet18-cifar10-jpeg for the same recipe with DATASET=data/cifar10-jpeg.
DATA_NAME := $(notdir $(patsubst %/,%,$(patsubst %.tar.gz,%,$(DATASET))))
S := $(RUNS_DIR)/$(if $(filter smoke,$(STUDY)),smoke,$(firstword $(subst -, ,$(STUDY)))-$(DATA_NAME))
# A run folder's name says what it trains: <role> or seed<N>/<role>.
role_flags = $(if $(filter baseline,$(1)),$(BASELINE_FLAGS),$(if $(filter improved,$(1)),$(IMPROVED_FLAGS),$(ABLATION_FLAGS_$(1))))
seed_of = $(patsubst seed%,%,$(filter seed%,$(subst /, ,$(1))))
flags_of = $(TRAIN_FLAGS) $(call role_flags,$(notdir $(1))) $(if $(call seed_of,$(1)),--seed $(call seed_of,$(1))) $(EXTRA_FLAGS)
seed_dir = $(if $(filter 42,$(1)),$(S),$(S)/seed$(1))

CORRUPT_FLAGS ?=
FAITH_FLAGS ?=
# Optional analyst input: a JSON object {"<test index>": "hypothesis text"} for the baseline's cases.
HYPOTHESES ?=
B := $(S)/baseline
CMP := $(S)/compare
PDF := $(S)/report.pdf
SUPP := $(S)/supplement.pdf

.PHONY: help env test all study analysis smoke report seeds ablation bench clean clean-all FORCE

help:
	@echo "make test                 set up .venv and run the test suite (CPU, offline)"
	@echo "make all                  set up and run the study: train -> evaluate -> failures -> gradcam"
	@echo "                          -> corruptions, faithfulness -> compare -> report ($(PDF))"
	@echo "make all STUDY=simplecnn-cifar10 DATASET=data/cifar10-jpeg   the second variant"
	@echo "make smoke                the whole chain on synthetic data on a CPU (runs/smoke)"
	@echo "make report               the PDF of the study's current runs and its supplement (LaTeX)"
	@echo "make analysis             the whole study but the PDFs (a GPU machine without LaTeX)"
	@echo "make seeds SEEDS=\"42 43 44\" both models per seed: mean +/- std of accuracies and difference"
	@echo "make ablation             CutMix only and label smoothing only, beside baseline and both"
	@echo "make bench                training throughput: reference pipeline vs this one"
	@echo "make clean                remove the smoke run and caches; clean-all also removes runs/"
	@echo "variables: STUDY DATA_DIR RUNS_DIR DEVICE EPOCHS MILESTONES DATASET CHECKPOINT EXTRA_FLAGS PY"
	@echo "           HYPOTHESES CORRUPT_FLAGS FAITH_FLAGS SEEDS"

env: $(ENV)
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -r requirements.txt
	touch $@

test: $(ENV)
	$(PY) -m pytest -q

all: study
smoke:
	$(MAKE) study STUDY=smoke
study: $(PDF) $(SUPP)
# Everything but the PDFs, for a GPU machine without LaTeX: make report later where LaTeX is.
analysis: $(CMP)/comparison.json $(B)/faithfulness.json $(S)/improved/faithfulness.json
report: $(PDF) $(SUPP)
ifeq ($(S),$(RUNS_DIR)/resnet18-cifar100)
	@mkdir -p report && cp $(PDF) report/report.pdf && echo "report/report.pdf"
endif

# Training depends on its flags (a file rewritten only when they change), not on the code:
# editing a comment must not retrain a model. An interrupted run is resumed, a stale one replaced.
$(S)/%.flags: FORCE
	$(if $(filter baseline improved $(ABLATIONS),$(notdir $*)),,$(error no such run for STUDY=$(STUDY): $*))
	@mkdir -p $(@D)
	@echo '$(call flags_of,$*)' | cmp -s - $@ || echo '$(call flags_of,$*)' > $@

$(S)/%/config.json: $(S)/%.flags | $(ENV)
	@if [ -f $(@D)/last.pt ] && [ ! -f $@ ]; then mode=--resume; else mode=--overwrite; fi; \
	set -x; $(PY) train.py --name $* --runs-dir $(S) --data-dir $(DATA_DIR) --device $(DEVICE) \
	  $$mode $$( [ $$mode = --resume ] || cat $< )

$(S)/%/metrics.json: $(S)/%/config.json evaluate.py | $(ENV)
	$(PY) evaluate.py --run $(@D) --checkpoint $(CHECKPOINT) --device $(DEVICE)

# The failure analysis and the explanations concern the baseline; compare.py re-checks its cases.
# gradcam.py writes its evidence into failures.json before gradcam.npz, so the pair stays current.
$(B)/failures.json: $(B)/metrics.json failures.py $(HYPOTHESES) | $(ENV)
	$(PY) failures.py --run $(B) --num-cases $(NUM_CASES) $(if $(HYPOTHESES),--hypotheses $(HYPOTHESES))

$(B)/gradcam.npz: $(B)/failures.json gradcam.py | $(ENV)
	$(PY) gradcam.py --run $(B) --device $(DEVICE)

# Stress tests of each model: the corruption grid, and how faithful its Grad-CAM maps are (on a
# test sample and on the baseline's cases, so both models are scored on the same images).
$(S)/%/corruptions.json: $(S)/%/metrics.json corruptions.py corrupt.py | $(ENV)
	$(PY) corruptions.py --run $(@D) --device $(DEVICE) $(CORRUPT_FLAGS)

$(S)/%/faithfulness.json: $(S)/%/metrics.json $(B)/gradcam.npz faithfulness.py | $(ENV)
	$(PY) faithfulness.py --run $(@D) --cases $(B)/failures.json --device $(DEVICE) $(FAITH_FLAGS)

$(CMP)/comparison.json: $(B)/metrics.json $(S)/improved/metrics.json $(B)/gradcam.npz compare.py \
                        compare_figures.py $(B)/corruptions.json $(S)/improved/corruptions.json | $(ENV)
	$(PY) compare.py --baseline $(B) --improved $(S)/improved --cases $(B)/failures.json \
	  --out $(CMP) --device $(DEVICE)

# make seeds / make ablation results enter the report when they exist.
$(PDF): $(CMP)/comparison.json $(B)/faithfulness.json $(S)/improved/faithfulness.json report.py \
        prose.py report/report.tex $(wildcard $(S)/seeds/comparison.json $(S)/ablation/comparison.json) | $(ENV)
	$(PY) report.py --study $(S) --out $@

# Seeds and ablation: train and evaluate what is missing, then summarise in comparison.json.
seeds: $(foreach s,$(SEEDS),$(call seed_dir,$(s))/baseline/metrics.json $(call seed_dir,$(s))/improved/metrics.json) | $(ENV)
	$(PY) compare.py --baseline $(B) --improved $(S)/improved --out $(S)/seeds \
	  --seeds $(foreach s,$(SEEDS),$(call seed_dir,$(s))) --device $(DEVICE)

ablation: $(foreach r,baseline improved $(ABLATIONS),$(S)/$(r)/metrics.json) | $(ENV)
	$(PY) compare.py --baseline $(B) --improved $(S)/improved --out $(S)/ablation \
	  --ablation $(foreach r,$(ABLATIONS),$(S)/$(r)) --device $(DEVICE)

# What the 6 pages have no room for: faithfulness, the corruption table, label-error suspects.
$(SUPP): $(CMP)/comparison.json $(B)/faithfulness.json $(S)/improved/faithfulness.json supplement.py prose.py \
         report/supplement.tex $(wildcard $(S)/seeds/comparison.json $(S)/ablation/comparison.json) | $(ENV)
	$(PY) supplement.py --study $(S) --out $@

bench: $(ENV)
	$(PY) bench.py --device $(DEVICE)

# Generated files only: checkpoints of real runs stay unless asked for with clean-all.
clean:
	rm -rf $(RUNS_DIR)/smoke .pytest_cache report/report.pdf
	rm -rf $(RUNS_DIR)/*/report $(RUNS_DIR)/*/report.pdf $(RUNS_DIR)/*/supplement.pdf
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
clean-all: clean
	rm -rf $(RUNS_DIR)

.PRECIOUS: $(S)/%.flags $(S)/%/config.json $(S)/%/metrics.json $(S)/%/corruptions.json \
           $(B)/failures.json
