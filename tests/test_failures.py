"""failures.py on a hand-made run folder whose errors, ranking and summary are known by hand."""
import json

import numpy as np
import pytest

import failures
from contract import dataset_from_config
from hypotheses import compose_hypothesis, format_probability

N, C = 20, 10
CLASSES = [f"c{i}" for i in range(C)]
SUPER = ["A", "B", "C", "D", "E", "D", "E", "B", "E", "A"]  # 5, 3 share D; 7, 1 share B
# The errors, row: (true, pred, confidence, true-class probability); ranked by confidence:
ERRORS = {5: (5, 3, 0.999, 0.0005),   # 1st: selected
          15: (5, 3, 0.98, 0.01),     # 2nd: true class 5 again -> skipped
          3: (3, 5, 0.95, 0.03),      # 3rd: the confusion 5<->3 again -> skipped
          7: (7, 1, 0.92, 0.05),      # 4th: selected
          12: (2, 8, 0.7, 0.2),       # 5th: selected, true class a close second
          17: (7, 2, 0.6, 0.1),       # 6th: true class 7 again -> skipped
          9: (9, 0, 0.45, 0.40),      # 7th: selected
          0: (0, 4, 0.3, 0.002)}      # 8th: selected
RANKED_ROWS = [5, 15, 3, 7, 12, 17, 9, 0]
SELECTED_ROWS = [5, 7, 12, 9, 0]


def make_probs():
    labels = np.array([r % C for r in range(N)])
    probs = np.zeros((N, C))
    for r in range(N):
        true = labels[r]
        if r in ERRORS:
            t, pred, conf, pt = ERRORS[r]
            assert t == true
            probs[r, pred], probs[r, true] = conf, pt
        else:
            probs[r, true] = 0.8
        rest = [c for c in range(C) if probs[r, c] == 0]
        probs[r, rest] = (1 - probs[r].sum()) / len(rest)  # below every named probability
    return probs.astype(np.float32), labels


_DATASETS = {}


def cached_dataset(config, data_dir=None):
    key = (config["dataset"], config.get("limit_test"))
    if key not in _DATASETS:
        _DATASETS[key] = dataset_from_config(config, data_dir)
    return _DATASETS[key]


@pytest.fixture
def draw_figure():
    """Requested by the tests that want failures.png drawn."""


@pytest.fixture(autouse=True)
def fast(monkeypatch, request):
    """The synthetic set is generated once per session and the gallery drawn only where a test
    requests draw_figure: both cost seconds and are not what most tests check."""
    monkeypatch.setattr(failures, "dataset_from_config", cached_dataset)
    if "draw_figure" not in request.fixturenames:
        monkeypatch.setattr(failures, "plot_gallery", lambda *args, **kwargs: None)


@pytest.fixture
def run(tmp_path):
    """config.json + predictions.npz for 20 synthetic test images (a fixed subset of 1000)."""
    run = tmp_path / "fake"
    run.mkdir()
    config = {"arch": "simplecnn", "num_classes": C, "classes": CLASSES, "superclasses": SUPER,
              "dataset": "synthetic", "data_dir": str(tmp_path / "data"), "limit_test": N,
              "mean": [0.5] * 3, "std": [0.25] * 3}
    (run / "config.json").write_text(json.dumps(config))
    probs, labels = make_probs()
    indices = cached_dataset(config).test_indices.numpy()
    np.savez(run / "predictions.npz", probs=probs, labels=labels, logits=np.log(probs),
             indices=indices)
    return run


def indices_of(run):
    return np.load(run / "predictions.npz")["indices"]


def test_ranking_selection_and_case_fields(run, draw_figure):
    result = failures.main(["--run", str(run), "--top", "4"])
    idx = indices_of(run)
    assert [c["row"] for c in result["top"]] == RANKED_ROWS[:4]
    assert [c["row"] for c in result["cases"]] == SELECTED_ROWS
    assert [c["index"] for c in result["cases"]] == [int(idx[r]) for r in SELECTED_ROWS]
    assert result == json.loads((run / "failures.json").read_text())
    first, close = result["cases"][0], result["cases"][2]
    assert (first["true"], first["true_name"], first["pred"], first["pred_name"]) == (5, "c5", 3, "c3")
    assert first["confidence"] == pytest.approx(0.999) and first["true_prob"] == pytest.approx(0.0005)
    assert first["true_rank"] == 2 and first["correct"] is False
    assert [t["class"] for t in first["top3"]] == [3, 5, first["top3"][2]["class"]]
    assert (first["true_superclass"], first["pred_superclass"]) == ("D", "D")
    assert first["same_superclass"] is True
    assert result["cases"][1]["same_superclass"] is True  # 7 -> 1, both B
    assert (close["true_superclass"], close["pred_superclass"]) == ("C", "E")
    assert close["same_superclass"] is False
    assert (run / "failures.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_matches_a_hand_count(run):
    s = failures.main(["--run", str(run)])["summary"]
    assert (s["n_test"], s["n_errors"], s["accuracy"]) == (20, 8, pytest.approx(0.6))
    assert s["errors_at_confidence"] == {"0.5": 6, "0.9": 4, "0.99": 1}
    pairs = [(p["true"], p["pred"], p["count"]) for p in s["confused_pairs"]]
    assert pairs == [(5, 3, 2), (0, 4, 1), (2, 8, 1), (3, 5, 1), (7, 1, 1), (7, 2, 1), (9, 0, 1)]
    # Inside a superclass: 5->3 twice, 3->5, 7->1, 9->0; across: 0->4, 2->8, 7->2.
    assert (s["errors_within_superclass"], s["share_within_superclass"]) == (5, pytest.approx(5 / 8))


def test_suggestions_follow_the_numbers(run):
    cases = {c["row"]: c for c in failures.main(["--run", str(run)])["cases"]}
    assert any("within superclass D" in s for s in cases[5]["suggestions"])
    assert any("p >= 0.99" in s for s in cases[5]["suggestions"])
    assert any("systematic confusion: 2 test c5 images are predicted c3" in s
               for s in cases[5]["suggestions"])
    assert any("close second (p=0.40)" in s for s in cases[9]["suggestions"])
    assert any("across superclasses (C -> E)" in s for s in cases[12]["suggestions"])
    assert any("uncertain" in s for s in cases[0]["suggestions"])
    assert any("nearly ruled out" in s for s in cases[0]["suggestions"])
    assert not any("systematic" in s for s in cases[7]["suggestions"])  # a pair seen once
    for c in cases.values():
        assert c["hypothesis_source"] == "auto" and c["hypothesis"] == compose_hypothesis(c)
        assert c["hypothesis"].startswith(f"{c['true_name']} predicted as {c['pred_name']}")


def test_without_superclasses_no_superclass_fields(run):
    config = json.loads((run / "config.json").read_text())
    config["superclasses"] = None
    (run / "config.json").write_text(json.dumps(config))
    result = failures.main(["--run", str(run)])
    assert "same_superclass" not in result["cases"][0]
    assert "errors_within_superclass" not in result["summary"]


def test_analyst_cases_and_hypotheses(run, tmp_path):
    idx = indices_of(run)
    chosen = [int(idx[12]), int(idx[1])]  # an error and a correctly classified image
    hyp = tmp_path / "hyp.json"
    hyp.write_text(json.dumps({str(chosen[0]): "  the object is cut off by the border  "}))
    result = failures.main(["--run", str(run), "--cases", *map(str, chosen), "--hypotheses", str(hyp)])
    a, b = result["cases"]
    assert [a["index"], b["index"]] == chosen and result["selection"]["source"] == "analyst"
    assert a["hypothesis"] == "the object is cut off by the border"  # stripped
    assert a["hypothesis_source"] == "analyst"
    assert b["correct"] is True and b["hypothesis_source"] == "auto"
    assert b["suggestions"] == ["correctly classified (p=0.80)"]


def test_too_few_distinct_errors_fill_up_in_rank_order(run):
    result = failures.main(["--run", str(run), "--num-cases", "7"])
    assert [c["row"] for c in result["cases"]] == SELECTED_ROWS + [15, 3]
    assert "only 5 errors satisfy the rule" in result["selection"]["note"]


def test_all_errors_are_every_error_in_rank_order(run, draw_figure, monkeypatch):
    drawn = []
    monkeypatch.setattr(failures, "MOST_PLOTTED", 3)  # the figure shows the first few only
    monkeypatch.setattr(failures, "plot_gallery", lambda cases, images, title, path: drawn.append((cases, title)))
    result = failures.main(["--run", str(run), "--all-errors"])
    assert [c["row"] for c in result["cases"]] == RANKED_ROWS and len(RANKED_ROWS) == 8
    assert result["selection"] == {"source": "all", "rule": "every error, most confident first"}
    (cases, title), = drawn
    assert [c["row"] for c in cases] == RANKED_ROWS[:3] and "(the first 3 of 8)" in title


@pytest.mark.parametrize("args,hypotheses,message", [
    (["--cases", "1000"], None, "test index 1000 is not in this run's test set"),
    (["--num-cases", "9"], None, "more cases than the 8 misclassified test images"),
    ([], '{"1000": "x"}', "names test index 1000, which is not a selected case"),
    ([], '{"7": ', "is not valid UTF-8 JSON"),
    ([], '["a"]', "must be a JSON object"),
    ([], '{"abc": "x"}', "key 'abc' is not a test index"),
    (["--hypotheses", "missing.json"], None, "does not exist"),
])
def test_bad_input_stops_with_one_sentence_and_writes_nothing(run, tmp_path, monkeypatch, args,
                                                              hypotheses, message):
    monkeypatch.chdir(tmp_path)
    if hypotheses is not None:
        (tmp_path / "hyp.json").write_text(hypotheses)
        args = args + ["--hypotheses", "hyp.json"]
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(SystemExit, match=message) as e:
        failures.main(["--run", str(run), *args])
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
    assert sorted(p.name for p in run.iterdir()) == before


def test_stale_predictions_are_refused_before_anything_is_written(run):
    pred = dict(np.load(run / "predictions.npz"))
    pred["indices"] = pred["indices"][::-1].copy()  # rows no longer match the run's test subset
    np.savez(run / "predictions.npz", **pred)
    with pytest.raises(SystemExit, match="does not match the run's test set; re-run python evaluate.py"):
        failures.main(["--run", str(run)])
    assert not (run / "failures.json").exists() and not (run / "failures.png").exists()


def test_missing_predictions_says_run_evaluate_first(run):
    (run / "predictions.npz").unlink()
    with pytest.raises(SystemExit, match="run python evaluate.py --run .* first"):
        failures.main(["--run", str(run)])
    assert not (run / "failures.json").exists()


@pytest.mark.parametrize("args,message", [
    (["--num-cases", "0"], "argument --num-cases: must be at least 1"),
    (["--top", "-1"], "argument --top: must be at least 0"),
    (["--num-cases", "2", "--cases", "1"], "cannot be combined"),
    (["--all-errors", "--num-cases", "2"], "cannot be combined"),
])
def test_bad_flag_values_are_usage_errors(run, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        failures.main(["--run", str(run), *args])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (run / "failures.json").exists()


@pytest.mark.parametrize("p, text", [(0.93, "p=0.93"), (0.01, "p=0.01"), (0.004, "p=0.004"),
                                     (0.001, "p=0.001"), (0.0004, "p<0.001")])
def test_format_probability_keeps_a_significant_digit(p, text):
    assert format_probability(p) == text


def test_compose_hypothesis_joins_the_suggestions():
    case = {"true_name": "cat", "pred_name": "dog", "suggestions": ["a", "b"]}
    assert compose_hypothesis(case) == "cat predicted as dog: a; b."
    assert compose_hypothesis({**case, "suggestions": []}) == "cat predicted as dog."
