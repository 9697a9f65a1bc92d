"""Does bf16 autocast change what training learns? Continue one checkpoint both ways and compare.

    python tools/amp_check.py --checkpoint runs/resnet18-cifar10-jpeg/baseline/last.pt \
        --limit-train 10000 --limit-test 2000 --seeds 1 2

From a train.py checkpoint (weights, optimizer and learning-rate schedule as saved), train one
pass over a fixed training subset with the run's own recipe, once in float32 and once with bf16
autocast for each seed (the seed sets the order and the augmentation of the pass, identical for
the two precisions), then measure the test accuracy in float32. The float32 runs of different
seeds give the run-to-run spread that a precision effect must be compared with. Starting from a
trained checkpoint measures the precision where a model learns, which a few epochs from scratch
on a subset cannot: those stay near chance at the recipe's learning rate of 0.1.
A measurement, not a test: it prints a table and writes nothing unless --out is given.
"""
import contextlib
import copy
import sys
import time
from pathlib import Path

import torch.nn as nn

if __name__ == "__main__":  # run as a script: train.py and common.py are in the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (DEVICE_HELP, DeviceLoader, UserError, arg_parser, at_least, autocast, autocast_mode,
                    cli_guard, device_name, load_checkpoint, resolve_device, save_json)
from contract import dataset_from_config
from train import build_state, evaluate_loader, train_epoch


def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--checkpoint", required=True, help="a train.py checkpoint (last.pt or best.pt)")
    p.add_argument("--limit-train", type=at_least(1), default=10000, help="training images of the one pass")
    p.add_argument("--limit-test", type=at_least(1), default=2000, help="test images to measure on")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="order and augmentation seeds")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--data-dir", default=None, help="overrides the run's --data-dir")
    p.add_argument("--out", default=None, help="also write the table as JSON here")
    return p


def float32_accuracy(model, test_loader):
    """Accuracy on the test subset, always in float32: the precision under test is training's."""
    return evaluate_loader(model, test_loader, nn.CrossEntropyLoss(), contextlib.nullcontext)[1]


def one_pass(ckpt, cfg, ds, test_loader, device, seed, bf16):
    """Test accuracy (float32) after one pass from the checkpoint, and the pass's images/s."""
    # A copy: the optimizer adopts the checkpoint's momentum tensors as they are and updates them
    # in place, which would start the next pass from this one's end.
    state = build_state(cfg, copy.deepcopy(ckpt), device)
    state.data_gen.manual_seed(seed)
    loader = DeviceLoader(ds.train_x, ds.train_y, cfg["batch_size"], cfg["mean"], cfg["std"], device,
                          train=True, augment=cfg["augment"], generator=state.data_gen)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    t0 = time.perf_counter()
    train_loss, train_acc, seen = train_epoch(state, state.model, loader, cfg, criterion,
                                              lambda: autocast(device, bf16), Path("(amp_check)"))
    speed = seen / (time.perf_counter() - t0)
    test_acc = float32_accuracy(state.model, test_loader)
    return dict(seed=seed, precision="bf16 autocast" if bf16 else "float32", train_loss=round(train_loss, 6),
                train_acc=round(train_acc, 6), test_acc=round(test_acc, 6), images_per_second=round(speed, 1))


def run(args):
    device = resolve_device(args.device)
    use_amp, note = autocast_mode(device, True, fallback="there is nothing to compare")
    if not use_amp:
        raise UserError(note)
    ckpt = load_checkpoint(args.checkpoint)
    if not isinstance(ckpt, dict) or not {"config", "optimizer", "scheduler", "rng"} <= set(ckpt):
        raise UserError(f"{args.checkpoint} is not a train.py checkpoint (it lacks the optimizer "
                        "state and config a continuation needs)")
    cfg = dict(ckpt["config"], limit_train=args.limit_train, limit_test=args.limit_test)
    ds = dataset_from_config(cfg, args.data_dir)
    test_loader = DeviceLoader(ds.test_x, ds.test_y, cfg["eval_batch_size"], cfg["mean"], cfg["std"], device)
    start = float32_accuracy(build_state(cfg, ckpt, device).model, test_loader)
    print(f"{args.checkpoint}: epoch {ckpt['epoch']}, lr {ckpt['optimizer']['param_groups'][0]['lr']:g}, "
          f"test accuracy {100 * start:.2f}% on {len(ds.test_y)} images; one pass over {len(ds.train_y)} "
          f"training images on {device_name(device)}", flush=True)
    rows = []
    for seed in args.seeds:
        for bf16 in (False, True):
            rows.append(one_pass(ckpt, cfg, ds, test_loader, device, seed, bf16))
            r = rows[-1]
            print(f"seed {seed} {r['precision']:>13}: test {100 * r['test_acc']:.2f}% "
                  f"(train loss {r['train_loss']:.4f}, {r['images_per_second']:.0f} img/s)", flush=True)
    fp32 = [r["test_acc"] for r in rows if r["precision"] == "float32"]
    diffs = [b["test_acc"] - a["test_acc"] for a, b in zip(rows[::2], rows[1::2])]
    print(f"float32 spread over seeds: {100 * (max(fp32) - min(fp32)):.2f} points; "
          f"bf16 minus float32 per seed: {', '.join(f'{100 * d:+.2f}' for d in diffs)} points")
    result = dict(checkpoint=str(args.checkpoint), epoch=ckpt["epoch"], start_test_acc=start,
                  n_train=len(ds.train_y), n_test=len(ds.test_y), device=device_name(device), rows=rows)
    if args.out:
        save_json(result, args.out)
    return result


def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
