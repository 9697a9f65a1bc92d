"""compare.py: 2x2 table and McNemar's exact test, bootstrap, thresholds, per-class changes,
calibration, corruption grids, failure re-check, bad input, and a run on two trained synthetic
models with Grad-CAM."""
import copy
import json
import math
import shutil

import numpy as np
import pytest
import torch

import common
import contract
import compare
import compare_figures
import evaluate
import failures
import gradcam
import train


def probs_for(pred, conf, num_classes):
    """Softmax-like rows whose argmax is pred with max-probability conf (rest spread evenly)."""
    pred, conf = np.asarray(pred), np.asarray(conf, dtype=np.float64)
    p = np.repeat(((1 - conf) / (num_classes - 1))[:, None], num_classes, 1)
    p[np.arange(len(pred)), pred] = conf
    return p.astype(np.float32)


def make_run(path, labels, pred, conf=None, num_classes=10, indices=None, checkpoint="last", **config):
    """A run folder as train.py + evaluate.py leave it, without a checkpoint."""
    path.mkdir(parents=True)
    labels = np.asarray(labels)
    conf = np.full(len(labels), 0.9) if conf is None else conf
    probs = probs_for(pred, conf, num_classes)
    cfg = {"arch": "simplecnn", "dataset": "synthetic", "name": path.name, "seed": 42, "epochs": 4,
           "label_smoothing": 0.0, "cutmix_prob": 0.0, "augment": "none", "num_classes": num_classes,
           "classes": [f"c{k}" for k in range(num_classes)], "superclasses": None,
           "git_commit": "abc", "wall_seconds": 1.0, "data_dir": str(path.parent),
           "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], **config}
    (path / "config.json").write_text(json.dumps(cfg))
    # metrics.json as evaluate.py computes it from these predictions.
    logits = torch.from_numpy(np.log(probs))
    metrics = {**evaluate.classification_metrics(logits, torch.as_tensor(labels.copy()), num_classes),
               **evaluate.calibration(probs, labels), "checkpoint": checkpoint, "epoch": 4}
    (path / "metrics.json").write_text(json.dumps(metrics))
    np.savez(path / "predictions.npz", probs=probs, labels=labels, logits=np.log(probs),
             indices=np.arange(len(labels)) if indices is None else np.asarray(indices))
    return path


def run_compare(tmp_path, *extra):
    return compare.main(["--baseline", str(tmp_path / "base"), "--improved", str(tmp_path / "impr"),
                         "--out", str(tmp_path / "cmp"), "--bootstrap", "500", *extra])


@pytest.fixture
def pair(tmp_path):
    """20 images: 9 corrected, 1 worsened, 3 wrong for both, 7 right for both."""
    labels = np.arange(20) % 10
    wrong = (labels + 1) % 10
    base_ok = np.array([0] * 9 + [1] + [0] * 3 + [1] * 7, bool)
    impr_ok = np.array([1] * 9 + [0] + [0] * 3 + [1] * 7, bool)
    make_run(tmp_path / "base", labels, np.where(base_ok, labels, wrong))
    make_run(tmp_path / "impr", labels, np.where(impr_ok, labels, wrong), cutmix_prob=0.5,
             label_smoothing=0.1, seed=7)
    return tmp_path


#### Statistics on hand-made predictions

def test_two_by_two_shares_and_mcnemar(pair):
    result = run_compare(pair)
    assert (result["corrected"], result["worsened"], result["both_wrong"], result["both_right"]) == (9, 1, 3, 7)
    assert result["shares"] == {"corrected": 0.45, "worsened": 0.05, "both_wrong": 0.15, "both_right": 0.35}
    assert result["mcnemar_p"] == pytest.approx(2 * (1 + 10) / 2 ** 10, rel=1e-12)  # 0.021484375
    assert (result["accuracy_baseline"], result["accuracy_improved"]) == (0.4, 0.8)
    assert result["accuracy_difference"] == pytest.approx(0.4)
    assert result["changed_settings"] == ["cutmix_prob", "label_smoothing", "seed"]
    assert result["changed_values"]["cutmix_prob"] == {"baseline": 0.0, "improved": 0.5}
    saved = json.loads((pair / "cmp" / "comparison.json").read_text())
    assert saved["mcnemar_p"] == result["mcnemar_p"] and saved["corrected"] == 9
    for stem in ("confidence", "high_confidence", "per_class"):
        for ext in ("png", "pdf"):
            assert (pair / "cmp" / f"{stem}.{ext}").stat().st_size > 1000
    assert not (pair / "cmp" / "gradcam_compare.png").exists()


@pytest.mark.parametrize("b, c, p", [(0, 0, 1.0), (5, 5, 1.0), (1, 9, 0.021484375), (9, 1, 0.021484375),
                                     (0, 10, 2 / 1024), (3, 4, 1.0)])
def test_mcnemar_exact_p(b, c, p):
    assert compare.mcnemar_exact_p(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_matches_normal_approximation_for_many_pairs():
    b, c = 400, 500
    z = (abs(c - b) - 1) / math.sqrt(b + c)  # with continuity correction
    assert compare.mcnemar_exact_p(b, c) == pytest.approx(math.erfc(z / math.sqrt(2)), rel=0.03)


def test_no_discordant_pairs(tmp_path):
    labels = np.arange(30) % 10
    pred = np.where(np.arange(30) < 20, labels, (labels + 3) % 10)
    make_run(tmp_path / "base", labels, pred)
    make_run(tmp_path / "impr", labels, pred)
    result = run_compare(tmp_path)
    assert result["mcnemar_p"] == 1.0 and result["corrected"] == result["worsened"] == 0
    assert result["bootstrap_ci95"] == [0.0, 0.0] and result["changed_settings"] == []


def test_bootstrap_contains_difference_and_is_reproducible():
    ci = compare.bootstrap_ci(60, 20, 400, 2000, seed=0)
    assert ci[0] < 0.1 < ci[1]
    assert compare.bootstrap_ci(60, 20, 400, 2000, seed=0) == ci
    assert compare.bootstrap_ci(60, 20, 400, 2000, seed=1) != ci


def test_bootstrap_matches_resampling_images():
    """The multinomial shortcut gives the interval of resampling the images themselves."""
    n, corrected, worsened = 300, 45, 15
    d = np.zeros(n)
    d[:corrected], d[corrected:corrected + worsened] = 1, -1
    rows = np.random.default_rng(5).integers(0, n, (4000, n))
    direct = np.percentile(d[rows].mean(1), [2.5, 97.5])
    assert compare.bootstrap_ci(corrected, worsened, n, 4000, seed=3) == pytest.approx(direct, abs=0.01)


def test_high_confidence_table():
    labels = np.zeros(10, int)
    b = {"labels": labels, "conf": np.array([0.55, 0.65, 0.95, 0.995, 0.4, 0.99, 0.9, 0.9, 0.9, 0.9]),
         "correct": np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1], bool)}
    i = {"labels": labels, "conf": np.array([0.5, 0.3, 0.3, 0.96, 0.99, 0.99, 0.9, 0.9, 0.9, 0.9]),
         "correct": np.array([0, 0, 1, 0, 1, 1, 1, 1, 1, 1], bool)}
    table = {r["threshold"]: r for r in compare.high_confidence_table(b, i)}
    assert [table[t]["baseline"] for t in compare.THRESHOLDS] == [4, 3, 2, 2, 2, 2, 1]
    assert [table[t]["improved"] for t in compare.THRESHOLDS] == [2, 1, 1, 1, 1, 1, 0]
    assert table[0.5]["baseline_rate"] == 0.4 and table[0.5]["improved_rate"] == 0.2
    assert table[0.5]["reduction"] == 2 and table[0.5]["relative_reduction"] == 0.5
    assert table[0.99]["relative_reduction"] == 1.0
    none = compare.high_confidence_table(i, i)
    assert none[-1]["relative_reduction"] is None and none[-1]["reduction"] == 0


def test_per_class_changes_and_named_classes():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    b_ok = np.array([1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 1], bool)
    i_ok = np.array([0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1], bool)
    def side(ok):  # per-class accuracy as evaluate.py writes it into metrics.json
        correct = torch.from_numpy(ok.astype(np.float64))
        logits = torch.nn.functional.one_hot(torch.from_numpy(np.where(ok, labels, (labels + 1) % 7)), 7).double()
        assert torch.equal((logits.argmax(1) == torch.from_numpy(labels)).double(), correct)
        return {"labels": labels, "metrics": evaluate.classification_metrics(logits, torch.from_numpy(labels), 7)}
    rows, gains, losses = compare.per_class_changes(side(b_ok), side(i_ok), [f"c{k}" for k in range(7)])
    assert [r["change"] for r in rows] == [-1.0, 1.0, 0.5, -0.5, 0.0, 0.0, None]
    assert rows[6] == {"class": 6, "name": "c6", "n": 0, "baseline": None, "improved": None, "change": None}
    assert [r["name"] for r in gains] == ["c1", "c2"] and [r["name"] for r in losses] == ["c0", "c3"]


def test_per_class_with_100_classes_names_five_each_way(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(100), 10)
    make_run(tmp_path / "base", labels, np.where(rng.random(1000) < 0.6, labels, (labels + 1) % 100),
             num_classes=100)
    make_run(tmp_path / "impr", labels, np.where(rng.random(1000) < 0.7, labels, (labels + 1) % 100),
             num_classes=100)
    result = run_compare(tmp_path)
    assert len(result["per_class"]) == 100 and len(result["top_gains"]) == len(result["top_losses"]) == 5
    changes = sorted(r["change"] for r in result["per_class"])
    assert [r["change"] for r in result["top_gains"]] == changes[::-1][:5]
    assert [r["change"] for r in result["top_losses"]] == changes[:5]


#### Calibration and corruptions

def test_calibration_and_reliability(pair, capsys):
    result = run_compare(pair)
    # Every prediction has confidence 0.9 (one bin): ECE = |accuracy - 0.9|.
    cal = result["calibration"]
    assert cal["n_bins"] == 15
    assert cal["baseline"]["ece"] == pytest.approx(0.5) and cal["improved"]["ece"] == pytest.approx(0.1)
    assert cal["difference"]["ece"] == pytest.approx(-0.4)
    pred = np.load(pair / "base" / "predictions.npz")
    direct = evaluate.calibration(pred["probs"], pred["labels"])
    assert cal["baseline"]["nll"] == pytest.approx(direct["nll"], abs=1e-6)
    assert cal["baseline"]["brier"] == pytest.approx(direct["brier"], abs=1e-6)
    assert "reliability" in result["figures"] and "corruptions" not in result["figures"]
    for ext in ("png", "pdf"):
        assert (pair / "cmp" / f"reliability.{ext}").stat().st_size > 1000
    assert result["corruptions"] is None and "corruption comparison skipped" in capsys.readouterr().out


def write_grid(run, accuracy, clean=None, n=20, checkpoint="last", epoch=4):
    """A corruptions.json as corruptions.py writes it (the keys compare.py reads); by default with
    the clean accuracy that the run's metrics.json gives."""
    if clean is None:
        clean = json.loads((run / "metrics.json").read_text())["test_accuracy"]
    grid = {"checkpoint": checkpoint, "epoch": epoch, "n": n, "limit_test": None, "seed": 0,
            "severities": [1, 2, 3, 4, 5], "corruptions": list(accuracy), "clean_accuracy": clean,
            "accuracy": accuracy}
    (run / "corruptions.json").write_text(json.dumps(grid))


def test_corruption_grids_are_compared(pair):
    write_grid(pair / "base", {"fog": [0.8, 0.7, 0.6, 0.5, 0.4], "contrast": [0.8] * 5,
                               "pixelate": [0.5] * 5, "snow": [0.6] * 5})
    write_grid(pair / "impr", {"fog": [0.8, 0.8, 0.7, 0.6, 0.6], "contrast": [0.7] * 5,
                               "pixelate": [0.5] * 5, "snow": [0.62] * 5, "saturate": [0.9] * 5})
    result = run_compare(pair)
    cmp = result["corruptions"]
    assert cmp["corruptions"] == ["fog", "contrast", "pixelate", "snow"]  # only those both runs have
    rows = {r["name"]: r for r in cmp["per_corruption"]}
    assert rows["fog"]["baseline"] == pytest.approx(0.6) and rows["fog"]["improved"] == pytest.approx(0.7)
    assert rows["fog"]["by_severity"] == pytest.approx([0, 0.1, 0.1, 0.1, 0.2])
    assert rows["contrast"]["difference"] == pytest.approx(-0.1) and rows["pixelate"]["difference"] == 0
    assert cmp["helps_most"] == ["fog", "snow"] and cmp["hurts_most"] == ["contrast"]
    mce = cmp["mean_corruption_error"]  # means of 1 - accuracy over the 4 x 5 cells
    assert mce["baseline"] == pytest.approx(1 - (0.6 + 0.8 + 0.5 + 0.6) / 4)
    assert mce["difference"] == pytest.approx(-(0.1 - 0.1 + 0 + 0.02) / 4)
    assert result["figures"][-1] == "corruptions"
    for ext in ("png", "pdf"):
        assert (pair / "cmp" / f"corruptions.{ext}").stat().st_size > 1000


def test_mismatched_corruption_grids_are_refused(pair):
    write_grid(pair / "base", {"fog": [0.5] * 5})
    write_grid(pair / "impr", {"fog": [0.5] * 5}, n=10)
    _fails(pair, "corruptions.json differ in n (20 vs 10)")
    write_grid(pair / "impr", {"snow": [0.5] * 5})
    _fails(pair, "have no corruption in common")
    write_grid(pair / "impr", {"fog": [0.5] * 5}, checkpoint="best")
    _fails(pair, "was written for another model than metrics.json describes; re-run python corruptions.py")
    write_grid(pair / "impr", {"fog": [0.5] * 5}, clean=0.7)  # metrics.json: 0.8, so another model
    _fails(pair, "was written for another model than metrics.json describes")


#### Failure cases

def test_cases_are_rechecked(pair):
    # recheck_cases alone: these fake runs have no checkpoints for the Grad-CAM figure.
    cases = [{"index": 0, "row": 0, "true": 0, "pred": 1}, {"index": 1, "row": 1, "true": 1, "pred": 2},
             {"index": 10, "row": 10, "true": 0, "pred": 1}]
    (pair / "failures.json").write_text(json.dumps({"cases": cases}))
    b, i = compare.load_side(pair / "base"), compare.load_side(pair / "impr")
    result = {"cases": compare.recheck_cases(pair / "failures.json", b, i, b["config"]["classes"])}
    fixed = {c["index"]: c["fixed"] for c in result["cases"]}
    assert fixed == {0: True, 1: True, 10: False}
    first = result["cases"][0]
    assert first["improved_pred"] == 0 and first["improved_pred_name"] == "c0"
    assert first["improved_confidence"] == pytest.approx(0.9, abs=1e-6)
    assert first["improved_true_prob"] == pytest.approx(0.9, abs=1e-6)
    assert result["cases"][2]["improved_true_prob"] == pytest.approx(0.1 / 9, abs=1e-6)


#### Bad input: one sentence, exit 1, nothing written

def _fails(tmp_path, message, *extra):
    with pytest.raises(SystemExit) as exc:
        run_compare(tmp_path, *extra)
    assert exc.value.code.startswith("error: ") and message in exc.value.code
    assert "\n" not in exc.value.code
    assert not (tmp_path / "cmp").exists()  # refused before anything is written


@pytest.mark.parametrize("field", ["indices", "labels", "length"])
def test_different_test_sets_are_refused(tmp_path, field):
    labels = np.arange(20) % 10
    make_run(tmp_path / "base", labels, labels)
    if field == "indices":
        make_run(tmp_path / "impr", labels, labels, indices=np.arange(20) + 1)
    elif field == "labels":
        make_run(tmp_path / "impr", labels[::-1], labels[::-1])
    else:
        make_run(tmp_path / "impr", labels[:10], labels[:10])
    _fails(tmp_path, "were not evaluated on the same test set")


def test_same_labels_of_another_dataset_are_refused(tmp_path):
    """CIFAR-10's archive and a JPEG copy share labels and indices, not images."""
    labels = np.arange(20) % 10
    (tmp_path / "cifar10-jpeg").mkdir()
    make_run(tmp_path / "base", labels, labels, dataset="cifar10")
    make_run(tmp_path / "impr", labels, labels, dataset=str(tmp_path / "cifar10-jpeg"))
    _fails(tmp_path, "were evaluated on different datasets (cifar10 vs")


def test_missing_predictions_say_run_evaluate(pair):
    (pair / "impr" / "predictions.npz").unlink()
    _fails(pair, f"run python evaluate.py --run {pair / 'impr'} first")


def test_out_equal_to_a_run_folder_is_refused(pair):
    with pytest.raises(SystemExit, match="is a run folder"):
        compare.main(["--baseline", str(pair / "base"), "--improved", str(pair / "impr"),
                      "--out", str(pair / "impr")])
    assert not (pair / "impr" / "comparison.json").exists()


def test_cases_from_another_run_are_refused(pair):
    (pair / "failures.json").write_text(json.dumps({"cases": [{"index": 9, "row": 9, "true": 9, "pred": 0}]}))
    _fails(pair, "was not written from the predictions of", "--cases", str(pair / "failures.json"))
    (pair / "failures.json").write_text(json.dumps({"cases": [{"index": 5, "row": 99, "true": 5, "pred": 6}]}))
    _fails(pair, "does not match the test set of", "--cases", str(pair / "failures.json"))


def test_bad_bootstrap_flag(pair, capsys):
    with pytest.raises(SystemExit) as exc:
        run_compare(pair, "--bootstrap", "0")
    assert exc.value.code == 2 and "argument --bootstrap: must be at least 1" in capsys.readouterr().err


#### Two trained synthetic models, Grad-CAM included

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Baseline and CutMix+smoothing SimpleCNNs (1 epoch on 256 images), evaluated on 120 images."""
    root = tmp_path_factory.mktemp("cmp")
    synthetic = common.make_synthetic()  # generating it takes seconds; every load reuses a copy
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common, "make_synthetic", lambda: copy.copy(synthetic))
        flags = ["--arch", "simplecnn", "--dataset", "synthetic", "--optimizer", "adam", "--milestones",
                 "--epochs", "1", "--batch-size", "64", "--limit-train", "256", "--limit-test", "120",
                 "--runs-dir", str(root), "--device", "cpu"]
        train.main(flags + ["--name", "base", "--augment", "none"])
        train.main(flags + ["--name", "impr", "--cutmix-prob", "0.5", "--label-smoothing", "0.1"])
        for name in ("base", "impr"):
            evaluate.main(["--run", str(root / name), "--device", "cpu"])
        # The baseline's cases (two errors and a correct image) and their Grad-CAM, by the
        # project's own writers.
        pred = contract.read_predictions(root / "base")
        right = pred["probs"].argmax(1) == pred["labels"]
        rows = [*np.flatnonzero(~right)[:2], np.flatnonzero(right)[0]]
        failures.main(["--run", str(root / "base"), "--cases", *(str(pred["indices"][r]) for r in rows)])
        gradcam.main(["--run", str(root / "base"), "--device", "cpu"])
        yield root


def test_end_to_end_with_gradcam(trained, monkeypatch):
    root = trained
    pred = np.load(root / "base" / "predictions.npz")
    labels = pred["labels"]
    rows = [c["row"] for c in json.loads((root / "base" / "failures.json").read_text())["cases"]]
    titles, save = {}, compare_figures.save
    monkeypatch.setattr(compare_figures, "save", lambda fig, out, stem, plt: (
        titles.__setitem__(stem, fig.get_suptitle()), save(fig, out, stem, plt)))
    result = compare.main(["--baseline", str(root / "base"), "--improved", str(root / "impr"), "--cases",
                           str(root / "base" / "failures.json"), "--out", str(root / "cmp"), "--device", "cpu"])
    saved = json.loads((root / "cmp" / "comparison.json").read_text())
    metrics = json.loads((root / "base" / "metrics.json").read_text())
    assert saved["accuracy_baseline"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert sum(saved[k] for k in ("corrected", "worsened", "both_wrong", "both_right")) == 120
    assert {"label_smoothing", "cutmix_prob", "augment"} <= set(saved["changed_settings"])
    assert saved["runs"]["baseline"]["checkpoint"] == "last" and saved["same_checkpoint"]
    assert len(saved["per_class"]) == 10 and len(saved["high_confidence_errors"]) == 7
    impr = np.load(root / "impr" / "predictions.npz")["probs"]
    assert [c["fixed"] for c in saved["cases"]] == [bool(impr[r].argmax() == labels[r]) for r in rows]
    assert saved["figures"] == ["confidence", "high_confidence", "per_class", "reliability", "gradcam_compare"]
    assert saved["gradcam_layer"] == "relu3" and result["cases"] == saved["cases"]
    assert "scaled to [0, 1] per image" in titles["gradcam_compare"]
    assert "not comparable across models" in titles["gradcam_compare"]
    for stem in saved["figures"]:
        for ext in ("png", "pdf"):
            assert (root / "cmp" / f"{stem}.{ext}").stat().st_size > 1000, stem


def test_gradcam_of_other_cases_is_refused(trained, tmp_path):
    """compare.py reuses the baseline's maps from gradcam.py: they must be of the same cases."""
    for name in ("base", "impr"):
        shutil.copytree(trained / name, tmp_path / name)
    data = json.loads((tmp_path / "base" / "failures.json").read_text())
    data["cases"] = data["cases"][:2]
    (tmp_path / "base" / "failures.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="gradcam.json does not explain the cases of failures.json"):
        run_compare(tmp_path, "--cases", str(tmp_path / "base" / "failures.json"), "--device", "cpu")
    assert not (tmp_path / "cmp").exists()


def test_stale_predictions_are_refused_before_gradcam(trained, tmp_path):
    root = trained
    for name in ("base", "impr"):  # copies, so the other test's runs stay intact
        shutil.copytree(root / name, tmp_path / name)
    state = torch.load(tmp_path / "impr" / "last.pt", weights_only=True)
    state["model"]["fc2.bias"] += 5 * torch.arange(10.0)  # a different model than evaluated
    torch.save(state, tmp_path / "impr" / "last.pt")
    with pytest.raises(SystemExit, match="holds other weights than evaluate.py evaluated"):
        run_compare(tmp_path, "--cases", str(tmp_path / "base" / "failures.json"), "--device", "cpu")
    assert not (tmp_path / "cmp").exists()  # refused before anything is written


#### Seeds and ablation

def seed_pair(root, seed, n_base_ok, n_impr_ok, **impr_config):
    """20 images; the first n_*_ok right for each model."""
    labels = np.arange(20) % 10
    wrong = (labels + 1) % 10
    for name, n_ok, cfg in (("baseline", n_base_ok, {}), ("improved", n_impr_ok, impr_config)):
        ok = np.arange(20) < n_ok
        make_run(root / f"seed{seed}" / name, labels, np.where(ok, labels, wrong), seed=seed, **cfg)
    return root / f"seed{seed}"


def test_seed_summary_mean_and_std(tmp_path):
    dirs = [seed_pair(tmp_path, s, nb, ni, cutmix_prob=0.5)
            for s, nb, ni in ((42, 8, 12), (43, 10, 11), (44, 6, 13))]
    sd = compare.seed_summary(dirs)
    assert sd["seeds"] == [42, 43, 44] and sd["improved_better"] == 3
    assert sd["baseline"]["values"] == [0.4, 0.5, 0.3]
    assert sd["baseline"]["mean"] == pytest.approx(0.4) and sd["baseline"]["std"] == pytest.approx(0.1)
    assert sd["difference"]["values"] == pytest.approx([0.2, 0.05, 0.35])
    assert sd["difference"]["std"] == pytest.approx(np.std([0.2, 0.05, 0.35], ddof=1), abs=1e-6)


def test_seed_summary_refuses_other_changes_and_repeated_seeds(tmp_path):
    a = seed_pair(tmp_path, 42, 8, 12, cutmix_prob=0.5)
    b = seed_pair(tmp_path, 43, 8, 12, cutmix_prob=0.3)
    with pytest.raises(compare.UserError, match="differs from .* in more than its seed"):
        compare.seed_summary([a, b])
    with pytest.raises(compare.UserError, match="lists seed 42 twice"):
        compare.seed_summary([a, a])


def test_ablation_table_through_the_cli(pair):
    labels = np.arange(20) % 10
    ok = np.arange(20) < 14
    make_run(pair / "ls-only", labels, np.where(ok, labels, (labels + 1) % 10), label_smoothing=0.1)
    result = run_compare(pair, "--ablation", str(pair / "ls-only"))
    assert [p.name for p in (pair / "cmp").iterdir()] == ["ablation.json"]  # its summary, nothing else
    assert json.loads((pair / "cmp" / "ablation.json").read_text())["ablation"] == result["ablation"]
    rows = {r["name"]: r for r in result["ablation"]}
    assert list(rows) == ["impr", "ls-only"]
    assert rows["ls-only"]["changed"] == {"label_smoothing": 0.1}
    assert rows["ls-only"]["accuracy"] == pytest.approx(0.7)
    assert rows["ls-only"]["difference"] == pytest.approx(0.3)
    # baseline right on images 9 and 13-19, ls-only on 0-13: it corrects 0-8 and 10-12, worsens 14-19
    assert (rows["ls-only"]["corrected"], rows["ls-only"]["worsened"]) == (12, 6)
    assert rows["impr"]["changed"] == {"cutmix_prob": 0.5, "label_smoothing": 0.1, "seed": 7}


#### Possible label errors

def test_label_error_suspects(tmp_path):
    # Rules in tests/test_label_errors.py; here what compare.py writes. Rows 4-6 (labelled 3) and
    # 7-8 (labelled 5) are right at 0.9 for both models: t3 = 0.9 for each.
    labels = np.array([0, 0, 0, 0, 3, 3, 3, 5, 5, 5])
    # 0, 1, 9: both flag 3 (suspects); 2: the improved model only 0.5 sure of 3, not flagged;
    # 3: they disagree (3 vs 5); 4-8: both right
    pred_b = np.array([3, 3, 3, 3, 3, 3, 3, 5, 5, 3])
    pred_i = np.array([3, 3, 3, 5, 3, 3, 3, 5, 5, 3])
    conf_b = np.array([0.95, 0.99, 0.95, 0.99, 0.9, 0.9, 0.9, 0.9, 0.9, 0.92])
    conf_i = np.array([0.97, 0.91, 0.5, 0.99, 0.9, 0.9, 0.9, 0.9, 0.9, 0.96])
    make_run(tmp_path / "base", labels, pred_b, conf_b)
    make_run(tmp_path / "impr", labels, pred_i, conf_i)
    result = run_compare(tmp_path)
    sus = result["label_error_suspects"]
    assert sus["count"] == 3 and sus["share"] == pytest.approx(3 / 10)
    # by the models' mean p(label), lowest first: 0.0044 (0), 0.0056 (1), 0.0067 (9)
    assert [x["index"] for x in sus["suspects"]] == [0, 1, 9]
    first = sus["suspects"][0]
    assert (first["label_name"], first["agreed_name"]) == ("c0", "c3")
    assert (first["baseline_confidence"], first["improved_confidence"]) == (0.95, 0.97)
    assert sus["rule"]["baseline"]["per_class"][3] == pytest.approx(0.9, abs=1e-4)
    assert sus["rule"]["name"] == compare.SUSPECT_RULE
    assert sus["figure"] == "suspects" and (tmp_path / "cmp" / "suspects.png").stat().st_size > 0
    assert "suspects" not in result["figures"]  # a supplement's figure, not the report's


def test_suspects_listed_without_a_figure_when_images_are_missing(tmp_path, capsys):
    labels, pred = np.array([0, 0, 3, 3]), np.full(4, 3)  # both models flag images 0 and 1 for 3
    for name in ("base", "impr"):  # no CIFAR-100 archive in tmp_path
        make_run(tmp_path / name, labels, pred, np.full(4, 0.95), dataset="cifar100")
    result = run_compare(tmp_path)
    assert result["label_error_suspects"]["count"] == 2 and "figure" not in result["label_error_suspects"]
    assert "note: no suspects figure:" in capsys.readouterr().out
    assert not (tmp_path / "cmp" / "suspects.png").exists()


def test_ablation_run_without_config_is_an_error(pair):
    labels = np.arange(20) % 10
    make_run(pair / "half", labels, labels)
    (pair / "half" / "config.json").unlink()
    _fails(pair, "half/config.json does not exist", "--ablation", str(pair / "half"))
    assert not (pair / "cmp").exists()


def test_calibration_and_per_class_come_from_metrics_json(pair):
    """compare.py reads what evaluate.py wrote instead of recomputing it: a changed metrics.json
    shows through, and a metrics.json without those numbers is refused."""
    path = pair / "base" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["ece"], metrics["per_class_accuracy"][3] = 0.123, 0.25
    path.write_text(json.dumps(metrics))
    result = run_compare(pair)
    assert result["calibration"]["baseline"]["ece"] == 0.123
    assert result["per_class"][3]["baseline"] == 0.25
    del metrics["reliability"]
    path.write_text(json.dumps(metrics))
    shutil.rmtree(pair / "cmp")
    _fails(pair, "metrics.json lacks reliability")
