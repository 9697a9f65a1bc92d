"""LAUNCH=slurm on a real one-node Slurm cluster (.ci/slurm-cluster), nothing mocked: a sweep through
make, a training preempted and requeued, a training that reaches its time limit, a failing job.

The cluster needs root to start; where it cannot (no Slurm packages, not root) these tests are
skipped with the reason, unless REQUIRE_SLURM=1 (.ci/run sets it), where they fail instead.

Slurm holds a requeued job until its launch credential expires (its BeginTime: 120 s by default,
10 s on .ci/slurm-cluster's AuthInfo=cred_expire=10); the tests release a held job at once with
`scontrol update JobId=<id> StartTime=now`, which changes when the job starts and nothing else.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / ".ci" / "slurm-cluster"
STATE = Path(os.environ.get("SLURM_STATE", "/tmp/study-slurm"))
TRAIN = ["train.py", "--arch", "simplecnn", "--dataset", "synthetic", "--optimizer", "adam", "--milestones",
         "--limit-train", "1024", "--limit-test", "200", "--batch-size", "64", "--device", "cpu", "--auto-resume"]


def unavailable():
    """Why the cluster cannot be started here, or None."""
    missing = [t for t in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0 and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode != 0:
        return "the Slurm daemons need root (or passwordless sudo) to start"
    return None


def cluster(command):
    """.ci/slurm-cluster start|stop|status, as root (through sudo where this is not root)."""
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n", "env", f"SLURM_STATE={STATE}"]
    return subprocess.run([*sudo, str(CLUSTER), command], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def slurm():
    """The environment of a running one-node cluster (SLURM_CONF set, one thread per job)."""
    reason = unavailable()
    if reason:
        if os.environ.get("REQUIRE_SLURM") == "1":
            pytest.fail(f"REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    was_up = cluster("status").returncode == 0
    t0 = time.perf_counter()
    proc = cluster("start")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"one-node Slurm cluster {'already up' if was_up else 'up in'} {time.perf_counter() - t0:.1f} s")
    env = dict(os.environ, SLURM_CONF=str(STATE / "slurm.conf"), OMP_NUM_THREADS="1", LAUNCH_POLL_SECONDS="0.5")
    yield env
    subprocess.run(["scancel", "--user", str(os.getuid())], env=env, capture_output=True)
    if not was_up:  # leave the machine as it was
        cluster("stop")


def job_info(env, job):
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", str(job)], env=env, capture_output=True,
                         text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def job_of(text):
    """The id of the job that a launcher's stderr names, or None if it names none."""
    found = re.search(r"is Slurm job (\d+)", text)
    return found and found.group(1)


def release_when_held(env, job):
    """A requeued job waits out Slurm's BeginTime; start it now instead (see the module's doc)."""
    info = job_info(env, job)
    if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)
        return True
    return False


def launched(tmp_path, env, name, args, *flags):
    """tools/launch.py --mode slurm running train.py in the background."""
    cmd = [sys.executable, "tools/launch.py", "--mode", "slurm", "--name", name, "--lock-dir",
           str(tmp_path / ".launch"), "--log", str(tmp_path / f"{name}.log"), *flags, "--",
           sys.executable, *TRAIN, "--runs-dir", str(tmp_path), "--name", name, *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def same_weights(a, b):
    x, y = (torch.load(p / "last.pt", weights_only=True) for p in (a, b))
    assert x["epoch"] == y["epoch"]
    return all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"])


def straight_run(tmp_path, env, args):
    """The same training run without Slurm and without interruption."""
    subprocess.run([sys.executable, *TRAIN, "--runs-dir", str(tmp_path), "--name", "straight", *args], cwd=ROOT,
                   env=env, check=True, capture_output=True)
    return tmp_path / "straight"


def wait_and_release(env, launcher, job, timeout=300):
    """Wait for the launcher, releasing the job each time Slurm holds it after a requeue."""
    end, released = time.time() + timeout, 0
    while launcher.poll() is None and time.time() < end:
        released += release_when_held(env, job)
        time.sleep(0.5)
    assert launcher.poll() is not None, "the launcher did not finish"
    return released


def test_a_preempted_training_is_requeued_and_ends_with_the_same_weights(slurm, tmp_path):
    args = ["--epochs", "6"]
    launcher = launched(tmp_path, slurm, "victim", args, "--partition", "low", "--sbatch-flags=--cpus-per-task=2")
    history = tmp_path / "victim" / "history.csv"
    end = time.time() + 180
    while not (history.is_file() and len(history.read_text().splitlines()) >= 2) and time.time() < end:
        assert launcher.poll() is None, launcher.stderr.read()
        time.sleep(0.1)  # after its first epoch
    assert history.is_file(), "the training never got through an epoch"
    urgent = subprocess.run(["sbatch", "--parsable", "--partition", "high", "--cpus-per-task=2",
                             f"--output={tmp_path / 'urgent.log'}", "--wrap", "sleep 1"],
                            env=slurm, capture_output=True, text=True, check=True).stdout.strip()
    stderr_lines = []
    job = None
    end = time.time() + 60
    while job is None and time.time() < end:  # the launcher's first line names the job
        line = launcher.stderr.readline()
        stderr_lines.append(line)
        job = job_of(line)
    released = wait_and_release(slurm, launcher, job)
    stderr = "".join(stderr_lines) + launcher.stderr.read()
    assert launcher.returncode == 0, stderr
    info = job_info(slurm, job)
    assert int(info["Restarts"]) >= 1 and released >= 1, info
    assert job_info(slurm, urgent)["JobState"] == "COMPLETED"
    log = (tmp_path / "victim.log").read_text()
    assert "DUE TO PREEMPTION" in log and "restart 1" in log
    config = json.loads((tmp_path / "victim" / "config.json").read_text())
    assert config["resumed"][0]["after_epoch"] >= 1 and "Slurm job" in config["resumed"][0]["device_slot"]
    assert same_weights(tmp_path / "victim", straight_run(tmp_path, slurm, args))
    print(f"preempted after epoch {config['resumed'][0]['after_epoch']}, resumed as restart "
          f"{info['Restarts']}; weights equal to the uninterrupted run's")


def test_a_training_at_its_time_limit_requeues_itself_and_ends_with_the_same_weights(slurm, tmp_path):
    """--time 1 with the USR1 signal asked 55 s before it: the job's shell stops the training and
    requeues the job. Slurm checks time limits about every 30 s, so the signal comes 5 to 35 s
    after a start; a training of about a minute (longer than the limit itself) must be requeued at
    least once, and every attempt gets some epochs done."""
    args = ["--epochs", "60", "--limit-train", "1024", "--limit-test", "100"]
    launcher = launched(tmp_path, slurm, "late", args, "--time", "1", "--signal-seconds", "55")
    line = launcher.stderr.readline()
    job = job_of(line)
    assert job, line
    wait_and_release(slurm, launcher, job, timeout=600)
    stderr = line + launcher.stderr.read()
    assert launcher.returncode == 0, stderr
    log = (tmp_path / "late.log").read_text()
    assert "time limit near: stopping the step and requeueing job" in log and "restart 1" in log, log[-2000:]
    assert int(job_info(slurm, job)["Restarts"]) >= 1
    assert json.loads((tmp_path / "late" / "config.json").read_text())["resumed"]
    assert same_weights(tmp_path / "late", straight_run(tmp_path, slurm, args))


def test_a_failing_job_fails_the_make_and_names_its_log(slurm, tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.run(["make", "study", "STUDY=smoke", "EPOCHS=1", f"PY={sys.executable}", f"RUNS_DIR={runs}",
                           "LAUNCH=slurm", "SLURM_GPUS=0", "EXTRA_FLAGS=--batch-size 0"], cwd=ROOT, env=slurm,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    log = runs / "smoke" / "logs" / "baseline-train.log"
    assert re.search(rf"error: Slurm job \d+ for smoke/\w+/train ended failed with exit status 2; see its "
                     rf"log {re.escape(str(runs / 'smoke' / 'logs'))}/\w+-train.log", proc.stderr), proc.stderr[-3000:]
    assert "argument --batch-size: must be at least 1" in log.read_text()


def test_the_smoke_seeds_sweep_runs_through_slurm_and_a_second_make_has_nothing_to_do(slurm, tmp_path):
    runs = tmp_path / "runs"
    make = ["make", "-j8", "seeds", "STUDY=smoke", "SEEDS=42 43", "EPOCHS=2", f"PY={sys.executable}",
            f"RUNS_DIR={runs}", "LAUNCH=slurm", "SLURM_GPUS=0"]
    t0 = time.perf_counter()
    proc = subprocess.run(make, cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = set(re.findall(r"is Slurm job (\d+)", proc.stderr))
    assert len(jobs) == 8, proc.stderr  # 2 seeds x 2 models x (train, evaluate)
    assert all(job_info(slurm, j)["JobState"] == "COMPLETED" for j in jobs)
    seeds = json.loads((runs / "smoke" / "seeds" / "seeds.json").read_text())["seeds"]
    assert seeds["seeds"] == [42, 43] and len(seeds["difference"]["values"]) == 2
    print(f"make -j8 seeds through Slurm: {time.perf_counter() - t0:.0f} s for {len(jobs)} jobs")
    # The flags files are checked (FORCE) and the phony summary re-made; no training, no job.
    again = subprocess.run(make, cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "launch" not in again.stderr and "launch.py" not in again.stdout, again.stdout


def test_a_second_make_after_the_first_died_waits_for_the_same_job(slurm, tmp_path):
    """The login session dies (make and its launchers killed) while a training job runs on: the
    next make finds that job by its name and waits for it instead of submitting a second one."""
    runs = tmp_path / "runs"
    make = ["make", "seeds", "STUDY=smoke", "SEEDS=42", "EPOCHS=6", f"PY={sys.executable}", f"RUNS_DIR={runs}",
            "LAUNCH=slurm", "SLURM_GPUS=0"]
    first = subprocess.Popen(make, cwd=ROOT, env=slurm, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    job = None
    while job is None:
        line = first.stderr.readline()
        assert line, "the first make ended before it submitted a training"
        job = (re.search(r"smoke/baseline/train is Slurm job (\d+)", line) or [None, None])[1]
    os.killpg(first.pid, 9)  # make and the launcher, not the job
    first.wait()
    assert job_info(slurm, job)["JobState"] in ("PENDING", "RUNNING")
    second = subprocess.run(make, cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"smoke/baseline/train is already Slurm job {job}; waiting for it" in second.stderr
    assert job_info(slurm, job)["JobState"] == "COMPLETED"
    assert (runs / "smoke" / "baseline" / "metrics.json").is_file()
