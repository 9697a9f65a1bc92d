"""compare.label_error_suspects: confident learning's per-class thresholds, both models agreeing,
on probability tables whose flipped labels are known; the supplement's sentence about them."""
import warnings

import numpy as np
import pytest

import compare
import shapes
import supplement

N, C = 2000, 10


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def side(probs, labels):
    return {"probs": np.asarray(probs, np.float32), "labels": np.asarray(labels), "indices": np.arange(len(labels))}


def suspects(a, b, labels, listed=N):
    classes = [f"c{k}" for k in range(np.shape(a)[1])]
    return compare.label_error_suspects(side(a, labels), side(b, labels), classes, listed=listed)


def old_rule_count(a, b, labels, threshold=0.9):
    """The rule this replaced: both models' argmax the same other class, each at >= threshold."""
    pa, pb = a.argmax(1), b.argmax(1)
    return int(((pa == pb) & (pa != labels) & (a.max(1) >= threshold) & (b.max(1) >= threshold)).sum())


@pytest.fixture(scope="module")
def world():
    """True classes, 5% of labels flipped to a random other class, and a shared per-image
    difficulty, so that the two models also share some of their mistakes (as real ones do)."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, C, N)
    flipped = rng.random(N) < 0.05
    labels = np.where(flipped, (truth + rng.integers(1, C, N)) % C, truth)
    return truth, labels, flipped, rng.normal(size=(N, C))


def model(world, seed, smoothed=False):
    """~87% accurate on the true classes. smoothed: tempered (T 1.5) and mixed with uniform by
    0.15, so that no probability reaches 0.85, as with a model trained with label smoothing."""
    truth, _, _, shared = world
    logits = 4 * np.eye(C)[truth] + shared + np.random.default_rng(seed).normal(size=(N, C))
    return 0.85 * softmax(logits / 1.5) + 0.15 / C if smoothed else softmax(logits)


@pytest.mark.parametrize("kinds", [(False, False), (True, True), (False, True)],
                         ids=["sharp", "smoothed", "sharp+smoothed"])
def test_finds_flipped_labels_whatever_the_calibration(world, kinds):
    truth, labels, flipped, _ = world
    a, b = model(world, 1, kinds[0]), model(world, 2, kinds[1])
    assert (a.argmax(1) == truth).mean() == pytest.approx(0.87, abs=0.03)
    found = suspects(a, b, labels)
    rows = np.array([s["row"] for s in found["suspects"]])
    assert found["count"] == len(rows) > 0
    precision, recall = flipped[rows].mean(), flipped[rows].sum() / flipped.sum()
    # confident learning's mean thresholds trade recall for precision: ~0.37-0.44 here
    assert precision >= 0.9 and recall >= 0.3, (precision, recall)
    # the class both models agree on is the true one: the flip is undone, not moved elsewhere
    assert np.mean([s["agreed"] == truth[s["row"]] for s in found["suspects"]]) >= 0.9
    ranked_by = [s["label_confidence"] for s in found["suspects"]]  # the label least believed first
    assert ranked_by == sorted(ranked_by) and ranked_by[-1] > ranked_by[0]


def test_the_old_fixed_threshold_misses_a_smoothed_model(world):
    _, labels, flipped, _ = world
    a, b = model(world, 1, True), model(world, 2, True)
    assert max(a.max(), b.max()) < 0.85
    assert old_rule_count(a, b, labels) == 0
    found = suspects(a, b, labels)
    assert found["count"] >= 0.3 * flipped.sum()
    # the thresholds follow the model's compressed scale: well under the old 0.9
    assert found["rule"]["baseline"]["max"] < 0.85 and found["rule"]["improved"]["min"] > 0.1


@pytest.mark.parametrize("smoothed", [False, True])
def test_clean_labels_give_few_suspects(world, smoothed):
    truth = world[0]
    a, b = model(world, 1, smoothed), model(world, 2, smoothed)
    assert (a.argmax(1) != truth).sum() > 150  # the models do err: these are not suspects
    assert suspects(a, b, truth)["count"] <= 0.003 * N


# A hand-checked table, 3 classes. Model a's thresholds (mean p(j) on the images labelled j):
# t0 = (0.9 + 0.25 + 0.1) / 3 = 0.41667, t1 = (0.8 + 0.6 + 0.4) / 3 = 0.6, t2 = (0.8 + 0.6) / 2 = 0.7.
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2])
A = np.array([[0.9, 0.05, 0.05],
              [0.25, 0.05, 0.7],  # labelled 0; p2 = t2 exactly: flagged for 2, p(label) 0.25
              [0.1, 0.8, 0.1],  # labelled 0; only p1 passes: flagged for 1, p(label) 0.1
              [0.1, 0.8, 0.1],
              [0.2, 0.6, 0.2],  # p1 = t1 exactly: its own label, not a suspect
              [0.5, 0.4, 0.1],  # labelled 1; p0 passes, p1 does not: flagged for 0, p(label) 0.4
              [0.1, 0.1, 0.8],
              [0.2, 0.2, 0.6]])  # no class reaches its threshold: not flagged


def test_identical_models_give_one_models_confident_learning_flags():
    found = suspects(A, A, LABELS)
    assert [s["row"] for s in found["suspects"]] == [2, 1, 5]
    assert [(s["label"], s["agreed"]) for s in found["suspects"]] == [(0, 1), (0, 2), (1, 0)]
    assert [s["label_confidence"] for s in found["suspects"]] == [0.1, 0.25, 0.4]
    assert [s["margin"] for s in found["suspects"]] == [0.7, 0.45, 0.1]
    assert [s["baseline_confidence"] for s in found["suspects"]] == [0.8, 0.7, 0.5]
    assert found["rule"]["baseline"] == {"per_class": [0.4167, 0.6, 0.7], "min": 0.4167, "max": 0.7}
    assert found["share"] == pytest.approx(3 / 8)
    assert [s["row"] for s in suspects(A, A, LABELS, listed=2)["suspects"]] == [2, 1]


def test_suspects_need_both_models_on_the_same_class():
    b = A.copy()
    b[1] = [0.25, 0.7, 0.05]  # b flags image 1 for class 1, a for class 2: they disagree
    b[5] = [0.3, 0.6, 0.1]  # b's t1 is now 2 / 3: no class passes, b does not flag image 5
    found = suspects(A, b, LABELS)
    assert [s["row"] for s in found["suspects"]] == [2]
    assert found["rule"]["improved"]["per_class"][1] == pytest.approx(2 / 3, abs=1e-4)


def test_a_class_no_image_is_labelled_with_gets_no_threshold():
    # true class 2 exists, but no image carries label 2: a wrong label 0 on a class-2 image
    # cannot be told apart without the model's typical confidence in class 2
    labels = np.array([0, 0, 1, 1, 0])  # t0 = 0.34, t1 = 0.85, t2 undefined
    p = np.array([[0.9, 0.05, 0.05], [0.1, 0.85, 0.05], [0.1, 0.8, 0.1], [0.05, 0.9, 0.05],
                  [0.02, 0.03, 0.95]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mean of an empty slice, no NaN comparisons
        found = suspects(p, p, labels)
    assert found["rule"]["baseline"]["per_class"][2] is None
    assert [(s["row"], s["agreed"]) for s in found["suspects"]] == [(1, 1)]


def test_a_single_class_has_no_suspects():
    found = suspects(np.ones((5, 1)), np.ones((5, 1)), np.zeros(5, int))
    assert found["count"] == 0 and found["suspects"] == []
    assert found["rule"]["baseline"]["per_class"] == [1.0]


#### The supplement's wording

def read(comparison):
    """A partial comparison.json as report/study.py hands it on: optional keys null if absent."""
    return shapes.filled(comparison, shapes.COMPARISON)


def test_supplement_names_the_rule_and_the_thresholds(tmp_path):
    found = suspects(A, A, LABELS)
    text = supplement.suspects_section(read({"label_error_suspects": found}), tmp_path, tmp_path)
    assert "3 test images" in text and "confident learning" in text and "check by eye" in text
    assert "0.417 to 0.7" in text  # each model's range of per-class thresholds
    none = suspects(A[:, :1] * 0 + 1, A[:, :1] * 0 + 1, np.zeros(8, int))
    assert "No test image" in supplement.suspects_section(read({"label_error_suspects": none}), tmp_path, tmp_path)


def test_supplement_reads_a_comparison_from_before_the_rule(tmp_path):
    old = {"threshold": 0.9, "count": 2, "share": 0.2, "suspects": []}
    text = supplement.suspects_section(read({"label_error_suspects": old}), tmp_path, tmp_path)
    assert "at least 0.9 sure" in text and "check by eye" in text


#### Cross-check with the reference implementation (optional: requirements-test-extra.txt)

@pytest.mark.filterwarnings("ignore")
def test_one_model_flags_match_cleanlabs_confident_learning(world):
    filt = pytest.importorskip("cleanlab.filter")
    labels = world[1]
    for probs, lab in ((model(world, 1), labels), (model(world, 2, True), labels), (A, LABELS)):
        probs = probs.astype(np.float32)
        ours = sorted(s["row"] for s in suspects(probs, probs, lab)["suspects"])
        theirs = np.flatnonzero(filt.find_label_issues(lab, probs, filter_by="confident_learning"))
        assert len(ours) > 0 and ours == theirs.tolist()
