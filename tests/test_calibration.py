"""evaluate.calibration: ECE on a hand-computed example and on calibrated constructions, Brier and
NLL against their direct formulas, reliability bins."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluate import calibration
from contract import ECE_BINS


def rows_with(conf, pred, num_classes=3):
    """Probability rows with top class pred at confidence conf, the rest spread evenly."""
    conf = np.asarray(conf, dtype=np.float64)
    p = np.repeat(((1 - conf) / (num_classes - 1))[:, None], num_classes, 1)
    p[np.arange(len(conf)), pred] = conf
    return p


def test_ece_by_hand():
    # confidences 0.90 right and 0.92 wrong share the bin (13/15, 14/15]; 0.70 right is alone in
    # (10/15, 11/15]; 0.97 right is alone in (14/15, 1].
    # ECE = 2/4 * |0.5 - 0.91| + 1/4 * |1 - 0.7| + 1/4 * |1 - 0.97| = 0.205 + 0.075 + 0.0075
    labels = np.array([0, 1, 2, 0])
    probs = rows_with([0.90, 0.92, 0.70, 0.97], [0, 0, 2, 0])
    cal = calibration(probs, labels)
    assert cal["ece"] == pytest.approx(0.2875, abs=1e-12)
    r = cal["reliability"]
    assert len(r["edges"]) == ECE_BINS + 1 == 16 and r["edges"][0] == 0 and r["edges"][-1] == 1
    assert r["count"] == [0] * 10 + [1, 0, 0, 2, 1]
    assert r["confidence"][13] == pytest.approx(0.91) and r["accuracy"][13] == 0.5
    assert r["accuracy"][10] == 1.0 and r["confidence"][10] == pytest.approx(0.7)
    assert r["confidence"][0] is None and r["accuracy"][5] is None


def test_upper_bin_edge_is_included():
    # With 4 bins the edges are exact binary fractions: 0.5 belongs to (0.25, 0.5] and 0.75 to
    # (0.5, 0.75], not to the next bin up (Guo et al.'s bins are closed on the right).
    cal = calibration(rows_with([0.5, 0.75], [0, 0]), [0, 0], n_bins=4)
    assert cal["reliability"]["count"] == [0, 1, 1, 0]
    assert cal["ece"] == pytest.approx(0.5 * 0.5 + 0.5 * 0.25)


def test_perfectly_calibrated_construction_has_zero_ece():
    # In each confidence level exactly a share `conf` of the images is right.
    conf, pred, labels = [], [], []
    for q in (0.5, 0.6, 0.75, 0.8, 0.9, 1.0):
        k = 20
        right = round(q * k)
        conf += [q] * k
        pred += [0] * k
        labels += [0] * right + [1] * (k - right)
    cal = calibration(rows_with(conf, pred), labels)
    assert cal["ece"] == pytest.approx(0, abs=1e-12)


def test_sampled_calibrated_model_has_small_ece_and_overconfident_a_large_one():
    rng = np.random.default_rng(0)
    n = 100_000
    conf = rng.uniform(0.4, 1.0, n)
    right = rng.random(n) < conf  # right with probability equal to the confidence
    labels = np.where(right, 0, 1)
    assert calibration(rows_with(conf, np.zeros(n, int)), labels)["ece"] < 0.01
    over = calibration(rows_with(np.full(n, 0.99), np.zeros(n, int)), rng.integers(0, 2, n))
    assert over["ece"] == pytest.approx(0.49, abs=0.01)


def test_brier_and_nll_match_direct_formulas():
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(0, 3, (500, 10)))
    y = rng.integers(0, 10, 500)
    labels = torch.from_numpy(y)
    probs = logits.softmax(1).numpy()
    cal = calibration(probs, y)
    brier = np.mean([sum((probs[i, k] - (k == y[i])) ** 2 for k in range(10)) for i in range(500)])
    assert cal["brier"] == pytest.approx(brier, rel=1e-10)
    assert cal["nll"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-10)
    assert cal["ece"] == pytest.approx(calibration(torch.from_numpy(probs), labels)["ece"])  # torch input


def test_perfect_and_hopeless_predictions():
    one_hot = np.eye(4)[[0, 1, 2, 3]]
    cal = calibration(one_hot, [0, 1, 2, 3])
    assert (cal["nll"], cal["brier"], cal["ece"]) == (0.0, 0.0, 0.0)
    wrong = calibration(one_hot, [1, 2, 3, 0])
    assert wrong["brier"] == 2.0 and wrong["ece"] == 1.0
    assert wrong["nll"] == pytest.approx(-np.log(np.finfo(np.float32).tiny))  # clipped, not inf
