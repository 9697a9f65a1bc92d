"""report.py and prose.py: LaTeX escaping, prose that follows the numbers, bad input, a CIFAR-100-shaped study
(100 classes, superclasses, 5 cases, an analyst's hypothesis full of LaTeX specials) built from the
real plotting functions, and the whole smoke chain through make with a byte-identical rebuild.

The tests that compile LaTeX skip without latexmk/pdflatex, unless REQUIRE_LATEX=1 (CI) makes them fail.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import prose
import report
import shapes
import supplement
import tex
from study import LATEX_PACKAGES

REPO = Path(__file__).resolve().parent.parent
SPECIAL_HYPOTHESIS = r"50% of aquarium_fish & #1 {x} ~ ^ \ $ <cue> → “quoted” ≥ 0.9"


def need_latex():
    missing = [t for t in ("latexmk", "pdflatex") if shutil.which(t) is None]
    if missing:
        message = f"{' and '.join(missing)} not installed (apt-get install {LATEX_PACKAGES})"
        if os.environ.get("REQUIRE_LATEX") == "1":
            pytest.fail(f"REQUIRE_LATEX=1 but {message}")
        pytest.skip(message)


def fls_inputs(fls):
    """Absolute paths of every file LaTeX read, from a -recorder .fls file."""
    lines = fls.read_text().splitlines()
    pwd = Path(next(ln[4:] for ln in lines if ln.startswith("PWD ")))
    return {os.path.normpath(pwd / ln[6:]) for ln in lines if ln.startswith("INPUT ")}


def pdf_pages(build_dir):
    log = (build_dir / "report.log").read_text(errors="replace")
    return int(re.search(r"Output written on .*?\((\d+)\s+pages?", log, re.S).group(1))


#### Escaping and prose

@pytest.mark.parametrize("text, expected", [
    ("aquarium_fish", r"aquarium\_fish"),
    ("50% & #1", r"50\% \& \#1"),
    ("{a} $b$", r"\{a\} \$b\$"),
    ("~^", r"\textasciitilde{}\textasciicircum{}"),
    ("a\\b", r"a\textbackslash{}b"),
    ("p >= 0.99, a -> b", r"p \textgreater{}= 0.99, a -\textgreater{} b"),
    ("line\nbreak\ttab", "line break tab"),
    ("café → x", r"café \textrightarrow{} x"),
    ("日", "?"),
])
def test_tex_escape(text, expected):
    assert tex.tex_escape(text) == expected


def test_escaped_text_has_no_unescaped_specials():
    out = tex.tex_escape(SPECIAL_HYPOTHESIS)
    stripped = re.sub(r"\\[a-zA-Z]+\{\}|\\ensuremath\{\\geq\}|\\[&%$#_{}]", "", out)
    assert not set(stripped) & set("&%$#_{}~^\\")


def comparison(acc_b, acc_i, corrected, worsened, ci, p, hc_b, hc_i, mean_b=0.8, mean_i=0.7):
    n = 1000
    both_wrong = round(n * (1 - acc_b)) - corrected
    return read({"n_test": n, "accuracy_baseline": acc_b, "accuracy_improved": acc_i,
            "accuracy_difference": round(acc_i - acc_b, 6), "bootstrap_ci95": ci, "mcnemar_p": p,
            "corrected": corrected, "worsened": worsened, "both_wrong": both_wrong,
            "both_right": n - corrected - worsened - both_wrong,
            "high_confidence_errors": [{"threshold": 0.5, "baseline": 2 * hc_b, "improved": 2 * hc_i},
                                       {"threshold": 0.9, "baseline": hc_b, "improved": hc_i}],
            "confidence": {"baseline": {"correct": {"mean": mean_b}},
                           "improved": {"correct": {"mean": mean_i}}},
            "changed_values": {"cutmix_prob": {"baseline": 0.0, "improved": 0.5},
                               "label_smoothing": {"baseline": 0.0, "improved": 0.1}}, "per_class": []})


def read(data):
    """A partial comparison.json as report/study.py hands it to prose.py: optional keys null if absent."""
    return shapes.filled(data, shapes.COMPARISON)


BETTER = comparison(0.60, 0.75, 200, 50, [0.12, 0.18], 1e-30, 40, 10)
WORSE = comparison(0.75, 0.74, 40, 50, [-0.03, 0.01], 0.34, 10, 40, mean_b=0.7, mean_i=0.8)


def test_prose_follows_the_numbers():
    good, bad = prose.accuracy_sentence(BETTER), prose.accuracy_sentence(WORSE)
    assert "more accurate" in good and "entirely above zero" in good and "75.00" in good
    assert "less accurate" in bad and "includes zero" in bad and "74.00" in bad
    assert "below 0.05" in prose.significance_sentence(BETTER)
    assert "not below 0.05" in prose.significance_sentence(WORSE)
    assert r"10^{-30}" in prose.significance_sentence(BETTER)
    hc_good, hc_bad = prose.high_confidence_sentence(BETTER), prose.high_confidence_sentence(WORSE)
    assert "fell from 40 to 10" in hc_good and "less confident" in hc_good
    assert "rose from 10 to 40" in hc_bad and "more confident" in hc_bad
    good, bad = prose.conclusion_sentence(BETTER, "x"), prose.conclusion_sentence(WORSE, "x")
    assert "raised" in good and "reduced" in good and "not significant" not in good
    assert "lowered" in bad and "increased" in bad and "not significant" in bad
    smoke_like = comparison(0.74, 0.20, 90, 630, [-0.6, -0.5], 1e-9, 3, 0)
    fewer_confident = prose.high_confidence_sentence(smoke_like)
    assert "fell from 3 to 0" in fewer_confident and "while errors at any confidence rose" in fewer_confident
    no_confident = comparison(0.7, 0.7, 10, 10, [-0.01, 0.01], 1.0, 0, 0)
    no_confident["high_confidence_errors"][0].update(baseline=17, improved=4)
    assert "at least 0.5 fell from 17 to 4" in prose.high_confidence_sentence(no_confident)
    same = comparison(0.7, 0.7, 10, 10, [-0.01, 0.01], 1.0, 5, 5)
    assert "exactly as accurate" in prose.accuracy_sentence(same)
    assert "stayed at 5" in prose.high_confidence_sentence(same)


def test_optional_sections_follow_the_numbers():
    cal = {"n_bins": 15, "baseline": {"ece": 0.10, "nll": 1.5, "brier": 0.5},
           "improved": {"ece": 0.04, "nll": 1.2, "brier": 0.4}}
    assert "fell" in prose.calibration_sentence(read({"calibration": cal}))
    swapped = read({"calibration": dict(cal, baseline=cal["improved"], improved=cal["baseline"])})
    assert "rose" in prose.calibration_sentence(swapped) and prose.calibration_sentence(read({})) == ""
    cor = {"corruptions": ["fog", "gaussian_noise"], "severities": [1, 2, 3, 4, 5], "n": 100,
           "mean_corruption_error": {"baseline": 0.5, "improved": 0.6}, "helps_most": [],
           "hurts_most": ["gaussian_noise"]}
    s = prose.corruptions_sentence(read({"corruptions": cor}))
    assert "rose" in s and "gaussian noise" in s and "helps" not in s
    assert prose.corruptions_sentence(read({"corruptions": None})) == ""
    cases = [{"index": 1, "true_name": "a_b", "improved_pred_name": "c", "fixed": True},
             {"index": 2, "true_name": "d", "improved_pred_name": "e", "fixed": False}]
    some = prose.cases_sentence(read({"cases": cases}))
    assert "1 of them" in some and r"\#2 (d" in some
    assert "none of them" in prose.cases_sentence(read({"cases": [dict(c, fixed=False) for c in cases]}))
    assert "classifies the one baseline failure case correctly" in prose.cases_sentence(read({"cases": cases[:1]}))


def test_p_value_never_rounds_across_the_threshold():
    assert float(re.search(r"= ([\d.]+)", tex.p_tex(0.049996)).group(1)) < 0.05
    assert float(re.search(r"= ([\d.]+)", tex.p_tex(0.05)).group(1)) == 0.05
    assert tex.p_tex(0.0) == r"$p < 10^{-300}$"
    assert tex.p_tex(4.03e-101) == r"$p = 4.0\times 10^{-101}$"


def test_checkpoint_changes_and_seeds_sentences():
    last, best = {"checkpoint": "last"}, {"checkpoint": "best"}
    same = {"epochs": 50, "best_epoch": 50, "final_test_accuracy": 0.6, "best_test_accuracy": 0.6, "seed": 42}
    differ = dict(same, best_epoch=31, best_test_accuracy=0.62)
    s = prose.checkpoint_sentence(last, last, same, same)
    assert "final weights" in s and "coincide" in s
    s = prose.checkpoint_sentence(best, best, same, differ)
    assert "best-on-test" in s and "optimistic" in s and "epoch 31" in s and "not the same" in s
    assert "different checkpoints" in prose.checkpoint_sentence(last, best, same, same)
    assert "the same seed, 42" in prose.seeds_sentence(same, same)
    assert "seeds 42 and 7" in prose.seeds_sentence(same, dict(same, seed=7))
    seeds = {"seeds": [42, 43, 44], "improved_better": 2,
             "baseline": {"mean": 0.6, "std": 0.004}, "improved": {"mean": 0.61, "std": 0.006},
             "difference": {"mean": 0.01, "std": 0.012}}
    s = prose.seeds_sentence(same, same, seeds)
    assert "Over 3 seeds (42, 43, 44" in s and "60.00" in s and "+1.00" in s and "1.20" in s
    assert "2 of 3 seeds" in s and "seed 42" in s
    assert "the same seed, 42" in prose.seeds_sentence(same, same, dict(seeds, seeds=[42]))
    two = prose.changed_sentence(BETTER)
    assert "2 settings together" in two and "does not separate their effects" in two
    seed_only = prose.changed_sentence({"changed_values": {"seed": {"baseline": 42, "improved": 43}}})
    assert "only in their seed" in seed_only and "seed included" not in seed_only
    augment = {"augment": {"baseline": "none", "improved": "crop-flip"}}
    one = prose.changed_sentence({"changed_values": augment})
    assert "exactly one setting" in one and "crop + flip" in one
    assert "identical" in prose.changed_sentence({"changed_values": {}})
    assert "same code version" in prose.code_sentence({"git_commit": "abc"}, {"git_commit": "abc"})
    assert "different code versions" in prose.code_sentence({"git_commit": "abc"},
                                                             {"git_commit": "abd-dirty"})
    # A resume with other code is said; one with the same code is not news.
    again = {"git_commit": "abc", "resumed": [{"after_epoch": 3, "git_commit": "abc"}]}
    assert "same code version, commit" in prose.code_sentence(again, {"git_commit": "abc"})
    later = {"git_commit": "abc", "resumed": [{"after_epoch": 7, "git_commit": "def"}]}
    assert prose.code_sentence(later, later) == (
        r"Both were trained with the same code: commit \texttt{abc}, resumed after epoch 7 with commit \texttt{def}.")
    mixed = prose.code_sentence(later, {"git_commit": "abc", "resumed": [{"after_epoch": 7, "git_commit": "xyz-dirty"}]})
    assert mixed.startswith(r"They were trained with different code: the baseline with commit \texttt{abc}, "
                            r"resumed after epoch 7 with commit \texttt{def}, the improved model") and "uncommitted" in mixed
    cases = {"cases": [{}, {}], "selection": {"source": "analyst", "rule": "--cases"}}
    assert "An analyst chose the 2 cases" in prose.selection_sentence(shapes.filled(cases, shapes.FAILURES))
    auto = {"cases": [{}], "selection": {"source": "auto", "rule": "most confident", "note": "only 0 pass"}}
    assert "most confident errors" in prose.selection_sentence(auto)
    assert "only 0 pass" in prose.selection_sentence(auto)


#### A CIFAR-100-shaped study, drawn by the real plotting functions

CLASSES = (["aquarium_fish", "sweet_pepper", "maple_tree", "pickup_truck", "lawn_mower", "willow_tree",
            "oak_tree", "palm_tree", "pine_tree", "streetcar"] + [f"class{k:02d}" for k in range(10, 100)])
SUPER = ["large_man-made_outdoor_things", "fruit_and_vegetables", "trees", "vehicles_1", "vehicles_2",
         "trees", "trees", "trees", "trees", "vehicles_2"] + [f"super{k % 20}" for k in range(10, 100)]


def fake_side(rng, labels, accuracy, conf_a, num_classes):
    right = rng.random(len(labels)) < accuracy
    pred = np.where(right, labels, (labels + rng.integers(1, num_classes, len(labels))) % num_classes)
    conf = np.clip(rng.beta(conf_a, 2, len(labels)), 0.02, 0.999)
    conf = np.maximum(conf, 1.5 / num_classes)
    probs = np.repeat(((1 - conf) / (num_classes - 1))[:, None], num_classes, 1)
    probs[np.arange(len(labels)), pred] = conf
    return probs.astype(np.float32)


def write_run(run, name, probs, labels, config):
    import train
    run.mkdir(parents=True)
    acc = float((probs.argmax(1) == labels).mean())
    history = [{"epoch": e, "train_loss": 4 / e, "train_acc": min(0.99, e / 50), "test_loss": 3.5 / e ** 0.5,
                "test_acc": acc * (1 - 0.5 / e), "lr": 0.1, "seconds": 10} for e in range(1, 51)]
    history[-1]["test_acc"] = acc
    cfg = {**config, "name": name, "final_test_accuracy": acc, "best_test_accuracy": acc, "best_epoch": 50}
    (run / "config.json").write_text(json.dumps(cfg))
    import torch

    import evaluate
    metrics = {**evaluate.classification_metrics(torch.from_numpy(np.log(probs)), torch.from_numpy(labels),
                                                 probs.shape[1]),
               **evaluate.calibration(probs, labels), "checkpoint": "last", "epoch": 50}
    (run / "metrics.json").write_text(json.dumps(metrics))
    np.savez(run / "predictions.npz", probs=probs, labels=labels, logits=np.log(probs),
             indices=np.arange(len(labels)))
    train.plot_curves(history, run / "curves.png")
    train.write_history(history, run / "history.csv")


# make planted's score.json as tools/score_causes.py writes it (seed 42), for judgements.py's rule.
PLANTED_SCORE = {
    "planted": {"table": {planted: dict(zip(("label_error", "lookalike", "context", "fragile", "undecided"), row))
                          for planted, row in (("label_error", (9, 0, 0, 0, 15)), ("lookalike", (0, 15, 0, 0, 1)),
                                               ("context", (0, 8, 16, 1, 1)), ("none", (0, 13, 0, 8, 9)))},
                "precision": {"label_error": {"n": 9, "all": 1.0, "top": 1.0},
                              "lookalike": {"n": 36, "all": 0.4167, "top": 0.4},
                              "context": {"n": 16, "all": 1.0, "top": 1.0},
                              "fragile": {"n": 9, "all": 0.0, "top": 0.0}},
                "recall": {"label_error": 0.375, "lookalike": 0.9375, "context": 0.6154}, "top": 10},
    "git_commit": "df130f93771e4ed0f2a2f57c5b8ee6f12b56051a",
    "control": {"n": 51, "stated": {"label_error": 0, "lookalike": 27, "context": 0, "fragile": 10, "undecided": 14},
                "false_alarms": 0, "rate": 0.0}}


def planted_score(**changed):
    """PLANTED_SCORE scored with judgements.py's thresholds, or with some of them changed."""
    import judgements
    return dict(PLANTED_SCORE, thresholds={**judgements.CAUSE_THRESHOLDS, **changed})


# One case of each stated cause, in failures.json's order (the second, the analyst's, a context cue).
FAKE_CAUSES = ("label_error", "context", "lookalike", "fragile", "undecided")
INTERVENTIONS = ("original", "remove_border", "remove_marked", "keep_marked", "remove_elsewhere",
                 "keep_true_marked", "flip", "shift_left", "shift_right", "shift_up", "shift_down")


def fake_cause(case, cause, k, rng, classes):
    """One case of causes.json as causes.py writes it, with made-up evidence for `cause`."""
    import hypotheses
    labels = [case["pred"]] * 7 + [case["true"]] * 2 + [(case["pred"] + 1) % len(classes)]
    probes = {name: {"p_pred": round(float(p), 6), "p_true": round(float(rng.random() / 10), 6), "top": case["pred"],
                     "top_name": case["pred_name"]} for name, p in zip(INTERVENTIONS, rng.uniform(0.3, 1, 11))}
    probes["flip"].update(top=case["true"], top_name=case["true_name"])  # the flip moves it
    evidence = {"interventions": probes, "pair_errors": 12 - 2 * k, "pair_lift": 4.5 - k / 2,
                "moved_by_small_changes": 3 if cause == "fragile" else 0, "map_correlation": 0.3,
                "neighbour_pixels": {"background": 0.85 if cause == "context" else 0.05, "object": 0.1},
                "neighbours": {"k": 10, "train_rows": list(range(10 * k, 10 * k + 10)), "labels": labels,
                               "names": [classes[c] for c in labels],
                               "similarity": [round(0.93 - 0.01 * j, 4) for j in range(10)],
                               "pred_share": 0.7, "true_share": 0.2, "typicality": 0.73}}
    verdict = {"cause": cause}
    if cause == "undecided":
        verdict["closest"] = {"cause": "lookalike", "met": 2, "of": 3, "failed": ["a systematic pair"]}
    return {**{key: case[key] for key in ("index", "row", "true", "pred", "true_name", "pred_name", "confidence",
                                            "true_prob")},
            **verdict, "sentence": hypotheses.cause_sentence(case, verdict, evidence), "evidence": evidence}


def write_fake_causes(base, cases, images, maps, rng):
    """causes.json and causes.png (drawn by causes.py's own plot) for the fake study's cases."""
    from types import SimpleNamespace

    import causes
    import judgements
    classes = json.loads((base / "config.json").read_text())["classes"]
    stated = [fake_cause(c, cause, k, rng, classes) for k, (c, cause) in enumerate(zip(cases, FAKE_CAUSES))]
    sha = json.loads((base / "metrics.json").read_text()).get("weights_sha256")
    (base / "causes.json").write_text(json.dumps(
        {"run": str(base), "layer": "layer4", "checkpoint": "last", "weights_sha256": sha, "marked_share": 0.2,
         "shift": 2, "thresholds": judgements.CAUSE_THRESHOLDS, "cases": stated}))
    import torch
    train = torch.randint(0, 256, (10 * len(cases), 3, 32, 32), dtype=torch.uint8)
    causes.plot(stated, SimpleNamespace(test_x=images, train_x=train), list(range(len(cases))), maps,
                [c["evidence"]["neighbours"] for c in stated], base / "causes.png")


def make_fake_study(study, n=10000, num_cases=5, seed=0):
    """runs/<study>/ as make study leaves it for resnet18-cifar100, without training anything."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    import compare
    import compare_figures
    import failures
    import gradcam
    import hypotheses
    rng = np.random.default_rng(seed)
    c = len(CLASSES)
    labels = np.arange(n) % c
    config = {"arch": "resnet18", "dataset": "cifar100", "epochs": 50, "batch_size": 128, "optimizer": "sgd",
              "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "milestones": [25, 40], "gamma": 0.1,
              "label_smoothing": 0.0, "cutmix_prob": 0.0, "cutmix_alpha": 1.0, "augment": "crop-flip",
              "seed": 42, "runs_dir": str(study), "data_dir": str(study / "no-data"), "amp": True, "compile": False, "deterministic": False,
              "limit_train": None, "limit_test": None, "num_classes": c, "classes": CLASSES,
              "superclasses": SUPER, "n_train": 50000, "n_test": n, "git_commit": "0123456789abcdef-dirty",
              "mean": [0.507, 0.487, 0.441], "std": [0.267, 0.256, 0.276],
              "device_name": "NVIDIA H100 80GB HBM3", "wall_seconds": 480.0,
              "train_images_per_second": 9000.0}
    base, impr = study / "baseline", study / "improved"
    write_run(base, "baseline", fake_side(rng, labels, 0.6, 6, c), labels, config)
    write_run(impr, "improved", fake_side(rng, labels, 0.75, 4, c), labels,
              dict(config, cutmix_prob=0.5, label_smoothing=0.1))
    compare.main(["--baseline", str(base), "--improved", str(impr), "--out", str(study / "compare"),
                  "--bootstrap", "200"])

    b, i = compare.load_side(base), compare.load_side(impr)
    wrong = np.flatnonzero(~b["correct"])
    ranked = wrong[np.argsort(-b["conf"][wrong], kind="stable")]
    rows, _ = failures.select_distinct(ranked, labels, b["pred"], num_cases)
    rows[1] = int(np.flatnonzero(~b["correct"] & i["correct"] & (labels == 0))[0])  # aquarium_fish, fixed
    cases, explained = [], []
    for k, r in enumerate(rows):
        case = failures.describe(r, b["probs"], labels, b["indices"], CLASSES, SUPER)
        case["suggestions"] = failures.suggest(case, {})
        case["hypothesis"] = SPECIAL_HYPOTHESIS if k == 1 else hypotheses.compose_hypothesis(case)
        case["hypothesis_source"] = "analyst" if k == 1 else "auto"
        cases.append(case)
        evidence = {"layer": "layer4", "checkpoint": "last", "centre_area": 0.5,
                    "pred_true_correlation": None if k == 2 else 0.31,
                    "pred": {"centre_mass": 0.42, "peak": [3, 20], "empty": False},
                    "true": {"centre_mass": None, "peak": [0, 0], "empty": True} if k == 2 else
                            {"centre_mass": 0.7, "peak": [16, 16], "empty": False}}
        explained.append({"index": case["index"], "row": case["row"], "evidence": evidence, "suggestions": [],
                          "hypothesis": case["hypothesis"], "hypothesis_source": case["hypothesis_source"]})
    fdata = {"run": str(base), "cases": cases,
             "selection": {"source": "auto", "rule": "most confident errors"},
             "summary": {"n_test": n, "n_errors": len(wrong), "accuracy": 1 - len(wrong) / n,
                         "errors_at_confidence": {"0.5": 900, "0.9": 120, "0.99": 7},
                         "confused_pairs": [{"true": 0, "true_name": "aquarium_fish", "pred": 1,
                                             "pred_name": "sweet_pepper", "count": 17}],
                         "errors_within_superclass": 1500, "share_within_superclass": 1500 / len(wrong)}}
    (base / "failures.json").write_text(json.dumps(fdata))
    (base / "gradcam.json").write_text(json.dumps(
        {"run": str(base), "layer": "layer4", "checkpoint": "last", "cases": explained,
         "reference": {"layer": "layer4", "n": 150, "empty_share": 0.02, "map_size": [4, 4],
                       "image_size": [32, 32], "centre_mass_quartiles": [0.5, 0.6, 0.7]}}))

    images = torch.randint(0, 256, (len(rows), 3, 32, 32), dtype=torch.uint8)
    maps = torch.rand(len(rows), 32, 32)
    failures.plot_gallery(cases, images, "baseline: most confident distinct failures", base / "failures.png")
    gradcam.plot(cases, images, maps, maps.flip(1), None, "layer4", "baseline: where the network looked",
                 base / "gradcam.png")
    write_fake_causes(base, cases, images, maps, rng)
    rechecked = compare.recheck_cases(base / "failures.json", b, i, CLASSES)
    cam = {(key, t): maps.roll(3 * j, 2) for j, (key, t) in
           enumerate((s, t) for s in ("baseline", "improved") for t in ("pred", "true"))}
    with plt.rc_context(compare_figures.STYLE):
        compare_figures.plot_gradcam(rechecked, images, cam, "layer4", ("baseline", "improved"), study / "compare",
                             plt)
    path = study / "compare" / "comparison.json"
    cmp = json.loads(path.read_text())
    cmp.update(cases=rechecked, gradcam_layer="layer4", figures=cmp["figures"] + ["gradcam_compare"])
    path.write_text(json.dumps(cmp))
    return study


@pytest.fixture(scope="module")
def fake_study(tmp_path_factory):
    return make_fake_study(tmp_path_factory.mktemp("fake") / "resnet18-cifar100")


@pytest.fixture
def study_copy(fake_study, tmp_path):
    return Path(shutil.copytree(fake_study, tmp_path / fake_study.name))


# causes.png, each case with its nearest training images, stands where failures.png stood.
RUN_FIGURES = ["baseline/curves.png", "improved/curves.png", "baseline/causes.png", "baseline/gradcam.png"]
COMPARE_FIGURES = ["confidence", "high_confidence", "per_class", "gradcam_compare"]


def check_figures_recorded(study, report_dir):
    """LaTeX read every figure: the runs' and every one comparison.json lists (at least the four)."""
    listed_by_compare = json.loads((study / "compare" / "comparison.json").read_text())["figures"]
    assert set(COMPARE_FIGURES) <= set(listed_by_compare)
    expected = RUN_FIGURES + [f"compare/{stem}.pdf" for stem in listed_by_compare]
    read = fls_inputs(report_dir / "build" / "report.fls")
    missing = [f for f in expected if os.path.normpath(study / f) not in read]
    assert not missing, f"figures not included: {missing}"
    manifest = (report_dir / "figures.txt").read_text().split()
    assert sorted(os.path.normpath(report_dir / p) for p in manifest) == sorted(
        os.path.normpath(study / f) for f in expected)


def test_cifar100_shaped_study_builds_within_six_pages(study_copy, tmp_path):
    need_latex()
    out = study_copy / "report.pdf"
    # With the planted score quoted: the longest the cause sentences get.
    score = tmp_path / "score.json"
    score.write_text(json.dumps(planted_score()))
    result = report.main(["--study", str(study_copy), "--out", str(out), "--planted-score", str(score)])
    assert out.is_file() and out.read_bytes().startswith(b"%PDF")
    assert result["pages"] == pdf_pages(study_copy / "report" / "build") <= 6
    check_figures_recorded(study_copy, study_copy / "report")
    cases = (study_copy / "report" / "table-cases.tex").read_text()
    assert tex.tex_escape(SPECIAL_HYPOTHESIS) in cases and "Hypothesis (analyst)" in cases
    assert r"aquarium\_fish" in cases and r"large\_man-made\_outdoor\_things" in cases
    # Each case's stated cause beside its hypothesis, in failures.json's order, with its numbers.
    stated = json.loads((study_copy / "baseline" / "causes.json").read_text())["cases"]
    rows = re.findall(r"\\emph\{Stated cause:\} \\textbf\{([^}]*)\}: (.*)\} \\\\", cases)
    assert [name for name, _ in rows] == ["label error", "context cue", "look-alike", "fragile", "undecided"]
    assert rows[0][1] == tex.tex_escape(stated[0]["sentence"].removeprefix("label error: ").replace("->", "→"))
    assert "7 of 10 nearest training images" in rows[0][1]
    assert cases.index("Hypothesis (analyst)") < cases.index("context cue")
    macros = (study_copy / "report" / "macros.tex").read_text()
    assert "CIFAR-100" in macros and "ResNet-18" in macros and "more accurate" in macros
    assert r"the rule was right for 100\,\% of the 9 cases it called label errors" in macros
    assert r"38\,\% of the planted label errors" in macros and r"(false alarms: 0\,\%)" in macros
    # the second case, a context cue, is one the improved model gets right (make_fake_study)
    assert "By stated cause, the improved model gets" in macros and "the context-cue case right" in macros
    assert "Each model was trained once (1 seed)." in macros
    config = (study_copy / "report" / "table-config.tex").read_text()
    assert len(re.findall(r"\\rowcolor", config)) == 2  # CutMix probability and label smoothing
    # Over the page limit: an error, and no PDF at --out.
    with pytest.raises(SystemExit, match="more than the limit of 2"):
        report.main(["--study", str(study_copy), "--out", str(study_copy / "short.pdf"), "--max-pages", "2"])
    assert not (study_copy / "short.pdf").exists()


def test_seeds_and_ablation_enter_the_report_when_present(study_copy):
    need_latex()
    # As compare.py --seeds and --ablation write them (the supplement's tables read every key).
    seeds = {"seeds": [42, 43], "improved_better": 1,
             "baseline": {"values": [0.596, 0.604], "mean": 0.6, "std": 0.004},
             "improved": {"values": [0.606, 0.614], "mean": 0.61, "std": 0.006},
             "difference": {"values": [0.002, 0.018], "mean": 0.01, "std": 0.012}}
    rows = [{"changed": {"cutmix_prob": 0.5, "label_smoothing": 0.1}, "accuracy": 0.62, "difference": 0.02,
             "mcnemar_p": 0.01, "corrected": 40, "worsened": 20},
            {"changed": {"cutmix_prob": 0.5}, "accuracy": 0.615, "difference": 0.015, "mcnemar_p": 0.04,
             "corrected": 35, "worsened": 20},
            {"changed": {"label_smoothing": 0.1}, "accuracy": 0.595, "difference": -0.005, "mcnemar_p": 0.5,
             "corrected": 15, "worsened": 20}]
    for name, value in (("seeds", seeds), ("ablation", rows)):
        (study_copy / name).mkdir()
        (study_copy / name / f"{name}.json").write_text(json.dumps({name: value}))
    result = report.main(["--study", str(study_copy), "--out", str(study_copy / "report.pdf")])
    assert result["pages"] <= 6
    macros = (study_copy / "report" / "macros.tex").read_text()
    assert "Over 2 seeds (42, 43" in macros and "2 training runs per model" in macros
    assert "trained with 2 seeds" in macros and "trained once" not in macros
    assert r"CutMix probability only: 61.50\,\%" in macros and "label smoothing only: 59.50" in macros
    assert "the ablation separates them on one seed" in macros


def test_the_planted_score_is_quoted_only_for_this_rule(fake_study, tmp_path):
    """Without --planted-score the report says the rule is not scored and how to score it; a score of
    other thresholds is not quoted; a missing one is an error, not a silent omission."""
    _, _, data = report.load_study(fake_study)
    assert data["score"] is None
    said = prose.prose(data)["ProseCauseScore"]
    assert "has not been scored here" in said and "make planted" in said
    other = tmp_path / "other.json"
    other.write_text(json.dumps(planted_score(shared_background=0.6)))
    _, paths, data = report.load_study(fake_study, other)
    said = prose.prose(data)["ProseCauseScore"]
    assert "another rule" in said and r"shared\_background differs" in said and "100" not in said
    assert paths["planted_score"] == other  # its date enters the PDF's
    with pytest.raises(SystemExit, match=r"nope.json does not exist; make planted writes"):
        report.main(["--study", str(fake_study), "--planted-score", str(tmp_path / "nope.json")])


def test_make_passes_the_planted_score_where_make_planted_left_one(tmp_path):
    """make report gives both builds runs/planted/score.json once it exists, and nothing before."""
    def planned():
        return subprocess.run(["make", "-n", "report", "STUDY=smoke", f"PY={sys.executable}", f"RUNS_DIR={tmp_path}"],
                              cwd=REPO, capture_output=True, text=True).stdout
    assert "report.py --study" in planned() and "--planted-score" not in planned()
    score = tmp_path / "planted" / "score.json"
    score.parent.mkdir()
    score.write_text("{}")
    lines = [line for line in planned().splitlines() if "report/report.py" in line or "report/supplement.py" in line]
    assert len(lines) == 2 and all(line.endswith(f"--planted-score {score}") for line in lines), lines


#### Bad input

def test_supplement_without_faithfulness_names_the_script(study_copy):
    with pytest.raises(SystemExit, match=r"faithfulness.json is missing; faithfulness.py writes it"):
        supplement.main(["--study", str(study_copy)])

@pytest.mark.parametrize("missing, producer", [
    ("compare/comparison.json", "compare.py"), ("compare/gradcam_compare.pdf", "compare.py"),
    ("baseline/failures.json", "failures.py"), ("baseline/gradcam.png", "gradcam.py"),
    ("baseline/gradcam.json", "gradcam.py"),
    ("improved/metrics.json", "evaluate.py"), ("improved/config.json", "train.py")])
def test_missing_input_names_the_step_that_writes_it(study_copy, missing, producer):
    (study_copy / missing).unlink()
    with pytest.raises(SystemExit) as e:
        report.main(["--study", str(study_copy)])
    message = str(e.value.code)
    assert message.startswith("error:") and producer in message and missing.split("/")[-1] in message
    assert "make study STUDY=resnet18-cifar100" in message and "\n" not in message
    assert not (study_copy / "report.pdf").exists()


def test_gradcam_of_other_cases_says_run_gradcam(study_copy):
    path = study_copy / "baseline" / "gradcam.json"
    data = json.loads(path.read_text())
    data["cases"] = data["cases"][1:]  # older than failures.json
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="does not explain the cases of failures.json.*gradcam.py"):
        report.main(["--study", str(study_copy)])


def test_missing_latex_is_one_sentence_naming_the_packages(study_copy, monkeypatch):
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "latexmk" else which(tool))
    with pytest.raises(SystemExit) as e:
        report.main(["--study", str(study_copy)])
    message = str(e.value.code)
    assert re.search(r"latexmk( and pdflatex)? not found", message) and LATEX_PACKAGES in message
    assert "\n" not in message
    assert (study_copy / "report" / "macros.tex").is_file()  # the sources are written all the same
    assert not (study_copy / "report.pdf").exists()


def test_latex_error_points_at_the_log(study_copy, monkeypatch, tmp_path):
    need_latex()
    broken = tmp_path / "report.tex"
    broken.write_text(report.TEMPLATE.read_text().replace(r"\maketitle", r"\maketitle\undefinedmacro"))
    monkeypatch.setattr(report, "TEMPLATE", broken)
    with pytest.raises(SystemExit) as e:
        report.main(["--study", str(study_copy)])
    message = str(e.value.code)
    assert "LaTeX failed" in message and "report.log" in message and "Undefined control sequence" in message
    assert not (study_copy / "report.pdf").exists()


#### The whole smoke chain through make

def test_smoke_study_end_to_end_and_reproducible(tmp_path):
    need_latex()
    # EPOCHS=2 halves the training, the chain's only slow part; every step still runs.
    proc = subprocess.run(["make", "study", "STUDY=smoke", "EPOCHS=2", f"PY={sys.executable}",
                           f"RUNS_DIR={tmp_path}", "DEVICE=cpu"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = tmp_path / "smoke"
    pdf = study / "report.pdf"
    assert pdf.is_file() and pdf_pages(study / "report" / "build") <= 6
    check_figures_recorded(study, study / "report")
    first = pdf.read_bytes()
    again = report.main(["--study", str(study), "--out", str(study / "report-again.pdf")])
    assert (study / "report-again.pdf").read_bytes() == first, "the same inputs gave different PDF bytes"
    assert again["pages"] <= 6
    # The supplement: both models' faithfulness figures, the causes figure at full size (and the
    # suspects' thumbnails when listed), and the rule said unscored (no make planted in this RUNS_DIR).
    supp = (study / "supplement.pdf").read_bytes()
    assert supp.startswith(b"%PDF")
    recorded = fls_inputs(next((study / "report" / "build-supplement").glob("*.fls")))
    wanted = {str(study / m / "faithfulness.png") for m in ("baseline", "improved")}
    wanted.add(str(study / "baseline" / "causes.png"))
    assert "has not been scored here" in (study / "report" / "supplement-body.tex").read_text()
    if json.loads((study / "compare" / "comparison.json").read_text())["label_error_suspects"].get("figure"):
        wanted.add(str(study / "compare" / "suspects.png"))
    assert wanted <= recorded, wanted - recorded
    supplement.main(["--study", str(study), "--out", str(study / "supplement-again.pdf")])
    assert (study / "supplement-again.pdf").read_bytes() == supp
    check_imported_study(study, tmp_path)


def check_imported_study(study, runs_dir):
    """make study with the trained models' weights given as outside checkpoints: the same
    accuracies, and a report that says what it cannot know instead of empty values."""
    proc = subprocess.run(["make", "study", "STUDY=smoke", f"PY={sys.executable}", f"RUNS_DIR={runs_dir}",
                           "DEVICE=cpu", f"BASELINE_WEIGHTS={study / 'baseline' / 'last.pt'}",
                           f"IMPROVED_WEIGHTS={study / 'improved' / 'last.pt'}"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train.py" not in proc.stdout
    imported = runs_dir / "smoke-imported"
    for role in ("baseline", "improved"):
        assert (json.loads((imported / role / "metrics.json").read_text())["test_accuracy"]
                == json.loads((study / role / "metrics.json").read_text())["test_accuracy"])
    assert pdf_pages(imported / "report" / "build") <= 6 and (imported / "supplement.pdf").is_file()
    macros = (imported / "report" / "macros.tex").read_text()
    table = (imported / "report" / "table-config.tex").read_text()
    assert "trained elsewhere and imported" in macros and "learning curves and training time are unknown" in macros
    assert "unknown" in table and r"imported: \texttt{last.pt}" in table
    for text in (macros, table):
        assert not re.search(r"\bNone\b|n/a|seed None|epoch None", text), text
    assert "\\HasBaseCurvesfalse" in macros and "curves.png" not in (imported / "report" / "figures.txt").read_text()
    # The maps explain the weights as imported: they were saved as last.pt, but no training made them.
    assert "} (imported weights):" in (imported / "report" / "supplement-body.tex").read_text()
    assert "} (last checkpoint):" in (study / "report" / "supplement-body.tex").read_text()


@pytest.mark.parametrize("name, num_classes, expected", [
    ("cifar100", 100, "CIFAR-100"),
    ("data/cifar10-jpeg", 10, "CIFAR-10 (folder cifar10-jpeg)"),
    # An archive given by path may be generated: the report names its format, not the dataset.
    ("data/synthetic-cifar100.tar.gz", 100, "CIFAR-100-format archive synthetic-cifar100.tar.gz"),
    ("data/x.tgz", 10, "CIFAR-10-format archive x.tgz"),
    ("synthetic", 10, "synthetic shapes"),
])
def test_dataset_name(name, num_classes, expected):
    assert tex.dataset_name(name, num_classes) == expected
