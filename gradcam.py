"""The evidence Grad-CAM (cam.py) gives for each failure case of failures.py.

    python gradcam.py --run runs/baseline                      # cases from runs/baseline/failures.json
    python gradcam.py --run runs/baseline --layer layer3       # finer 8x8 maps for ResNet-18

Writes, in the explained run's folder: gradcam.json (per case its `evidence`: mass in the centre,
peak, correlation of the two maps, percentiles against correctly classified images; the Grad-CAM
suggestions; and the case's `hypothesis`, composed here, once, in hypotheses.py's wording, from
failures.py's suggestions and these, unless an analyst gave one; plus the base rates under
`reference`), gradcam.npz (the maps, scaled and unscaled, which compare.py reuses) and gradcam.png
(per case: the image, the map for the predicted class and the map for the true class).
failures.json is read, never rewritten.
"""
import bisect
from pathlib import Path

import numpy as np
import torch

from cam import (centre_mask, find_layer, grad_cam, layer_map_size, layer_name_or_default, overlay,
                 scale_per_image)
from common import (DEVICE_HELP, MOST_PLOTTED, UserError, arg_parser, at_least, atomic_write, cli_guard, normalize,
                    provenance, pyplot, resolve_device, save_figure, save_json)
from contract import checkpoint_words, load_analysis, read_cases
from hypotheses import compose_hypothesis, format_probability  # worded as failures.py words them
from shapes import conform


#### Evidence: numbers a hypothesis can be checked against

def map_stats(cam, box=None):
    """Centre mass share, peak (row, col) and, with an object box (x0, y0, x1, y1), box stats."""
    total = float(cam.sum())
    peak = divmod(int(cam.argmax()), cam.shape[1])
    centre = float(cam[centre_mask(*cam.shape)].sum())
    stats = {"centre_mass": round(centre / total, 4) if total else None, "peak": list(peak),
             "empty": total == 0}
    if box is not None:
        x0, y0, x1, y1 = (int(v) for v in box)
        stats["peak_in_box"] = bool(total and y0 <= peak[0] < y1 and x0 <= peak[1] < x1)
        stats["box_mass"] = round(float(cam[y0:y1, x0:x1].sum()) / total, 4) if total else None
    return stats


def correlation(a, b):
    a, b = a.flatten().double(), b.flatten().double()
    if a.std() == 0 or b.std() == 0:
        return None  # a constant map has no place it prefers
    return round(float(torch.corrcoef(torch.stack([a, b]))[0, 1]), 4)


def reference_rates(model, layer, ds, rows, mean, std, device, batch=256):
    """Base rates from the correctly classified images among test rows: how empty, central and
    (synthetic) on the object their maps are. A case's numbers mean little without them."""
    stats = []
    for i in range(0, len(rows), batch):
        r = rows[i:i + batch]
        x = normalize(ds.test_x[r].to(device), mean, std)
        with torch.no_grad():
            keep = model(x).argmax(1).cpu() == ds.test_y[r]
        if keep.any():
            boxes = ds.test_boxes[r][keep] if ds.test_boxes is not None else [None] * int(keep.sum())
            stats += map(map_stats, grad_cam(model, layer, x[keep.to(device)]).cpu(), boxes)
    n = max(len(stats), 1)
    ref = {"n": len(stats), "empty_share": round(sum(s["empty"] for s in stats) / n, 4),
           "centre_mass": sorted(s["centre_mass"] for s in stats if not s["empty"])}
    if ds.test_boxes is not None:
        ref["peak_in_box_rate"] = round(sum(s["peak_in_box"] for s in stats) / n, 4)
    return ref


def cam_suggestions(case, ev, layer, ref):
    """Short statements the measurements support, prefixed so a re-run can replace them."""
    tag, out = f"Grad-CAM ({layer}):", []
    pred, true, r = ev["pred"], ev["true"], ev["pred_true_correlation"]
    known = ref["n"] > 0  # base rates exist
    if pred["empty"]:
        base = f"; {100 * ref['empty_share']:.0f}% of correct predictions have one" if known else ""
        out.append(f"{tag} no positive evidence for the predicted class at this layer (empty map{base})")
    elif "peak_in_box" in pred:
        if not pred["peak_in_box"]:
            out.append(f"{tag} attention off the object: the predicted-class peak lies outside the "
                       "object box" + (f" (inside for {100 * ref['peak_in_box_rate']:.0f}% of correct "
                                       "predictions)" if known else ""))
    elif known and pred["centre_mass_percentile"] <= 0.1:
        out.append(f"{tag} attention on the border: {100 * pred['centre_mass']:.0f}% of the "
                   f"predicted-class map lies in the central {100 * ev['centre_area']:.0f}% of the "
                   f"image, less than for {100 * (1 - pred['centre_mass_percentile']):.0f}% of "
                   "correct predictions")
    if case["pred"] == case["true"]:
        return out
    if true["empty"]:
        out.append(f"{tag} no positive evidence for the true class {case['true_name']} at this layer")
    elif "peak_in_box" in true and not true["peak_in_box"]:
        out.append(f"{tag} the true-class evidence lies off the object (peak outside the box)")
    if r is not None and r >= 0.8:
        out.append(f"{tag} predicted and true class look at the same region (r={r:.2f}): "
                   "the same evidence, weighed differently")
    elif r is not None and r <= 0.2:
        out.append(f"{tag} predicted and true class look at different regions (r={r:.2f})")
    return out


#### Figure

def plot(cases, images, maps_pred, maps_true, boxes, layer, title, path, per_band=5):
    """Cases as columns, in bands of per_band: image / predicted-class map / true-class map."""
    plt = pyplot()
    n = len(cases)
    bands, cols = -(-n // per_band), min(n, per_band)
    fig, axes = plt.subplots(3 * bands, cols, figsize=(1.3 * cols + 0.4, 4.9 * bands + 0.5),
                             squeeze=False, layout="constrained")
    rows = ("image", "predicted class", "true class")
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
        ax.axis("off")
    for i, case in enumerate(cases):
        band, col = divmod(i, per_band)
        panels = ((None, f"#{case['index']}\ntrue {case['true_name']}"),
                  (maps_pred[i], f"pred {case['pred_name']}\n{format_probability(case['confidence'])}"),
                  (maps_true[i], f"true {case['true_name']}\n{format_probability(case['true_prob'])}"))
        for r, (cam, label) in enumerate(panels):
            ax = axes[3 * band + r, col]
            ax.axis("on")
            ax.imshow(overlay(images[i], cam), interpolation="nearest")
            if cam is not None and not cam.any():
                label += ", empty map"  # all blue would otherwise read as "uniformly low"
            ax.set_title(label, fontsize=8, pad=2)
            if boxes is not None:  # synthetic data: the object's box, scaled to 128 px
                x0, y0, x1, y1 = (4 * float(v) - 0.5 for v in boxes[i])
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white",
                                           lw=0.8, ls="--"))
            if col == 0:
                ax.set_ylabel(rows[r], fontsize=8)
    fig.suptitle(f"{title}\nGrad-CAM at {layer}, each map scaled to [0, 1] per image (blue 0, red 1):"
                 "\ncompare places within a map, not strengths across maps", fontsize=8)
    save_figure(fig, path, dpi=200)
    plt.close(fig)


#### Command line

def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--run", required=True, help="run folder with failures.json from failures.py")
    p.add_argument("--cases", default=None, help="failures.json whose cases to explain "
                   "(default: <run>/failures.json)")
    p.add_argument("--layer", default=None, help="any module name of the model "
                   "(default: layer4 for resnet18, relu3 (conv3 rectified) for simplecnn)")
    # Only the checkpoint evaluate.py used: the maps explain the predictions the cases came from.
    p.add_argument("--checkpoint", default=None, choices=("last", "best"),
                   help="must be the one evaluate.py used (the default)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--data-dir", default=None, help="override the run's --data-dir")
    # Base rates from a fixed sample's correctly classified images: a few seconds on a CPU.
    p.add_argument("--reference", type=at_least(0), default=256,
                   help="test images sampled for base rates (their correctly classified ones)")
    return p


def run(args):
    run_dir = Path(args.run)
    cases_path = Path(args.cases) if args.cases else run_dir / "failures.json"
    if not cases_path.is_file():
        raise UserError(f"{cases_path} does not exist; run python failures.py --run {run_dir} first")
    device = resolve_device(args.device)
    # The weights whose predictions failures.py analysed, and no other: maps of another checkpoint
    # would explain predictions nobody selected cases from.
    analysis = load_analysis(run_dir, device, args.data_dir)
    model, config, checkpoint, ds = analysis.model, analysis.config, analysis.checkpoint, analysis.ds
    check_checkpoint(args.checkpoint, checkpoint, run_dir)
    layer_name = layer_name_or_default(args.layer, config["arch"])
    layer = find_layer(model, layer_name, config["arch"])
    pred_file = analysis.predictions
    _, cases = read_cases(cases_path, pred_file["labels"], pred_file["indices"], run_dir,
                          probs=pred_file["probs"])
    rows = torch.tensor([c["row"] for c in cases])
    x = normalize(ds.test_x[rows].to(device), config["mean"], config["std"])
    pred = torch.tensor([c["pred"] for c in cases], device=device)
    true = torch.tensor([c["true"] for c in cases], device=device)
    raw_pred, raw_true, ref = maps_and_base_rates(model, layer, layer_name, x, pred, true, ds, config,
                                                  args.reference, device)
    maps_pred, maps_true = scale_per_image(raw_pred), scale_per_image(raw_true)
    boxes = ds.test_boxes[rows] if ds.test_boxes is not None else None
    explained = [explain_case(case, maps_pred[i], maps_true[i], boxes[i] if boxes is not None else None,
                              layer_name, checkpoint, ref) for i, case in enumerate(cases)]
    result = {"run": str(run_dir), "cases_file": str(cases_path), "layer": layer_name, "checkpoint": checkpoint,
              "weights_sha256": analysis.metrics["weights_sha256"],  # the maps' model: read_gradcam checks it
              "reference": reference_entry(ref, layer_name, layer_map_size(model, layer, x[:1]), x.shape[-2:]),
              "cases": explained, **provenance()}
    save_maps(run_dir / "gradcam.npz", dict(maps_pred=maps_pred, maps_true=maps_true, raw_pred=raw_pred,
                                            raw_true=raw_true), cases, rows, pred, true, config, layer_name,
              checkpoint)
    n = min(len(cases), MOST_PLOTTED)
    shown = f", the first {n} of {len(cases)} cases" if n < len(cases) else ""
    plot(cases[:n], ds.test_x[rows[:n]], maps_pred[:n], maps_true[:n], None if boxes is None else boxes[:n],
         layer_name, f"{run_dir.name}: where the network looked ({checkpoint_words(config, checkpoint)}{shown})",
         run_dir / "gradcam.png")
    save_json(conform(result, "gradcam.json"), run_dir / "gradcam.json")  # last: make's target, so the maps above are current
    print(f"{run_dir / 'gradcam.json'}: Grad-CAM at {layer_name} for {len(cases)} cases of {cases_path}")
    return {"maps_pred": maps_pred, "maps_true": maps_true, **result}


def check_checkpoint(asked, checkpoint, run_dir):
    """--checkpoint may only name the checkpoint evaluate.py evaluated: the cases come from it."""
    if asked not in (None, checkpoint):
        raise UserError(f"evaluate.py evaluated the {checkpoint} checkpoint of {run_dir}, and the cases "
                        f"come from its predictions; to explain {asked}, re-run python evaluate.py "
                        f"--run {run_dir} --checkpoint {asked} and failures.py first")


def maps_and_base_rates(model, layer, layer_name, x, pred, true, ds, config, n_reference, device):
    """The cases' unscaled maps (N, H, W) for their predicted and for their true classes, and the
    base rates of the correctly classified among n_reference seeded test images; a layer Grad-CAM
    cannot use is a UserError."""
    sample = torch.randperm(len(ds.test_y), generator=torch.Generator().manual_seed(0))[:n_reference]
    try:
        raw_pred = grad_cam(model, layer, x, pred, scaled=False).cpu()  # (N, H, W)
        raw_true = grad_cam(model, layer, x, true, scaled=False).cpu()
        ref = reference_rates(model, layer, ds, sample, config["mean"], config["std"], device)
    except ValueError as e:
        raise UserError(f"--layer {layer_name}: {e}") from None
    return raw_pred, raw_true, ref


def reference_entry(ref, layer_name, map_size, image_size):
    """gradcam.json's `reference`: the base rates, with the reference maps' centre masses (which
    explain_case has ranked the cases against) summarised as quartiles."""
    ref = dict(ref)
    cm = ref.pop("centre_mass")
    quartiles = [round(float(q), 4) for q in np.quantile(cm, [0.25, 0.5, 0.75])] if cm else None
    return dict(layer=layer_name, map_size=map_size, image_size=list(image_size), **ref,
                centre_mass_quartiles=quartiles)


def save_maps(path, maps, cases, rows, pred, true, config, layer_name, checkpoint):
    """gradcam.npz: the scaled and unscaled maps (N, H, W) with what they explain."""
    def write(f):
        np.savez_compressed(f, **{k: v.numpy() for k, v in maps.items()},
                            indices=np.array([c["index"] for c in cases]), rows=rows.numpy(),
                            pred=pred.cpu().numpy(), true=true.cpu().numpy(),
                            classes=np.array(config["classes"]), layer=np.array(layer_name),
                            checkpoint=np.array(checkpoint))
    atomic_write(path, write)


def explain_case(case, cam_pred, cam_true, box, layer_name, checkpoint, ref):
    """gradcam.json's entry for one case of failures.json: evidence, suggestions, hypothesis."""
    ev = {"layer": layer_name, "checkpoint": checkpoint, "centre_area": round(float(centre_mask(
        *cam_pred.shape).float().mean()), 4), "pred_true_correlation": correlation(cam_pred, cam_true)}
    for key, cam in (("pred", cam_pred), ("true", cam_true)):
        ev[key] = map_stats(cam, box)
        if ref["centre_mass"] and not ev[key]["empty"]:  # share of correct predictions at or below
            below = bisect.bisect_right(ref["centre_mass"], ev[key]["centre_mass"])
            ev[key]["centre_mass_percentile"] = round(below / len(ref["centre_mass"]), 4)
    notes = cam_suggestions(case, ev, layer_name, ref)
    analyst = case.get("hypothesis_source") == "analyst"
    # The one place where the failure evidence and the Grad-CAM evidence become one hypothesis.
    hypothesis = case["hypothesis"] if analyst else compose_hypothesis(
        {**case, "suggestions": case.get("suggestions", []) + notes})
    return {"index": case["index"], "row": case["row"], "evidence": ev, "suggestions": notes,
            "hypothesis": hypothesis, "hypothesis_source": "analyst" if analyst else "auto"}


def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
