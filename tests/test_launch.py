"""tools/launch.py on one box: real make -j, real flocks, real processes (no GPU needed: the slots
are named by --gpus, and each job records the CUDA_VISIBLE_DEVICES it was given)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = [sys.executable, str(ROOT / "tools" / "launch.py")]
# A job: record the slot it was given and when it held it.
RECORD = ("import os, sys, time; t = time.time(); time.sleep(float(sys.argv[2])); "
          "open(sys.argv[1], 'w').write(' '.join([os.environ.get('CUDA_VISIBLE_DEVICES', '-'), "
          "os.environ.get('LAUNCH_SLOT', '-'), os.environ.get('OMP_NUM_THREADS', '-'), str(t), str(time.time())]))")


def records(folder):
    out = []
    for path in sorted(folder.glob("*.rec")):
        gpu, *slot, omp, start, end = path.read_text().split()
        out.append((gpu, " ".join(slot), omp, float(start), float(end)))
    return out


def test_make_j_gives_each_job_a_slot_of_its_own(tmp_path):
    """8 jobs under make -j8 on 2 GPUs x 2 slots: never more than 4 at once, never two on one slot."""
    jobs = [f"job{k}" for k in range(8)]
    rules = "".join(f"{j}.rec:\n\t{' '.join(LAUNCH)} --name {j} --gpus '0 1' --per-gpu 2 --lock-dir locks "
                    f"-- {sys.executable} -c \"{RECORD}\" $@ 0.6\n" for j in jobs)
    (tmp_path / "Makefile").write_text(f"all: {' '.join(j + '.rec' for j in jobs)}\n" + rules)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
    subprocess.run(["make", "-s", "-j8"], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    found = records(tmp_path)
    assert len(found) == 8 and {gpu for gpu, *_ in found} == {"0", "1"}
    by_slot = {}
    for gpu, slot, omp, start, end in found:
        assert slot.startswith(f"GPU {gpu}, slot ") and slot.endswith(" of 2")
        assert omp == str(max(1, (os.cpu_count() or 1) // 4))  # the cores shared by the 4 slots
        by_slot.setdefault(slot, []).append((start, end))
    assert len(by_slot) == 4
    for spans in by_slot.values():
        spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans
    events = sorted([(s, 1) for *_, s, _ in found] + [(e, -1) for *_, e in found])
    running = [sum(d for _, d in events[:k + 1]) for k in range(len(events))]
    assert max(running) <= 4


def wait_for(predicate, seconds=20):
    end = time.time() + seconds
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_killed_job_frees_its_slot_at_once(tmp_path):
    holder = subprocess.Popen([*LAUNCH, "--name", "holder", "--gpus", "3", "--lock-dir", str(tmp_path / "locks"),
                               "--", sys.executable, "-c", "import time; time.sleep(60)"],
                              stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "locks" / "gpu3-0.lock"
    assert wait_for(lambda: lock.is_file() and lock.read_text().startswith(str(holder.pid)))
    waiter = subprocess.Popen([*LAUNCH, "--name", "waiter", "--gpus", "3", "--lock-dir", str(tmp_path / "locks"),
                               "--", sys.executable, "-c", RECORD, str(tmp_path / "w.rec"), "0"],
                              stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert waiter.poll() is None and not (tmp_path / "w.rec").exists()  # the slot is taken
    os.kill(holder.pid, signal.SIGKILL)  # exec: the job is the process that holds the lock
    holder.wait()
    assert waiter.wait(timeout=20) == 0
    gpu, slot, *_ = records(tmp_path)[0]
    assert gpu == "3" and slot == "GPU 3, slot 1 of 1"
    assert "waiting for one" in waiter.stderr.read()


def test_without_gpus_the_step_runs_as_it_is(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES",)}
    env["PATH"] = str(tmp_path)  # no nvidia-smi to find
    subprocess.run([*LAUNCH, "--name", "cpu", "--lock-dir", str(tmp_path / "locks"), "--", sys.executable,
                    "-c", RECORD, str(tmp_path / "c.rec"), "0"], env=env, check=True, timeout=60)
    gpu, slot, *_ = records(tmp_path)[0]
    assert (gpu, slot) == ("-", "-") and not (tmp_path / "locks").exists()


def test_the_makefile_sends_gpu_steps_through_the_launcher():
    out = subprocess.run(["make", "-n", "smoke", "PY=python3", "LAUNCH=slurm", "SLURM_PARTITION=gpu",
                          "SLURM_TIME=1:00:00", "RUNS_DIR=/nonexistent"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    train = next(line for line in out.splitlines() if "train.py" in line)
    assert ("tools/launch.py --name smoke/baseline/train --log /nonexistent/smoke/logs/baseline-train.log "
            "--lock-dir /nonexistent/.launch --mode slurm --gpus-per-job 1 --partition gpu --time 1:00:00 -- "
            "python3 train.py") in train
    for step in ("evaluate", "gradcam", "corruptions", "faithfulness", "compare"):
        assert f"--name smoke/{'compare' if step == 'compare' else 'baseline'}/{step} " in out
    assert "failures.py" in out and "launch.py --name smoke/baseline/failures" not in out  # no GPU
    bad = subprocess.run(["make", "-n", "smoke", "LAUNCH=ssh"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown LAUNCH=ssh: use local or slurm" in bad.stderr


@pytest.mark.parametrize("argv, says", [(["--per-gpu", "0"], "--per-gpu must be at least 1")])
def test_bad_launcher_flags_are_one_sentence(argv, says):
    proc = subprocess.run([*LAUNCH, "--name", "x", *argv, "--", "true"], capture_output=True, text=True)
    assert proc.returncode != 0 and says in proc.stderr and "Traceback" not in proc.stderr
