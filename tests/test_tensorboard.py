"""train.py --tensorboard: the per-epoch scalars as TensorBoard events, and a clear error without the
package (that test needs no TensorBoard and never skips)."""
import csv
import sys

import pytest

import train

TINY = ["--arch", "simplecnn", "--dataset", "synthetic", "--optimizer", "adam", "--milestones",
        "--epochs", "1", "--batch-size", "64", "--limit-train", "128", "--limit-test", "32"]


def run_train(tmp_path, name, *extra):
    return train.main(TINY + ["--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"),
                              "--name", name, *extra])


def test_events_hold_the_history_rows(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_train(tmp_path, "tb", "--tensorboard")
    run = tmp_path / "runs" / "tb"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    (row,) = csv.DictReader((run / "history.csv").open())
    for key, tag in train.TensorBoardLog.TAGS.items():
        (point,) = events.Scalars(tag)
        assert point.step == 1 and point.value == pytest.approx(float(row[key]), rel=1e-6), tag


def test_missing_package_stops_before_training(tmp_path, monkeypatch):
    # None in sys.modules makes `from torch.utils.tensorboard import ...` raise ImportError.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(SystemExit) as exc:
        run_train(tmp_path, "tb", "--tensorboard")
    message = str(exc.value.code)
    assert message.startswith("error: ") and "pip install tensorboard" in message and "\n" not in message
    assert not (tmp_path / "runs").exists()  # nothing trained, no run folder made
    # Without the flag the package is never imported, so the same run trains.
    run_train(tmp_path, "plain")
    assert (tmp_path / "runs" / "plain" / "config.json").is_file()
    assert not (tmp_path / "runs" / "plain" / "tensorboard").exists()
