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
# Which study: the main one, the second variant, or the synthetic smoke run.
STUDY ?= resnet18-cifar100

ifeq ($(STUDY),resnet18-cifar100)
  DATASET ?= cifar100
  EPOCHS ?= 50
  TRAIN_FLAGS := --arch resnet18 --dataset $(DATASET) --epochs $(EPOCHS)
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
  EPOCHS ?= 4
  TRAIN_FLAGS := --arch simplecnn --dataset synthetic --optimizer adam --milestones \
                 --batch-size 64 --epochs $(EPOCHS)
  BASELINE_FLAGS ?=
  IMPROVED_FLAGS ?= --cutmix-prob 0.5 --label-smoothing 0.1
  NUM_CASES ?= 3
else
  $(error unknown STUDY=$(STUDY): use resnet18-cifar100, simplecnn-cifar10 or smoke)
endif

S := $(RUNS_DIR)/$(STUDY)
RUNS := $(S)/baseline $(S)/improved
flags_of = $(TRAIN_FLAGS) $(if $(filter baseline,$(1)),$(BASELINE_FLAGS),$(IMPROVED_FLAGS)) $(EXTRA_FLAGS)

# Optional analyst input: a JSON object {"<test index>": "hypothesis text"} for the baseline's cases.
HYPOTHESES ?=
B := $(S)/baseline
CMP := $(S)/compare
PDF := $(S)/report.pdf

.PHONY: help env test all study smoke report bench clean clean-all FORCE

help:
	@echo "make test                 set up .venv and run the test suite (CPU, offline)"
	@echo "make all                  set up and run the study: train -> evaluate -> failures -> gradcam"
	@echo "                          -> compare -> report ($(PDF))"
	@echo "make all STUDY=simplecnn-cifar10 DATASET=data/cifar10-jpeg   the second variant"
	@echo "make smoke                the whole chain on synthetic data on a CPU (runs/smoke)"
	@echo "make report               the PDF of the study's current runs (LaTeX needed)"
	@echo "make bench                training throughput: reference pipeline vs this one"
	@echo "make clean                remove the smoke run and caches; clean-all also removes runs/"
	@echo "variables: STUDY DATA_DIR RUNS_DIR DEVICE EPOCHS DATASET CHECKPOINT EXTRA_FLAGS PY"

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
study: $(PDF)
report: $(PDF)
ifeq ($(STUDY),resnet18-cifar100)
	@mkdir -p report && cp $(PDF) report/report.pdf && echo "report/report.pdf"
endif

# Training depends on its flags (a file rewritten only when they change), not on the code:
# editing a comment must not retrain a model. An interrupted run is resumed, a stale one replaced.
$(S)/%.flags: FORCE
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

$(CMP)/comparison.json: $(B)/metrics.json $(S)/improved/metrics.json $(B)/gradcam.npz compare.py | $(ENV)
	$(PY) compare.py --baseline $(B) --improved $(S)/improved --cases $(B)/failures.json \
	  --out $(CMP) --device $(DEVICE)

$(PDF): $(CMP)/comparison.json report.py report/report.tex | $(ENV)
	$(PY) report.py --study $(S) --out $@

bench: $(ENV)
	$(PY) bench.py --device $(DEVICE)

# Generated files only: checkpoints of real runs stay unless asked for with clean-all.
clean:
	rm -rf $(RUNS_DIR)/smoke .pytest_cache report/report.pdf
	rm -rf $(RUNS_DIR)/*/report $(RUNS_DIR)/*/report.pdf
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
clean-all: clean
	rm -rf $(RUNS_DIR)

.PRECIOUS: $(S)/%.flags $(S)/%/config.json $(S)/%/metrics.json $(B)/failures.json
