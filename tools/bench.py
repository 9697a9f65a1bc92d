"""Training-throughput benchmark: the reference-style input pipeline against train.py's own epoch.

    python tools/bench.py                       # ResNet-18, batch 128, on whatever device is present
    python tools/bench.py --arch simplecnn --images 20000 --json out.json

(a) reference style: a torchvision-style dataset of PIL images, PIL transforms (RandomCrop(32,
    padding=4), RandomHorizontalFlip, ToTensor, Normalize), a DataLoader, a plain float32 step;
(b) train.py: its own train_epoch (CutMix and label smoothing as the study's improved model, the
    loss and accuracy bookkeeping, the NaN check, the tail batch) on its device-resident loader, in
    float32, TF32 (CUDA), bf16 autocast (--amp, where native) and compiled (CUDA, or --compile).
Each (b) row runs one untimed epoch first (cuDNN autotuning, compilation: its seconds are printed
apart as "first epoch"), then times --epochs epochs of --images images; every timing waits for the
chosen device. The loaders alone, without a model, are timed beside them. A benchmark, not a test.
"""
import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

if __name__ == "__main__":  # run as a script: the project's modules are in the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train
from common import (ARCHS, DEVICE_HELP, DeviceLoader, arg_parser, at_least, autocast_mode, build_model,
                    channel_stats, cli_guard, cuda_ampere_or_newer, device_name, float_in, load_dataset,
                    resolve_device, save_json, synchronize)


class PILDataset(torch.utils.data.Dataset):
    """What torchvision's CIFAR datasets do per item: a PIL image, then per-image transforms."""

    def __init__(self, images_u8, labels, transform):
        self.images = images_u8.permute(0, 2, 3, 1).numpy()  # HWC, as torchvision stores CIFAR
        self.labels, self.transform = labels.tolist(), transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def reference_batches(ds, mean, std, batch_size, workers, device):
    """Endless batches of the reference pipeline, copied to the device as its loop would."""
    from torchvision import transforms as T
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(
        PILDataset(ds.train_x, ds.train_y, transform), batch_size=batch_size, shuffle=True,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    for x, y in itertools.chain.from_iterable(itertools.repeat(loader)):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def timed(fn, device):
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def reference_rates(arch, ds, mean, std, args, device):
    """(training images/s, loader-alone images/s) of the reference pipeline, --images per pass."""
    batches = reference_batches(ds, mean, std, args.batch_size, args.workers, device)
    steps = -(-args.images // args.batch_size)
    torch.manual_seed(0)
    model = build_model(arch, ds.num_classes).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()

    def train_pass(n_steps):
        for x, y in itertools.islice(batches, n_steps):
            loss = criterion(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    train_pass(min(steps, 5))  # warm-up: workers start, cuDNN autotunes
    seconds = timed(lambda: train_pass(steps), device)
    loader_seconds = timed(lambda: [b for b in itertools.islice(batches, steps)], device)
    n = steps * args.batch_size
    return n / seconds, n / loader_seconds


def epoch_rates(ds, args, device, precision, compile_mode):
    """train.py's epoch: (images/s over --epochs timed epochs, seconds of the untimed first epoch,
    of which compiling). precision: float32, tf32 or bf16."""
    flags = ["--arch", args.arch, "--batch-size", str(args.batch_size), "--dataset", "synthetic",
             "--cutmix-prob", str(args.cutmix_prob), "--label-smoothing", "0.1", "--device", str(device)]
    flags += {"bf16": ["--amp"], "tf32": ["--tf32"], "float32": []}[precision]
    flags += ["--compile", compile_mode] if compile_mode else []
    parser = train.build_parser()
    targs = parser.parse_args(flags)
    train.check_args(targs, parser)
    torch.manual_seed(0)
    cfg = dict(vars(targs), num_classes=ds.num_classes, mean=ds.mean, std=ds.std)
    subset = replace(ds, train_x=ds.train_x[:args.images], train_y=ds.train_y[:args.images])
    parts = train.training_parts(cfg, None, subset, device)

    def epoch():
        train.train_epoch(parts.state, parts.step_model, parts.loader, cfg, parts.criterion, parts.amp_context,
                          Path("."))
    first = timed(epoch, device)
    seconds = timed(lambda: [epoch() for _ in range(args.epochs)], device)
    return len(parts.loader.labels) * args.epochs / seconds, first, parts.state.compile_seconds


def loader_rate(ds, args, device):
    """Images/s of train.py's loader alone: crop, flip and normalise on the device, no model."""
    loader = DeviceLoader(ds.train_x[:args.images], ds.train_y[:args.images], args.batch_size, ds.mean,
                          ds.std, device, train=True, augment="crop-flip", generator=torch.Generator().manual_seed(0))
    [b for b in loader]
    return len(loader.labels) * args.epochs / timed(lambda: [[b for b in loader] for _ in range(args.epochs)], device)


def variants(device, compile_cpu):
    """(label, precision, compile mode) of the (b) rows this device can run."""
    cuda = device.type == "cuda"
    rows = [("float32", "float32", None)]
    if cuda and cuda_ampere_or_newer(device):
        rows.append(("TF32 (--tf32)", "tf32", None))
    if autocast_mode(device, True)[0]:
        rows.append(("bf16 autocast (--amp)", "bf16", None))
        if cuda or compile_cpu:
            rows.append(("bf16 + compile (--amp --compile)", "bf16", "default"))
        if cuda:
            rows.append(("bf16 + CUDA graphs (--compile reduce-overhead)", "bf16", "reduce-overhead"))
    elif compile_cpu:
        rows.append(("float32 + compile (--compile)", "float32", "default"))
    return rows


def run(args):
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.images = args.images or (10_000 if cuda else 3 * args.batch_size + 40)
    args.epochs = args.epochs or (3 if cuda else 1)
    ds = load_dataset(args.dataset, args.data_dir, download=False)
    ds.mean, ds.std = channel_stats(ds.train_x)
    if len(ds.train_y) < args.images:
        args.images = len(ds.train_y)
    print(f"{args.arch}, batch {args.batch_size}, {args.images:,} images x {args.epochs} timed epochs "
          f"(tail batch {args.images % args.batch_size or args.batch_size}), CutMix p={args.cutmix_prob}, "
          f"on {device_name(device)}, torch {torch.__version__}")
    print("| pipeline | images/s | s per 50k-image epoch | vs (a) | first epoch s (compiling s) |\n"
          "|---|---|---|---|---|")
    results = {"device": device_name(device), "torch": torch.__version__, "arch": args.arch,
               "batch_size": args.batch_size, "images": args.images, "rows": []}

    def row(label, ips, first="-", compiling=None):
        base = results["rows"][0]["images_per_second"] if results["rows"] else ips
        results["rows"].append(dict(pipeline=label, images_per_second=round(ips, 1),
                                    first_epoch_seconds=first, compile_seconds=compiling))
        first_text = first if first == "-" else f"{first:.1f}" + (f" ({compiling:.1f})" if compiling else "")
        print(f"| {label} | {ips:,.0f} | {50000 / ips:.1f} | {ips / base:.2f}x | {first_text} |", flush=True)
    ref, ref_loader = reference_rates(args.arch, ds, ds.mean, ds.std, args, device)
    row(f"(a) reference: PIL + DataLoader ({args.workers} workers), float32", ref)
    row("(a) its loader alone", ref_loader)
    row("(b) train.py's loader alone", loader_rate(ds, args, device))
    for label, precision, mode in variants(device, args.compile):
        ips, first, compiling = epoch_rates(ds, args, device, precision, mode)
        row(f"(b) train.py epoch, {label}", ips, round(first, 2), round(compiling, 2) if mode else None)
    if args.json:
        save_json(results, args.json)
    return results


def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--arch", default="resnet18", choices=ARCHS, help="network")
    p.add_argument("--dataset", default="synthetic", help="any dataset train.py accepts")
    p.add_argument("--data-dir", default="data", help="where archives live")
    p.add_argument("--batch-size", type=at_least(1), default=128, help="training images per step")
    p.add_argument("--images", type=at_least(1), default=None,
                   help="training images per timed epoch (default 10,000 on CUDA, 3 batches + 40 elsewhere)")
    p.add_argument("--epochs", type=at_least(1), default=None,
                   help="timed epochs per row (default 3 on CUDA, 1 elsewhere)")
    p.add_argument("--cutmix-prob", type=float_in(0, 1), default=0.5,
                   help="as train.py's (the study's improved model)")
    p.add_argument("--workers", type=at_least(0), default=4, help="DataLoader workers for the reference")
    p.add_argument("--compile", action="store_true", help="also time compiled rows off CUDA (slow to compile)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    return p


def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
