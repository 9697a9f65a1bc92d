"""The cause of each failure case, told apart by evidence: interventions on the image and the
nearest training images in the model's own feature space, combined by judgements.cause_of.

    python causes.py --run runs/baseline            # failures.json's cases, gradcam.npz's maps
    python causes.py --run runs/baseline --k 10     # ten nearest training images per case

Needs failures.json (failures.py) and gradcam.json with gradcam.npz (gradcam.py), both read, never
rewritten. Writes causes.json (per case: the predicted and the true class's probability under each
intervention, the k nearest training images with their labels and similarities, the stated cause
with the numbers that carry it, and its sentence; the analyst's hypothesis stays in gradcam.json)
and causes.png (per case: the image, the region its Grad-CAM marks, its nearest training images).
"""
import bisect
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from cam import centre_mask
from common import (DEVICE_HELP, MOST_PLOTTED, UserError, arg_parser, at_least, cli_guard, normalize, provenance,
                    pyplot, resolve_device, save_figure, save_json)
from contract import load_analysis, read_cases, read_gradcam, read_gradcam_maps
from hypotheses import cause_sentence
from judgements import CAUSE_THRESHOLDS, SMALL_CHANGES, cause_of
from shapes import conform

MARKED_SHARE = 0.2  # the region Grad-CAM marks: the top fifth of the predicted-class map's pixels
BLUR_SIGMA = 3.0  # pixels: wipes out shapes and textures of a 32-pixel image, keeps its colours
SHIFT = 2  # pixels: a change the network should shrug off (training crops move images up to 4)
REFERENCE = 2000  # test images sampled: their closeness to the training set is the yardstick ...
MIN_PER_CLASS = 20  # ... per predicted class where it has this many correct ones, else overall


#### Interventions

def marked_region(cam, share=MARKED_SHARE):
    """The top `share` of a map's pixels (ties included), or None for an empty map: it marks nothing."""
    if not cam.any():
        return None
    k = max(1, round(share * cam.numel()))
    return (cam >= cam.flatten().topk(k).values[-1]) & (cam > 0)


def shifted(x, dy, dx):
    """x (C, H, W) moved by (dy, dx) pixels, the uncovered edge filled with the mean (0 once
    normalised)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def blurred(x, sigma=BLUR_SIGMA):
    """x (C, H, W) under a strong Gaussian blur: what fills a removed region. A flat fill (the
    dataset mean) would paint a new shape into the image, which the model may read as an object."""
    k = 2 * round(3 * sigma) + 1
    return gaussian_blur(x, [min(k, 2 * (min(x.shape[-2:]) // 2) - 1)] * 2, [sigma, sigma])


def variants(x, cam_pred, cam_true):
    """The interventions on one normalised image x (C, H, W) by name, given its maps for the
    predicted and the true class; a removed region is filled with the blurred image. The same
    region moved half an image away is the control: removing any fifth of an image may change a
    prediction."""
    h, w = x.shape[-2:]
    fill, border = blurred(x), ~centre_mask(h, w).to(x.device)
    keep = lambda mask: torch.where(mask, x, fill)  # noqa: E731
    out = {"original": x, "remove_border": keep(~border)}
    marked, marked_true = marked_region(cam_pred), marked_region(cam_true)
    if marked is not None:
        out.update(remove_marked=keep(~marked), keep_marked=keep(marked),
                   remove_elsewhere=keep(~marked.roll((h // 2, w // 2), (0, 1))))
    if marked_true is not None:
        out.update(keep_true_marked=keep(marked_true))
    out.update(flip=x.flip(-1), shift_left=shifted(x, 0, -SHIFT), shift_right=shifted(x, 0, SHIFT),
               shift_up=shifted(x, -SHIFT, 0), shift_down=shifted(x, SHIFT, 0))
    return out


@torch.no_grad()
def intervene(model, x, cases, maps_pred, maps_true, classes):
    """Per case, per intervention: the probabilities of its predicted and its true class and the
    class the model now prefers."""
    model.eval()
    out = []
    for xi, case, cam_pred, cam_true in zip(x, cases, maps_pred, maps_true):
        named = variants(xi, cam_pred.to(xi.device), cam_true.to(xi.device))
        probs = F.softmax(model(torch.stack(list(named.values()))).float(), 1).cpu()
        out.append({name: {"p_pred": round(float(p[case["pred"]]), 6), "p_true": round(float(p[case["true"]]), 6),
                           "top": int(p.argmax()), "top_name": classes[int(p.argmax())]}
                    for name, p in zip(named, probs)})
    return out


#### Nearest training images

def last_linear(model):
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise UserError("the model has no linear classifier whose input could serve as its feature space")
    return linears[-1]


@torch.no_grad()
def features(model, images_u8, mean, std, batch=512):
    """The input of the model's last linear layer (its penultimate features), unit length, for
    uint8 images, in batches on the model's device; float32 on the CPU."""
    device = next(model.parameters()).device
    kept = []
    handle = last_linear(model).register_forward_pre_hook(lambda m, inputs: kept.append(inputs[0].flatten(1)))
    try:
        model.eval()
        for i in range(0, len(images_u8), batch):
            model(normalize(images_u8[i:i + batch].to(device), mean, std))
    finally:
        handle.remove()
    return F.normalize(torch.cat(kept).float(), dim=1).cpu()


def region_similarity(image, others, region):
    """Mean Pearson correlation of an image's pixels with each of `others`' pixels inside a region
    (H, W bool), or None for an empty or flat region: how alike they are there."""
    if region is None or region.sum() < 2:
        return None
    a = image.float()[:, region].flatten()
    b = others.float()[:, :, region].flatten(1)
    a, b = a - a.mean(), b - b.mean(1, keepdim=True)
    norm = a.norm() * b.norm(dim=1)
    r = (b @ a)[norm > 0] / norm[norm > 0]
    return round(float(r.mean()), 4) if len(r) else None


def shared_background(image_u8, cam_true, neighbours_u8):
    """How alike a case and its nearest training images are outside the region its true-class map
    marks (the object, where the true class is seen) and inside it: a context cue shows as
    neighbours that share the background rather than the object."""
    marked = marked_region(cam_true)
    if marked is None:
        return {"background": None, "object": None}
    return {"background": region_similarity(image_u8, neighbours_u8, ~marked),
            "object": region_similarity(image_u8, neighbours_u8, marked)}


def nearest(train_feats, train_y, case_feats, cases, k, classes, reference):
    """Per case: its k most similar training images (cosine similarity of the features) with
    their labels, the shares labelled with the case's predicted and true class, and how typical
    its closeness to them is for an image of its predicted class (reference_closeness)."""
    sim, rows = (case_feats @ train_feats.T).topk(k, dim=1)
    out = []
    for case, s, r in zip(cases, sim, rows):
        labels = train_y[r].tolist()
        yardstick = reference.get(case["pred"], reference["all"])
        out.append({"k": k, "train_rows": r.tolist(), "labels": labels, "names": [classes[c] for c in labels],
                    "similarity": [round(float(v), 4) for v in s],
                    "pred_share": round(labels.count(case["pred"]) / k, 4),
                    "true_share": round(labels.count(case["true"]) / k, 4),
                    "typicality": round(bisect.bisect_right(yardstick, float(s.mean())) / len(yardstick), 4)
                    if yardstick else None})
    return out


def reference_closeness(train_feats, model, ds, predictions, k, mean, std, n=REFERENCE):
    """The yardstick of a typical image's closeness to the training set: sorted mean similarities
    of seeded correctly classified test images (up to n) to their k nearest training images, per
    class where it has at least MIN_PER_CLASS of them, and over "all"."""
    sample = torch.randperm(len(ds.test_y), generator=torch.Generator().manual_seed(0))[:n].numpy()
    labels = predictions["labels"][sample]
    right = predictions["probs"][sample].argmax(1) == labels
    if not right.any():
        return {"all": []}
    feats = features(model, ds.test_x[torch.from_numpy(sample[right])], mean, std)
    closeness = (feats @ train_feats.T).topk(k, dim=1).values.mean(1)
    out = {"all": sorted(closeness.tolist())}
    for c in set(labels[right].tolist()):
        mine = closeness[torch.from_numpy(labels[right] == c)]
        if len(mine) >= MIN_PER_CLASS:
            out[c] = sorted(mine.tolist())
    return out


#### Figure

def plot(cases, ds, rows, maps_pred, neighbours, path, shown=6, most=MOST_PLOTTED):
    """One row per case (the first `most`): the image, the region its Grad-CAM marks (the rest
    dimmed), and its nearest training images with their labels (bold: the predicted class)."""
    plt = pyplot()
    n, cols = min(len(cases), most), 2 + min(shown, neighbours[0]["k"])
    fig, axes = plt.subplots(n, cols, figsize=(0.95 * cols + 0.2, 1.15 * n + 0.5), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
    for i, (case, nb) in enumerate(zip(cases[:n], neighbours)):
        img = ds.test_x[rows[i]].permute(1, 2, 0)
        marked = marked_region(maps_pred[i])
        dim = img if marked is None else (img * (0.25 + 0.75 * marked[..., None])).to(torch.uint8)
        axes[i, 0].imshow(img)
        axes[i, 0].set_title(f"#{case['index']} {case['cause']}", fontsize=6, pad=2)
        axes[i, 0].set_ylabel(f"{case['true_name']}\n-> {case['pred_name']}", fontsize=6)
        axes[i, 1].imshow(dim)
        axes[i, 1].set_title("marked" if marked is not None else "empty map", fontsize=6, pad=2)
        for j in range(cols - 2):
            ax, label = axes[i, 2 + j], nb["labels"][j]
            ax.imshow(ds.train_x[nb["train_rows"][j]].permute(1, 2, 0))
            ax.set_title(f"{nb['names'][j]}\n{nb['similarity'][j]:.2f}", fontsize=5.5, pad=1.5,
                         fontweight="bold" if label == case["pred"] else "normal")
    more = f" (the first {n} of {len(cases)} cases)" if n < len(cases) else ""
    fig.suptitle(f"Each case{more}, the region its predicted-class Grad-CAM marks (top fifth), and its "
                 "nearest training images\n(cosine similarity of the penultimate features; bold: "
                 "labelled with the predicted class)", fontsize=7)
    save_figure(fig, path, dpi=200)
    plt.close(fig)


#### Command line

def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--run", required=True, help="run folder with failures.json and gradcam.json")
    p.add_argument("--k", type=at_least(1), default=10, help="nearest training images per case")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--data-dir", default=None, help="override the run's --data-dir")
    return p


def run(args):
    run_dir = Path(args.run)
    cases_path = run_dir / "failures.json"
    if not cases_path.is_file():
        raise UserError(f"{cases_path} does not exist; run python failures.py --run {run_dir} first")
    device = resolve_device(args.device)
    analysis = load_analysis(run_dir, device, args.data_dir)
    model, config, ds, predictions = analysis.model, analysis.config, analysis.ds, analysis.predictions
    if args.k > len(ds.train_y):
        raise UserError(f"--k {args.k} asks for more neighbours than the {len(ds.train_y)} training images")
    _, cases = read_cases(cases_path, predictions["labels"], predictions["indices"], run_dir,
                          probs=predictions["probs"])
    explained = read_gradcam(run_dir, cases)
    maps_pred, maps_true = read_gradcam_maps(run_dir, [c["index"] for c in cases], explained["layer"],
                                     explained["checkpoint"])
    rows = [c["row"] for c in cases]
    mean, std = config["mean"], config["std"]
    x = normalize(ds.test_x[rows].to(device), mean, std)
    probes = intervene(model, x, cases, maps_pred, maps_true, config["classes"])
    train_feats = features(model, ds.train_x, mean, std)  # once per run, in batches on the device
    reference = reference_closeness(train_feats, model, ds, predictions, args.k, mean, std)
    neighbours = nearest(train_feats, ds.train_y, features(model, ds.test_x[rows], mean, std), cases,
                         args.k, config["classes"], reference)
    pairs, per_true = pair_counts(predictions)
    stated = []
    for case, probe, nb, cam in zip(cases, probes, neighbours, explained["cases"]):
        pair = pairs.get((case["true"], case["pred"]), 0)
        evidence = {"interventions": probe, "neighbours": nb, "pair_errors": pair,
                    # errors of this pair against an even spread of the true class's errors
                    "pair_lift": round(pair * (len(config["classes"]) - 1) / per_true[case["true"]], 4),
                    "moved_by_small_changes": sum(probe[s]["top"] != case["pred"] for s in SMALL_CHANGES),
                    "map_correlation": cam["evidence"]["pred_true_correlation"],  # gradcam.py's
                    "neighbour_pixels": shared_background(ds.test_x[case["row"]], maps_true[len(stated)],
                                                          ds.train_x[nb["train_rows"]])}
        verdict = cause_of(case, evidence)
        stated.append({"index": case["index"], "row": case["row"], "true": case["true"], "pred": case["pred"],
                       "true_name": case["true_name"], "pred_name": case["pred_name"], "confidence": case["confidence"],
                       "true_prob": case["true_prob"], **verdict,
                       "sentence": cause_sentence(case, verdict, evidence), "evidence": evidence})
    result = {"run": str(run_dir), "layer": explained["layer"], "checkpoint": explained["checkpoint"],
              "weights_sha256": analysis.metrics["weights_sha256"], "marked_share": MARKED_SHARE,
              "shift": SHIFT, "thresholds": CAUSE_THRESHOLDS, "cases": stated, **provenance()}
    plot(stated, ds, rows, maps_pred, neighbours, run_dir / "causes.png")
    save_json(conform(result, "causes.json"), run_dir / "causes.json")  # last: make's target
    counts = {c: sum(s["cause"] == c for s in stated) for c in dict.fromkeys(s["cause"] for s in stated)}
    print(f"{run_dir / 'causes.json'}: {len(stated)} cases: "
          + ", ".join(f"{n} {c}" for c, n in counts.items()))
    return result


def pair_counts(predictions):
    """The test errors of each (true, predicted) pair and of each true class: a pair with far more
    than its share of its class's errors is a systematic confusion."""
    labels, preds = predictions["labels"], predictions["probs"].argmax(1)
    wrong = labels != preds
    pairs = Counter(zip(labels[wrong].tolist(), preds[wrong].tolist()))
    return pairs, Counter(labels[wrong].tolist())


def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
