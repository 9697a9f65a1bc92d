"""prose.py's sentences read as English for every count (0, 1, many) and sign (-, 0, +)."""
import pytest

import judgements
import prose
import shapes
import tex


def read(kind, data):
    """data as report/study.py hands it to prose.py: each optional key of its kind present, null if absent."""
    return shapes.filled(data, shapes.FILE_SHAPES[kind])


def plus(text):
    return rf"\ensuremath{{{text}}}"


#### Numbers

@pytest.mark.parametrize("x, digits, text", [
    (0.0, 2, "0.00"), (0.0123, 2, "+1.23"), (-0.005, 2, "-0.50"), (0.001, 1, "+0.1"),
    # A nonzero difference below the printed precision (one image of 25,000) keeps its sign.
    (0.00004, 2, "+0.004"), (-0.000001, 2, "-0.0001"), (0.0004, 1, "+0.04"),
    (1e-17, 2, "0.00"), (-1e-17, 1, "0.0"),  # float noise: an unsigned zero, never -0.00
])
def test_signed_never_prints_a_signed_zero(x, digits, text):
    assert tex.signed(x, digits) == plus(text)


def test_count_and_list():
    assert [tex.count(n, "class", "classes") for n in (0, 1, 2)] == ["0 classes", "1 class", "2 classes"]
    assert tex.count(1, "test image") == "1 test image" and tex.count(3, "error") == "3 errors"
    assert tex.and_list(["a"]) == "a" and tex.and_list(["a", "b"]) == "a and b"
    assert tex.and_list(["a", "b", "c"]) == "a, b and c"


#### Accuracy and significance

def accuracy(d, lo, hi, n=1000, acc_b=0.6):
    return {"accuracy_difference": d, "bootstrap_ci95": [lo, hi], "n_test": n,
            "accuracy_baseline": acc_b, "accuracy_improved": acc_b + d}


def test_accuracy_sentence_for_a_positive_difference():
    assert prose.accuracy_sentence(read("comparison.json", accuracy(0.15, 0.12, 0.18))) == (
        r"The improved model is more accurate than the baseline on the 1000 test images: "
        r"75.00\,\% against 60.00\,\% (\ensuremath{+15.00} points); the paired bootstrap 95\,\% "
        r"interval of the difference, [\ensuremath{+12.00}, \ensuremath{+18.00}] points, "
        r"lies entirely above zero.")


def test_accuracy_sentence_for_negative_zero_and_tiny_differences():
    worse = prose.accuracy_sentence(read("comparison.json", accuracy(-0.01, -0.03, -0.002)))
    assert "is less accurate than" in worse and r"(\ensuremath{-1.00} points)" in worse
    assert r"[\ensuremath{-3.00}, \ensuremath{-0.20}] points, lies entirely below zero." in worse
    same = prose.accuracy_sentence(read("comparison.json", accuracy(0.0, -0.01, 0.01)))
    assert "is exactly as accurate as" in same and r"(\ensuremath{0.00} points)" in same
    assert "points, includes zero, so the data are also compatible with no difference." in same
    one_image = prose.accuracy_sentence(read("comparison.json", accuracy(0.00004, -0.0004, 0.0005, n=25000)))
    assert "more accurate than" in one_image and r"(\ensuremath{+0.004} points)" in one_image
    assert "on the 1 test image:" in prose.accuracy_sentence(read("comparison.json", accuracy(0.0, 0.0, 0.0, n=1)))
    assert not any(" is includes" in s or " is lies" in s for s in (worse, same, one_image))


@pytest.mark.parametrize("c, w, text", [
    (0, 0, "corrects 0 baseline errors and introduces 0 new ones"),
    (1, 0, "corrects 1 baseline error and introduces 0 new ones"),
    (0, 1, "corrects 0 baseline errors and introduces 1 new one"),
    (12, 3, "corrects 12 baseline errors and introduces 3 new ones"),
])
def test_significance_sentence_counts(c, w, text):
    s = prose.significance_sentence(read("comparison.json", {"mcnemar_p": 0.5, "corrected": c, "worsened": w}))
    assert f"the improved model {text}; McNemar's exact test gives $p = 0.50$, not below 0.05" in s


@pytest.mark.parametrize("errors, text", [(0, "0 errors"), (1, "1 error"), (3, "3 errors")])
def test_high_confidence_sentence_counts_errors_shared_by_both(errors, text):
    cmp = {"high_confidence_errors": [{"threshold": 0.9, "baseline": 1, "improved": 1}],
           "corrected": 0, "worsened": 0, "both_wrong": errors, "n_test": 10, "changed_values": {}, "per_class": []}
    assert prose.high_confidence_sentence(read("comparison.json", cmp)).endswith(
        f"stayed at 1 (of 10 test images), with {text} at any confidence for both.")


@pytest.mark.parametrize("smoothing, n_classes, cap", [(0.1, 10, "0.91"), (0.1, 100, "0.90"), (0.0, 10, None)])
def test_a_threshold_at_label_smoothings_cap_is_said_to_count_targets(smoothing, n_classes, cap):
    """Label smoothing eps trains towards 1 - eps + eps/C on the top class: near that, few
    predictions of the improved model reach the threshold, whatever their correctness."""
    cmp = {"high_confidence_errors": [{"threshold": 0.5, "baseline": 90, "improved": 80},
                                      {"threshold": 0.9, "baseline": 40, "improved": 1}],
           "corrected": 5, "worsened": 20, "both_wrong": 100, "n_test": 1000,
           "per_class": [{"class": k} for k in range(n_classes)],
           "changed_values": {"label_smoothing": {"baseline": 0.0, "improved": smoothing}},
           **accuracy(-0.015, -0.02, -0.01), "mcnemar_p": 0.01}
    text, end = prose.high_confidence_sentence(read("comparison.json", cmp)), prose.conclusion_sentence(read("comparison.json", cmp), "x")
    if cap:
        assert f"Label smoothing 0.1 trains the improved model towards a top-class probability of {cap}" in text
        assert end.endswith(f"(40 $\\to$ 1), a threshold near the {cap} that label smoothing trains the "
                            "improved model to reach.")
    else:
        assert "Label smoothing" not in text and end.endswith("(40 $\\to$ 1).")


#### Calibration and corruptions

def calibration(ece_b, ece_i):
    return {"calibration": {"n_bins": 15, "baseline": {"ece": ece_b, "nll": 1.5, "brier": 0.5},
                            "improved": {"ece": ece_i, "nll": 1.2, "brier": 0.4}}}


@pytest.mark.parametrize("ece_b, ece_i, text", [
    (0.10, 0.04, r"fell: 10.00\,\% for the baseline, 4.00\,\% for"),
    (0.04, 0.10, r"rose: 4.00\,\% for the baseline, 10.00\,\% for"),
    (0.04, 0.04, r"stayed the same: 4.00\,\% for the baseline, 4.00\,\% for"),
    (0.040001, 0.040004, r"stayed the same: 4.00\,\% for the baseline, 4.00\,\% for"),  # as printed
])
def test_calibration_sentence_direction_follows_the_printed_numbers(ece_b, ece_i, text):
    assert f"(15 bins, top label) {text} the improved model" in prose.calibration_sentence(read("comparison.json", 
        calibration(ece_b, ece_i)))


def corruptions(names, severities, n, mce_b, mce_i, helps=(), hurts=()):
    return {"corruptions": {"corruptions": names, "severities": severities, "n": n,
                            "mean_corruption_error": {"baseline": mce_b, "improved": mce_i},
                            "helps_most": list(helps), "hurts_most": list(hurts)}}


def test_corruptions_sentence_for_one_and_many():
    one = prose.corruptions_sentence(read("comparison.json", corruptions(["fog"], [3], 1, 0.5, 0.6, hurts=["fog"])))
    assert one == (r"Under 1 synthetic corruption at severity 3 (1 test image), the mean corruption "
                   r"error rose: 50.00\,\% for the baseline, 60.00\,\% for the improved model; it "
                   r"hurts most against fog.")
    many = prose.corruptions_sentence(read("comparison.json", corruptions(["fog", "gaussian_noise"], [1, 2, 3, 4, 5], 100,
                                                  0.6, 0.5, helps=["gaussian_noise"])))
    assert many.startswith("Under 2 synthetic corruptions at severities 1--5 (100 test images), "
                           "the mean corruption error fell:")
    assert many.endswith("; the change helps most against gaussian noise.")
    same = prose.corruptions_sentence(read("comparison.json", corruptions(["fog"], [1, 2], 10, 0.500001, 0.500004)))
    assert r"error stayed the same: 50.00\,\% for the baseline, 50.00\,\%" in same


#### Per class and cases

def per_class(changes, names=None):
    names = names or [f"c{k}" for k in range(len(changes))]
    rows = [{"name": m, "n": 100, "change": ch} for m, ch in zip(names, changes)]
    ranked = sorted(rows, key=lambda r: r["change"])
    return {"per_class": rows + [{"name": "empty", "n": 0, "change": None}],  # no test image: skipped
            "top_gains": [r for r in reversed(ranked) if r["change"] > 0][:5],
            "top_losses": [r for r in ranked if r["change"] < 0][:5]}


def test_per_class_sentence_for_many_gains_and_one_loss():
    cmp = per_class([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, -0.02, 0.0, 0.0])
    assert prose.per_class_sentence(read("comparison.json", cmp)) == (
        r"Of the 10 classes, 7 gain accuracy, 1 loses and 2 are unchanged; the largest gains "
        r"(points) are c6 (\ensuremath{+7.0}), c5 (\ensuremath{+6.0}) and c4 (\ensuremath{+5.0}); "
        r"the only loss is c7 (\ensuremath{-2.0}).")


def test_per_class_sentence_for_no_gain_and_all_losses_listed():
    cmp = per_class([0.0, 0.0, -0.01, -0.02], names=["a", "b", "aquarium_fish", "d"])
    assert prose.per_class_sentence(read("comparison.json", cmp)) == (
        r"Of the 4 classes, none gain accuracy, 2 lose and 2 are unchanged; the losses (points) "
        r"are d (\ensuremath{-2.0}) and aquarium\_fish (\ensuremath{-1.0}).")


def test_per_class_sentence_for_one_gain_and_nothing_else():
    assert prose.per_class_sentence(read("comparison.json", per_class([0.01, 0.0]))) == (
        r"Of the 2 classes, 1 gains accuracy, none lose and 1 is unchanged; the only gain "
        r"(points) is c0 (\ensuremath{+1.0}).")
    assert prose.per_class_sentence(read("comparison.json", per_class([0.0]))) == (
        "Of the 1 class, none gain accuracy, none lose and 1 is unchanged.")


def case(index, fixed):
    return {"index": index, "true_name": f"t{index}", "improved_pred_name": f"p{index}", "fixed": fixed}


@pytest.mark.parametrize("fixed, text", [
    ([True], "The improved model classifies the one baseline failure case correctly."),
    ([False], "The improved model also misclassifies the one baseline failure case."),
    ([True, True], "Of the 2 baseline failure cases, the improved model classifies both correctly."),
    ([True] * 3, "Of the 3 baseline failure cases, the improved model classifies all 3 correctly."),
    ([False] * 3, "Of the 3 baseline failure cases, the improved model classifies none of them "
                  "correctly."),
    ([False, True, False], r"Of the 3 baseline failure cases, the improved model classifies 1 of "
                           r"them correctly; still wrong: \#0 (t0 $\to$ p0), \#2 (t2 $\to$ p2)."),
])
def test_cases_sentence_counts(fixed, text):
    assert prose.cases_sentence(read("comparison.json", {"cases": [case(k, f) for k, f in enumerate(fixed)]})) == text
    assert prose.cases_sentence(read("comparison.json", {"cases": []})) == ""


#### Stated causes and the rule's planted score

def stated(index, cause, sentence=None):
    return {"index": index, "cause": cause, "sentence": sentence or f"{cause}: why."}


@pytest.mark.parametrize("causes, fixed, text", [
    (["context", "context"], [True, False], "gets 1 of the 2 context-cue cases right."),
    # in judgements.CAUSES' order, undecided last
    (["undecided", "lookalike", "context"], [True, False, True],
     "gets the look-alike case wrong, the context-cue case right and the undecided case right."),
    (["fragile"] * 3, [False] * 3, "gets none of the 3 fragile cases right."),
    (["fragile"] * 3 + ["context"] * 2, [True] * 5, "gets both context-cue cases right and all 3 fragile cases right."),
])
def test_causes_recheck_sentence_counts_by_cause(causes, fixed, text):
    cmp = read("comparison.json", {"cases": [case(k, f) for k, f in enumerate(fixed)]})
    s = prose.causes_recheck_sentence({"cases": [stated(k, c) for k, c in enumerate(causes)]}, cmp)
    assert s == f"By stated cause, the improved model {text}"


def test_a_label_error_got_right_is_not_a_cause_gone():
    cmp = read("comparison.json", {"cases": [case(0, True), case(1, False)]})
    s = prose.causes_recheck_sentence({"cases": [stated(0, "label_error"), stated(1, "label_error")]}, cmp)
    assert "gets 1 of the 2 label-error cases right;" in s and "probably wrong" in s
    kept = read("comparison.json", {"cases": [case(0, False)]})
    assert "probably wrong" not in prose.causes_recheck_sentence({"cases": [stated(0, "label_error")]}, kept)
    assert prose.causes_recheck_sentence({"cases": [stated(0, "context")]}, read("comparison.json", {})) == ""


def test_cause_words_name_the_cause_once_and_escape_the_sentence():
    words = prose.cause_words(stated(3, "lookalike", "look-alike: a systematic pair (4 aquarium_fish->sweet_pepper "
                                                     "errors (4.5x an even spread)), 50% of them."))
    assert words == (r"\textbf{look-alike}: a systematic pair (4 aquarium\_fish\textrightarrow{}sweet\_pepper "
                     r"errors (4.5x an even spread)), 50\% of them.")


def score(thresholds=None, **planted):
    """score.json as tools/score_causes.py writes it, for judgements.py's rule unless told."""
    p = {"n": 4, "all": 0.75, "top": 0.75}
    data = {"thresholds": thresholds or dict(judgements.CAUSE_THRESHOLDS),
            "planted": {"table": {"label_error": {"label_error": 3, "undecided": 5}, "none": {"fragile": 2}},
                        "precision": {c: p for c in ("label_error", "lookalike", "context", "fragile")},
                        "recall": {"label_error": 0.375, "lookalike": 1.0, "context": None}, "top": 10, **planted},
            "control": {"n": 1, "stated": {}, "false_alarms": 1, "rate": 1.0}}
    return read("score.json", data)


def test_cause_score_sentence_quotes_precision_recall_and_false_alarms():
    s = prose.cause_score_sentence(score())
    assert "the 10 errors of a model" in s
    assert (r"right for 75\,\% of the 4 cases it called label errors and 75\,\% of the 4 cases it called "
            "context cues") in s
    assert r"it found 38\,\% of the planted label errors, 100\,\% of the planted look-alikes and no planted" in s
    assert r"of the 4 cases it called look-alikes, 75\,\% were the planted pair" in s
    assert r"it called 1 of its 1 error a label error or a context cue (false alarms: 100\,\%)." in s
    none = score(precision={c: {"n": 0, "all": None, "top": None} for c in ("label_error", "lookalike", "context",
                                                                         "fragile")})
    assert "right for none of the cases it called label errors" in prose.cause_score_sentence(none)
    no_control = read("score.json", {k: v for k, v in score().items() if k != "control"})
    assert prose.cause_score_sentence(no_control).endswith("; no control model was scored.")


def test_cause_score_sentence_without_a_score_or_of_another_rule():
    assert "has not been scored here: make planted" in prose.cause_score_sentence(None)
    other = dict(judgements.CAUSE_THRESHOLDS, fragile_moved=3, retired=1)
    s = prose.cause_score_sentence(score(other))
    assert r"another rule (its thresholds fragile\_moved and retired differ" in s and "%" not in s


#### Failures and seeds

@pytest.mark.parametrize("n, text", [(1, "1 case"), (4, "4 cases")])
def test_selection_sentence_counts(n, text):
    analyst = {"cases": [{}] * n, "selection": {"source": "analyst"}}
    assert prose.selection_sentence(read("failures.json", analyst)).startswith(f"An analyst chose the {text} (their")
    auto = {"cases": [{}] * n, "selection": {"source": "auto", "rule": "top_k"}}
    assert prose.selection_sentence(read("failures.json", auto)) == (
        rf"We select {n} distinct {text.split()[1]} among the most confident errors (rule: top\_k).")


@pytest.mark.parametrize("pair_count, text", [(1, "1 image"), (2, "2 images")])
def test_errors_sentence_counts(pair_count, text):
    summary = {"n_errors": 1, "n_test": 10, "errors_at_confidence": {"0.9": 1, "0.5": 1},
               "confused_pairs": [{"true_name": "cat", "pred_name": "dog", "count": pair_count}]}
    assert prose.errors_sentence(read("failures.json", {"summary": summary})) == (
        r"The baseline misclassifies 1 of 10 test images (1 at confidence $\geq$ 0.5, 1 at "
        rf"confidence $\geq$ 0.9); its most frequent confusion is cat $\to$ dog ({text}).")


@pytest.mark.parametrize("mean, text", [(-0.005, "-0.50"), (0.0, "0.00"), (0.01, "+1.00")])
def test_seeds_sentence_signs_the_mean_difference(mean, text):
    seeds = {"seeds": [1, 2, 3], "improved_better": 1, "baseline": {"mean": 0.6, "std": 0.004},
             "improved": {"mean": 0.6 + mean, "std": 0.006}, "difference": {"mean": mean, "std": 0.002}}
    s = prose.seeds_sentence({"seed": 1}, {"seed": 1}, seeds)
    assert (rf"the difference is {plus(text)} points $\pm$ 0.20, in favour of the improved model "
            "on 1 of 3 seeds") in s


#### Checks of the recipe and the coarse-maps limitation

def recipe_data(gain=0.02, dataset="cifar100", cutmix=0.5, train_acc=0.95, losses=(1.0, 0.8, 0.9),
                best_final=((0.70, 0.70), (0.72, 0.72)), eces=(0.03, 0.02)):
    """comparison.json's recipe_checks as compare.py makes them (judgements.py) for these runs."""
    history = [{"epoch": e + 1, "train_acc": train_acc, "test_loss": loss} for e, loss in enumerate(losses)]
    base, impr = ({"config": {"dataset": dataset, "num_classes": 100, "best_test_accuracy": b,
                              "final_test_accuracy": f, "best_epoch": 2},
                   "metrics": {"ece": ece}, "history": history} for (b, f), ece in zip(best_final, eces))
    return judgements.recipe_checks(base, impr, gain, {"cutmix_prob": {"baseline": 0.0, "improved": cutmix}})


def test_recipe_checks_that_pass_print_their_numbers():
    text = prose.recipe_check_sentence(recipe_data())
    assert text.startswith("Checks of the recipe: the gain of ")
    assert "compares with +2.2 to +3.0 points published for CutMix on CIFAR-100" in text
    assert "best-on-test and final accuracies differ by 0.00 and 0.00 points" in text
    assert r"ECE is 3.0\,\% and 2.0\,\%." in text and "over-fits" not in text


def test_a_gain_far_above_the_literature_is_flagged():
    text = prose.recipe_check_sentence(recipe_data(gain=0.15))
    assert text.startswith("The gain of " + plus("+15.00") + " points is far above the +2.2 to +3.0")
    assert "a weak baseline may explain much of it" in text


@pytest.mark.parametrize("dataset, cutmix", [("data/cifar10-jpeg", 0.5), ("cifar100", 0.0)])
def test_no_published_range_is_said_so(dataset, cutmix):
    text = prose.recipe_check_sentence(recipe_data(gain=0.15, dataset=dataset, cutmix=cutmix))
    assert text.startswith("No published range for this improvement on this dataset is on record, so the "
                           "size of the gain is not checked against the literature.")
    assert "far above" not in text and "Checks of the recipe: no published" not in text


def test_overfitting_baseline_is_flagged_with_its_numbers():
    text = prose.recipe_check_sentence(recipe_data(train_acc=0.995, losses=(1.0, 0.8, 0.95)))
    assert (r"The baseline ends at 99.5\,\% training accuracy while its test loss rose from 0.800 "
            "(epoch 2) to 0.950: it over-fits") in text
    # A loss only 5% above its minimum is not a rise worth flagging.
    assert "over-fits" not in prose.recipe_check_sentence(recipe_data(train_acc=0.995, losses=(0.8, 0.84)))


def test_best_on_test_gap_and_high_ece_are_flagged_per_model():
    text = prose.recipe_check_sentence(recipe_data(best_final=((0.70, 0.70), (0.75, 0.72)),
                                                   eces=(0.12, 0.02)))
    assert r"The improved model's best-on-test accuracy (75.00\,\% at epoch 2) is 3.00 points above" in text
    assert r"The baseline's confidence is far from its accuracy (ECE 12.0\,\%)." in text
    assert "ECE is" not in text and "best-on-test and final accuracies differ" not in text


@pytest.mark.parametrize("size, expected", [
    ([4, 4], r"are 4$\times$4, upsampled to 32$\times$32: each cell covers 8$\times$8 pixels"),
    ([2, 2], r"are 2$\times$2, upsampled to 32$\times$32: each cell covers 16$\times$16 pixels"),
    ([8, 8], r"are 8$\times$8, upsampled to 32$\times$32; they are scaled per image")])
def test_coarse_maps_sentence_says_how_coarse(size, expected):
    explained = {"reference": {"map_size": size, "image_size": [32, 32]}}
    assert expected in prose.coarse_maps_sentence(read("gradcam.json", explained), "layer4")


def faith(*means):
    return {m: {"randomisation": {"n": 64, "stages": ["fc", "layer4", "conv1"], "spearman_mean": list(v)}}
            for m, v in zip(("baseline", "improved"), means)}


def test_randomisation_sentence_passes_fails_or_is_absent():
    text = prose.randomisation_sentence(faith((0.05, 0.1, -0.12), (0.2, 0.0, 0.01)))
    assert (r"is 0.05 (baseline) and 0.20 (improved) once \texttt{fc} is random, and "
            r"\ensuremath{-}0.12 and 0.01 with every layer random: the maps depend on what the "
            "networks learned.") in text
    text = prose.randomisation_sentence(faith((0.05, 0.1, 0.1), (0.7, 0.6, 0.5)))
    assert text.endswith("the maps stay close to the trained ones, so they may reflect the image "
                         "more than what the networks learned.")
    assert prose.randomisation_sentence(None) == ""
    assert prose.randomisation_sentence(faith((None, 0.1, 0.1), (0.1, 0.1, 0.1))) == ""


def test_an_underfitting_baseline_is_flagged():
    text = prose.recipe_check_sentence(recipe_data(train_acc=0.758, losses=(1.2, 0.9, 0.69)))
    assert (r"The baseline ends at only 75.8\,\% training accuracy after 3 epochs: it under-fits"
            in text) and "over-fits" not in text


def test_corruptions_sentence_names_the_published_files():
    c = {"mean_corruption_error": {"baseline": 0.3, "improved": 0.25}, "severities": [1, 5], "n": 100,
         "corruptions": ["fog", "frost"], "helps_most": ["fog"], "hurts_most": []}
    assert "Under 2 synthetic corruptions at severities 1--5" in prose.corruptions_sentence(read("comparison.json", {"corruptions": c}))
    c["source"] = "cifar-c"
    text = prose.corruptions_sentence(read("comparison.json", {"corruptions": c}))
    assert "Under 2 corruptions of the published CIFAR-C files at severities 1--5 (100 test images)" in text
