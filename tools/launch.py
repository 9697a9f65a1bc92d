"""Run one GPU step of the Makefile on a GPU slot of its own, or as a Slurm job that make waits for.

    python tools/launch.py --name smoke/baseline --log runs/smoke/baseline/launch.log -- python train.py ...

local (the default): with make -j, each GPU step takes a free slot (a GPU, or one of --per-gpu
slots of it) and holds it until it ends; a slot is an flock on a file under --lock-dir, which the
kernel releases when its process ends, killed or not. The step runs with CUDA_VISIBLE_DEVICES set
to its GPU and OMP_NUM_THREADS to its share of the CPU cores. Without GPUs (none found, none
given) the step runs as it is.

slurm: the step becomes a Slurm job (sbatch), named for the run so that a second make finds the
job a first one left running instead of submitting another. The job is requeued when preempted
(the cluster's PreemptMode=REQUEUE) and, near its time limit, requeues itself (--signal=B:USR1);
the command it runs resumes from the run's last epoch. This script waits until the job has really
finished: a preempted or requeued job is still waited for, and the job's own exit status (written
by the job, read here) says whether it succeeded. A failure names the job's log.
"""
import argparse
import fcntl
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

# No project import: common.py imports torch, which would cost each step a second or two here,
# and the launcher runs before every GPU step of a sweep.


class UserError(Exception):
    """A problem the user can fix; main() prints it as one line and exits 1."""


def write_atomically(path, text):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

# Slurm job states after which the job will not run again by itself (squeue/scontrol names).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
POLL_SECONDS = float(os.environ.get("LAUNCH_POLL_SECONDS", "2"))


#### One box: a GPU slot per step

def visible_gpus(given):
    """The GPUs to place steps on: --gpus if given, else CUDA_VISIBLE_DEVICES, else nvidia-smi's."""
    if given.strip():
        return given.replace(",", " ").split()
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        return os.environ["CUDA_VISIBLE_DEVICES"].split(",")
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.stdout.split() if out.returncode == 0 else []


def take_slot(slots, lock_dir):
    """(slot, open locked file) for the first free slot, waiting while all are taken."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for gpu, k in slots:
            f = open(lock_dir / f"gpu{gpu}-{k}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            return (gpu, k), f
        if not waited:
            print(f"launch: all {len(slots)} GPU slots are taken; waiting for one", file=sys.stderr)
            waited = True
        time.sleep(POLL_SECONDS / 4)


def run_local(args, command):
    gpus = visible_gpus(args.gpus)
    if not gpus:  # a CPU machine: nothing to place
        os.execvp(command[0], command)
    slots = [(gpu, k) for k in range(args.per_gpu) for gpu in gpus]  # spread over GPUs first
    (gpu, k), lock = take_slot(slots, Path(args.lock_dir))
    lock.seek(0), lock.truncate(), lock.write(f"{os.getpid()} {args.name}\n"), lock.flush()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu, LAUNCH_SLOT=f"GPU {gpu}, slot {k + 1} of {args.per_gpu}",
               LAUNCH_JOBS_PER_GPU=str(args.per_gpu))
    # Each slot's share of the cores, unless the user chose: k steps per GPU need not fight over them.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(slots))))
    print(f"launch: {args.name} on GPU {gpu} (slot {k + 1} of {args.per_gpu})", file=sys.stderr)
    # The lock goes with the process: exec keeps it open in the step itself, so the slot is free
    # exactly when the step ends, however it ends, and make's signals reach the step directly.
    os.set_inheritable(lock.fileno(), True)
    os.execvpe(command[0], command, env)


#### A cluster: a Slurm job per step

def job_name(name):
    """A Slurm job name for a run folder: the same on every make, unique per run."""
    return "study:" + re.sub(r"[^\w./-]", "_", name)


def job_file(args, suffix):
    """The job's script, exit status or default log under --lock-dir, one flat name per run."""
    return Path(args.lock_dir) / "slurm" / (job_name(args.name).replace("/", "_") + suffix)


def slurm(*cmd, check=True):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} not found: LAUNCH=slurm needs the Slurm client commands on this "
                        "machine (a cluster's login node)") from None
    if check and out.returncode != 0:
        said = (out.stderr or out.stdout).strip().splitlines() or ["no message"]
        raise UserError(f"{' '.join(cmd[:2])} failed: {said[-1]}")
    return out


def live_job(name):
    """The id of a job of this name that Slurm still holds (pending, running, requeued), or None."""
    out = slurm("squeue", "--noheader", "--user", os.environ.get("USER") or str(os.getuid()), "--name",
                job_name(name), "--format", "%i")
    ids = out.stdout.split()
    return ids[0] if ids else None


def batch_script(command, status_file, workdir):
    """The job: the step in the background and a shell that waits for it, so that the USR1 that
    Slurm sends before the time limit runs the trap at once (bash runs a trap only between
    commands). On USR1 the job stops the step and requeues itself; the step resumes from its last
    epoch. The exit status goes to status_file, atomically, only when the step really ended."""
    quoted = " ".join(shlex.quote(c) for c in command)
    status, tmp = shlex.quote(str(status_file)), shlex.quote(f"{status_file}.tmp")
    return f"""#!/bin/bash
cd {shlex.quote(str(workdir))} || exit 1
export LAUNCH_SLOT="Slurm job $SLURM_JOB_ID on $(hostname) (restart ${{SLURM_RESTART_COUNT:-0}})"
# As many threads as CPUs the job was given (torch would otherwise take every core of a shared node).
export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-${{SLURM_CPUS_PER_TASK:-1}}}}
echo "launch: job $SLURM_JOB_ID starts on $(hostname), restart ${{SLURM_RESTART_COUNT:-0}}, $(date -u +%FT%TZ)"
requeue() {{
  trap '' TERM  # the requeue's own TERM must not stop the shell before scontrol returns
  echo "launch: time limit near: stopping the step and requeueing job $SLURM_JOB_ID"
  kill -TERM "$child" 2>/dev/null; wait "$child"
  scontrol requeue "$SLURM_JOB_ID"; exit 0
}}
trap requeue USR1
# Preemption sends TERM to the whole job: the step stops, the shell exits, and Slurm requeues it.
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' TERM
{quoted} &
child=$!
wait "$child"; rc=$?
echo "$rc $SLURM_JOB_ID" > {tmp} && sync {tmp} && mv {tmp} {status}
exit $rc
"""


def submit(args, command, status_file):
    log = Path(args.log).resolve()
    log.parent.mkdir(parents=True, exist_ok=True)
    script = job_file(args, ".sh")
    script.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(script, batch_script(command, status_file, Path.cwd()))
    flags = ["--parsable", "--requeue", "--job-name", job_name(args.name), "--output", str(log),
             "--open-mode", "append", f"--signal=B:USR1@{args.signal_seconds}"]
    flags += ["--partition", args.partition] if args.partition else []
    flags += ["--time", args.time] if args.time else []
    flags += [f"--gpus={args.gpus_per_job}"] if args.gpus_per_job else []
    flags += shlex.split(args.sbatch_flags)
    job = slurm("sbatch", *flags, str(script)).stdout.strip().split(";")[0]
    print(f"launch: {args.name} is Slurm job {job} (log {log})", file=sys.stderr)
    return job


def job_state(job):
    """The job's state as scontrol shows it, or None once Slurm has forgotten the job."""
    out = slurm("scontrol", "show", "job", "--oneliner", job, check=False)
    found = re.search(r"\bJobState=(\S+)", out.stdout)
    return found.group(1) if out.returncode == 0 and found else None


def run_slurm(args, command):
    status_file = job_file(args, ".status").resolve()
    job = live_job(args.name)
    if job:
        print(f"launch: {args.name} is already Slurm job {job}; waiting for it", file=sys.stderr)
    else:
        status_file.unlink(missing_ok=True)
        job = submit(args, command, status_file)
    seen = None
    while True:
        state = job_state(job)
        if state != seen and state is not None:
            print(f"launch: job {job} {state.lower()}", file=sys.stderr)
            seen = state
        if state is None or state in FINAL_STATES:
            break
        time.sleep(POLL_SECONDS)
    written = status_file.read_text().split() if status_file.is_file() else []
    if state in (None, "COMPLETED") and written and written[0] == "0" and written[1] == job:
        return 0
    raise UserError(f"Slurm job {job} for {args.name} ended {(state or 'unknown').lower()}"
                    + (f" with exit status {written[0]}" if written and written[1] == job else "")
                    + f"; see its log {Path(args.log).resolve()}")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=("local", "slurm"), default="local", help="the Makefile's LAUNCH")
    p.add_argument("--name", required=True, help="the run this step makes, e.g. smoke/seed43/baseline")
    p.add_argument("--log", default="", help="slurm: the job's log file (default: under --lock-dir)")
    p.add_argument("--lock-dir", default="runs/.launch", help="slot locks, job scripts and exit statuses")
    p.add_argument("--gpus", default="", help="local: GPU indices to use (default: all visible)")
    p.add_argument("--per-gpu", type=int, default=1, help="local: steps at once per GPU")
    p.add_argument("--partition", default="", help="slurm: the partition")
    p.add_argument("--time", default="", help="slurm: the time limit per job (sbatch --time)")
    p.add_argument("--gpus-per-job", type=int, default=0, help="slurm: GPUs per job (0: none asked)")
    p.add_argument("--signal-seconds", type=int, default=120,
                   help="slurm: seconds before the time limit at which a job requeues itself")
    p.add_argument("--sbatch-flags", default="", help="slurm: more sbatch flags, as one string")
    p.add_argument("command", nargs="+", help="the step's command, after --")
    return p


def run(args):
    if args.per_gpu < 1:  # common.at_least would import torch (see the imports above)
        raise UserError("--per-gpu must be at least 1")
    if args.mode == "slurm" and not args.log:
        args.log = str(job_file(args, ".log"))
    return (run_slurm if args.mode == "slurm" else run_local)(args, args.command)


def main(argv=None):
    try:
        return run(build_parser().parse_args(argv))
    except UserError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    sys.exit(main())
