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
  ARCH := resnet18
  TRAIN_FLAGS := --arch $(ARCH) --dataset $(DATASET) --epochs $(EPOCHS) \
                 $(if $(MILESTONES),--milestones $(MILESTONES))
  BASELINE_FLAGS ?=
  IMPROVED_FLAGS ?= --cutmix-prob 0.5 --label-smoothing 0.1
  NUM_CASES ?= 5
else ifeq ($(STUDY),simplecnn-cifar10)
  DATASET ?= cifar10
  EPOCHS ?= 30
  ARCH := simplecnn
  TRAIN_FLAGS := --arch $(ARCH) --dataset $(DATASET) --optimizer adam --milestones --epochs $(EPOCHS)
  BASELINE_FLAGS ?= --augment none
  IMPROVED_FLAGS ?= --augment crop-flip
  NUM_CASES ?= 3
else ifeq ($(STUDY),smoke)
  DATASET := synthetic
  # CutMix + label smoothing needs about 8 epochs to take off on the synthetic set.
  EPOCHS ?= 12
  ARCH := simplecnn
  TRAIN_FLAGS := --arch $(ARCH) --dataset synthetic --optimizer adam --milestones \
                 --batch-size 64 --epochs $(EPOCHS)
  BASELINE_FLAGS ?=
  IMPROVED_FLAGS ?= --cutmix-prob 0.5 --label-smoothing 0.1
  NUM_CASES ?= 3
  # Subsets keep the smoke chain within its few minutes on a CPU.
  CORRUPT_FLAGS ?= --limit-test 300 --severities 1 3 5
  FAITH_FLAGS ?= --sample 100
else ifeq ($(STUDY),planted)
  # The cause rule's proof (make planted): the smoke recipe's network on synthetic-planted, a
  # control on the same images with nothing planted, and a cause stated for every error of each.
  DATASET := synthetic-planted
  EPOCHS ?= 12
  ARCH := simplecnn
  TRAIN_FLAGS := --arch $(ARCH) --dataset synthetic-planted --optimizer adam --milestones \
                 --batch-size 64 --epochs $(EPOCHS)
  BASELINE_FLAGS ?=
  CONTROL_FLAGS := --dataset synthetic-control
  SEED ?= 42
  FAILURE_SELECTION := --all-errors --top 0
else
  $(error unknown STUDY=$(STUDY): use resnet18-cifar100, simplecnn-cifar10, smoke or planted)
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

# Two models trained elsewhere instead of training here: make all BASELINE_WEIGHTS=a.pth
# IMPROVED_WEIGHTS=b.pth (for the study's ARCH and DATASET; IMPORT_FLAGS="--mean R G B --std R G B").
BASELINE_WEIGHTS ?=
IMPROVED_WEIGHTS ?=
IMPORT_FLAGS ?=
IMPORTED := $(if $(BASELINE_WEIGHTS)$(IMPROVED_WEIGHTS),yes)
ifeq ($(IMPORTED),yes)
  ifeq ($(and $(BASELINE_WEIGHTS),$(IMPROVED_WEIGHTS)),)
    $(error give both BASELINE_WEIGHTS and IMPROVED_WEIGHTS: a study compares two imported models)
  endif
  ifneq ($(filter seeds ablation,$(MAKECMDGOALS)),)
    $(error seeds and ablation train models; they do not apply to imported weights)
  endif
  $(foreach w,BASELINE_WEIGHTS IMPROVED_WEIGHTS,$(if $(wildcard $($(w))),,$(error $(w)=$($(w)) does not exist)))
endif

# The study's folder is named for its recipe and its data: runs/resnet18-cifar100 by default,
# runs/resnet18-cifar10-jpeg for the same recipe with DATASET=data/cifar10-jpeg, and
# runs/resnet18-cifar100-imported for imported weights (never mixed with models trained here).
DATA_NAME := $(notdir $(patsubst %/,%,$(patsubst %.tar.gz,%,$(DATASET))))
S := $(RUNS_DIR)/$(if $(filter smoke planted,$(STUDY)),$(STUDY),$(firstword $(subst -, ,$(STUDY)))-$(DATA_NAME))$(if $(IMPORTED),-imported)
# A run folder's name says what it trains: <role> or seed<N>/<role>.
role_flags = $(if $(filter baseline,$(1)),$(BASELINE_FLAGS),$(if $(filter improved,$(1)),$(IMPROVED_FLAGS),$(if $(filter control,$(1)),$(CONTROL_FLAGS),$(ABLATION_FLAGS_$(1)))))
seed_of = $(patsubst seed%,%,$(filter seed%,$(subst /, ,$(1))))
flags_of = $(TRAIN_FLAGS) $(call role_flags,$(notdir $(1))) $(if $(call seed_of,$(1)),--seed $(call seed_of,$(1)),$(if $(SEED),--seed $(SEED))) $(EXTRA_FLAGS)
seed_dir = $(if $(filter 42,$(1)),$(S),$(S)/seed$(1))

# Where the GPU steps run (training, evaluation, Grad-CAM, corruptions, faithfulness, the
# comparison's Grad-CAM): tools/launch.py gives each a GPU slot of its own on this box, so that
# make -j uses every GPU (GPUS: which, default all; JOBS_PER_GPU steps at once per GPU), or with
# LAUNCH=slurm submits each as a Slurm job and waits for it (SLURM_PARTITION, SLURM_TIME,
# SLURM_GPUS per job, SBATCH_FLAGS for anything else sbatch takes).
LAUNCH ?= local
GPUS ?=
JOBS_PER_GPU ?= 1
SLURM_PARTITION ?=
SLURM_TIME ?=
SLURM_GPUS ?= 1
SBATCH_FLAGS ?=
ifeq ($(filter local slurm,$(LAUNCH)),)
  $(error unknown LAUNCH=$(LAUNCH): use local or slurm)
endif
LAUNCH_DIR := $(RUNS_DIR)/.launch
LAUNCH_FLAGS := --lock-dir $(LAUNCH_DIR) $(if $(GPUS),--gpus "$(GPUS)") \
  $(if $(filter-out 1,$(JOBS_PER_GPU)),--per-gpu $(JOBS_PER_GPU)) \
  $(if $(filter slurm,$(LAUNCH)),--mode slurm --gpus-per-job $(SLURM_GPUS) \
    $(if $(SLURM_PARTITION),--partition $(SLURM_PARTITION)) $(if $(SLURM_TIME),--time $(SLURM_TIME)) \
    $(if $(SBATCH_FLAGS),--sbatch-flags="$(SBATCH_FLAGS)"))
# $(call launch,<step>): the prefix of a GPU step's command, named for its run folder and step;
# a Slurm job's log is $(S)/logs/<run>-<step>.log.
launch = $(PY) tools/launch.py --name $(patsubst $(RUNS_DIR)/%,%,$(@D))/$(1) \
  $(if $(filter slurm,$(LAUNCH)),--log $(S)/logs/$(subst /,-,$(patsubst $(S)/%,%,$(@D)))-$(1).log) \
  $(strip $(LAUNCH_FLAGS)) --
# The dataset is fetched and decoded once, before parallel trainings would each download it.
DATA_READY := $(S)/.data-ready

CORRUPT_FLAGS ?=
FAITH_FLAGS ?=
# failures.py's cases: NUM_CASES distinct ones, or (make planted) every error.
FAILURE_SELECTION ?= --num-cases $(NUM_CASES)
# Optional analyst input: a JSON object {"<test index>": "hypothesis text"} for the baseline's cases.
HYPOTHESES ?=
B := $(S)/baseline
CMP := $(S)/compare
PDF := $(S)/report.pdf
SUPP := $(S)/supplement.pdf
# The study explorer: every error of both models in one offline page (explore.py).
EXPLORER := $(S)/explorer.html
# The report and its supplement read the same files; make seeds / make ablation results enter
# both when they exist.
ANALYSIS := $(CMP)/comparison.json $(B)/gradcam.json $(B)/causes.json $(B)/faithfulness.json \
            $(S)/improved/faithfulness.json
REPORT_INPUTS := $(ANALYSIS) $(wildcard $(S)/seeds/seeds.json $(S)/ablation/ablation.json)

.PHONY: help env test all study analysis smoke planted planted-score report seeds ablation bench clean clean-all FORCE

help:
	@echo "make test                 set up .venv and run the test suite (CPU, offline)"
	@echo "make all                  set up and run the study: train -> evaluate -> failures -> gradcam"
	@echo "                          -> corruptions, faithfulness -> compare -> report ($(PDF))"
	@echo "make all STUDY=simplecnn-cifar10 DATASET=data/cifar10-jpeg   the second variant"
	@echo "make all BASELINE_WEIGHTS=a.pth IMPROVED_WEIGHTS=b.pth   the study of two models trained elsewhere"
	@echo "make smoke                the whole chain on synthetic data on a CPU (runs/smoke)"
	@echo "make planted              the cause rule scored on causes planted in synthetic data (runs/planted)"
	@echo "make report               the PDF of the study's current runs and its supplement (LaTeX)"
	@echo "make analysis             the whole study but the PDFs (a GPU machine without LaTeX)"
	@echo "make seeds SEEDS=\"42 43 44\" both models per seed: mean +/- std of accuracies and difference"
	@echo "make ablation             CutMix only and label smoothing only, beside baseline and both"
	@echo "make bench                training throughput: reference pipeline vs this one"
	@echo "make clean                remove the smoke run and caches; clean-all also removes runs/"
	@echo "make -j4 seeds GPUS=\"0 1\" JOBS_PER_GPU=2   GPU steps spread over GPUs 0 and 1, 2 at once on each"
	@echo "make -j64 seeds LAUNCH=slurm SLURM_PARTITION=gpu SLURM_TIME=4:00:00   each GPU step a Slurm job"
	@echo "variables: STUDY DATA_DIR RUNS_DIR DEVICE EPOCHS MILESTONES DATASET CHECKPOINT EXTRA_FLAGS PY"
	@echo "           HYPOTHESES CORRUPT_FLAGS FAITH_FLAGS SEEDS BASELINE_WEIGHTS IMPROVED_WEIGHTS IMPORT_FLAGS"
	@echo "           LAUNCH GPUS JOBS_PER_GPU SLURM_PARTITION SLURM_TIME SLURM_GPUS SBATCH_FLAGS"

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
study: $(PDF) $(SUPP) $(EXPLORER)
# Everything but the PDFs, for a GPU machine without LaTeX: make report later where LaTeX is.
analysis: $(ANALYSIS) $(EXPLORER)
report: study
ifeq ($(S),$(RUNS_DIR)/resnet18-cifar100)
	@mkdir -p report && cp $(PDF) report/report.pdf && echo "report/report.pdf"
endif

# Training depends on its flags (a file rewritten only when they change), not on the code:
# editing a comment must not retrain a model. An interrupted run is resumed, a stale one replaced.
$(S)/%.flags: FORCE
	$(if $(filter baseline improved $(ABLATIONS) $(if $(CONTROL_FLAGS),control),$(notdir $*)),,$(error no such run for STUDY=$(STUDY): $*))
	@mkdir -p $(@D)
	@echo '$(call flags_of,$*)' | cmp -s - $@ || echo '$(call flags_of,$*)' > $@

$(DATA_READY): | $(ENV)
	$(PY) tools/prepare_data.py --dataset $(DATASET) --data-dir $(DATA_DIR)
	@mkdir -p $(@D) && touch $@

# --auto-resume: an unfinished run of the same flags continues from its last epoch (an interrupted
# make, a preempted or requeued Slurm job); anything else starts afresh.
$(S)/%/config.json: $(S)/%.flags | $(ENV) $(DATA_READY)
	$(call launch,train) $(PY) train.py --name $* --runs-dir $(S) --data-dir $(DATA_DIR) \
	  --device $(DEVICE) --auto-resume $$(cat $<)

# What each step's output depends on: its script and every project module the script imports
# (training excepted, above). Editing common.py (or synthetic.py, which it imports), contract.py
# or shapes.py re-runs every step from evaluation on.
EVALUATE := evaluate.py shapes.py contract.py common.py synthetic.py
FAILURES := failures.py hypotheses.py shapes.py contract.py common.py synthetic.py
GRADCAM := gradcam.py cam.py hypotheses.py shapes.py contract.py common.py synthetic.py
CAUSES := causes.py cam.py hypotheses.py judgements.py shapes.py contract.py common.py synthetic.py
CORRUPTIONS := corruptions.py corrupt.py contract.py common.py synthetic.py
FAITHFULNESS := faithfulness.py cam.py shapes.py contract.py common.py synthetic.py
COMPARE := compare.py compare_figures.py cam.py corrupt.py judgements.py settings.py shapes.py contract.py common.py synthetic.py
REPORT := report/report.py report/study.py report/prose.py report/tex.py report/report.tex hypotheses.py judgements.py settings.py shapes.py contract.py common.py synthetic.py
SUPPLEMENT := report/supplement.py report/supplement.tex $(REPORT)
EXPLORE := explore.py report/explorer_template.html cam.py hypotheses.py shapes.py contract.py common.py synthetic.py

$(S)/%/metrics.json: $(S)/%/config.json $(EVALUATE) | $(ENV)
	$(call launch,evaluate) $(PY) evaluate.py --run $(@D) --checkpoint $(CHECKPOINT) --device $(DEVICE)

# An imported model's run folder: evaluate.py writes config.json and last.pt, then evaluates.
ifeq ($(IMPORTED),yes)
define import_rule
$(S)/$(1)/metrics.json: $(2) $(EVALUATE) | $(ENV)
	$(PY) evaluate.py --weights $(2) --arch $(ARCH) --dataset $(DATASET) --run $$(@D) --overwrite \
	  --data-dir $(DATA_DIR) --device $(DEVICE) $(IMPORT_FLAGS)
endef
$(eval $(call import_rule,baseline,$(BASELINE_WEIGHTS)))
$(eval $(call import_rule,improved,$(IMPROVED_WEIGHTS)))
endif

# The failure analysis and the explanations concern the baseline; compare.py re-checks its cases.
# gradcam.py reads failures.json and writes gradcam.npz, gradcam.png, then gradcam.json (the target).
$(B)/failures.json: $(B)/metrics.json $(FAILURES) $(HYPOTHESES) | $(ENV)
	$(PY) failures.py --run $(B) $(FAILURE_SELECTION) $(if $(HYPOTHESES),--hypotheses $(HYPOTHESES))

$(B)/gradcam.json: $(B)/failures.json $(GRADCAM) | $(ENV)
	$(call launch,gradcam) $(PY) gradcam.py --run $(B) --device $(DEVICE)

# The cause of each case: interventions and nearest training images (causes.json, causes.png).
$(B)/causes.json: $(B)/gradcam.json $(CAUSES) | $(ENV)
	$(call launch,causes) $(PY) causes.py --run $(B) --device $(DEVICE)

# make planted: a cause for every error of the planted model and of the control, scored against
# what was planted (tools/score_causes.py): runs/planted/score.json and its table on stdout.
ifeq ($(STUDY),planted)
$(S)/control/failures.json: $(S)/control/metrics.json $(FAILURES) | $(ENV)
	$(PY) failures.py --run $(@D) $(FAILURE_SELECTION)
$(S)/control/gradcam.json: $(S)/control/failures.json $(GRADCAM) | $(ENV)
	$(call launch,gradcam) $(PY) gradcam.py --run $(@D) --device $(DEVICE)
$(S)/control/causes.json: $(S)/control/gradcam.json $(CAUSES) | $(ENV)
	$(call launch,causes) $(PY) causes.py --run $(@D) --device $(DEVICE)
$(S)/score.json: $(B)/causes.json $(S)/control/causes.json tools/score_causes.py judgements.py | $(ENV)
	$(PY) tools/score_causes.py --planted $(B) --control $(S)/control --out $@
planted-score: $(S)/score.json
else
planted:
	$(MAKE) planted-score STUDY=planted
endif

# Stress tests of each model: the corruption grid, and how faithful its Grad-CAM maps are (on a
# test sample and on the baseline's cases, so both models are scored on the same images).
$(S)/%/corruptions.json: $(S)/%/metrics.json $(CORRUPTIONS) | $(ENV)
	$(call launch,corruptions) $(PY) corruptions.py --run $(@D) --device $(DEVICE) $(CORRUPT_FLAGS)

$(S)/%/faithfulness.json: $(S)/%/metrics.json $(B)/failures.json $(FAITHFULNESS) | $(ENV)
	$(call launch,faithfulness) $(PY) faithfulness.py --run $(@D) --cases $(B)/failures.json --device $(DEVICE) \
	  $(FAITH_FLAGS)

$(CMP)/comparison.json: $(B)/metrics.json $(S)/improved/metrics.json $(B)/gradcam.json \
                        $(B)/corruptions.json $(S)/improved/corruptions.json $(COMPARE) | $(ENV)
	$(call launch,compare) $(PY) compare.py --baseline $(B) --improved $(S)/improved \
	  --cases $(B)/failures.json --out $(CMP) --device $(DEVICE)

# make planted's score of the cause rule, quoted where it exists (else the report says it is not scored).
$(PDF): $(REPORT_INPUTS) $(REPORT) $(wildcard $(RUNS_DIR)/planted/score.json) | $(ENV)
	$(PY) report/report.py --study $(S) --out $@ $(patsubst %,--planted-score %,$(wildcard $(RUNS_DIR)/planted/score.json))

# What the 6 pages have no room for: faithfulness, the numbers behind each stated cause, the
# corruption table, label-error suspects.
$(SUPP): $(REPORT_INPUTS) $(SUPPLEMENT) $(wildcard $(RUNS_DIR)/planted/score.json) | $(ENV)
	$(PY) report/supplement.py --study $(S) --out $@ $(patsubst %,--planted-score %,$(wildcard $(RUNS_DIR)/planted/score.json))

# The explorer reads what the report reads (not the PDFs: it only links to them) and the test images.
$(EXPLORER): $(ANALYSIS) $(EXPLORE) | $(ENV)
	$(PY) explore.py --study $(S) --out $@

# Seeds and ablation: train and evaluate what is missing, then summarise: seeds.json, ablation.json.
seeds: $(foreach s,$(SEEDS),$(call seed_dir,$(s))/baseline/metrics.json $(call seed_dir,$(s))/improved/metrics.json) | $(ENV)
	$(PY) compare.py --baseline $(B) --improved $(S)/improved --out $(S)/seeds \
	  --seeds $(foreach s,$(SEEDS),$(call seed_dir,$(s))) --device $(DEVICE)

ablation: $(foreach r,baseline improved $(ABLATIONS),$(S)/$(r)/metrics.json) | $(ENV)
	$(PY) compare.py --baseline $(B) --improved $(S)/improved --out $(S)/ablation \
	  --ablation $(foreach r,$(ABLATIONS),$(S)/$(r)) --device $(DEVICE)

bench: $(ENV)
	$(PY) tools/bench.py --device $(DEVICE)

# Generated files only: checkpoints of real runs stay unless asked for with clean-all.
clean:
	rm -rf $(RUNS_DIR)/smoke $(RUNS_DIR)/planted .pytest_cache report/report.pdf
	rm -rf $(RUNS_DIR)/*/report $(RUNS_DIR)/*/report.pdf $(RUNS_DIR)/*/supplement.pdf
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
clean-all: clean
	rm -rf $(RUNS_DIR)

.PRECIOUS: $(S)/%.flags $(S)/%/config.json $(S)/%/metrics.json $(S)/%/corruptions.json \
           $(B)/failures.json $(B)/gradcam.json $(B)/causes.json
