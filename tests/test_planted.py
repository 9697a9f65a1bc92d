"""synthetic-planted: failure causes planted in known test images (issue 24), and its control."""
import pytest
import torch

import common
import synthetic


@pytest.fixture(scope="module")
def both():
    return common.load_dataset("synthetic-planted"), common.load_dataset("synthetic-control")


def on_stripes(images):
    """Whether most pixels of each image's 2-pixel border ring follow the stripe pattern (an object
    may cover part of the ring; clutter matches the pattern at few pixels)."""
    ring = torch.ones(32, 32, dtype=torch.bool)
    ring[2:30, 2:30] = False
    pattern = (synthetic.stripes(32) * 255)[:, ring]
    close = (images.float()[:, :, ring] - pattern).abs().amax(1) < 40  # fine noise adds at most 38
    return close.float().mean(1) > 0.6


def test_the_context_cue_goes_with_one_class_in_training(both):
    planted, control = both
    striped = on_stripes(planted.train_x)
    cue = planted.train_y == synthetic.CUE_CLASS
    assert striped[cue].float().mean() > 0.85 and striped[~cue].float().mean() < 0.04
    striped = on_stripes(control.train_x)  # the control: stripes as rare for every class
    assert striped[control.train_y == synthetic.CUE_CLASS].float().mean() < 0.06


def test_each_planted_cause_is_where_the_dataset_says(both):
    planted, control = both
    p = planted.planted
    assert control.planted is None and len(planted.test_y) == 1000
    context, flipped = torch.tensor(p["context"]), torch.tensor(p["label_error"])
    assert 30 <= len(context) <= 90 and 10 <= len(flipped) <= 50 and not set(p["context"]) & set(p["label_error"])
    assert on_stripes(planted.test_x[context]).all() and (planted.test_y[context] != synthetic.CUE_CLASS).all()
    # The control holds the labels as drawn: the planted set differs from them exactly where flipped.
    changed = (planted.test_y != control.test_y).nonzero().flatten()
    assert changed.tolist() == p["label_error"]
    assert set(p["lookalike"]) == set(torch.isin(control.test_y, torch.tensor(synthetic.LOOKALIKE))
                                      .nonzero().flatten().tolist())
    assert planted.classes[9] == "notched_square" and control.classes[9] == "frame"


def test_the_lookalikes_differ_by_a_notch_only():
    masks = synthetic._lookalike_masks()
    square, notched = masks[synthetic.LOOKALIKE[0]], masks[synthetic.LOOKALIKE[1]]
    assert int((square ^ notched).sum()) == 4 and int(notched.sum()) == int(square.sum()) - 4


def test_the_planted_sets_load_by_name_and_survive_a_test_subset():
    ds = common.load_dataset("synthetic-planted", limit_test=200)
    assert len(ds.test_y) == 200 and ds.n_test_full == 1000 and ds.planted["cue_class"] == synthetic.CUE_CLASS
