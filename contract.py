"""The run-folder contract: how every later step finds and checks what an earlier one wrote.

One loader per kind of file, each refusing a missing, damaged or stale file in one sentence that
names the script that writes it (WRITERS). A step reads another step's file only through here:
    from contract import load_analysis, read_predictions
"""
import csv
import hashlib
import json
import os
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from common import NAMED_DATASETS, UserError, build_model, load_checkpoint, load_dataset

# Which script writes each file of a run or study folder: errors and the report name it.
WRITERS = {"config.json": "train.py", "metrics.json": "evaluate.py", "failures.json": "failures.py",
           "corruptions.json": "corruptions.py", "faithfulness.json": "faithfulness.py",
           "comparison.json": "compare.py", "gradcam.json": "gradcam.py", "seeds.json": "compare.py",
           "ablation.json": "compare.py", "causes.json": "causes.py", "score.json": "tools/score_causes.py",
           # the other files the report build reads: the runs' history and figures, compare.py's figures
           "history.csv": "train.py", "curves.png": "train.py", "failures.png": "failures.py",
           "gradcam.png": "gradcam.py", "causes.png": "causes.py", "faithfulness.png": "faithfulness.py",
           **{f"{stem}.pdf": "compare.py" for stem in ("confidence", "high_confidence", "per_class",
                                                        "reliability", "corruptions", "gradcam_compare")},
           "explorer.html": "explore.py"}  # the study's page; no step reads it


def read_json(path, what, expect=dict):
    """A JSON file the project wrote; anything but valid UTF-8 JSON of type `expect` (None: any)
    is a UserError naming the file and the script that writes it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    redo = (f"write it again with {WRITERS[path.name]}" if path.name in WRITERS
            else "write it again")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid UTF-8 JSON ({e}); {redo}") from None
    if expect is not None and not isinstance(obj, expect):
        raise UserError(f"{what} {path} holds a JSON {type(obj).__name__}, not the "
                        f"{expect.__name__} expected; {redo}")
    return obj


# What every later step reads from config.json (train.py's, or evaluate.py --weights' for an import).
CONFIG_KEYS = ("arch", "dataset", "num_classes", "classes", "mean", "std")


def read_config(run_dir):
    """A finished run's config.json, holding CONFIG_KEYS; an unfinished training says how to resume."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; train it with train.py first")
    if not (run_dir / "config.json").is_file() and (run_dir / "last.pt").is_file():
        raise UserError(f"{run_dir} has not finished training (no config.json yet); continue it "
                        f"with: python train.py --resume --name {run_dir.name} --runs-dir {run_dir.parent}")
    config = read_json(run_dir / "config.json", "run config")
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise UserError(f"{run_dir / 'config.json'} lacks {', '.join(missing)}; it is not train.py's "
                        "(retrain the run, or import its weights with evaluate.py --weights)")
    return config


def load_checkpoint_model(run_dir, checkpoint="last", device="cpu"):
    """A trained model from one of a run's checkpoints, chosen by name: (model in eval mode, config,
    checkpoint dict). evaluate.py uses it; every later step uses load_evaluated instead, which
    takes the checkpoint that evaluate.py evaluated and checks that it still holds those weights."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if config.get("imported") and checkpoint != "last":
        raise UserError(f"{run_dir} holds imported weights only (last.pt): it has no {checkpoint}.pt; "
                        "use --checkpoint last")
    ckpt = load_checkpoint(run_dir / f"{checkpoint}.pt")
    model = build_model(config["arch"], config["num_classes"])
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise UserError(f"{run_dir / (checkpoint + '.pt')} does not match its config "
                        f"({config['arch']}, {config['num_classes']} classes): "
                        f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval(), config, ckpt


def checkpoint_words(config, checkpoint):
    """What figures and the supplement call the evaluated weights: an imported model's only file is
    saved as last.pt, but "last checkpoint" would claim a training that this project never saw."""
    return "imported weights" if config.get("imported") else f"{checkpoint} checkpoint"


def weights_fingerprint(model):
    """SHA-256 of a model's parameters and buffers (names, dtypes, shapes, bytes) in key order:
    evaluate.py records it, later steps compare it instead of re-checking predictions."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_evaluated(run_dir, device="cpu"):
    """The model whose predictions evaluate.py wrote (the checkpoint metrics.json names), checked by
    its weights' fingerprint: (model in eval mode, config, checkpoint dict, metrics)."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    checkpoint = metrics.get("checkpoint", "last")
    model, config, ckpt = load_checkpoint_model(run_dir, checkpoint, device)
    if weights_fingerprint(model) != metrics.get("weights_sha256"):
        raise UserError(f"{run_dir / (checkpoint + '.pt')} holds other weights than evaluate.py evaluated "
                        f"(retrained or replaced since, or metrics.json is older than this check); "
                        f"re-run python evaluate.py --run {run_dir} and the steps after it")
    return model, config, ckpt, metrics


# What later steps read from metrics.json (compare.py reads calibration and per-class accuracy here
# rather than recomputing them).
# metrics.json's ece and reliability bins: Guo et al. 2017's equal-width bins of the top-label confidence.
ECE_BINS = 15
METRIC_KEYS = ("test_accuracy", "per_class_accuracy", "nll", "brier", "ece", "reliability", "checkpoint")


def read_metrics(run_dir):
    """evaluate.py's metrics.json of a run: its "checkpoint" names the model the predictions came from."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist; run python evaluate.py --run {run_dir} first")
    metrics = read_json(path, "metrics")
    missing = [k for k in METRIC_KEYS if k not in metrics]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)} (written by an older evaluate.py?); "
                        f"re-run python evaluate.py --run {run_dir}")
    return metrics


def _read_npz(path, keys, script, run_dir):
    """The arrays `keys` of a .npz file that `script` writes for run_dir; missing or unreadable
    (truncated, another program's) is a UserError saying what to run."""
    redo = f"run python {script} --run {run_dir}"
    if not path.is_file():
        raise UserError(f"{path} does not exist; {redo} first")
    try:
        with np.load(path) as f:
            return {k: f[k] for k in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} cannot be read ({type(e).__name__}: truncated or not {script}'s); "
                        f"{redo} again") from None


def read_predictions(run_dir):
    """evaluate.py's predictions.npz of a run: probs (N, C), labels (N,), indices (N,), as arrays
    whose shapes agree; a missing, truncated or inconsistent file is a UserError."""
    path = Path(run_dir) / "predictions.npz"
    redo = f"run python evaluate.py --run {run_dir}"
    pred = _read_npz(path, ("probs", "labels", "indices"), "evaluate.py", run_dir)
    n = len(pred["labels"])
    if (pred["probs"].ndim != 2 or len(pred["probs"]) != n or pred["labels"].ndim != 1
            or pred["indices"].shape != (n,)):
        raise UserError(f"{path} holds arrays of inconsistent shapes ({pred['probs'].shape} probs, "
                        f"{pred['labels'].shape} labels, {pred['indices'].shape} indices); {redo} again")
    return pred


CASE_FIELDS = ("index", "row", "true", "pred", "confidence")  # what gradcam and faithfulness read


def read_cases(path, labels, indices, run, fields=CASE_FIELDS, probs=None):
    """failures.py's file at `path`: (its JSON, its cases), every case holding `fields` (what the
    caller reads; row, index and true at least) and naming a test image of `run` by row, index and
    label (labels, indices: its predictions). With probs (the run's predictions.npz), the cases must
    have been selected from these very predictions: each case's pred and confidence are the run's."""
    data = read_json(path, "failures file")
    cases = data.get("cases")
    redo = f"python failures.py --run {run}"
    if not isinstance(cases, list) or not cases:
        raise UserError(f"{path} has no cases; write it with {redo}")
    for k, case in enumerate(cases):
        missing = [f for f in dict.fromkeys(("index", "row", "true", *fields))
                   if not isinstance(case, dict) or f not in case]
        if missing:
            raise UserError(f"case {k + 1} of {path} lacks {', '.join(missing)}; write the file "
                            f"again with {redo}")
        r = case["row"]
        if not (isinstance(r, int) and 0 <= r < len(labels) and int(indices[r]) == case["index"]
                and int(labels[r]) == case["true"]):
            raise UserError(f"{path} does not match the test set of {run}; re-run {redo}")
        if probs is not None and (case.get("pred") != int(probs[r].argmax()) or abs(
                case.get("confidence", probs[r].max()) - float(probs[r].max())) > 1e-5):
            raise UserError(f"{path} was not written from the predictions of {run} (case {k + 1}'s "
                            f"prediction or confidence differs); re-run {redo}, or pass that run's own "
                            "failures.json")
    return data, cases


def _read_per_case(run, cases, name, what, about, verb):
    """A JSON file of a run that a later step wrote about failures.json's `cases`, checked to hold
    exactly those cases, in the same order, made with the weights that metrics.json names; `verb`
    says what the file does to a case in its messages ("explain")."""
    path = Path(run) / name
    redo = f"python {WRITERS[name]} --run {run}"
    if not path.is_file():
        raise UserError(f"{path} does not exist; {redo} writes {about}")
    data = read_json(path, what)
    listed = data.get("cases")
    if not isinstance(listed, list) or [c.get("index") if isinstance(c, dict) else None
                                        for c in listed] != [c["index"] for c in cases]:
        raise UserError(f"{path} does not {verb} the cases of failures.json (it is older, or made "
                        f"for other cases); re-run {redo}")
    if data.get("weights_sha256") != read_metrics(run).get("weights_sha256"):
        raise UserError(f"{path} {verb}s other weights than metrics.json's (the run was "
                        f"re-evaluated since); re-run {redo}")
    return data


def read_gradcam(run, cases):
    """gradcam.py's gradcam.json of a run: the Grad-CAM evidence of exactly `cases`."""
    return _read_per_case(run, cases, "gradcam.json", "Grad-CAM results",
                          "the Grad-CAM evidence of the cases", "explain")


def read_causes(run, cases):
    """causes.py's causes.json of a run: the stated cause of exactly `cases`."""
    return _read_per_case(run, cases, "causes.json", "causes file", "the cause of each case",
                          "explain")


def read_score(path):
    """tools/score_causes.py's score.json (make planted): how the cause rule did on planted causes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"planted score {path} does not exist; make planted writes runs/planted/score.json")
    return read_json(path, "planted score")


def read_gradcam_maps(run, indices, layer, checkpoint):
    """gradcam.py's gradcam.npz of a run: the scaled maps (N, H, W) for the predicted and the true
    class of the cases with these test indices, made at `layer` with `checkpoint`."""
    path = Path(run) / "gradcam.npz"
    redo = f"re-run python gradcam.py --run {run}"
    got = _read_npz(path, ("maps_pred", "maps_true", "indices", "layer", "checkpoint"), "gradcam.py", run)
    if (list(got["indices"]) != list(indices) or str(got["layer"]) != layer
            or str(got["checkpoint"]) != checkpoint or got["maps_pred"].shape != got["maps_true"].shape
            or len(got["maps_pred"]) != len(indices)):
        raise UserError(f"{path} holds maps of other cases, another layer or another checkpoint "
                        f"(wanted {len(indices)} cases at {layer}, {checkpoint}); {redo}")
    return torch.from_numpy(got["maps_pred"]), torch.from_numpy(got["maps_true"])


HISTORY_COLUMNS = ("epoch", "train_acc", "test_loss")  # what judgements.fit_check reads


def read_history(path):
    """train.py's history.csv as a list of per-epoch dicts of numbers, each with HISTORY_COLUMNS."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        # A timing column may be blank (a resumed run's boundary epoch): None, not an error.
        history = [{k: (int(v) if k == "epoch" else None if v == "" else float(v)) for k, v in r.items()}
                   for r in rows]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, csv.Error) as e:
        raise UserError(f"{path} cannot be read as train.py's history ({e}); retrain or restore it") from None
    lacking = [c for c in HISTORY_COLUMNS if any(row.get(c) is None for row in history)]
    if lacking:
        raise UserError(f"{path} lacks {', '.join(lacking)} for some epoch, which compare.py reads; it is "
                        "not train.py's history: retrain or restore it")
    return history


def check_test_set(run_dir, predictions, ds):
    """predictions.npz of run_dir must be row for row the test images of its dataset ds."""
    if not (np.array_equal(predictions["labels"], ds.test_y.numpy())
            and np.array_equal(predictions["indices"], ds.test_indices.numpy())):
        raise UserError(f"{run_dir / 'predictions.npz'} does not match the run's test set "
                        f"({len(predictions['labels']):,} predictions for {len(ds.test_y):,} test images, or "
                        f"other labels or indices); re-run python evaluate.py --run {run_dir}")


def check_same_test_set(base, impr):
    """Two runs (each a dict with run, config and predictions.npz's labels and indices) must have
    been evaluated on the same test images of the same dataset, to be compared image by image."""
    if (base["labels"].shape != impr["labels"].shape or not np.array_equal(base["labels"], impr["labels"])
            or not np.array_equal(base["indices"], impr["indices"])):
        raise UserError(f"{base['run']} and {impr['run']} were not evaluated on the same test set "
                        f"({len(base['labels'])} vs {len(impr['labels'])} images, or different indices "
                        "or labels); compare runs with the same --dataset and --limit-test")
    if base["config"]["classes"] != impr["config"]["classes"]:
        raise UserError(f"{base['run']} and {impr['run']} have different class lists; "
                        "they were trained on different datasets")
    # Same labels can still be other images (CIFAR-10's archive and a JPEG copy of it): the
    # datasets must be the same one, a path counting as the folder or file it names.
    names = [dataset_identity(s["config"]["dataset"]) for s in (base, impr)]
    if names[0] != names[1]:
        raise UserError(f"{base['run']} and {impr['run']} were evaluated on different datasets "
                        f"({base['config']['dataset']} vs {impr['config']['dataset']}); compare runs "
                        "of one --dataset")


def dataset_identity(name):
    path = Path(name)
    return str(path.resolve()) if path.exists() else str(name)


def load_analysis(run_dir, device="cpu", data_dir=None):
    """What every analysis step starts from, checked once: the model evaluate.py evaluated (model,
    config, ckpt, metrics, checkpoint), the run's dataset (ds) and evaluate.py's predictions of its
    test set (predictions: probs, labels, indices, row for row the test images of ds)."""
    run_dir = Path(run_dir)
    model, config, ckpt, metrics = load_evaluated(run_dir, device)
    ds = dataset_from_config(config, data_dir)
    predictions = read_predictions(run_dir)
    check_test_set(run_dir, predictions, ds)
    return SimpleNamespace(run=run_dir, model=model, config=config, ckpt=ckpt, metrics=metrics,
                           checkpoint=metrics["checkpoint"], ds=ds, predictions=predictions)


def dataset_from_config(config, data_dir=None, download=False):
    """The dataset a run was trained on, with the same test subset (downloads only if asked: a
    resumed training may fetch a CIFAR archive again, as its start could; later steps never do).

    config.json keeps --dataset and --data-dir as the user typed them; a relative path that does not
    exist from here is taken relative to the folder the run was made in, so that later steps may
    run from anywhere.
    """
    made_in = config.get("working_dir")

    def located(path):
        if made_in and not Path(path).is_absolute() and not Path(path).exists():
            return str(Path(made_in) / path)
        return path

    name = config["dataset"]
    if name not in NAMED_DATASETS:
        name = located(name)
        if not Path(name).exists():
            where = f" nor under {made_in}, where the run was made" if made_in else ""
            raise UserError(f"the run's dataset {config['dataset']} is not found from {os.getcwd()}{where}; "
                            "run from the folder the run was made in or put the dataset back there")
    return load_dataset(name, data_dir or located(config["data_dir"]), download=download,
                        limit_train=config.get("limit_train"), limit_test=config.get("limit_test"))


def load_grid(run, metrics):
    """A run's corruptions.json, or None if it has none; refused if written for another model than
    metrics.json describes (checkpoint, epoch, or clean accuracy off by more than 0.2 points)."""
    path = Path(run) / "corruptions.json"
    if not path.is_file():
        return None
    grid = read_json(path, "corruptions file")
    stale = (grid.get("checkpoint"), grid.get("epoch")) != (metrics.get("checkpoint"), metrics.get("epoch"))
    if grid.get("limit_test") is None and "test_accuracy" in metrics:
        stale |= abs(grid.get("clean_accuracy", -1) - metrics["test_accuracy"]) > 0.002
    if stale:
        raise UserError(f"{path} was written for another model than metrics.json describes; "
                        f"re-run python corruptions.py --run {run}")
    return grid
