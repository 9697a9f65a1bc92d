"""Train the recipe with torchvision's stock pipeline, to check train.py against an independent one.

    OMP_NUM_THREADS=1 python tools/reference_run.py --data data/cifar10-jpeg --epochs 2 \
        --out /tmp/ref-s42.csv

What the widely copied CIFAR training scripts do, and nothing of this project's data path:
torchvision's ImageFolder decodes the JPEGs with PIL, per-image RandomCrop(32, padding=4) and
RandomHorizontalFlip, ToTensor and Normalize with the usual CIFAR-10 constants, a shuffling
DataLoader, float32 throughout, SGD (momentum 0.9, weight decay 5e-4), MultiStepLR. The model is
common.build_model's adapted ResNet-18 (the protocol's model; its 4 lines are tested). If train.py's
per-epoch curve on the same data lies outside this one's seed-to-seed spread, train.py's data path,
augmentation or precision is at fault; if not, the recipe itself gives the curve.
A measurement, not a test: it writes one CSV row per epoch (train.py's history.csv columns).
"""
import csv
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

if __name__ == "__main__":  # run as a script: common.py is in the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import UserError, arg_parser, atomic_write, build_model, cli_guard
from train import HISTORY_FIELDS

# The constants the common CIFAR-10 scripts copy (kuangliu/pytorch-cifar and its descendants).
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--data", required=True, help="an ImageFolder root with train/ and test/")
    p.add_argument("--arch", default="resnet18", help="a common.build_model architecture")
    p.add_argument("--epochs", type=int, default=2, help="epochs to train")
    p.add_argument("--milestones", type=int, nargs="*", default=[25, 40], help="epochs where lr drops 10x")
    p.add_argument("--lr", type=float, default=0.1, help="initial SGD learning rate")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size")
    p.add_argument("--seed", type=int, default=42, help="torch seed: initial weights, order, augmentation")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--limit-train", type=int, default=None, help="a seeded random subset of N training images (tests)")
    p.add_argument("--out", required=True, help="CSV to write (refused if it exists)")
    return p


def loaders(root, batch_size, workers, limit_train, seed):
    from torchvision import datasets, transforms as T
    norm = [T.ToTensor(), T.Normalize(MEAN, STD)]
    train = datasets.ImageFolder(root / "train", T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] + norm))
    test = datasets.ImageFolder(root / "test", T.Compose(norm))
    if train.classes != test.classes:
        raise UserError(f"{root}: train/ and test/ have different class folders")
    if limit_train:
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:limit_train]
        train = torch.utils.data.Subset(train, keep.tolist())
    make = lambda ds, shuffle: torch.utils.data.DataLoader(  # noqa: E731
        ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers, persistent_workers=workers > 0)
    return make(train, True), make(test, False), len(test.classes)


def run(args):
    root, out = Path(args.data), Path(args.out)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise UserError(f"{root} has no train/ and test/ folders; pass an ImageFolder root")
    if out.exists():
        raise UserError(f"{out} exists; remove it or choose another --out")
    torch.manual_seed(args.seed)
    train_loader, test_loader, n_classes = loaders(root, args.batch_size, args.workers,
                                                   args.limit_train, args.seed)
    model = build_model(args.arch, n_classes)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, args.milestones, 0.1)
    criterion, rows = nn.CrossEntropyLoss(), []
    for epoch in range(1, args.epochs + 1):
        t0, lr = time.perf_counter(), opt.param_groups[0]["lr"]
        model.train()
        loss_sum = correct = seen = 0
        for x, y in train_loader:
            out_ = model(x)
            loss = criterion(out_, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += (out_.argmax(1) == y).sum().item()
            seen += len(y)
        sched.step()
        t1 = time.perf_counter()
        model.eval()
        t_loss = t_correct = t_seen = 0
        with torch.no_grad():
            for x, y in test_loader:
                out_ = model(x)
                t_loss += criterion(out_, y).item() * len(y)
                t_correct += (out_.argmax(1) == y).sum().item()
                t_seen += len(y)
        rows.append([epoch, round(loss_sum / seen, 6), round(correct / seen, 6),
                     round(t_loss / t_seen, 6), round(t_correct / t_seen, 6), lr,
                     round(time.perf_counter() - t0, 3), round(t1 - t0, 3),
                     round(time.perf_counter() - t1, 3), 0.0])  # no checkpoint saved: 0 s
        print(dict(zip(HISTORY_FIELDS, rows[-1])), flush=True)
        # Rewritten whole each epoch, so an interrupted run keeps the epochs it finished.
        atomic_write(out, lambda f: write_rows(f, rows), mode="w")


def write_rows(f, rows):
    w = csv.writer(f, lineterminator="\n")
    w.writerow(HISTORY_FIELDS)
    w.writerows(rows)


def main(argv=None):
    cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
