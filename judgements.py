"""The study's research judgements: thresholds, published figures, and the checks they decide.

A judgement is data, not words: compare.py makes these checks from the runs' files and stores
them in comparison.json ("recipe_checks") beside the numbers they judge; the report only words
them (report/prose.py). Every threshold is here, once, with the reason for its value.
"""
import re
from pathlib import Path

# Published gains of CutMix for ResNet-type networks, in points of test accuracy, per dataset
# (../shared/FACTS.md): Westlake-AI/openmixup, CIFAR ResNet-18, CIFAR-100, 200 epochs: 76.42 ->
# 79.45 (+3.0); clovaai/CutMix-PyTorch, PyramidNet-200, CIFAR-100, 300 epochs: +2.2.
PUBLISHED_GAIN = {"CIFAR-100": {"low": 2.2, "high": 3.0,
                                "source": "openmixup's ResNet-18 and CutMix's PyramidNet-200"}}
THRESHOLDS = {
    "far_above": 2.0,  # a gain more than twice the published upper end is flagged
    "best_final_gap": 0.01,  # best-on-test above final by a point or more: the test set chose an epoch
    "high_ece": 0.05,  # 5 points between confidence and accuracy: far off for a CIFAR classifier
    "overfit_train_acc": 0.99,  # near 100 % on its own training batches ...
    "overfit_loss_rise": 1.1,  # ... while the final test loss is 10 % above its minimum
    "underfit_train_acc": 0.9,  # a baseline below this on its training batches has not fit the data
}


def published_dataset(name):
    """The dataset whose published gains apply to a run's --dataset: the official name or a folder
    copy of CIFAR-100 count; an archive given by path may hold generated images, so it does not."""
    base = Path(str(name)).name
    if re.search(r"\.(tar\.gz|tgz)$", base, re.I):
        return None
    return "CIFAR-100" if re.search(r"cifar-?100", base, re.I) else None


def published_gain_check(accuracy_difference, changed_values, dataset):
    """The gain against the published range for CutMix on this dataset, or None where no range is
    on record (no CutMix added, or another dataset): a check not made, not one passed."""
    adds_cutmix = bool((changed_values.get("cutmix_prob") or {}).get("improved"))
    known = PUBLISHED_GAIN.get(published_dataset(dataset)) if adds_cutmix else None
    if known is None:
        return None
    gain = round(accuracy_difference, 6)  # as comparison.json's accuracy_difference
    return {"dataset": published_dataset(dataset), **known, "gain": gain,
            "far_above": 100 * gain > THRESHOLDS["far_above"] * known["high"]}


def fit_check(history):
    """Under- or over-fitting of the baseline from train.py's history, or None without one (an
    imported model)."""
    if not history:
        return None
    last = history[-1]
    low = min(history, key=lambda h: h["test_loss"])
    if last["train_acc"] < THRESHOLDS["underfit_train_acc"]:
        verdict = "under"
    elif (last["train_acc"] >= THRESHOLDS["overfit_train_acc"]
          and last["test_loss"] >= THRESHOLDS["overfit_loss_rise"] * low["test_loss"]):
        verdict = "over"
    else:
        verdict = None
    return {"verdict": verdict, "epochs": last["epoch"], "train_acc": last["train_acc"],
            "final_test_loss": last["test_loss"], "lowest_test_loss": low["test_loss"],
            "lowest_epoch": low["epoch"]}


def best_final_check(config):
    """How far the best-on-test accuracy of training is above the final one, or None where the run
    has no training record (imported)."""
    best, final = config.get("best_test_accuracy"), config.get("final_test_accuracy")
    if best is None or final is None:
        return None
    return {"best": best, "final": final, "best_epoch": config.get("best_epoch"),
            "gap": round(best - final, 6), "flagged": best - final >= THRESHOLDS["best_final_gap"]}


def ece_check(metrics):
    return {"ece": metrics["ece"], "high": metrics["ece"] > THRESHOLDS["high_ece"]}


def recipe_checks(base, impr, accuracy_difference, changed_values):
    """comparison.json's recipe_checks; base and impr are compare.py's loaded runs (config, metrics,
    history)."""
    return {"thresholds": THRESHOLDS,
            "published_gain": published_gain_check(accuracy_difference, changed_values,
                                                   base["config"]["dataset"]),
            "fit": fit_check(base["history"]),
            "best_final": {side: best_final_check(s["config"]) for side, s in (("baseline", base), ("improved", impr))},
            "ece": {side: ece_check(s["metrics"]) for side, s in (("baseline", base), ("improved", impr))}}
