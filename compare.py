"""Compare a baseline and an improved run on the same test set: what changed, where, and how surely.

    python compare.py --baseline runs/baseline --improved runs/cutmix --out runs/compare
    python compare.py --baseline runs/baseline --improved runs/cutmix \
        --cases runs/baseline/failures.json --out runs/compare     # + failure re-check, Grad-CAM

Needs each run's predictions.npz and metrics.json (evaluate.py); uses both runs' corruptions.json
(corruptions.py) when both have one. Writes to --out: comparison.json (2x2 table with McNemar's
exact test, paired bootstrap interval, high-confidence errors, calibration, per-class changes,
accuracy under corruptions, the baseline's failure cases re-checked, provenance) and confidence,
high_confidence, per_class, reliability (corruptions, and with --cases gradcam_compare) figures as
PNG and PDF. Calibration and per-class accuracy are metrics.json's, not recomputed.

    python compare.py --baseline B --improved I --seeds runs/s runs/s/seed43 --out runs/s/seeds
    python compare.py --baseline B --improved I --ablation runs/s/cutmix-only --out runs/s/ablation

With --seeds (make seeds) or --ablation (make ablation) only that summary is made, into
seeds.json or ablation.json in --out: the full comparison of the main pair is comparison.json's.
"""
import functools
import math
from pathlib import Path

import numpy as np

import compare_figures as figures
from cam import find_layer, grad_cam  # the same maps as gradcam.py's figures
from common import (DEVICE_HELP, UserError, arg_parser, at_least, cli_guard, normalize, provenance, pyplot,
                    resolve_device, save_json)
from contract import (ECE_BINS, check_same_test_set, dataset_from_config, load_evaluated, load_grid, read_cases,
                      read_config, read_gradcam, read_gradcam_maps, read_history, read_metrics, read_predictions)
from corrupt import CIFAR_C_STANDARD, mean_error
from judgements import recipe_checks
from settings import changed_settings, settings_of
from shapes import conform

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
TOP_K = 5  # classes named as largest gains and losses
# Label-error suspects: confident learning (Northcutt et al. 2021) per model, kept where both agree.
SUSPECT_RULE = "confident learning per-class thresholds, both models flag the same class"
SUSPECT_TOLERANCE = 1e-6  # float32 probabilities: p = t_j on paper may land a few 1e-8 below t_j
SUSPECTS_SHOWN = 12



#### Loading

def load_side(run):
    """predictions.npz, config.json and metrics.json of one run."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run folder {run} does not exist; train it with train.py and evaluate it first")
    side = read_predictions(run)
    side.update(run=run, config=read_config(run), metrics=read_metrics(run))
    # the recipe checks read the training curve; an imported model has none, nor a run without it
    side["history"] = (read_history(run / "history.csv")
                       if not side["config"].get("imported") and (run / "history.csv").is_file() else None)
    side["pred"], side["conf"] = side["probs"].argmax(1), side["probs"].max(1)
    side["correct"] = side["pred"] == side["labels"]
    return side


#### Statistics

# B_2j / (2j (2j - 1)): the Stirling series of log(k!) - log(sqrt(2 pi k) (k / e)^k) in 1 / k.
_STIRLING = (1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188)


def _stirling_error(k):
    """log(k!) - log(sqrt(2 pi k) (k / e)^k) for k >= 1, to a few ulps."""
    if k < 16:  # lgamma is small here, so subtracting the Stirling terms costs almost nothing
        return math.lgamma(k + 1) - (k + 0.5) * math.log(k) + k - 0.5 * math.log(2 * math.pi)
    # From 16 on, the first omitted term (691 / 360360 / k^11) is below 1e-16.
    return sum(coef / float(k) ** (2 * j + 1) for j, coef in enumerate(_STIRLING))


def _deviance(x, mean):
    """x log(x / mean) + mean - x for x > 0, accurate also where x is near mean."""
    d, s = x - mean, x + mean
    if abs(d) > 0.5 * s:  # x > 3 mean or x < mean / 3: the direct form loses only a bit or two
        return x * math.log(x / mean) + mean - x
    # Near the mean the direct form cancels; with v = d / s, log(x / mean) = 2 atanh(v) and the
    # sum is d v + 2x (v^3 / 3 + v^5 / 5 + ...), whose terms shrink at least 4-fold each.
    v = d / s
    total, power, j = d * v, 2 * x * v, 1
    while True:
        power *= v * v
        new = total + power / (2 * j + 1)
        if new == total:
            return total
        total, j = new, j + 1


def _log_binomial_half(k, n):
    """log(C(n, k) / 2^n) for 0 < k < n, by Stirling's formula with exact error terms.

    The lgamma difference log n! - log k! - log (n-k)! cancels digits of numbers near n log n,
    which at n = 10^5 leaves only ~1e-10 relative accuracy; this form keeps ~1e-13 wherever
    the result is above float underflow (its largest term, the deviance, is below ~745 there).
    """
    half = n / 2
    return (_stirling_error(n) - _stirling_error(k) - _stirling_error(n - k)
            - _deviance(k, half) - _deviance(n - k, half)
            + 0.5 * math.log(n / (2 * math.pi * k * (n - k))))


def mcnemar_exact_p(b, c):
    """Two-sided exact McNemar test: binomial test of b successes in b + c trials at p = 0.5,
    p = min(1, 2 P(X <= min(b, c))) for X ~ Bin(b + c, 1/2), in float arithmetic in O(sqrt(n)).
    """
    b, c = int(b), int(c)
    n, m = b + c, min(b, c)
    if abs(b - c) <= 1:  # n = 0, or the lower tail holds half the mass or more: exactly 1
        return 1.0
    if m == 0:
        return math.ldexp(1.0, 1 - n)  # 2 / 2^n, exact down to float underflow
    # P(X = k - 1) / P(X = k) = k / (n - k + 1), so the tail is P(X = m) times 1 + r_m +
    # r_m r_{m-1} + ... Its first j products are below exp(-j^2 / n), so 10 sqrt(n) of them
    # leave out less than n exp(-100) of the sum.
    k = np.arange(m, max(0, m - 10 * math.isqrt(n) - 10), -1, dtype=np.float64)
    tail_over_term = 1.0 + float(np.cumprod(k / (n - k + 1)).sum())
    return min(1.0, math.exp(_log_binomial_half(m, n) + math.log(2 * tail_over_term)))


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


def confident_thresholds(probs, labels):
    """Per class j, the mean p(j) over the images labelled j: the model's own typical confidence
    in j, so that a label-smoothed model (p rarely above 0.9) is judged on its own scale. A class
    no image is labelled with has no such estimate: its threshold is inf, so nothing is flagged
    as belonging to it."""
    counts = np.bincount(labels, minlength=probs.shape[1])
    sums = np.bincount(labels, weights=probs[np.arange(len(labels)), labels], minlength=probs.shape[1])
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)


def confident_class(probs, thresholds):
    """Per image, the most probable of the classes whose p reaches that class's threshold (the
    label included, as in the confident joint); -1 where no class reaches its threshold."""
    passing = probs >= thresholds - SUSPECT_TOLERANCE
    return np.where(passing.any(1), np.where(passing, probs, -1.0).argmax(1), -1)


def label_error_suspects(base, impr, classes, listed=50):
    """Possible label errors, to check by eye: test images whose label both models doubt.

    Each model flags an image labelled i for class j != i when j is its confident class (Northcutt
    et al. 2021, "Confident Learning": p(j) >= t_j, t_j = the model's mean p(j) on the images
    labelled j, argmax over the classes that pass). An image is a suspect when both models flag
    it for the same j. Why both: a single model's flags mix label errors with its own confident
    mistakes; a wrong test label (never seen in training) leaves any decent model confident in
    the true class, while two differently trained models' mistakes overlap less, so requiring
    agreement keeps precision. And as each model is held to its own thresholds, a miscalibrated
    one (label smoothing, overconfidence) neither vetoes everything nor dominates, as it would if
    the probabilities were averaged. Ranked by the two models' mean p(label), lowest first
    (confident learning's "self-confidence"): on real CIFAR-10 predictions with flipped labels its
    first 50 held more flips than ranking by the margin p(j) - p(label), which favours the shared
    confident mistakes of overconfident models. Each suspect's baseline_confidence and
    improved_confidence are the models' p(j); label_confidence is the ranking's mean p(label)."""
    labels, n = base["labels"], len(base["labels"])
    thresholds = [confident_thresholds(s["probs"].astype(np.float64), labels) for s in (base, impr)]
    flags = [confident_class(s["probs"].astype(np.float64), t) for s, t in zip((base, impr), thresholds)]
    rows = np.flatnonzero((flags[0] == flags[1]) & (flags[0] >= 0) & (flags[0] != labels))
    agreed = flags[0][rows]
    p_b, p_i = (s["probs"][rows, agreed].astype(np.float64) for s in (base, impr))
    p_label = (base["probs"][rows, labels[rows]].astype(np.float64) + impr["probs"][rows, labels[rows]]) / 2
    margin = (p_b + p_i) / 2 - p_label
    order = np.argsort(p_label, kind="stable")[:listed]
    return {"rule": suspect_rule(thresholds), "count": int(len(rows)), "share": round(len(rows) / n, 6),
            "suspects": [{"index": int(base["indices"][r]), "row": int(r), "label": int(labels[r]),
                          "label_name": classes[labels[r]], "agreed": int(j), "agreed_name": classes[j],
                          "baseline_confidence": round(float(pb), 4), "improved_confidence": round(float(pi), 4),
                          "label_confidence": round(float(pl), 4), "margin": round(float(m), 4)}
                         for r, j, pb, pi, pl, m in zip(rows[order], agreed[order], p_b[order], p_i[order],
                                                        p_label[order], margin[order])]}


def suspect_rule(thresholds):
    """What the suspects rule was: its name and each model's per-class thresholds (None for a
    class no test image is labelled with), with their range for a sentence."""
    def summary(t):
        known = t[np.isfinite(t)]
        return {"per_class": [round(float(v), 4) if np.isfinite(v) else None for v in t],
                "min": round(float(known.min()), 4) if len(known) else None,
                "max": round(float(known.max()), 4) if len(known) else None}
    return {"name": SUSPECT_RULE, "reference": "Northcutt et al. 2021, Confident Learning",
            **dict(zip(("baseline", "improved"), map(summary, thresholds)))}


def high_confidence_table(base, impr, thresholds=THRESHOLDS):
    """Wrong predictions with max-softmax >= t, per threshold; rates over all test images."""
    n, rows = len(base["labels"]), []
    for t in thresholds:
        nb = int(((base["conf"] >= t) & ~base["correct"]).sum())
        ni = int(((impr["conf"] >= t) & ~impr["correct"]).sum())
        rows.append({"threshold": t, "baseline": nb, "improved": ni,
                     "baseline_rate": round(nb / n, 6), "improved_rate": round(ni / n, 6),
                     "reduction": nb - ni, "relative_reduction": round((nb - ni) / nb, 6) if nb else None})
    return rows


def per_class_changes(base, impr, classes):
    """Accuracy of each class for both models (metrics.json's) and its change (None for a class
    with no test image)."""
    rows, counts = [], np.bincount(base["labels"], minlength=len(classes))
    for c, name in enumerate(classes):
        k, acc_b, acc_i = int(counts[c]), *(s["metrics"]["per_class_accuracy"][c] for s in (base, impr))
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


def recheck_cases(cases_path, base, impr, classes):
    """The baseline's failure cases with the improved model's prediction on the same image."""
    _, cases = read_cases(cases_path, base["labels"], base["indices"], base["run"], fields=("pred",),
                          probs=base["probs"])
    out = []
    for case in cases:
        r = case["row"]
        t, p = case["true"], int(impr["pred"][r])
        out.append({"index": case["index"], "row": r, "true": t, "true_name": classes[t],
                    "baseline_pred": case["pred"], "baseline_pred_name": classes[case["pred"]],
                    "baseline_confidence": round(float(base["conf"][r]), 6),
                    "baseline_true_prob": round(float(base["probs"][r, t]), 6),
                    "improved_pred": p, "improved_pred_name": classes[p],
                    "improved_confidence": round(float(impr["conf"][r]), 6),
                    "improved_true_prob": round(float(impr["probs"][r, t]), 6), "fixed": p == t})
    return out


def calibration_summary(base, impr):
    """NLL, Brier and ECE of both models (evaluate.py's, from metrics.json) and their change."""
    cal = {k: s["metrics"] for k, s in (("baseline", base), ("improved", impr))}
    out = {"n_bins": ECE_BINS, **{k: {m: round(c[m], 6) for m in ("nll", "brier", "ece")} for k, c in cal.items()}}
    out["difference"] = {m: round(cal["improved"][m] - cal["baseline"][m], 6) for m in ("nll", "brier", "ece")}
    return out


def runs_and_changes(base, impr):
    """comparison.json's account of the two runs (where, which weights, which code) and of the
    training settings (settings.SETTINGS) in which they differ."""
    def side(s):
        c = s["config"]
        return {"run": str(s["run"]), "checkpoint": s["metrics"].get("checkpoint"),
                "epoch": s["metrics"].get("epoch"),
                **{k: c.get(k) for k in ("name", "seed", "git_commit", "arch", "dataset", "epochs",
                                         "label_smoothing", "cutmix_prob", "cutmix_alpha", "augment")}}
    cb, ci = base["config"], impr["config"]
    changed = sorted(changed_settings(cb, ci))
    return {"runs": {"baseline": side(base), "improved": side(impr)}, "changed_settings": changed,
            "changed_values": {k: {"baseline": cb.get(k), "improved": ci.get(k)} for k in changed},
            "same_checkpoint": base["metrics"].get("checkpoint") == impr["metrics"].get("checkpoint")}


#### Seeds and ablation (make seeds, make ablation)

def seed_summary(dirs):
    """Mean and sample std over seeds of each model's accuracy and of the paired difference.

    Each folder holds baseline/ and improved/, evaluated; apart from the seed, every baseline must
    have the same settings (and every improved model), or the spread would mix in other changes."""
    pairs = [(load_side(Path(d) / "baseline"), load_side(Path(d) / "improved")) for d in dirs]
    for base, impr in pairs:
        check_same_test_set(base, impr)
        for ref, side in ((pairs[0][0], base), (pairs[0][1], impr)):
            if settings_of(side["config"], {"seed"}) != settings_of(ref["config"], {"seed"}):
                raise UserError(f"{side['run']} differs from {ref['run']} in more than its seed; "
                                "retrain it with make seeds")
    seeds = [base["config"].get("seed") for base, _ in pairs]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds lists seed {max(seeds, key=seeds.count)} twice; give each seed once")

    def stats(values):
        v = np.array(values, dtype=np.float64)
        return {"values": [round(float(x), 6) for x in v], "mean": round(float(v.mean()), 6),
                "std": round(float(v.std(ddof=1)), 6) if len(v) > 1 else None}
    acc_b = [float(base["correct"].mean()) for base, _ in pairs]
    acc_i = [float(impr["correct"].mean()) for _, impr in pairs]
    return {"seeds": seeds, "baseline": stats(acc_b), "improved": stats(acc_i),
            "difference": stats(np.subtract(acc_i, acc_b)),
            "improved_better": sum(a > b for a, b in zip(acc_i, acc_b))}


def ablation_table(base, runs):
    """Each run against the baseline: what it changed, its accuracy, the 2x2's discordant pairs."""
    rows = []
    for run in runs:
        side = load_side(run)
        check_same_test_set(base, side)
        table = two_by_two(base["correct"], side["correct"])
        changed = runs_and_changes(base, side)["changed_values"]
        rows.append({"run": str(run), "name": side["run"].name,
                     "changed": {k: v["improved"] for k, v in changed.items()},
                     "accuracy": round(float(side["correct"].mean()), 6),
                     "difference": round(float(side["correct"].mean() - base["correct"].mean()), 6),
                     "ece": round(side["metrics"]["ece"], 6),
                     **{k: table[k] for k in ("corrected", "worsened", "mcnemar_p")}})
    return rows


#### Grad-CAM maps of the cases, for the figure

def gradcam_rows(test_x, base, impr, rechecked, device):
    """Images and the four maps per case: the baseline's from gradcam.py's files (not recomputed),
    the improved model's at the same layer, with the weights evaluate.py evaluated."""
    rows = [c["row"] for c in rechecked]
    images = test_x()[rows]
    explained = read_gradcam(base["run"], rechecked)
    layer_name = explained["layer"]
    maps = dict(zip((("baseline", "pred"), ("baseline", "true")), read_gradcam_maps(
        base["run"], [c["index"] for c in rechecked], layer_name, explained["checkpoint"])))
    model, config, _, _ = load_evaluated(impr["run"], device)  # the weights of its predictions.npz
    x = normalize(images.to(device), config["mean"], config["std"])
    layer = find_layer(model, layer_name, config["arch"])
    for target in ("pred", "true"):
        t = [c["improved_pred"] if target == "pred" else c["true"] for c in rechecked]
        maps["improved", target] = grad_cam(model, layer, x, t).cpu()  # (N, H, W) in [0, 1]
    return images, maps, layer_name


#### Command line

def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--baseline", required=True, help="baseline run folder (evaluated)")
    p.add_argument("--improved", required=True, help="improved run folder (evaluated)")
    p.add_argument("--cases", default=None, help="the baseline's failures.json to re-check (+ Grad-CAM)")
    p.add_argument("--out", required=True, help="folder for comparison.json and the figures "
                   "(with --seeds or --ablation: for seeds.json or ablation.json alone)")
    # 2000 resamples: each limit moves by about 0.03 points (s.d.) between seeds on 10,000 images.
    p.add_argument("--bootstrap", type=at_least(1), default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap generator")
    p.add_argument("--device", default="auto", help="for Grad-CAM: " + DEVICE_HELP)
    p.add_argument("--data-dir", default=None, help="override the runs' --data-dir (Grad-CAM images)")
    p.add_argument("--seeds", nargs="+", default=None, metavar="DIR",
                   help="folders with baseline/ and improved/, one per seed: mean +/- std")
    p.add_argument("--ablation", nargs="+", default=None, metavar="RUN",
                   help="runs that change part of the improvement, each compared with the baseline")
    return p


def check_out(args):
    out = Path(args.out)
    if Path(args.baseline).resolve() == Path(args.improved).resolve():
        raise UserError(f"--baseline and --improved are the same run ({args.baseline}); a run "
                        "compared with itself has nothing to show")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the comparison's files")
    for run in (args.baseline, args.improved):
        if out.resolve() == Path(run).resolve():
            raise UserError(f"--out {out} is a run folder; write the comparison to its own folder, "
                            "for example runs/compare")
    return out


def statistics(base, impr, args):
    """Everything comparison.json holds that needs no figure, no model and no image."""
    table = two_by_two(base["correct"], impr["correct"])
    acc_b, acc_i = float(base["correct"].mean()), float(impr["correct"].mean())
    rows, gains, losses = per_class_changes(base, impr, base["config"]["classes"])
    bins = np.linspace(0, 1, 21)
    runs = runs_and_changes(base, impr)
    return {**table, "accuracy_baseline": round(acc_b, 6), "accuracy_improved": round(acc_i, 6),
            "accuracy_difference": round(acc_i - acc_b, 6),
            "bootstrap_ci95": bootstrap_ci(table["corrected"], table["worsened"], table["n_test"],
                                           args.bootstrap, args.seed),
            "bootstrap": {"resamples": args.bootstrap, "seed": args.seed, "method": "paired, percentile"},
            "high_confidence_errors": high_confidence_table(base, impr),
            "confidence": {"bins": bins.round(4).tolist(), "baseline": confidence_summary(base, bins),
                           "improved": confidence_summary(impr, bins)},
            "calibration": calibration_summary(base, impr),
            "label_error_suspects": label_error_suspects(base, impr, base["config"]["classes"]),
            "per_class": rows, "top_gains": gains, "top_losses": losses,
            "recipe_checks": recipe_checks(base, impr, acc_i - acc_b, runs["changed_values"]),
            "corruptions": None, "cases": None,
            "figures": ["confidence", "high_confidence", "per_class", "reliability"],
            **runs, **provenance()}


def write_figures(result, base, impr, cam, grids, test_x, out):
    plt = pyplot()
    names = (base["run"].name, impr["run"].name)
    bins = np.asarray(result["confidence"]["bins"])
    with plt.rc_context(figures.STYLE):
        figures.plot_confidence(base, impr, names, bins, out, plt)
        figures.plot_high_confidence(result["high_confidence_errors"], names, out, plt)
        figures.plot_per_class(result["per_class"], result["top_gains"], result["top_losses"], out, plt)
        # evaluate.py's calibration with its reliability bins, as metrics.json holds it
        figures.plot_reliability({"baseline": base["metrics"], "improved": impr["metrics"]}, names, out, plt)
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


def summarise_only(args, base, out):
    """make seeds / make ablation: their one summary, in its own small file (no full comparison)."""
    if args.seeds:
        result, name = {"seeds": seed_summary(args.seeds)}, "seeds.json"
        sd = result["seeds"]
        spread = sd["difference"]["std"]
        print(f"{len(sd['seeds'])} seeds: difference {100 * sd['difference']['mean']:+.2f} points"
              + (f" +/- {100 * spread:.2f} (std)" if spread is not None else ""))
    else:
        result, name = {"ablation": ablation_table(base, [args.improved, *args.ablation])}, "ablation.json"
        for row in result["ablation"]:
            print(f"ablation {row['name']}: {100 * row['accuracy']:.2f}% ({100 * row['difference']:+.2f} "
                  f"points, McNemar p={row['mcnemar_p']:.3g}), changes {row['changed']}")
    save_json(conform({**result, **provenance()}, name), out / name)
    return result


def run(args):
    out = check_out(args)
    base, impr = load_side(args.baseline), load_side(args.improved)
    check_same_test_set(base, impr)
    if args.seeds or args.ablation:
        return summarise_only(args, base, out)
    result = statistics(base, impr, args)
    if not result["same_checkpoint"]:
        print(f"warning: the runs were evaluated with different checkpoints "
              f"({base['metrics'].get('checkpoint')} vs {impr['metrics'].get('checkpoint')})")
    grids = [load_grid(s["run"], s["metrics"]) for s in (base, impr)]
    if None in grids:
        lacking = [str(s["run"]) for s, g in zip((base, impr), grids) if g is None]
        print(f"note: no corruptions.json in {' and '.join(lacking)}; corruption comparison skipped "
              "(python corruptions.py --run <run> writes it)")
    else:
        result["corruptions"] = compare_grids(*grids)
        result["figures"].append("corruptions")

    @functools.cache
    def test_x():  # the test images, loaded once and only if a figure needs them
        return dataset_from_config(base["config"], args.data_dir).test_x
    cam = None
    if args.cases:  # before any figure is written: it checks the improved model's weights
        result["cases"] = recheck_cases(args.cases, base, impr, base["config"]["classes"])
        result["cases_file"] = str(args.cases)
        cam = gradcam_rows(test_x, base, impr, result["cases"], resolve_device(args.device))
        result["figures"].append("gradcam_compare")
        result["gradcam_layer"] = cam[2]
    write_figures(result, base, impr, cam, grids, test_x, out)
    save_json(conform(result, "comparison.json"), out / "comparison.json")
    lo, hi = result["bootstrap_ci95"]
    cal = result["calibration"]
    print(f"{out / 'comparison.json'}: accuracy {100 * result['accuracy_baseline']:.2f}% -> "
          f"{100 * result['accuracy_improved']:.2f}% ({100 * result['accuracy_difference']:+.2f} points, "
          f"95% CI {100 * lo:+.2f} to {100 * hi:+.2f}); corrected {result['corrected']}, worsened "
          f"{result['worsened']}, McNemar p={result['mcnemar_p']:.3g}; ECE "
          f"{100 * cal['baseline']['ece']:.2f}% -> {100 * cal['improved']['ece']:.2f}%")
    if result["corruptions"]:
        mce = result["corruptions"]["mean_corruption_error"]
        print(f"mean corruption error {100 * mce['baseline']:.2f}% -> {100 * mce['improved']:.2f}%")
    return result


#### Corruption grids side by side

def compare_grids(b, i):
    """Per-corruption mean accuracy of both runs, its change, and where the change is largest."""
    for key in ("source", "n", "limit_test", "seed", "severities"):
        # Files written before "source" existed had generated corruptions.
        vb, vi = (g.get(key, "generated" if key == "source" else None) for g in (b, i))
        if vb != vi:
            raise UserError(f"the runs' corruptions.json differ in {key} ({vb} vs {vi}); "
                            "re-run python corruptions.py on both with the same flags")
    names = [n for n in b["corruptions"] if n in i["corruptions"]]
    if not names:
        raise UserError("the runs' corruptions.json have no corruption in common; re-run python "
                        "corruptions.py on both with the same --corruptions")
    rows = []
    for n in names:
        mb, mi = float(np.mean(b["accuracy"][n])), float(np.mean(i["accuracy"][n]))
        rows.append({"name": n, "baseline": round(mb, 6), "improved": round(mi, 6), "difference": round(mi - mb, 6),
                     "by_severity": [round(q - p, 6) for p, q in zip(b["accuracy"][n], i["accuracy"][n])]})
    ranked = sorted(rows, key=lambda r: (r["difference"], r["name"]))
    bench = [n for n in names if n in CIFAR_C_STANDARD]
    mce = {k: mean_error(g["accuracy"], names) for k, g in (("baseline", b), ("improved", i))}
    return {"source": b.get("source", "generated"), "severities": b["severities"], "corruptions": names,
            "n": b["n"],
            "clean_accuracy": {"baseline": b["clean_accuracy"], "improved": i["clean_accuracy"]},
            "mean_corruption_error": {**mce, "difference": round(mce["improved"] - mce["baseline"], 6)},
            "mean_corruption_error_benchmark": {k: mean_error(g["accuracy"], bench)
                                                for k, g in (("baseline", b), ("improved", i))},
            "per_corruption": rows,
            "helps_most": [r["name"] for r in reversed(ranked) if r["difference"] > 0][:3],
            "hurts_most": [r["name"] for r in ranked if r["difference"] < 0][:3]}


def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
