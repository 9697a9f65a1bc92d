""".ci/gpu, the plan for the first GPU at hand, rehearsed end to end on the CPU at a tiny scale:
every phase runs and leaves its results in $OUT (about 3 minutes on 2 cores)."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_plan_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, DEVICE="cpu", SCALE="tiny", SUITE="0", OUT=str(out), RUNS=str(tmp_path / "runs"),
               PY=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", ".ci/gpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    phases = (out / "phases.txt").read_text()
    assert proc.returncode == 0, phases + proc.stderr[-2000:]
    for name in ("tests", "bench", "study", "determinism"):
        assert f"{name} rc=0" in phases, phases
    rows = {r["pipeline"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert any(p.startswith("(a) reference") for p in rows) and "(b) train.py epoch, float32" in rows
    assert all(r["images_per_second"] > 0 for r in rows.values())
    with tarfile.open(out / "study.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("compare/comparison.json") for n in names) and not any(n.endswith(".pt") for n in names)
    log = (out / "determinism.log").read_text()
    assert '"deterministic_runs_bitwise_equal": true' in log
    assert "torch" in (out / "gpu.txt").read_text()
