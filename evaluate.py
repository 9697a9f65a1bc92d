"""Evaluate a trained run on its test set: runs/<name>/predictions.npz and metrics.json.

metrics.json holds accuracy, top-5, per-class accuracy, mean loss and calibration: NLL, Brier
score, expected calibration error (15 bins) and the reliability-diagram bins (calibration()).

    python evaluate.py --run runs/baseline                 # last epoch (default, honest)
    python evaluate.py --run runs/baseline --checkpoint best   # best-on-test, as the reference

A model trained elsewhere becomes a run folder the same way (config.json marked "imported", its
weights as last.pt), so every later step treats it like a trained run:

    python evaluate.py --weights best_baseline_resnet18.pth --arch resnet18 --dataset cifar100 \
        --run runs/imported/baseline
"""
import hashlib
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import (ARCHS, DEVICE_HELP, UserError, arg_parser, at_least, atomic_write, build_model,
                    channel_stats, cli_guard, device_name, load_checkpoint, load_dataset, predict, provenance,
                    resolve_device, save_checkpoint, save_json)
from contract import ECE_BINS, dataset_from_config, load_checkpoint_model, weights_fingerprint
from shapes import conform


def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--run", required=True, help="run folder written by train.py")
    # Choosing the epoch by test accuracy peeks at the test set, so "last" is the default.
    p.add_argument("--checkpoint", default="last", choices=("last", "best"),
                   help="final epoch, or the best on test (peeks at the test set)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--data-dir", default=None, help="override the run's --data-dir")
    p.add_argument("--batch-size", type=at_least(1), default=1024, help="test images per forward pass")
    g = p.add_argument_group("importing a model trained elsewhere (creates the --run folder)")
    g.add_argument("--weights", default=None,
                   help="a checkpoint file: a bare state_dict, or one under state_dict, "
                        "model_state_dict, model or net; prefixes module., _orig_mod., model. are removed")
    g.add_argument("--arch", choices=ARCHS, default=None, help="the network the weights are for")
    g.add_argument("--dataset", default=None,
                   help="its test set: cifar100, cifar10, synthetic, a folder or an archive path")
    g.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="input normalisation in [0, 1] units (default: the dataset's channel "
                        "means on its training images, as train.py)")
    g.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="as --mean, the channel standard deviations")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --run folder")
    return p


def check_import_args(args, parser):
    """The flags an import needs, and none that it cannot honour."""
    given = [f"--{k.replace('_', '-')}" for k in ("arch", "dataset", "mean", "std", "overwrite")
             if getattr(args, k) not in (None, False)]
    if args.weights is None:
        if given:
            parser.error(f"{', '.join(given)} only apply with --weights (importing a model)")
        return
    if args.arch is None or args.dataset is None:
        parser.error("--weights needs --arch and --dataset (what the weights are and their test set)")
    if args.checkpoint != "last":
        parser.error("an imported model has one set of weights: --checkpoint does not apply")
    if (args.mean is None) != (args.std is None):
        parser.error("give --mean and --std together, or neither (then the dataset's statistics)")
    # Not a type=: one message for both flags, naming their units (the likely mistake: 0-255 values).
    if args.mean is not None and not (all(0 <= v <= 1 for v in args.mean) and all(0 < v <= 1 for v in args.std)):
        parser.error("--mean and --std are in [0, 1] units (e.g. 0.5071 0.4865 0.4409), std above 0")


#### Weights trained elsewhere (--weights)

# Where saved files keep the weights (PyTorch tutorials, this project, Lightning, ad-hoc scripts),
# and the prefixes wrappers add to every key: DataParallel/DDP, torch.compile, Lightning modules.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def _is_state_dict(obj):
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def find_state_dict(obj, path):
    """The weights inside a checkpoint loaded by load_checkpoint: (state_dict, how it was found).

    A bare state_dict or one under a key of STATE_DICT_KEYS (one level of nesting deeper too),
    with the WRAPPER_PREFIXES that every key shares removed, in any order and combination."""
    found, where = None, "a bare state_dict"
    if _is_state_dict(obj):
        found = obj
    elif isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if not _is_state_dict(inner) and isinstance(inner, dict):
                inner = next((inner[k] for k in STATE_DICT_KEYS if _is_state_dict(inner.get(k))), None)
            if _is_state_dict(inner):
                found, where = inner, f"the state_dict under {key!r}"
                break
    if found is None:
        keys = ", ".join(map(repr, list(obj)[:6])) if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path} holds no state_dict (found {keys or 'an empty dict'}); give a file "
                        f"with a bare state_dict or one under {', '.join(map(repr, STATE_DICT_KEYS))}")
    stripped = []
    while prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in found)), None):
        found = {k[len(prefix):]: v for k, v in found.items()}
        stripped.append(prefix)
    if stripped:
        where += ", prefix " + " + ".join(repr(p) for p in stripped) + " removed"
    return found, where


def state_dict_mismatch(model, state_dict):
    """One clause saying how state_dict differs from model's (missing, unexpected keys, shapes), or None."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    extra = [k for k in state_dict if k not in own]
    shapes = [f"{k} is {tuple(state_dict[k].shape)} in the file, {tuple(v.shape)} expected"
              for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]

    def few(names):
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    parts = ([f"{len(missing)} keys missing ({few(missing)})"] if missing else []) + \
            ([f"{len(extra)} unexpected ({few(extra)})"] if extra else []) + \
            ([f"shapes differ: {few(shapes)}"] if shapes else [])
    return "; ".join(parts) or None


def import_weights(args):
    """Write args.run as a run folder from an outside checkpoint: last.pt, then config.json (last:
    load_checkpoint_model treats a folder without it as unfinished). The weights must fit --arch exactly.
    Returns the dataset, which the evaluation then uses instead of loading it again."""
    run, weights = Path(args.run), Path(args.weights)
    if run.exists() and not run.is_dir():
        raise UserError(f"--run {run} is a file; give a folder for the imported run")
    if run.is_dir() and any(run.iterdir()) and not args.overwrite:
        raise UserError(f"{run} is not empty; give a new folder or --overwrite to replace it")
    state, how = find_state_dict(load_checkpoint(weights), weights)
    ds = load_dataset(args.dataset, args.data_dir or "data")
    model = build_model(args.arch, ds.num_classes)
    problem = state_dict_mismatch(model, state)
    if problem:
        raise UserError(f"{weights} does not fit {args.arch} with {ds.num_classes} classes: {problem}")
    model.load_state_dict(state)
    mean, std = (args.mean, args.std) if args.mean is not None else channel_stats(ds.train_x)
    with open(weights, "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    # What is known about the model; its recipe (epochs, optimizer, augmentation...) is not, so
    # those keys are absent rather than guessed, and "imported" tells the report to say so.
    config = dict(arch=args.arch, dataset=args.dataset, name=run.name, runs_dir=str(run.parent),
                  data_dir=args.data_dir or "data", limit_train=None, limit_test=None,
                  num_classes=ds.num_classes, classes=ds.classes, superclasses=ds.superclasses,
                  mean=list(mean), std=list(std), n_train=None, n_test=len(ds.test_y),
                  imported=dict(weights=str(weights), sha256=sha256, found=how,
                                normalisation="given" if args.mean is not None else "dataset statistics"),
                  command="python evaluate.py " + " ".join(args.argv), **provenance(), status="imported")
    if run.is_dir() and args.overwrite:
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "epoch": None, "config": config}, run / "last.pt")
    save_json(conform(config, "config.json"), run / "config.json")
    print(f"imported {weights} ({how}) into {run}")
    return ds


def classification_metrics(logits, labels, num_classes):
    """Accuracy, top-5, per-class accuracy and mean cross-entropy from logits and labels."""
    labels = torch.as_tensor(labels)
    pred = logits.argmax(1)
    correct = (pred == labels).double()
    k = min(5, num_classes)
    top5 = (logits.topk(k, 1).indices == labels[:, None]).any(1).double().mean().item()
    counts = torch.bincount(labels, minlength=num_classes).double()
    hits = torch.bincount(labels, weights=correct, minlength=num_classes)
    per_class = torch.where(counts > 0, hits / counts.clamp(min=1), torch.full_like(counts, float("nan")))
    return {
        "test_accuracy": correct.mean().item(),
        "top5_accuracy": top5,
        "mean_loss": F.cross_entropy(logits, labels).item(),
        "per_class_accuracy": [None if np.isnan(v) else round(v, 6) for v in per_class.tolist()],
        "n": len(labels),
    }




def calibration(probs, labels, n_bins=ECE_BINS):
    """NLL, Brier score, expected calibration error and reliability-diagram bins of softmax rows.

    probs (N, C) and labels (N,), NumPy or torch. Bin m holds confidences in (m-1)/M .. m/M
    (upper edge included, as Guo et al.); ECE = sum_m |B_m|/N * |acc(B_m) - conf(B_m)|. Brier is
    the multi-class sum over classes of (p_k - onehot_k)^2, averaged over images. NLL clips a
    probability that underflowed to 0 at float32's smallest normal (about 87 nats at most).
    Empty bins have confidence and accuracy None.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n, rows = len(labels), np.arange(len(labels))
    p_true = probs[rows, labels]
    onehot = np.zeros_like(probs)
    onehot[rows, labels] = 1
    conf, correct = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    b = np.searchsorted(edges[1:-1], conf, side="left")  # (lo, hi]; a confidence of 0 goes to bin 0
    count = np.bincount(b, minlength=n_bins)
    conf_sum = np.bincount(b, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(b, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, acc = conf_sum / count, acc_sum / count

    def listed(v):
        return [None if c == 0 else round(float(x), 6) for x, c in zip(v, count)]
    return {"nll": float(-np.log(np.maximum(p_true, np.finfo(np.float32).tiny)).mean()),
            "brier": float(((probs - onehot) ** 2).sum(1).mean()),
            "ece": float(np.abs(acc_sum - conf_sum).sum() / n),
            "reliability": {"edges": edges.round(6).tolist(), "count": count.tolist(),
                            "confidence": listed(mean_conf), "accuracy": listed(acc)}}


def run_evaluation(args, ds=None):
    """Predictions and metrics of the run's checkpoint; ds: its dataset if already loaded."""
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    model, config, ckpt = load_checkpoint_model(args.run, args.checkpoint, device)
    if ds is None:
        ds = dataset_from_config(config, args.data_dir)
    logits = predict(model, ds.test_x, config["mean"], config["std"], args.batch_size)
    probs = logits.softmax(1)
    metrics = classification_metrics(logits, ds.test_y, config["num_classes"])
    metrics.update(calibration(probs.numpy(), ds.test_y.numpy()))
    # Which weights these predictions are of: later steps load the model with load_evaluated.
    # precision: always IEEE float32 (resolve_device's policy), whatever the training ran in.
    metrics.update(checkpoint=args.checkpoint, epoch=ckpt["epoch"], weights_sha256=weights_fingerprint(model),
                   precision="float32", device=device_name(device), seconds=round(time.perf_counter() - t0, 3),
                   **provenance())
    run_dir = Path(args.run)

    def write_npz(f):
        np.savez_compressed(f, probs=probs.numpy().astype(np.float32), labels=ds.test_y.numpy(),
                            logits=logits.numpy(), indices=ds.test_indices.numpy())
    atomic_write(run_dir / "predictions.npz", write_npz)
    save_json(conform(metrics, "metrics.json"), run_dir / "metrics.json")
    label = ("the imported weights" if config.get("imported") else
             f"the {'best-on-test' if args.checkpoint == 'best' else 'last'} checkpoint, epoch {ckpt['epoch']}")
    print(f"{run_dir}: test accuracy {100 * metrics['test_accuracy']:.2f}% (top-5 "
          f"{100 * metrics['top5_accuracy']:.2f}%, ECE {100 * metrics['ece']:.2f}%) with {label}")
    return metrics


def run(args):
    """Import --weights first if given, then evaluate the run folder."""
    return run_evaluation(args, import_weights(args) if args.weights else None)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_import_args(args, parser)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return cli_guard(run, args)


if __name__ == "__main__":
    main()
