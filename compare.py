"""Compare a baseline and an improved run on the same test set: what changed, where, and how surely.

    python compare.py --baseline runs/baseline --improved runs/cutmix --out runs/compare
    python compare.py --baseline runs/baseline --improved runs/cutmix \
        --cases runs/baseline/failures.json --out runs/compare     # + failure re-check, Grad-CAM

Needs each run's predictions.npz and metrics.json (evaluate.py); uses both runs' corruptions.json
(corruptions.py) when both have one. Writes to --out: comparison.json (2x2 table with McNemar's
exact test, paired bootstrap interval, high-confidence errors, calibration, per-class changes,
accuracy under corruptions, the baseline's failure cases re-checked, provenance) and confidence,
high_confidence, per_class, reliability (corruptions, and with --cases gradcam_compare) figures as
PNG and PDF.
"""
import argparse
import functools
import math
from pathlib import Path

import numpy as np
import torch

import compare_figures as figures
import corruptions
from common import (DEFAULT_CAM_LAYER, UserError, cli_guard, dataset_from_config, git_commit,
                    load_run, normalize, read_json, resolve_device, save_json)
from evaluate import ECE_BINS, calibration
from gradcam import grad_cam  # the same maps as gradcam.py's figures

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
TOP_K = 5  # classes named as largest gains and losses
SUSPECT_CONFIDENCE = 0.9  # both models at least this sure of the same wrong class: a label to check
SUSPECTS_SHOWN = 12
# Keys of config.json that describe a run's bookkeeping or results, not how the model was trained.
NOT_SETTINGS = {"name", "runs_dir", "data_dir", "command", "device", "no_download", "eval_batch_size",
                "mean", "std", "n_train", "n_test", "git_commit", "torch_version",
                "torchvision_version", "python_version", "device_name", "status", "wall_seconds",
                "final_test_accuracy", "best_test_accuracy", "best_epoch", "train_images_per_second"}



#### Loading

def load_side(run):
    """predictions.npz, config.json and metrics.json of one run."""
    run, path = Path(run), Path(run) / "predictions.npz"
    if not run.is_dir():
        raise UserError(f"run folder {run} does not exist; train it with train.py and evaluate it first")
    if not path.is_file():
        raise UserError(f"{path} does not exist; run python evaluate.py --run {run} first")
    with np.load(path) as f:
        side = {k: f[k] for k in ("probs", "labels", "indices")}
    side.update(run=run, config=read_json(run / "config.json", "run config"),
                metrics=read_json(run / "metrics.json", "metrics"))
    side["pred"], side["conf"] = side["probs"].argmax(1), side["probs"].max(1)
    side["correct"] = side["pred"] == side["labels"]
    return side


def check_same_test_set(b, i):
    if (b["labels"].shape != i["labels"].shape or not np.array_equal(b["labels"], i["labels"])
            or not np.array_equal(b["indices"], i["indices"])):
        raise UserError(f"{b['run']} and {i['run']} were not evaluated on the same test set "
                        f"({len(b['labels'])} vs {len(i['labels'])} images, or different indices "
                        "or labels); compare runs with the same --dataset and --limit-test")
    if b["config"]["classes"] != i["config"]["classes"]:
        raise UserError(f"{b['run']} and {i['run']} have different class lists; "
                        "they were trained on different datasets")


#### Statistics

def mcnemar_exact_p(b, c):
    """Two-sided exact McNemar test: binomial test of b successes in b + c trials at p = 0.5."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)  # exact integer ratio, correctly rounded to a float


def two_by_two(correct_b, correct_i):
    n = len(correct_b)
    counts = {"corrected": int((~correct_b & correct_i).sum()),
              "worsened": int((correct_b & ~correct_i).sum()),
              "both_wrong": int((~correct_b & ~correct_i).sum()),
              "both_right": int((correct_b & correct_i).sum())}
    out = dict(counts, n_test=n, shares={k: round(v / n, 6) for k, v in counts.items()})
    out["mcnemar_p"] = mcnemar_exact_p(counts["corrected"], counts["worsened"])
    return out


def bootstrap_ci(corrected, worsened, n, resamples, seed):
    """Paired bootstrap 95% percentile interval of accuracy(improved) - accuracy(baseline).

    Resampling n test images with replacement only changes how many corrected (+1) and worsened
    (-1) images the resample holds, so drawing those counts from a multinomial is exactly the
    image bootstrap, vectorised over all resamples at O(resamples) memory.
    """
    rng = np.random.default_rng(seed)
    p = np.array([corrected, worsened, n - corrected - worsened], dtype=np.float64) / n
    counts = rng.multinomial(n, p, size=resamples)  # (resamples, 3)
    diffs = (counts[:, 0] - counts[:, 1]) / n
    return [round(float(v), 6) for v in np.percentile(diffs, [2.5, 97.5])]


def label_error_suspects(b, i, classes, threshold=SUSPECT_CONFIDENCE, listed=50):
    """Test images on which both models agree, each with confidence >= threshold, on a class other
    than the label: a share of CIFAR test labels is wrong (Northcutt et al. 2021), and these are
    the first images to check by eye. Most confident first (by the lower of the two)."""
    sure = (b["pred"] == i["pred"]) & (b["pred"] != b["labels"]) & (b["conf"] >= threshold) & (i["conf"] >= threshold)
    rows = np.flatnonzero(sure)
    rows = rows[np.argsort(-np.minimum(b["conf"][rows], i["conf"][rows]), kind="stable")]
    return {"threshold": threshold, "count": int(len(rows)), "share": round(len(rows) / len(b["labels"]), 6),
            "suspects": [{"index": int(b["indices"][r]), "row": int(r), "label": int(b["labels"][r]),
                          "label_name": classes[b["labels"][r]], "agreed": int(b["pred"][r]),
                          "agreed_name": classes[b["pred"][r]],
                          "baseline_confidence": round(float(b["conf"][r]), 4),
                          "improved_confidence": round(float(i["conf"][r]), 4)} for r in rows[:listed]]}


def high_confidence_table(b, i, thresholds=THRESHOLDS):
    """Wrong predictions with max-softmax >= t, per threshold; rates over all test images."""
    n, rows = len(b["labels"]), []
    for t in thresholds:
        nb = int(((b["conf"] >= t) & ~b["correct"]).sum())
        ni = int(((i["conf"] >= t) & ~i["correct"]).sum())
        rows.append({"threshold": t, "baseline": nb, "improved": ni,
                     "baseline_rate": round(nb / n, 6), "improved_rate": round(ni / n, 6),
                     "reduction": nb - ni, "relative_reduction": round((nb - ni) / nb, 6) if nb else None})
    return rows


def per_class_changes(b, i, classes):
    """Accuracy of each class for both models and its change (None for a class with no test image)."""
    rows = []
    for c, name in enumerate(classes):
        mask = b["labels"] == c
        k = int(mask.sum())
        acc_b = round(float(b["correct"][mask].mean()), 6) if k else None
        acc_i = round(float(i["correct"][mask].mean()), 6) if k else None
        rows.append({"class": c, "name": name, "n": k, "baseline": acc_b, "improved": acc_i,
                     "change": round(acc_i - acc_b, 6) if k else None})
    ranked = sorted((r for r in rows if r["n"]), key=lambda r: (r["change"], r["class"]))
    gains = [r for r in reversed(ranked) if r["change"] > 0][:TOP_K]
    losses = [r for r in ranked if r["change"] < 0][:TOP_K]
    return rows, gains, losses


def confidence_summary(side, bins):
    out = {}
    for group, mask in (("correct", side["correct"]), ("wrong", ~side["correct"])):
        conf = side["conf"][mask]
        out[group] = {"n": int(mask.sum()), "mean": round(float(conf.mean()), 6) if mask.any() else None,
                      "histogram": np.histogram(conf, bins)[0].tolist()}
    return out


def recheck_cases(cases_path, b, i, classes):
    """The baseline's failure cases with the improved model's prediction on the same image."""
    data = read_json(cases_path, "failures file")
    cases = data.get("cases") if isinstance(data, dict) else None
    if not cases:
        raise UserError(f"{cases_path} has no cases; write it with python failures.py --run {b['run']}")
    out = []
    for case in cases:
        r = case.get("row", -1)
        if not (0 <= r < len(b["labels"]) and int(b["indices"][r]) == case.get("index")
                and int(b["labels"][r]) == case.get("true")):
            raise UserError(f"{cases_path} does not match the test set of {b['run']}; "
                            f"re-run python failures.py --run {b['run']}")
        if int(b["pred"][r]) != case.get("pred"):
            raise UserError(f"{cases_path} was not written from the predictions of {b['run']}; "
                            "pass the baseline's failures.json")
        t, p = case["true"], int(i["pred"][r])
        out.append({"index": case["index"], "row": r, "true": t, "true_name": classes[t],
                    "baseline_pred": case["pred"], "baseline_pred_name": classes[case["pred"]],
                    "baseline_confidence": round(float(b["conf"][r]), 6),
                    "baseline_true_prob": round(float(b["probs"][r, t]), 6),
                    "improved_pred": p, "improved_pred_name": classes[p],
                    "improved_confidence": round(float(i["conf"][r]), 6),
                    "improved_true_prob": round(float(i["probs"][r, t]), 6), "fixed": p == t})
    return out


def calibration_summary(b, i):
    """NLL, Brier and ECE of both models (evaluate.calibration on predictions.npz) and their change."""
    cal = {k: calibration(s["probs"], s["labels"]) for k, s in (("baseline", b), ("improved", i))}
    out = {"n_bins": ECE_BINS, **{k: {m: round(c[m], 6) for m in ("nll", "brier", "ece")} for k, c in cal.items()}}
    out["difference"] = {m: round(cal["improved"][m] - cal["baseline"][m], 6) for m in ("nll", "brier", "ece")}
    return out, cal


def provenance(b, i):
    def side(s):
        c = s["config"]
        return {"run": str(s["run"]), "checkpoint": s["metrics"].get("checkpoint"),
                "epoch": s["metrics"].get("epoch"),
                **{k: c.get(k) for k in ("name", "seed", "git_commit", "arch", "dataset", "epochs",
                                         "label_smoothing", "cutmix_prob", "cutmix_alpha", "augment")}}
    cb, ci = b["config"], i["config"]
    changed = sorted(k for k in set(cb) | set(ci) if k not in NOT_SETTINGS and cb.get(k) != ci.get(k))
    return {"runs": {"baseline": side(b), "improved": side(i)}, "changed_settings": changed,
            "changed_values": {k: {"baseline": cb.get(k), "improved": ci.get(k)} for k in changed},
            "same_checkpoint": b["metrics"].get("checkpoint") == i["metrics"].get("checkpoint")}


#### Seeds and ablation (make seeds, make ablation)

def _settings(config):
    return {k: v for k, v in config.items() if k not in NOT_SETTINGS and k != "seed"}


def seed_summary(dirs):
    """Mean and sample std over seeds of each model's accuracy and of the paired difference.

    Each folder holds baseline/ and improved/, evaluated; apart from the seed, every baseline must
    have the same settings (and every improved model), or the spread would mix in other changes."""
    pairs = [(load_side(Path(d) / "baseline"), load_side(Path(d) / "improved")) for d in dirs]
    for b, i in pairs:
        check_same_test_set(b, i)
        for ref, side in ((pairs[0][0], b), (pairs[0][1], i)):
            if _settings(side["config"]) != _settings(ref["config"]):
                raise UserError(f"{side['run']} differs from {ref['run']} in more than its seed; "
                                "retrain it with make seeds")
    seeds = [b["config"].get("seed") for b, _ in pairs]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds lists seed {max(seeds, key=seeds.count)} twice; give each seed once")

    def stats(values):
        v = np.array(values, dtype=np.float64)
        return {"values": [round(float(x), 6) for x in v], "mean": round(float(v.mean()), 6),
                "std": round(float(v.std(ddof=1)), 6) if len(v) > 1 else None}
    acc_b = [float(b["correct"].mean()) for b, _ in pairs]
    acc_i = [float(i["correct"].mean()) for _, i in pairs]
    return {"seeds": seeds, "baseline": stats(acc_b), "improved": stats(acc_i),
            "difference": stats(np.subtract(acc_i, acc_b)),
            "improved_better": sum(a > b for a, b in zip(acc_i, acc_b))}


def ablation_table(b, runs):
    """Each run against the baseline: what it changed, its accuracy, the 2x2's discordant pairs."""
    rows = []
    for run in runs:
        side = load_side(run)
        check_same_test_set(b, side)
        table = two_by_two(b["correct"], side["correct"])
        changed = provenance(b, side)["changed_values"]
        rows.append({"run": str(run), "name": side["run"].name,
                     "changed": {k: v["improved"] for k, v in changed.items()},
                     "accuracy": round(float(side["correct"].mean()), 6),
                     "difference": round(float(side["correct"].mean() - b["correct"].mean()), 6),
                     "ece": round(calibration(side["probs"], side["labels"])["ece"], 6),
                     **{k: table[k] for k in ("corrected", "worsened", "mcnemar_p")}})
    return rows


#### Grad-CAM maps of the cases, for the figure

def gradcam_rows(test_x, b, i, rechecked, device):
    """Images and the four maps per case; refuses checkpoints that do not reproduce predictions.npz."""
    rows = [c["row"] for c in rechecked]
    images = test_x()[rows]
    maps = {}
    for key, side in (("baseline", b), ("improved", i)):
        ckpt = side["metrics"].get("checkpoint", "last")
        model, config, _ = load_run(side["run"], ckpt, device)
        x = normalize(images.to(device), config["mean"], config["std"])
        with torch.no_grad():
            probs = model(x).float().softmax(1).cpu().numpy()
        if np.abs(probs - side["probs"][rows]).max() > 1e-3:
            raise UserError(f"the {ckpt} checkpoint of {side['run']} does not reproduce its "
                            f"predictions.npz; re-run python evaluate.py --run {side['run']}")
        layer = model.get_submodule(DEFAULT_CAM_LAYER[config["arch"]])
        for target in ("pred", "true"):
            t = [c[f"{key}_pred"] if target == "pred" else c["true"] for c in rechecked]
            maps[key, target] = grad_cam(model, layer, x, t).cpu()  # (N, H, W) in [0, 1]
    return images, maps, DEFAULT_CAM_LAYER[b["config"]["arch"]]


#### Command line

def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="baseline run folder (evaluated)")
    p.add_argument("--improved", required=True, help="improved run folder (evaluated)")
    p.add_argument("--cases", default=None, help="the baseline's failures.json to re-check (+ Grad-CAM)")
    p.add_argument("--out", required=True, help="folder for comparison.json and the figures")
    # 2000 resamples: each limit moves by about 0.03 points (s.d.) between seeds on 10,000 images.
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap generator")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="for Grad-CAM")
    p.add_argument("--data-dir", default=None, help="override the runs' --data-dir (Grad-CAM images)")
    p.add_argument("--seeds", nargs="+", default=None, metavar="DIR",
                   help="folders with baseline/ and improved/, one per seed: mean +/- std")
    p.add_argument("--ablation", nargs="+", default=None, metavar="RUN",
                   help="runs that change part of the improvement, each compared with the baseline")
    return p


def compare(args):
    out = Path(args.out)
    for run in (args.baseline, args.improved):
        if out.resolve() == Path(run).resolve():
            raise UserError(f"--out {out} is a run folder; write the comparison to its own folder, "
                            "for example runs/compare")
    b, i = load_side(args.baseline), load_side(args.improved)
    check_same_test_set(b, i)
    classes, names = b["config"]["classes"], (b["run"].name, i["run"].name)
    table = two_by_two(b["correct"], i["correct"])
    acc_b, acc_i = float(b["correct"].mean()), float(i["correct"].mean())
    rows, gains, losses = per_class_changes(b, i, classes)
    bins = np.linspace(0, 1, 21)
    cal_summary, cal = calibration_summary(b, i)
    grids = [corruptions.load_grid(s["run"], s["metrics"]) for s in (b, i)]
    result = {**table, "accuracy_baseline": round(acc_b, 6), "accuracy_improved": round(acc_i, 6),
              "accuracy_difference": round(acc_i - acc_b, 6),
              "bootstrap_ci95": bootstrap_ci(table["corrected"], table["worsened"], table["n_test"],
                                             args.bootstrap, args.seed),
              "bootstrap": {"resamples": args.bootstrap, "seed": args.seed, "method": "paired, percentile"},
              "high_confidence_errors": high_confidence_table(b, i),
              "confidence": {"bins": bins.round(4).tolist(), "baseline": confidence_summary(b, bins),
                             "improved": confidence_summary(i, bins)},
              "calibration": cal_summary, "label_error_suspects": label_error_suspects(b, i, classes),
              "per_class": rows, "top_gains": gains, "top_losses": losses,
              "corruptions": None, "cases": None, "seeds": None, "ablation": None,
              "figures": ["confidence", "high_confidence", "per_class", "reliability"], **provenance(b, i),
              "git_commit": git_commit()}
    if not result["same_checkpoint"]:
        print(f"warning: the runs were evaluated with different checkpoints "
              f"({b['metrics'].get('checkpoint')} vs {i['metrics'].get('checkpoint')})")
    if None in grids:
        lacking = [str(s["run"]) for s, g in zip((b, i), grids) if g is None]
        print(f"note: no corruptions.json in {' and '.join(lacking)}; corruption comparison skipped "
              "(python corruptions.py --run <run> writes it)")
    else:
        result["corruptions"] = corruptions.compare_grids(*grids)
        result["figures"].append("corruptions")
    if args.seeds:
        result["seeds"] = seed_summary(args.seeds)
    if args.ablation:
        result["ablation"] = ablation_table(b, [args.improved, *args.ablation])
    if args.cases:
        result["cases"] = recheck_cases(args.cases, b, i, classes)
        result["cases_file"] = str(args.cases)
    cam = None

    @functools.cache
    def test_x():  # the test images, loaded once and only if a figure needs them
        return dataset_from_config(b["config"], args.data_dir).test_x
    if result["cases"]:  # before any figure is written: it checks the checkpoints against predictions.npz
        cam = gradcam_rows(test_x, b, i, result["cases"], resolve_device(args.device))
        result["figures"].append("gradcam_compare")
        result["gradcam_layer"] = cam[2]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with plt.rc_context(figures.STYLE):
        figures.plot_confidence(b, i, names, bins, out, plt)
        figures.plot_high_confidence(result["high_confidence_errors"], names, out, plt)
        figures.plot_per_class(rows, gains, losses, out, plt)
        figures.plot_reliability(cal, names, out, plt)
        if result["corruptions"]:
            figures.plot_corruptions(result["corruptions"], *grids, names, out, plt)
        if cam is not None:
            figures.plot_gradcam(result["cases"], *cam, names, out, plt)
        shown = [s["row"] for s in result["label_error_suspects"]["suspects"][:SUSPECTS_SHOWN]]
        if shown:  # a figure for a supplement, not one of the report's ("figures")
            try:
                images = test_x()[shown]
            except UserError as e:  # the list is in comparison.json all the same
                print(f"note: no suspects figure: {e}")
            else:
                figures.plot_suspects(result["label_error_suspects"], images, out, plt)
                result["label_error_suspects"]["figure"] = "suspects"
    save_json(result, out / "comparison.json")
    lo, hi = result["bootstrap_ci95"]
    print(f"{out / 'comparison.json'}: accuracy {100 * acc_b:.2f}% -> {100 * acc_i:.2f}% "
          f"({100 * (acc_i - acc_b):+.2f} points, 95% CI {100 * lo:+.2f} to {100 * hi:+.2f}); "
          f"corrected {table['corrected']}, worsened {table['worsened']}, "
          f"McNemar p={table['mcnemar_p']:.3g}; ECE {100 * cal_summary['baseline']['ece']:.2f}% -> "
          f"{100 * cal_summary['improved']['ece']:.2f}%")
    if result["seeds"]:
        sd = result["seeds"]
        print(f"{len(sd['seeds'])} seeds: difference {100 * sd['difference']['mean']:+.2f} points"
              + (f" +/- {100 * sd['difference']['std']:.2f} (std)" if sd["difference"]["std"] is not None else ""))
    for row in result["ablation"] or []:
        print(f"ablation {row['name']}: {100 * row['accuracy']:.2f}% ({100 * row['difference']:+.2f} "
              f"points, McNemar p={row['mcnemar_p']:.3g}), changes {row['changed']}")
    if result["corruptions"]:
        mce = result["corruptions"]["mean_corruption_error"]
        print(f"mean corruption error {100 * mce['baseline']:.2f}% -> {100 * mce['improved']:.2f}%")
    return result


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bootstrap < 1:
        parser.error("--bootstrap must be at least 1")
    return cli_guard(compare, args)


if __name__ == "__main__":
    main()
