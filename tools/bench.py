"""Training-throughput benchmark: the reference-style input pipeline against the project's.

    python tools/bench.py                       # ResNet-18, batch 128, on whatever device is present
    python tools/bench.py --arch simplecnn --steps 20

(a) reference style: a torchvision-style dataset that returns PIL images, PIL transforms
    (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize) and a DataLoader;
(b) this project: uint8 data resident on the device, batched crop+flip there (DeviceLoader),
    in float32 contiguous, float32 channels_last (what train.py does) and with --amp (bf16
    autocast: on CUDA, or on a CPU with native bf16); on CUDA also --amp --compile.
Prints images/s, seconds per 50,000-image epoch and the ratios to (a) and to (b) channels_last.
A benchmark, not a test.
"""
import itertools
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

if __name__ == "__main__":  # run as a script: common.py is in the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (ARCHS, DEVICE_HELP, DeviceLoader, arg_parser, autocast, autocast_mode,
                    build_model, channel_stats, cli_guard, device_name, load_dataset,
                    resolve_device)


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
    from torchvision import transforms as T
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(
        PILDataset(ds.train_x, ds.train_y, transform), batch_size=batch_size, shuffle=True,
        num_workers=workers, pin_memory=device.type == "cuda", drop_last=True,
        persistent_workers=workers > 0)
    for x, y in itertools.chain.from_iterable(itertools.repeat(loader)):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def project_batches(ds, mean, std, batch_size, device):
    loader = DeviceLoader(ds.train_x, ds.train_y, batch_size, mean, std, device, train=True,
                          augment="crop-flip", generator=torch.Generator().manual_seed(0))
    while True:
        yield from (b for b in loader if len(b[1]) == batch_size)


def time_training(arch, num_classes, batches, device, steps, warmup, amp=False, compile=False,
                  channels_last=False):
    """Images/s of SGD training steps fed by `batches`, after `warmup` untimed steps."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    model.train()
    n = 0
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, n = time.perf_counter(), 0
        if i == warmup + steps:
            break
        with autocast(device, amp):
            loss = criterion(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def run(args):
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.steps = args.steps or (50 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (20 if cuda else 1)
    ds = load_dataset(args.dataset, args.data_dir, download=False)
    mean, std = channel_stats(ds.train_x)
    cases = [("(a) reference: PIL + DataLoader", dict(batches=reference_batches(
        ds, mean, std, args.batch_size, args.workers, device)))]
    variants = [("(b) device-resident, float32 contiguous", dict(channels_last=False)),
                ("(b) device-resident, channels_last", {})]
    use_amp, note = autocast_mode(device, True, "no --amp row")
    if use_amp:
        variants.append(("(b) + bf16 autocast (--amp)", dict(amp=True)))
    if use_amp and cuda:
        variants.append(("(b) + bf16 autocast + compile", dict(amp=True, compile=True)))
    for label, extra in variants:
        kw = {"channels_last": True, **extra}
        cases.append((label, dict(batches=project_batches(ds, mean, std, args.batch_size, device),
                                  **kw)))
    print(f"{args.arch}, batch {args.batch_size}, {args.steps} timed steps after {args.warmup} "
          f"warm-up, on {device_name(device)}, torch {torch.__version__}")
    if note:
        print(note)
    print("| pipeline | images/s | s per 50k-image epoch | vs (a) | vs (b) channels_last |\n"
          "|---|---|---|---|---|")
    results = {}
    for label, kw in cases:
        ips = time_training(args.arch, ds.num_classes, device=device, steps=args.steps,
                            warmup=args.warmup, **kw)
        results[label] = ips
        base = results[cases[0][0]]
        cl = results.get("(b) device-resident, channels_last")
        vs_cl = f"{ips / cl:.2f}x" if cl else "-"
        print(f"| {label} | {ips:,.0f} | {50000 / ips:.1f} | {ips / base:.2f}x | {vs_cl} |",
              flush=True)
    return results


def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--arch", default="resnet18", choices=ARCHS, help="network")
    p.add_argument("--dataset", default="synthetic", help="any dataset train.py accepts")
    p.add_argument("--data-dir", default="data", help="where archives live")
    p.add_argument("--batch-size", type=int, default=128, help="training images per step")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 50 on CUDA, 3 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 20 on CUDA, 1 on CPU)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers for the reference")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if (args.steps is not None and args.steps < 1) or args.batch_size < 1 or (args.warmup or 0) < 0:
        p.error("--steps and --batch-size must be at least 1, --warmup at least 0")
    return cli_guard(run, args)


if __name__ == "__main__":
    main()
