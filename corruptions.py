"""Accuracy of a trained run under CIFAR-10-C-style corruptions at severities 1-5.

    python corruptions.py --run runs/baseline                        # all corruptions, severities 1-5
    python corruptions.py --run runs/baseline --corruptions fog contrast --severities 1 3 5 --limit-test 500
    python corruptions.py --run runs/baseline --cifar-c data/CIFAR-100-C    # the published files instead

Uses the checkpoint evaluate.py used (metrics.json) and writes runs/<name>/corruptions.json: clean
accuracy, accuracy per corruption and severity, and the mean corruption error (mean of 1 - accuracy
over every corruption x severity, the CIFAR convention; also over the benchmark corruptions only).
The corruptions themselves, their published constants and where they differ: corrupt.py.

The clean accuracy is not recomputed: it is counted from evaluate.py's predictions.npz (on the
--limit-test subset if given), so it is the accuracy metrics.json reports whatever the device. A
second forward pass would batch the images otherwise, and on a GPU other batch shapes (other cuDNN
algorithms, TF32) may flip a prediction near a tie.

--amp runs the corrupted images under bf16 autocast (CUDA, or a CPU with native bf16: 3-4x faster
for ResNet-18 on such a CPU; docs/RESULTS.md). It moves softmax probabilities by up to about 0.01
and flips a few tenths of a percent of the predictions, which a grid of accuracies can bear but the
saved probabilities cannot: the clean column stays evaluate.py's float32 predictions, and
corruptions.json records the precision of the cells.

--cifar-c DIR evaluates on the published CIFAR-10-C / CIFAR-100-C files (Hendrycks and Dietterich
2019) instead of generating the corruptions, so that the numbers compare with papers: labels.npy and
one <corruption>.npy per corruption (any of the 19 present, frost included), each uint8 (5 x 10,000,
32, 32, 3) RGB with severities 1-5 in blocks of 10,000 rows in the official test order. The files are
memory-mapped, so only the rows evaluated are read. They must fit the run: a run on the official
cifar10 or cifar100 archive (or one in its format), whose test labels each severity block repeats.
corruptions.json's "source" says which ("generated" or "cifar-c", with the folder and files).
"""
import time
from pathlib import Path

import numpy as np
import torch

from common import (DEVICE_HELP, UserError, arg_parser, at_least, autocast_mode, cli_guard, device_name,
                    predict, provenance, resolve_device, save_json, subset_indices)
from contract import load_analysis
from corrupt import (CIFAR_C_EXTRA, CIFAR_C_NAMES, CIFAR_C_STANDARD, NAMES, SEVERITIES,
                     check_choice, corrupt, mean_error)


#### Command line: accuracy of a run's checkpoint on every corruption x severity

def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--run", required=True, help="run folder, evaluated with evaluate.py")
    p.add_argument("--corruptions", nargs="+", default=["all"],
                   help=f"'all' or names: {', '.join(NAMES)}; with --cifar-c, 'all' is every file there "
                        "(frost too)")
    p.add_argument("--severities", nargs="+", type=int, default=list(SEVERITIES), help="from 1 to 5")
    p.add_argument("--limit-test", type=at_least(1), default=None,
                   help="a fixed random subset of the run's test images (same as common.subset_indices)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions' random draws")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--data-dir", default=None, help="override the run's --data-dir")
    p.add_argument("--batch-size", type=at_least(1), default=1024, help="images per forward pass")
    p.add_argument("--amp", action="store_true",
                   help="corrupted images under bf16 autocast (CUDA, or a CPU with native bf16)")
    p.add_argument("--cifar-c", default=None, metavar="DIR",
                   help="read the corrupted images from the published CIFAR-10-C / CIFAR-100-C files in DIR "
                        "(labels.npy, <corruption>.npy) instead of generating them")
    return p


CHUNK = 1000  # images corrupted at once: bounds memory, and the noise drawn does not depend on --batch-size


def cell_seed(seed, name, severity, chunk):
    """An independent seed per corruption, severity and chunk: a subset of the grid draws the same noise."""
    return int(np.random.SeedSequence([seed, NAMES.index(name), severity, chunk]).generate_state(1)[0])


#### The published CIFAR-10-C / CIFAR-100-C files (--cifar-c)

def load_npy(path):
    """A .npy file memory-mapped: indexing it reads only the rows asked for from disk."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path} cannot be read as a .npy array ({e})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
        raise UserError(f"{path} is not a .npy array (it holds {type(array).__name__})")
    return array


class CifarC:
    """A folder of the published files: labels.npy and <corruption>.npy, each of 5 blocks (severities
    1-5) of the whole test set in the official order; checked against a run and read by rows."""

    def __init__(self, folder):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UserError(f"--cifar-c {folder} is not a folder; give the folder that holds labels.npy and "
                            "the <corruption>.npy files of CIFAR-10-C or CIFAR-100-C")
        unknown = sorted(p.name for p in self.folder.glob("*.npy")
                         if p.stem not in CIFAR_C_NAMES and p.name != "labels.npy")
        if unknown:
            print(f"note: {folder}: ignoring {', '.join(unknown)}, not named after a CIFAR-10-C corruption")
        self.present = [n for n in CIFAR_C_NAMES if (self.folder / f"{n}.npy").is_file()]
        if not (self.folder / "labels.npy").is_file():
            raise UserError(f"{folder} has no labels.npy; the CIFAR-10-C / CIFAR-100-C folder holds it")
        if not self.present:
            raise UserError(f"{folder} holds no corruption file; expected some of "
                            f"{', '.join(n + '.npy' for n in CIFAR_C_NAMES)}")
        self.missing = [n for n in CIFAR_C_STANDARD if n not in self.present]
        if self.missing:
            print(f"note: {folder} lacks {len(self.missing)} of the 15 standard corruptions "
                  f"({', '.join(self.missing)}); the benchmark mean covers the others")
        self.n_full, self.mapped = None, (None, None)

    def choose(self, wanted):
        """The corruptions to evaluate: every file present for 'all', else the names asked, each present."""
        if "all" in wanted:
            return list(self.present)
        names = list(dict.fromkeys(wanted))
        for n in names:
            if n not in self.present:
                what = "" if n in CIFAR_C_NAMES else f" ({n!r} is not a CIFAR-10-C corruption)"
                raise UserError(f"{self.folder} has no {n}.npy{what}; choose 'all' or any of "
                                f"{', '.join(self.present)}")
        return names

    def check(self, ds, config, names):
        """Refuse files that do not belong to the run's test set: its order, size, labels, image shape."""
        if ds.name not in ("cifar10", "cifar100"):
            raise UserError(f"--cifar-c needs a run on the cifar10 or cifar100 archive, whose test order "
                            f"the files follow; this run's dataset is {config['dataset']} (a folder copy "
                            "lists its images by class, not in the official order)")
        n = self.n_full = ds.n_test_full  # the files hold the whole test set, the run maybe a subset
        path = self.folder / "labels.npy"
        labels = load_npy(path)
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != 5 * n:
            raise UserError(f"{path} holds {labels.dtype} {labels.shape}, but the run's test set of {n:,} "
                            f"images needs 5 x {n:,} = {5 * n:,} integer labels (5 severities)")
        found = np.asarray(labels).reshape(5, n)[:, ds.test_indices.numpy()]  # (5, the run's test images)
        wrong = found != ds.test_y.numpy()
        if wrong.any():
            s, r = np.argwhere(wrong)[0]
            raise UserError(f"{path} does not match the test labels of the run's {config['dataset']}: "
                            f"{wrong.sum():,} of {wrong.size:,} differ, the first at severity {s + 1}, test "
                            f"image {int(ds.test_indices[r])} ({found[s, r]} in the file, {int(ds.test_y[r])} "
                            "in the run); CIFAR-10-C goes with cifar10, CIFAR-100-C with cifar100")
        shape = (5 * n, *ds.test_x.shape[2:], 3)
        for name in names:
            array = load_npy(self.folder / f"{name}.npy")
            if array.dtype != np.uint8 or array.shape != shape:
                raise UserError(f"{self.folder / (name + '.npy')} holds {array.dtype} {array.shape}; "
                                f"expected uint8 {shape}: 5 severities of the {n:,} test images, "
                                "height x width x RGB")

    def images(self, name, severity, rows):
        """uint8 (n, 3, H, W) of the test images at official indices rows (sorted), at one severity."""
        if self.mapped[0] != name:  # one file mapped at a time
            self.mapped = (name, load_npy(self.folder / f"{name}.npy"))
        x = self.mapped[1][(severity - 1) * self.n_full + rows]  # (n, H, W, 3), only these rows read
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


#### The grid: the clean test set, then every corruption x severity

def generated_names(wanted):
    names = list(NAMES) if "all" in wanted else list(dict.fromkeys(wanted))
    check_choice(names)
    return names


def corrupted_images(args, cifar_c, names, config, ds, rows, images):
    """f(name, severity, chunk, start, stop): the corrupted copies of images[start:stop], generated with
    the chunk's own seed or read from the CIFAR-C files (checked against the run's test set first)."""
    if cifar_c is None:
        return lambda name, severity, k, start, stop: corrupt(
            images[start:stop], name, severity, cell_seed(args.seed, name, severity, k))
    cifar_c.check(ds, config, names)
    official = (ds.test_indices if rows is None else ds.test_indices[rows]).numpy()
    return lambda name, severity, k, start, stop: cifar_c.images(
        name, severity, official[start:stop]).to(images.device)


def clean_accuracy(predictions, rows):
    """Accuracy on the clean test images (rows of the run's test set, or all), counted from the
    predictions evaluate.py wrote: another forward pass could disagree with metrics.json on a GPU."""
    correct = predictions["probs"].argmax(1) == predictions["labels"]
    if rows is not None:
        correct = correct[rows.numpy()]
    return round(int(correct.sum()) / len(correct), 6)  # as the cells: hits / n, to 6 digits


def run(args):
    severities = sorted(set(args.severities))
    check_choice(severities=severities)
    # The corruptions are checked before the model loads: a mistyped name or folder fails at once.
    cifar_c = CifarC(args.cifar_c) if args.cifar_c else None
    names = cifar_c.choose(args.corruptions) if cifar_c else generated_names(args.corruptions)
    run_dir = Path(args.run)
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    analysis = load_analysis(run_dir, device, args.data_dir)  # the model evaluate.py described
    model, config, ckpt, checkpoint, ds = (analysis.model, analysis.config, analysis.ckpt, analysis.checkpoint,
                                           analysis.ds)
    rows = subset_indices(len(ds.test_y), args.limit_test)
    images, labels = (ds.test_x, ds.test_y) if rows is None else (ds.test_x[rows], ds.test_y[rows])
    images, labels = images.to(device), labels.to(device)
    corrupted = corrupted_images(args, cifar_c, names, config, ds, rows, images)
    clean = clean_accuracy(analysis.predictions, rows)
    use_amp, note = autocast_mode(device, args.amp, "corrupted images in float32")
    if note:
        print(note)

    def accuracy(name, severity):
        hits = 0
        for k, start in enumerate(range(0, len(labels), CHUNK)):
            stop = min(start + CHUNK, len(labels))
            pred = predict(model, corrupted(name, severity, k, start, stop), config["mean"], config["std"],
                           args.batch_size, amp=use_amp).argmax(1)
            hits += (pred.to(device) == labels[start:stop]).sum().item()
        return round(hits / len(labels), 6)
    grid, seconds = {}, {}
    for name in names:
        t = time.perf_counter()
        grid[name] = [accuracy(name, s) for s in severities]
        seconds[name] = round(time.perf_counter() - t, 3)
        print(f"{name:18s} " + " ".join(f"{100 * a:6.2f}" for a in grid[name]) + f"   ({seconds[name]:.1f} s)")
    result = {"run": str(run_dir), "checkpoint": checkpoint, "epoch": ckpt["epoch"], "n": len(labels),
              "limit_test": args.limit_test, "seed": None if cifar_c else args.seed, "severities": severities,
              "corruptions": names, "clean_accuracy": clean, "accuracy": grid,
              "mean_accuracy": {n: round(float(np.mean(grid[n])), 6) for n in names},
              **mean_errors(grid, names), **source_record(cifar_c, names),
              "seconds": round(time.perf_counter() - t0, 3), "seconds_by_corruption": seconds,
              "images_per_second": round(len(labels) * len(severities) * len(names) / sum(seconds.values()), 1),
              "batch_size": args.batch_size, "precision": "bf16 autocast" if use_amp else "float32",
              "device": device_name(device), **provenance()}
    save_json(result, run_dir / "corruptions.json")
    print_summary(result, run_dir)
    return result


def mean_errors(grid, names):
    """corruptions.json's means: over every cell, the benchmark's 15 (or those evaluated), the extras."""
    bench = [n for n in names if n in CIFAR_C_STANDARD]
    extra = [n for n in names if n in CIFAR_C_EXTRA]
    return {"mean_corruption_error": mean_error(grid, names),
            "benchmark_corruptions": bench, "mean_corruption_error_benchmark": mean_error(grid, bench),
            "extra_corruptions": extra, "mean_corruption_error_extra": mean_error(grid, extra)}


def source_record(cifar_c, names):
    """Where the corrupted images came from, for corruptions.json."""
    if cifar_c is None:
        return {"source": "generated", "cifar_c": None}
    return {"source": "cifar-c", "cifar_c": {"dir": str(cifar_c.folder.resolve()),
                                              "files": ["labels.npy"] + [f"{n}.npy" for n in names],
                                              "missing_standard": cifar_c.missing}}


def print_summary(result, run):
    names, severities = result["corruptions"], result["severities"]
    print(f"{run / 'corruptions.json'}: clean accuracy {100 * result['clean_accuracy']:.2f}%, mean corruption "
          f"error {100 * result['mean_corruption_error']:.2f}% over {len(names)} "
          f"corruption{'s' * (len(names) > 1)} x {len(severities)} "
          f"severit{'ies' if len(severities) > 1 else 'y'}, {result['seconds']:.0f} s")
    for key in ("benchmark", "extra"):
        if result[f"{key}_corruptions"]:
            print(f"  {len(result[f'{key}_corruptions'])} {key} corruptions: mean corruption error "
                  f"{100 * result[f'mean_corruption_error_{key}']:.2f}%")




def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
