"""Faithfulness of Grad-CAM maps: deletion and insertion curves (Petsiuk et al. 2018, RISE).

    python faithfulness.py --run runs/baseline                     # failure cases + 500 test images
    python faithfulness.py --run runs/cutmix --cases runs/baseline/failures.json --layer layer3

Deletion: the pixels a map ranks highest are replaced first, in --steps equal steps, by the
per-channel dataset mean (0 after normalisation), while the explained class's softmax probability is
tracked; a faithful map makes it fall fast (low AUC). Insertion: from a blurred copy of the image
the highest-ranked pixels are put back first; a faithful map makes it rise fast (high AUC).
AUC is the trapezoid area on [0, 1]. The same procedure with a seeded random pixel order is the
yardstick. Explained classes: this run's prediction (a random test sample and the failure cases of
failures.json, which may come from another run of the same test set) and the cases' true class.
Next to it, the model-parameter randomisation test (Adebayo et al. 2018): the maps of the first 64
sample images as the network is re-initialised from the head down; maps that depend on what the
network learned change a lot. Needs predictions.npz and metrics.json (evaluate.py). Writes
runs/<name>/faithfulness.json and .png (deletion, insertion and randomisation panels).
"""
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.functional import gaussian_blur

from cam import find_layer, grad_cam, layer_name_or_default
from common import (DEVICE_HELP, UserError, arg_parser, at_least, cli_guard, device_name, normalize,
                    provenance, pyplot, resolve_device, save_figure, save_json)
from contract import checkpoint_words, load_analysis, read_cases
from shapes import conform

# RISE's reference code blurs with an 11x11 Gaussian kernel, sigma 5. On 32x32 images it spans a
# third of the image: shapes are gone, only the coarse colour layout survives, which is the point
# of a start that "knows nothing" yet is not far from natural images. Reflect padding (torchvision)
# instead of RISE's zero padding, so the border is blurred rather than pulled towards the mean.
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0


#### Model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps")

RANDOMISED_IMAGES = 64  # the first of the sample: rank correlations over 64 images vary little


def average_ranks(values):
    """Ranks 0..n-1 of a 1-D array, tied values sharing their mean rank (as Spearman's rho needs:
    Grad-CAM's ReLU leaves many pixels at exactly 0)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2)[inverse]


def spearman(a, b):
    """Spearman's rank correlation of two maps; None where either is constant (an empty map)."""
    ra, rb = average_ranks(a.ravel()), average_ranks(b.ravel())
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def reinitialise(module, generator):
    """Re-initialise `module` in place (reset_parameters of it and its submodules, BatchNorm's
    running statistics included) with numbers drawn from the CPU `generator`, which advances.

    reset_parameters takes no generator: it draws from the global one of the parameters' device,
    so on a GPU the same seed would give other weights (CUDA's generator is another algorithm)
    and other faithfulness.json numbers than on a CPU; and torch.manual_seed, the usual way to seed
    it, seeds every CUDA generator too, which fork_rng(devices=[]) does not restore. So a CPU copy
    is re-initialised, the CPU default generator alone holding `generator`'s state meanwhile, and
    its weights are copied back: the same numbers on every device, and no global generator is
    left changed. On a CPU the draws are those of reset_parameters in place, number for number."""
    cpu = deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.set_state(generator.get_state())
        for m in cpu.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        generator.set_state(torch.default_generator.get_state())
    module.load_state_dict(cpu.state_dict())


def randomisation_test(model, layer_name, images, targets, seed=0, trained=None):
    """Cascading randomisation: re-initialise the network's parameterised top-level modules from
    the output down (the head first), cumulatively, and after each stage measure how far the
    Grad-CAM maps of `images` for `targets` (fixed: the trained model's classes) moved from the
    trained model's maps. A method that explains what the network learned gives maps that change
    a lot (correlation near 0); one that mostly echoes the input (edges) keeps correlating.
    The model itself is not changed: the stages are applied to a copy. trained: the trained
    model's maps of these images, if already computed (measure's sample has them)."""
    arch = type(model).__name__
    if trained is None:
        trained = grad_cam(model, find_layer(model, layer_name, arch), images, targets).cpu()
    trained = np.asarray(trained)
    randomised = deepcopy(model)
    layer = find_layer(randomised, layer_name, arch)  # the same module, re-initialised in place
    stages = [n for n, m in reversed(list(randomised.named_children()))
              if any(True for _ in m.parameters())]
    result = {"n": len(images), "explained": "the trained model's predicted class",
              "similarity": "Spearman rank correlation with the trained model's map", "stages": [],
              "spearman_mean": [], "spearman_median": [], "undefined": []}
    # One CPU stream for all stages, seeded by `seed` alone: the same weights on every device.
    generator = torch.Generator().manual_seed(seed)
    for name in stages:
        reinitialise(getattr(randomised, name), generator)
        maps = grad_cam(randomised, layer, images, targets).cpu().numpy()
        rho = [spearman(a, b) for a, b in zip(trained, maps)]
        known = [r for r in rho if r is not None]
        result["stages"].append(name)
        result["spearman_mean"].append(round(float(np.mean(known)), 4) if known else None)
        result["spearman_median"].append(round(float(np.median(known)), 4) if known else None)
        result["undefined"].append(len(rho) - len(known))
    return result


#### Deletion and insertion

def blurred(images):
    """The insertion curve's starting image. Blurring commutes with the per-channel affine
    normalisation (the kernel sums to 1), so normalised images can be blurred directly."""
    return gaussian_blur(images, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])


def pixel_ranks(maps):
    """(N, H*W) rank of each pixel, 0 = most important. A stable sort breaks ties by raster
    order (top-left first), so an all-zero map gives the same order on every device and run."""
    order = maps.flatten(1).float().argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


@torch.no_grad()
def deletion_insertion(model, images, maps, targets, steps=16, generator=None, batch_size=1024):
    """Deletion and insertion curves of normalised images (N, C, H, W) on the model's device.

    maps (N, H, W): higher = more important; None ranks the pixels at random, drawn on the CPU
    from `generator`, so a seed gives the same order on every device. targets (N,): the class
    whose softmax probability is tracked. Step k of `steps` has round(k/steps * H*W) pixels
    (all channels) changed, so each curve has steps+1 points: deletion[:, 0] is the original
    probability, deletion[:, -1] that of the all-mean image; insertion runs from the blurred
    image to the original. Returns CPU tensors: fractions (steps+1,), deletion and insertion
    (N, steps+1), deletion_auc and insertion_auc (N,). Neither the input nor the model's mode
    changes; at most batch_size perturbed images go through the model at a time.
    """
    n, _, h, w = images.shape
    if maps is None:
        maps = torch.rand(n, h, w, generator=generator)
    if maps.shape != (n, h, w):
        raise ValueError(f"maps must be (N, H, W) = {(n, h, w)}, got {tuple(maps.shape)}")
    targets = torch.as_tensor(targets, device=images.device).reshape(-1)
    counts = torch.round(torch.linspace(0, h * w, steps + 1, dtype=torch.float64)).long()
    ranks = pixel_ranks(maps.to(images.device)).view(n, 1, 1, h, w)
    changed = ranks < counts.to(images.device).view(1, -1, 1, 1, 1)  # (N, K+1, 1, H, W)
    chunk = max(1, batch_size // (2 * (steps + 1)))  # images per forward pass, both curves
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # BatchNorm in train mode would couple the perturbed images of a batch
    curves = []
    try:
        for i in range(0, n, chunk):
            x, k = images[i:i + chunk, None], changed[i:i + chunk]  # (b, 1, C, H, W), (b, K+1, 1, H, W)
            deleted = torch.where(k, torch.zeros((), dtype=x.dtype, device=x.device), x)
            inserted = torch.where(k, x, blurred(images[i:i + chunk])[:, None])
            batch = torch.cat([deleted, inserted], 1).flatten(0, 1)  # (b * 2(K+1), C, H, W)
            probs = model(batch).float().softmax(1).view(len(x), 2 * (steps + 1), -1)
            t = targets[i:i + chunk].view(-1, 1, 1).expand(-1, probs.shape[1], 1)
            curves.append(probs.gather(2, t)[..., 0].cpu())
    finally:
        for m, training in modes:
            m.training = training
    curves = torch.cat(curves)  # (N, 2(K+1))
    deletion, insertion = curves[:, :steps + 1], curves[:, steps + 1:]
    fractions = counts.double() / (h * w)
    return {"fractions": fractions.float(), "deletion": deletion, "insertion": insertion,
            "deletion_auc": torch.trapezoid(deletion.double(), fractions, dim=1).float(),
            "insertion_auc": torch.trapezoid(insertion.double(), fractions, dim=1).float()}


def summarise(gc, rnd, empty):
    """Mean, std (n - 1) and paired win rates of Grad-CAM against random order for one group."""
    def stats(v):
        return {"mean": round(float(v.mean()), 4),
                "std": round(float(v.std()), 4) if len(v) > 1 else None}
    out = {"n": len(gc["deletion_auc"]), "empty_maps": int(empty)}
    for name, r in (("gradcam", gc), ("random", rnd)):
        out[name] = {f"{c}_auc": stats(r[f"{c}_auc"]) for c in ("deletion", "insertion")}
    # Paired per image: the same image and class, only the pixel order differs; a tie is no win.
    out["gradcam_beats_random"] = {
        "deletion": round(float((gc["deletion_auc"] < rnd["deletion_auc"]).float().mean()), 4),
        "insertion": round(float((gc["insertion_auc"] > rnd["insertion_auc"]).float().mean()), 4)}
    out["mean_curves"] = {name: {c: [round(float(v), 4) for v in r[c].mean(0)]
                                 for c in ("deletion", "insertion")}
                          for name, r in (("gradcam", gc), ("random", rnd))}
    return out


#### Command line

def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--run", required=True, help="run folder evaluated by evaluate.py")
    p.add_argument("--cases", default=None, help="failures.json whose cases to measure "
                   "(default: <run>/failures.json, skipped if missing; another run's file works)")
    # 500 images: with the per-image spread measured on the synthetic run (std about 0.3), the
    # standard error of a mean AUC is about 0.013, far below the Grad-CAM vs random gaps.
    p.add_argument("--sample", type=at_least(1), default=500, help="test images in the random sample")
    p.add_argument("--layer", default=None, help="Grad-CAM layer (default: gradcam.py's)")
    # RISE's code changes 224 pixels per step of a 224x224 image (224 steps); on 32x32 images 16
    # steps of 64 pixels (6%) still show how fast a curve falls, at 34 forward passes per image.
    p.add_argument("--steps", type=at_least(2), default=16, help="steps of each deletion/insertion curve")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--seed", type=int, default=0, help="seeds the sample and the random order")
    p.add_argument("--data-dir", default=None, help="override the run's --data-dir")
    p.add_argument("--batch-size", type=at_least(1), default=1024, help="perturbed images per forward pass")
    return p


def read_case_rows(args, run_dir, labels, indices):
    """Rows of the cases in failures.json, checked against this run's test set; [] if none."""
    path = Path(args.cases) if args.cases else run_dir / "failures.json"
    if not path.is_file():
        if args.cases is None:
            return path, []
        raise UserError(f"{path} does not exist; write it with python failures.py --run {run_dir}")
    _, cases = read_cases(path, labels, indices, run_dir)
    return path, [c["row"] for c in cases]


def score(model, layer, layer_name, x, targets, args):
    """Grad-CAM maps of normalised images x for targets, their deletion and insertion curves, and
    the same for the seeded random order: (maps, Grad-CAM curves, random curves, summary)."""
    try:
        maps = torch.cat([grad_cam(model, layer, x[i:i + 256], targets[i:i + 256]).cpu()
                          for i in range(0, len(x), 256)])  # (N, H, W), bounded memory
    except ValueError as e:
        raise UserError(f"--layer {layer_name}: {e}") from None
    gc = deletion_insertion(model, x, maps, targets, args.steps, batch_size=args.batch_size)
    # A fresh generator per group: a case's predicted- and true-class baselines share one order.
    g = torch.Generator().manual_seed(args.seed + 1)
    rnd = deletion_insertion(model, x, None, targets, args.steps, g, args.batch_size)
    return maps, gc, rnd, summarise(gc, rnd, (maps.flatten(1).amax(1) == 0).sum())


def case_entries(case_rows, per_target, probs, labels, indices, classes):
    preds, cases = probs.argmax(1), []
    for j, r in enumerate(case_rows):
        case = {"index": int(indices[r]), "row": r, "true": int(labels[r]), "true_name": classes[labels[r]],
                "pred": int(preds[r]), "pred_name": classes[preds[r]],
                "confidence": round(float(probs[r, preds[r]]), 6)}
        for t, (_, gc, rnd, _) in per_target.items():
            case[f"{t}_class"] = {name: {f"{c}_auc": round(float(res[f"{c}_auc"][j]), 4)
                                         for c in ("deletion", "insertion")}
                                  for name, res in (("gradcam", gc), ("random", rnd))}
        cases.append(case)
    return cases


def run(args):
    t0 = time.perf_counter()
    run_dir = Path(args.run)
    device = resolve_device(args.device)
    # The model whose predictions evaluate.py wrote, so the maps explain those predictions.
    analysis = load_analysis(run_dir, device, args.data_dir)
    model, config, checkpoint, ds = analysis.model, analysis.config, analysis.checkpoint, analysis.ds
    probs, labels, indices = (analysis.predictions[k] for k in ("probs", "labels", "indices"))
    preds = probs.argmax(1)
    layer_name = layer_name_or_default(args.layer, config["arch"])
    layer = find_layer(model, layer_name, config["arch"])
    cases_path, case_rows = read_case_rows(args, run_dir, labels, indices)

    def images(rows):
        return normalize(ds.test_x[rows].to(device), config["mean"], config["std"])

    def group(rows, targets):
        return score(model, layer, layer_name, images(rows), targets, args)

    sample = seeded_sample(len(labels), args.sample, args.seed)
    sample_maps, sample_gc, _, sample_summary = group(sample, preds[sample])
    first = sample[:RANDOMISED_IMAGES]  # their trained maps are the sample's first ones
    randomisation = randomisation_test(model, layer_name, images(first),
                                       torch.as_tensor(preds[first], device=device), args.seed,
                                       trained=sample_maps[:len(first)])
    out = {"run": str(run_dir), "checkpoint": checkpoint, "layer": layer_name, **procedure(args, sample_gc),
           "sample": dict(explained="predicted class", **sample_summary), "randomisation": randomisation}
    if case_rows:
        out.update(measure_cases(group, cases_path, case_rows, probs, labels, indices, config["classes"]))
    out.update(seconds=round(time.perf_counter() - t0, 3), device=device_name(device), **provenance())
    save_json(conform(out, "faithfulness.json"), run_dir / "faithfulness.json")
    plot(sample_summary, out, run_dir / "faithfulness.png", checkpoint_words(config, checkpoint))
    aucs = ", ".join(f"{c} AUC {sample_summary['gradcam'][c + '_auc']['mean']:.3f} vs "
                     f"{sample_summary['random'][c + '_auc']['mean']:.3f}" for c in ("deletion", "insertion"))
    print(f"{run_dir / 'faithfulness.json'}: {sample_summary['n']} test images, Grad-CAM at {layer_name} "
          f"vs random order: {aucs} ({out['seconds']:.1f} s)")
    return out


def seeded_sample(n_test, size, seed):
    """Rows of `size` test images drawn with `seed`, in test order."""
    sample = torch.randperm(n_test, generator=torch.Generator().manual_seed(seed))
    return sample[:size].sort().values.tolist()


def procedure(args, curves):
    """faithfulness.json's description of the procedure: steps, baselines, seed."""
    return {"steps": args.steps, "fractions": [round(float(f), 6) for f in curves["fractions"]],
            "deletion_baseline": "per-channel dataset mean (0 after normalisation)",
            "insertion_start": f"Gaussian blur, {BLUR_KERNEL}x{BLUR_KERNEL} kernel, sigma {BLUR_SIGMA} px",
            "seed": args.seed}


def measure_cases(group, cases_path, case_rows, probs, labels, indices, classes):
    """The failure cases scored for their predicted and their true class (group(rows, targets)
    scores images): faithfulness.json's cases_file, cases and cases_summary."""
    preds = probs.argmax(1)
    per_target = {t: group(case_rows, tgt) for t, tgt in
                  (("pred", preds[case_rows]), ("true", labels[case_rows]))}
    return dict(cases_file=str(cases_path),
                cases=case_entries(case_rows, per_target, probs, labels, indices, classes),
                cases_summary={t: s for t, (_, _, _, s) in per_target.items()})


def plot(summary, out, path, weights):
    """Mean deletion and insertion curves, Grad-CAM vs random order; two ~3.3-inch panels."""
    plt = pyplot()
    from matplotlib.ticker import PercentFormatter
    with plt.rc_context({"font.size": 7.5, "axes.titlesize": 8, "legend.fontsize": 7}):
        fig, axes = plt.subplots(1, 3, figsize=(6.8, 2.4), layout="constrained")
        titles = {"deletion": "deletion (to the mean image)", "insertion": "insertion (from a blur)"}
        for ax, c in zip(axes, ("deletion", "insertion")):
            for name, label, style in (("gradcam", "Grad-CAM", "-"), ("random", "random order", "--")):
                auc = summary[name][f"{c}_auc"]["mean"]
                ax.plot(out["fractions"], summary["mean_curves"][name][c], style,
                        color="#4c72b0" if name == "gradcam" else "0.45", lw=1.4,
                        label=f"{label} (AUC {auc:.3f})")
            ax.set(title=titles[c], xlabel=f"share of pixels {c[:-3]}ed",
                   xlim=(0, 1), ylim=(0, 1), xticks=[0, 0.25, 0.5, 0.75, 1])
            ax.xaxis.set_major_formatter(PercentFormatter(1.0))
            ax.legend(loc="upper right" if c == "deletion" else "lower right", frameon=False)
            ax.grid(alpha=0.3, lw=0.5)
        axes[0].set_ylabel("mean probability of\nthe predicted class")
        axes[1].tick_params(labelleft=False)  # the same probability axis as the first panel
        plot_randomisation(axes[2], out["randomisation"])
        fig.get_layout_engine().set(wspace=0.06)  # keep 100% and 0% of adjacent panels apart
        fig.suptitle(f"{Path(out['run']).name}: {summary['n']} test images, Grad-CAM at "
                     f"{out['layer']} ({weights})", fontsize=8)
        save_figure(fig, path, dpi=200)
        plt.close(fig)


def plot_randomisation(ax, rand):
    """Similarity of the maps to the trained model's as more of the network is re-initialised."""
    steps = range(len(rand["stages"]) + 1)
    ax.plot(steps, [1.0] + [np.nan if v is None else v for v in rand["spearman_mean"]], "o-",
            color="#c44e52", lw=1.4, ms=3)
    ax.axhline(0, color="0.45", lw=0.8, ls="--")
    low = min([-0.2] + [v - 0.05 for v in rand["spearman_mean"] if v is not None])  # never clip a point
    ax.set(title="randomised from the top down", xticks=list(steps), ylim=(low, 1),
           xlabel="re-initialised up to")
    ax.set_xticklabels(["none"] + rand["stages"], rotation=60, fontsize=6)
    ax.set_ylabel("rank correlation with\nthe trained maps")
    ax.grid(alpha=0.3, lw=0.5)


def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
