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

.PHONY: help env test all study smoke bench clean FORCE

help:
	@echo "make test                 set up .venv and run the test suite (CPU, offline)"
	@echo "make all                  set up and run the study: train -> evaluate -> failures -> gradcam"
	@echo "make all STUDY=simplecnn-cifar10 DATASET=data/cifar10-jpeg   the second variant"
	@echo "make smoke                the whole chain on synthetic data on a CPU (runs/smoke)"
	@echo "make bench                training throughput: reference pipeline vs this one"
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
study: $(addsuffix /metrics.json,$(RUNS))

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

bench: $(ENV)
	$(PY) bench.py --device $(DEVICE)

clean:
	rm -rf $(RUNS_DIR)/smoke .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

.PRECIOUS: $(S)/%.flags $(S)/%/config.json $(S)/%/metrics.json
