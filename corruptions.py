"""Accuracy of a trained run under CIFAR-10-C-style corruptions at severities 1-5.

    python corruptions.py --run runs/baseline                        # all corruptions, severities 1-5
    python corruptions.py --run runs/baseline --corruptions fog contrast --severities 1 3 5 --limit-test 500

Uses the checkpoint evaluate.py used (metrics.json) and writes runs/<name>/corruptions.json: clean
accuracy, accuracy per corruption and severity, and the mean corruption error (mean of 1 - accuracy
over every corruption x severity, the CIFAR convention; also over the benchmark corruptions only).
The corruptions themselves, their published constants and where they differ: corrupt.py.

--amp runs the corrupted images under bf16 autocast (CUDA, or a CPU with native bf16: 3-4x faster
for ResNet-18 on such a CPU; docs/RESULTS.md). It moves softmax probabilities by up to about 0.01
and flips a few tenths of a percent of the predictions, which a grid of accuracies can bear but the
saved probabilities cannot: the clean accuracy is always computed in float32, so that it matches
metrics.json, and corruptions.json records the precision of the cells.
"""
import time
from pathlib import Path

import numpy as np
import torch

from common import (DEVICE_HELP, UserError, arg_parser, autocast_mode, cli_guard,
                    dataset_from_config, device_name, git_commit, load_run, read_json, read_metrics,
                    resolve_device, save_json, subset_indices)
from corrupt import BENCHMARK, NAMES, SEVERITIES, check_choice, corrupt
from evaluate import predict


#### Command line: accuracy of a run's checkpoint on every corruption x severity

def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--run", required=True, help="run folder, evaluated with evaluate.py")
    p.add_argument("--corruptions", nargs="+", default=["all"], help=f"'all' or names: {', '.join(NAMES)}")
    p.add_argument("--severities", nargs="+", type=int, default=list(SEVERITIES), help="from 1 to 5")
    p.add_argument("--limit-test", type=int, default=None,
                   help="a fixed random subset of the run's test images (same as common.subset_indices)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions' random draws")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--data-dir", default=None, help="override the run's --data-dir")
    p.add_argument("--batch-size", type=int, default=1024, help="images per forward pass")
    p.add_argument("--amp", action="store_true",
                   help="corrupted images under bf16 autocast (CUDA, or a CPU with native bf16)")
    return p


CHUNK = 1000  # images corrupted at once: bounds memory, and results do not depend on --batch-size


def cell_seed(seed, name, severity, chunk):
    """An independent seed per corruption, severity and chunk: a subset of the grid draws the same noise."""
    return int(np.random.SeedSequence([seed, NAMES.index(name), severity, chunk]).generate_state(1)[0])


def run_grid(args):
    names = list(NAMES) if "all" in args.corruptions else list(dict.fromkeys(args.corruptions))
    severities = sorted(set(args.severities))
    check_choice(names, severities)
    run = Path(args.run)
    metrics = read_metrics(run)
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    checkpoint = metrics.get("checkpoint", "last")  # the model evaluate.py described
    model, config, ckpt = load_run(run, checkpoint, device)
    ds = dataset_from_config(config, args.data_dir)
    rows = subset_indices(len(ds.test_y), args.limit_test)
    images, labels = (ds.test_x, ds.test_y) if rows is None else (ds.test_x[rows], ds.test_y[rows])
    images, labels = images.to(device), labels.to(device)
    use_amp, note = autocast_mode(device, args.amp, "corrupted images in float32")
    if note:
        print(note)

    def accuracy(name=None, severity=None):
        hits = 0
        for k, start in enumerate(range(0, len(labels), CHUNK)):
            x = images[start:start + CHUNK]
            if name:
                x = corrupt(x, name, severity, cell_seed(args.seed, name, severity, k))
            pred = predict(model, x, config["mean"], config["std"], args.batch_size,
                           amp=use_amp and name is not None).argmax(1)
            hits += (pred.to(device) == labels[start:start + CHUNK]).sum().item()
        return round(hits / len(labels), 6)
    clean = accuracy()
    if rows is None and abs(clean - metrics.get("test_accuracy", clean)) > 1e-6:
        print(f"warning: clean accuracy {clean:.4f} differs from metrics.json's "
              f"{metrics['test_accuracy']:.4f}; re-run python evaluate.py --run {run}")
    grid, seconds = {}, {}
    for name in names:
        t = time.perf_counter()
        grid[name] = [accuracy(name, s) for s in severities]
        seconds[name] = round(time.perf_counter() - t, 3)
        print(f"{name:18s} " + " ".join(f"{100 * a:6.2f}" for a in grid[name]) + f"   ({seconds[name]:.1f} s)")
    bench = [n for n in names if n in BENCHMARK]
    result = {"run": str(run), "checkpoint": checkpoint, "epoch": ckpt["epoch"], "n": len(labels),
              "limit_test": args.limit_test, "seed": args.seed, "severities": severities,
              "corruptions": names, "clean_accuracy": clean, "accuracy": grid,
              "mean_accuracy": {n: round(float(np.mean(grid[n])), 6) for n in names},
              "mean_corruption_error": mean_error(grid, names),
              "benchmark_corruptions": bench, "mean_corruption_error_benchmark": mean_error(grid, bench),
              "seconds": round(time.perf_counter() - t0, 3), "seconds_by_corruption": seconds,
              "images_per_second": round(len(labels) * len(severities) * len(names) / sum(seconds.values()), 1),
              "batch_size": args.batch_size, "precision": "bf16 autocast" if use_amp else "float32",
              "device": device_name(device), "git_commit": git_commit(),
              "torch_version": torch.__version__}
    save_json(result, run / "corruptions.json")
    print(f"{run / 'corruptions.json'}: clean accuracy {100 * clean:.2f}%, mean corruption error "
          f"{100 * result['mean_corruption_error']:.2f}% over {len(names)} "
          f"corruption{'s' * (len(names) > 1)} x {len(severities)} "
          f"severit{'ies' if len(severities) > 1 else 'y'}, {result['seconds']:.0f} s")
    return result


def mean_error(grid, names):
    """Mean of 1 - accuracy over every corruption x severity (CIFAR-10-C's mean corruption error)."""
    return round(float(np.mean([1 - a for n in names for a in grid[n]])), 6) if names else None


#### Two runs side by side (compare.py)

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


def compare_grids(b, i):
    """Per-corruption mean accuracy of both runs, its change, and where the change is largest."""
    for key in ("n", "limit_test", "seed", "severities"):
        if b.get(key) != i.get(key):
            raise UserError(f"the runs' corruptions.json differ in {key} ({b.get(key)} vs {i.get(key)}); "
                            "re-run python corruptions.py on both with the same flags")
    names = [n for n in b["corruptions"] if n in i["corruptions"]]
    if not names:
        raise UserError("the runs' corruptions.json have no corruption in common; re-run python "
                        "corruptions.py on both with the same --corruptions")
    rows = []
    for n in names:
        mb, mi = float(np.mean(b["accuracy"][n])), float(np.mean(i["accuracy"][n]))
        rows.append({"name": n, "baseline": round(mb, 6), "improved": round(mi, 6), "difference": round(mi - mb, 6),
                     "by_severity": [round(q - p, 6) for p, q in zip(b["accuracy"][n], i["accuracy"][n])]})
    ranked = sorted(rows, key=lambda r: (r["difference"], r["name"]))
    bench = [n for n in names if n in BENCHMARK]
    mce = {k: mean_error(g["accuracy"], names) for k, g in (("baseline", b), ("improved", i))}
    return {"severities": b["severities"], "corruptions": names, "n": b["n"],
            "clean_accuracy": {"baseline": b["clean_accuracy"], "improved": i["clean_accuracy"]},
            "mean_corruption_error": {**mce, "difference": round(mce["improved"] - mce["baseline"], 6)},
            "mean_corruption_error_benchmark": {k: mean_error(g["accuracy"], bench)
                                                for k, g in (("baseline", b), ("improved", i))},
            "per_corruption": rows,
            "helps_most": [r["name"] for r in reversed(ranked) if r["difference"] > 0][:3],
            "hurts_most": [r["name"] for r in ranked if r["difference"] < 0][:3]}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.limit_test is not None and args.limit_test < 1:
        parser.error("--limit-test must be at least 1")
    return cli_guard(run_grid, args)


if __name__ == "__main__":
    main()
