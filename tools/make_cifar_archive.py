"""Write a CIFAR archive in the official python format, with generated pixels.

No complete CIFAR-100 is available offline here, so this exercises the real CIFAR-100 path (archive
parsing, 100 classes, 20 superclasses, the reports) at any size, up to the official one:
    python tools/make_cifar_archive.py data/synthetic-cifar100.tar.gz      # 50,000 + 10,000
    python train.py --dataset data/synthetic-cifar100.tar.gz ...

--pixels shapes (the default) makes the classes learnable: CIFAR-100's class k is the shape
SHAPES[k // 10] in the colour HUES[k % 10], and each shape's two superclasses split its hues in
half, so the fine-grained confusions stay within a superclass as they do on CIFAR-100. CIFAR-10's
class k is the shape SHAPES[k] in a random colour. --pixels noise gives uniform random pixels.
"""
import argparse
import colorsys
import io
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

if __name__ == "__main__":  # run as a script: common.py is in the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import ARCHIVES, UserError, at_least, atomic_write, cli_guard  # noqa: E402
from synthetic import SHAPES, draw_objects  # noqa: E402

HUES = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "blue", "purple", "magenta")


def cifar100_names():
    fine = [f"{shape}-{hue}" for shape in SHAPES for hue in HUES]
    coarse = [f"{shape}-{half}" for shape in SHAPES for half in ("red-green", "teal-magenta")]
    return fine, coarse


def fine_to_coarse(y):
    return 2 * (y // 10) + (y % 10) // 5


def shape_pixels(y, kind, g):
    """Images whose class is readable from the object: uint8 (n, 3072) in the official row order."""
    if kind == "cifar10":
        images, _ = draw_objects(torch.as_tensor(y), g)
    else:
        hue = torch.as_tensor(y % 10, dtype=torch.float32) / 10
        # Saturation and brightness vary, so the hue alone names the colour.
        sat = 0.65 + 0.35 * torch.rand(len(y), generator=g)
        val = 0.6 + 0.4 * torch.rand(len(y), generator=g)
        colour = torch.tensor([colorsys.hsv_to_rgb(*c) for c in
                               torch.stack([hue, sat, val], 1).tolist()]).reshape(-1, 3)
        images, _ = draw_objects(torch.as_tensor(y // 10), g, colour=colour)
    return images.reshape(len(y), 3072).numpy()


def make_split(n, kind, pixels, rng, g, chunk=10000):
    num_classes = 100 if kind == "cifar100" else 10
    y = rng.integers(0, num_classes, n)
    if pixels == "noise":
        return rng.integers(0, 256, (n, 3072), dtype=np.uint8), y
    # In chunks: the float images of 60,000 at once would take about 2.5 GB.
    parts = [shape_pixels(y[i:i + chunk], kind, g) for i in range(0, n, chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, 3072), np.uint8), y


def add_pickle(tar, name, obj):
    data = pickle.dumps(obj, protocol=4)
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_archive(path, kind, n_train, n_test, seed=0, pixels="noise", level=6):
    """Write the archive atomically; return (train_x, train_y, test_x, test_y) as stored."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    tr_x, tr_y = make_split(n_train, kind, pixels, rng, g)
    te_x, te_y = make_split(n_test, kind, pixels, rng, g)

    def write(f):
        with tarfile.open(fileobj=f, mode="w:gz", compresslevel=level) as tar:
            folder = ARCHIVES[kind][2]
            if kind == "cifar100":
                fine, coarse = cifar100_names()
                for name, x, y in (("train", tr_x, tr_y), ("test", te_x, te_y)):
                    add_pickle(tar, f"{folder}/{name}", {
                        "data": x, "fine_labels": y.tolist(),
                        "coarse_labels": fine_to_coarse(y).tolist(),
                        "filenames": [f"{name}_{i}.png" for i in range(len(y))]})
                add_pickle(tar, f"{folder}/meta", {"fine_label_names": fine,
                                                   "coarse_label_names": coarse})
            else:
                for i, part in enumerate(np.array_split(np.arange(n_train), 5)):
                    add_pickle(tar, f"{folder}/data_batch_{i + 1}",
                               {"data": tr_x[part], "labels": tr_y[part].tolist()})
                add_pickle(tar, f"{folder}/test_batch", {"data": te_x, "labels": te_y.tolist()})
                add_pickle(tar, f"{folder}/batches.meta",
                           {"label_names": [f"{s}" for s in SHAPES]})
    atomic_write(path, write)
    return tr_x, tr_y, te_x, te_y


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="the .tar.gz to write")
    p.add_argument("--kind", default="cifar100", choices=sorted(ARCHIVES))
    p.add_argument("--n-train", type=at_least(5), default=50000)  # CIFAR-10 has 5 training batches
    p.add_argument("--n-test", type=at_least(1), default=10000)
    p.add_argument("--pixels", default="shapes", choices=("shapes", "noise"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    return p


def run(args):
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists; use --overwrite to replace it")
    if out.is_dir():
        raise UserError(f"{out} is a folder; give the path of the .tar.gz to write")
    try:
        write_archive(out, args.kind, args.n_train, args.n_test, args.seed, args.pixels)
    except OSError as e:
        raise UserError(f"could not write {out}: {e.strerror or e}") from None
    print(f"wrote {out}: {args.kind}, {args.n_train} train + {args.n_test} test images "
          f"({args.pixels}), {out.stat().st_size / 1e6:.1f} MB")


def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
