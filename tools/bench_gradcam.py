"""Grad-CAM throughput: cam.grad_cam against pytorch-grad-cam's GradCAM, same maps required.

    pip install -r requirements-bench.txt      # grad-cam (pytorch-grad-cam), benchmark only
    python tools/bench_gradcam.py                    # CPU or GPU, batch 64, random-init models
    python tools/bench_gradcam.py --batch-size 256 --repeats 10

For each model and layer: images/s of a plain no-grad forward pass (the floor: no Grad-CAM can be
faster) and of both implementations on the same model, batch, targets and device (median over
--repeats timed calls after a warm-up), the speedup, and the smallest per-image Pearson
correlation between the two maps (pytorch-grad-cam min-max scales each map, cam.py divides
by the maximum: an affine difference, so the correlation should be 1).
A benchmark, not a test.
"""
import statistics
import sys
import time
from pathlib import Path

import torch

if __name__ == "__main__":  # run as a script: common.py is in the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (DEVICE_HELP, UserError, arg_parser, at_least, build_model, cli_guard, device_name,
                    resolve_device)
from cam import grad_cam

CASES = (("resnet18", "layer4"), ("resnet18", "layer3"), ("simplecnn", "relu3"))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(fn, n_images, device, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return n_images / statistics.median(times)


def min_correlation(a, b):
    """Smallest per-image correlation of two (N, H, W) map stacks; constant maps are skipped."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    keep = (a.std(1) > 0) & (b.std(1) > 0)
    a, b = a[keep] - a[keep].mean(1, keepdim=True), b[keep] - b[keep].mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    return r.min().item(), int((~keep).sum())


def run(args):
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        raise UserError("pytorch-grad-cam is not installed; "
                        "pip install -r requirements-bench.txt") from None
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    x = x.contiguous(memory_format=torch.channels_last)  # as the project's loaders deliver them
    print(f"device: {device_name(device)}; batch {args.batch_size} of 3x32x32, {args.num_classes} "
          f"classes, random-init models in eval mode, median of {args.repeats} calls")
    header = (f"{'model':<10} {'layer':<7} {'forward only':>12} {'ours img/s':>11} "
              f"{'pytorch-grad-cam img/s':>23} {'speedup':>8} {'min corr':>9}")
    print(header)
    print("-" * len(header))
    rows = []
    for arch, layer_name in CASES:
        model = build_model(arch, args.num_classes).to(device, memory_format=torch.channels_last).eval()
        layer = dict(model.named_modules())[layer_name]
        with torch.no_grad():
            targets = model(x).argmax(1)
        ours = grad_cam(model, layer, x, targets)
        class_targets = [ClassifierOutputTarget(int(t)) for t in targets]
        with GradCAM(model=model, target_layers=[layer]) as cam:
            theirs = torch.from_numpy(cam(input_tensor=x, targets=class_targets))
            theirs_rate = images_per_second(lambda: cam(input_tensor=x, targets=class_targets),
                                            len(x), device, args.repeats)
        ours_rate = images_per_second(lambda: grad_cam(model, layer, x, targets), len(x), device,
                                      args.repeats)
        with torch.no_grad():  # the floor: no Grad-CAM can be faster than one forward pass
            forward_rate = images_per_second(lambda: model(x), len(x), device, args.repeats)
        corr, constant = min_correlation(ours.cpu(), theirs)
        row = dict(model=arch, layer=layer_name, forward=forward_rate, ours=ours_rate,
                   theirs=theirs_rate, speedup=ours_rate / theirs_rate, min_corr=corr,
                   constant_maps=constant)
        rows.append(row)
        note = f"  ({constant} constant maps skipped)" if constant else ""
        print(f"{arch:<10} {layer_name:<7} {forward_rate:>12.1f} {ours_rate:>11.1f} "
              f"{theirs_rate:>23.1f} {row['speedup']:>7.2f}x {corr:>9.6f}{note}", flush=True)
    return rows


def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--batch-size", type=at_least(1), default=64, help="images per Grad-CAM call")
    p.add_argument("--num-classes", type=int, default=100, help="outputs of the random-init heads "
                   "(the main study's CIFAR-100)")
    p.add_argument("--repeats", type=at_least(1), default=5, help="timed calls; the median is printed")
    p.add_argument("--seed", type=int, default=0, help="seeds the models and the images")
    return p


def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
