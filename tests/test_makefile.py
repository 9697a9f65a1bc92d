"""The Makefile's own checks: one-sentence errors before anything runs (make -n: nothing is built)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(tmp_path, *args):
    return subprocess.run(["make", "-n", f"PY={sys.executable}", f"RUNS_DIR={tmp_path}", *args],
                          cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (("seeds", "STUDY=smoke", "SEEDS="), "SEEDS is empty; give at least one seed"),
    (("ablation", "STUDY=simplecnn-cifar10"), "changes one thing only; there is nothing to ablate"),
    (("study", "STUDY=nope"), "unknown STUDY=nope"),
])
def test_bad_make_input_is_one_sentence(tmp_path, args, message):
    proc = make(tmp_path, *args)
    assert proc.returncode != 0 and message in proc.stderr
    assert not any(tmp_path.iterdir())


def test_seed_runs_get_their_seed_and_ablation_runs_one_change(tmp_path):
    out = make(tmp_path, "seeds", "ablation", "STUDY=smoke", "SEEDS=42 43").stdout
    assert "--name seed43/baseline" in out and "--seed 43" in out and "--name seed42/" not in out
    assert "--name cutmix-only" in out and "--ablation" in out and "--seeds" in out


def test_analysis_runs_every_step_but_the_pdfs(tmp_path):
    out = make(tmp_path, "analysis", "STUDY=smoke").stdout
    for script in ("train.py", "evaluate.py", "failures.py", "gradcam.py", "corruptions.py", "faithfulness.py",
                   "compare.py", f"explore.py --study {tmp_path}/smoke --out {tmp_path}/smoke/explorer.html"):
        assert script in out
    assert "report.py" not in out and "supplement.py" not in out


def test_imported_weights_replace_training_in_their_own_study_folder(tmp_path):
    runs, a, b = tmp_path / "runs", tmp_path / "a.pth", tmp_path / "b.pt"
    a.write_bytes(b"0"), b.write_bytes(b"0")
    out = make(runs, "analysis", "STUDY=smoke", f"BASELINE_WEIGHTS={a}", f"IMPROVED_WEIGHTS={b}").stdout
    assert "train.py" not in out
    assert f"evaluate.py --weights {a} --arch simplecnn --dataset synthetic --run {runs}/smoke-imported/baseline" in out
    assert f"--weights {b} --arch simplecnn --dataset synthetic --run {runs}/smoke-imported/improved" in out
    for args, message in (((f"BASELINE_WEIGHTS={a}",), "give both BASELINE_WEIGHTS and IMPROVED_WEIGHTS"),
                          ((f"BASELINE_WEIGHTS={a}", f"IMPROVED_WEIGHTS={tmp_path}/c.pt"),
                           f"IMPROVED_WEIGHTS={tmp_path}/c.pt does not exist"),
                          (("seeds", f"BASELINE_WEIGHTS={a}", f"IMPROVED_WEIGHTS={b}"),
                           "do not apply to imported weights")):
        proc = make(runs, "all", *args)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not runs.exists()
