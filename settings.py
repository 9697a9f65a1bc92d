"""config.json's shape, written down once: which of train.py's flags are training settings (what a
model learns from, compared between runs and tabled in the report) and which only say where and
how a run is made. config.json also holds the data's facts and the provenance (PROVENANCE_KEYS).

Adding a training setting: its flag in train.py's parser and its row in SETTINGS; nothing else
(tests/test_settings.py fails while a flag is in neither table).
"""
from collections import namedtuple

# shown(config) says whether the row matters for that run: the report leaves a row out when it
# matters for neither model (momentum under Adam) unless the two runs differ in it.
Setting = namedtuple("Setting", "label shown", defaults=(None,))

SETTINGS = {  # config.json key -> row of the report's configuration table, in table order
    "arch": Setting("architecture"),
    "dataset": Setting("dataset"),
    "epochs": Setting("epochs"),
    "batch_size": Setting("batch size"),
    "optimizer": Setting("optimizer"),
    "lr": Setting("learning rate"),
    "momentum": Setting("momentum (SGD)", lambda c: c.get("optimizer") == "sgd"),
    "weight_decay": Setting("weight decay"),
    "milestones": Setting("lr milestones (epochs)"),
    "gamma": Setting("lr factor at milestones"),
    "augment": Setting("augmentation"),
    "cutmix_prob": Setting("CutMix probability"),
    "cutmix_alpha": Setting("CutMix alpha", lambda c: bool(c.get("cutmix_prob"))),
    "label_smoothing": Setting("label smoothing"),
    "seed": Setting("seed"),
    "limit_train": Setting("training subset", lambda c: c.get("limit_train") is not None),
    "limit_test": Setting("test subset", lambda c: c.get("limit_test") is not None),
    "amp": Setting("bf16 autocast"),
    # TF32 exists on CUDA GPUs only: the row matters where a run asked for it or ran on a GPU
    "tf32": Setting("TF32 (CUDA)", lambda c: bool(c.get("tf32")) or on_cuda(c)),
    "compile": Setting("torch.compile"),
    "deterministic": Setting("deterministic kernels"),
}

# train.py flags that are not settings: where the run lives, the device, what is only logged or
# asked once. A resume may change none of them but the device; runs that differ in them compare.
RUN_OPTIONS = ("name", "runs_dir", "data_dir", "no_download", "device", "eval_batch_size", "tensorboard",
               "resume", "overwrite", "auto_resume")

# What produced a file, in config.json and every JSON a step writes (common.provenance()).
PROVENANCE_KEYS = ("git_commit", "torch_version", "torchvision_version", "python_version", "working_dir")


def on_cuda(config):
    """Whether a run trained on a CUDA GPU: common.device_name names the GPU, or says "cpu (...)"
    or "mps" for the others (an imported model has no device on record)."""
    name = config.get("device_name")
    return bool(name) and not str(name).startswith(("cpu", "mps"))


def settings_of(config, leave_out=()):
    """The training settings a run's config.json holds (an imported model's: those it knows)."""
    return {k: config[k] for k in SETTINGS if k in config and k not in leave_out}


def changed_settings(config_a, config_b):
    """The settings whose values differ between two runs, in table order."""
    return [k for k in SETTINGS if config_a.get(k) != config_b.get(k)]


def label(key):
    return SETTINGS[key].label if key in SETTINGS else key


def shown(key, *configs):
    """Whether the report's table needs the row of `key` for these runs."""
    rule = SETTINGS[key].shown if key in SETTINGS else None
    return rule is None or any(rule(c) for c in configs)
