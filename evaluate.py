"""Evaluate a trained run on its test set: runs/<name>/predictions.npz and metrics.json.

metrics.json holds accuracy, top-5, per-class accuracy, mean loss and calibration: NLL, Brier
score, expected calibration error (15 bins) and the reliability-diagram bins (calibration()).

    python evaluate.py --run runs/baseline                 # last epoch (default, honest)
    python evaluate.py --run runs/baseline --checkpoint best   # best-on-test, as the reference
"""
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import (DEVICE_HELP, DeviceLoader, arg_parser, atomic_write, autocast, cli_guard,
                    dataset_from_config, load_run, resolve_device, save_json)


def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--run", required=True, help="run folder written by train.py")
    # Choosing the epoch by test accuracy peeks at the test set, so "last" is the default.
    p.add_argument("--checkpoint", default="last", choices=("last", "best"),
                   help="final epoch, or the best on test (peeks at the test set)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--data-dir", default=None, help="override the run's --data-dir")
    p.add_argument("--batch-size", type=int, default=1024, help="test images per forward pass")
    return p


@torch.no_grad()
def predict(model, images_u8, mean, std, batch_size=1024, amp=False):
    """Logits (N, C) as float32 on the CPU, computed in batches on the model's device; amp=True
    runs the forward passes under bf16 autocast (only where common.autocast_mode allows it)."""
    device = next(model.parameters()).device
    loader = DeviceLoader(images_u8, torch.zeros(len(images_u8), dtype=torch.long), batch_size,
                          mean, std, device)
    with autocast(device, amp):
        # One copy to the CPU at the end: a copy per batch would make the host wait for each batch.
        return torch.cat([model(x).float() for x, _ in loader]).cpu()


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


ECE_BINS = 15  # Guo et al. 2017: equal-width bins on the top-label confidence


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


def evaluate(args):
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    model, config, ckpt = load_run(args.run, args.checkpoint, device)
    ds = dataset_from_config(config, args.data_dir)
    logits = predict(model, ds.test_x, config["mean"], config["std"], args.batch_size)
    probs = logits.softmax(1)
    metrics = classification_metrics(logits, ds.test_y, config["num_classes"])
    metrics.update(calibration(probs.numpy(), ds.test_y.numpy()))
    metrics.update(checkpoint=args.checkpoint, epoch=ckpt["epoch"],
                   seconds=round(time.perf_counter() - t0, 3))
    run = Path(args.run)

    def write_npz(f):
        np.savez_compressed(f, probs=probs.numpy().astype(np.float32), labels=ds.test_y.numpy(),
                            logits=logits.numpy(), indices=ds.test_indices.numpy())
    atomic_write(run / "predictions.npz", write_npz)
    save_json(metrics, run / "metrics.json")
    label = "best-on-test" if args.checkpoint == "best" else "last"
    print(f"{run}: test accuracy {100 * metrics['test_accuracy']:.2f}% (top-5 "
          f"{100 * metrics['top5_accuracy']:.2f}%, ECE {100 * metrics['ece']:.2f}%) with the {label} "
          f"checkpoint, epoch {ckpt['epoch']}")
    return metrics


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return cli_guard(evaluate, args)


if __name__ == "__main__":
    main()
