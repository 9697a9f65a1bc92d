"""tools/study_diff.py: a refactoring's before/after check of a study folder."""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import study_diff  # noqa: E402


def study(folder, accuracy, commit, extra=None):
    (folder / "baseline").mkdir(parents=True)
    (folder / "baseline" / "metrics.json").write_text(json.dumps(
        {"test_accuracy": accuracy, "git_commit": commit, "run": str(folder / "baseline"), **(extra or {})}))
    np.savez(folder / "baseline" / "predictions.npz", probs=np.eye(3) * accuracy)
    return folder


def test_provenance_and_added_keys_are_not_differences(tmp_path, capsys):
    before = study(tmp_path / "a", 0.5, "abc")
    after = study(tmp_path / "b", 0.5, "def", extra={"precision": "float32"})
    assert study_diff.main([str(before), str(after)]) == 0
    out = capsys.readouterr().out
    assert "baseline/metrics.json: 0 differences, 1 keys added" in out and ".precision: only in after" in out
    assert "baseline/predictions.npz: bit-identical" in out


def test_a_changed_result_is_found_and_exits_1(tmp_path, capsys):
    assert study_diff.main([str(study(tmp_path / "a", 0.5, "abc")), str(study(tmp_path / "b", 0.51, "abc"))]) == 1
    out = capsys.readouterr().out
    assert ".test_accuracy: 0.5 != 0.51" in out and "predictions.npz: DIFFERENT" in out
    assert "files whose results differ: 2" in out
