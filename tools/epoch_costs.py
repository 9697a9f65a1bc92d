"""Where a training epoch's host time goes: operators per step and the per-epoch fixed seconds.

    python tools/epoch_costs.py                          # ResNet-18, batch 128, synthetic, CPU
    python tools/epoch_costs.py --root /tmp/before       # the same measurement of another checkout

A GPU waits for the host when a step launches more operators than the GPU needs time to run, and
per-epoch costs (checkpoints, figures, the test pass) that are small beside a CPU epoch of minutes
dominate a GPU epoch of seconds. This prints, for train.py's own epoch code (train_epoch, the test
pass, save_epoch, on a few batches):
  - the operators the PyTorch profiler records per training step (every op, nested ones included);
  - the seconds of a test pass and of saving an epoch (a new best and an ordinary epoch).
It uses only train.py's and common.py's long-standing entry points, so that --root can point at an
older checkout and the two runs print comparable figures. A benchmark, not a test.
"""
import argparse
import contextlib
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                   help="checkout whose train.py and common.py are measured")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="training steps per epoch measured")
    p.add_argument("--profile-steps", type=int, default=3, help="steps recorded by the profiler")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each timed fixed cost")
    p.add_argument("--cutmix-prob", type=float, default=0.5)
    return p.parse_args(argv)


def setup(args):
    """train.py's state, loaders and criterion as its run() builds them, on synthetic data."""
    sys.path.insert(0, args.root)
    import torch
    train, common = importlib.import_module("train"), importlib.import_module("common")
    n = args.batch_size * args.steps
    parser = train.build_parser()
    targs = parser.parse_args(
        ["--arch", args.arch, "--dataset", "synthetic", "--device", "cpu", "--batch-size",
         str(args.batch_size), "--cutmix-prob", str(args.cutmix_prob), "--label-smoothing", "0.1",
         "--limit-train", str(n), "--limit-test", "256", "--epochs", "50"])
    train.check_args(targs, parser)
    device = common.resolve_device("cpu")
    ds = common.load_dataset("synthetic", limit_train=n, limit_test=256)
    cfg = dict(vars(targs), num_classes=ds.num_classes, mean=[0.5] * 3, std=[0.25] * 3, epochs=50)
    common.seed_everything(0)
    state = train.build_state(cfg, None, device)

    def loader(k=None):
        return common.DeviceLoader(ds.train_x[:k], ds.train_y[:k], args.batch_size, cfg["mean"], cfg["std"],
                                   device, train=True, augment="crop-flip", generator=state.data_gen)
    test_loader = common.DeviceLoader(ds.test_x, ds.test_y, 1024, cfg["mean"], cfg["std"], device)
    return torch, train, state, cfg, loader, test_loader


def median_seconds(fn, repeats):
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main(argv=None):
    args = parse(argv)
    torch, train, state, cfg, loader, test_loader = setup(args)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    run_dir = Path(tempfile.mkdtemp())

    def epoch(batches):
        train.train_epoch(state, state.model, batches, cfg, criterion, contextlib.nullcontext, run_dir)
    full = loader()
    epoch(full)  # warm-up: first-call allocations
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        epoch(loader(args.batch_size * args.profile_steps))
    ops = sum(e.count for e in prof.key_averages()) / args.profile_steps
    step_s = median_seconds(lambda: epoch(full), args.repeats) / args.steps
    test_s = median_seconds(lambda: train.evaluate_loader(state.model, test_loader, torch.nn.CrossEntropyLoss(),
                                                          contextlib.nullcontext), args.repeats)
    state.epoch, state.best_acc = 1, 0.5
    state.history = [dict(epoch=e, train_loss=1.0, train_acc=0.5, test_loss=1.0, test_acc=0.5, lr=0.1,
                       seconds=1.0) for e in range(1, 11)]
    save_best = median_seconds(lambda: train.save_epoch(state, cfg, run_dir, True), args.repeats)
    save_plain = median_seconds(lambda: train.save_epoch(state, cfg, run_dir, False), args.repeats)
    print(f"{args.root}: {args.arch}, batch {args.batch_size}, CutMix p={args.cutmix_prob}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"profiler ops per training step: {ops:.0f}")
    print(f"training step: {step_s:.3f} s")
    print(f"test pass of 256 images: {test_s:.3f} s")
    print(f"save_epoch, new best: {save_best:.3f} s; ordinary epoch: {save_plain:.3f} s")
    return dict(ops_per_step=ops, step_s=step_s, test_s=test_s, save_best_s=save_best, save_plain_s=save_plain)


if __name__ == "__main__":
    main()
