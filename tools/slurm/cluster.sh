#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests and CI (Debian 12: slurm-wlm 22.05, munge).
#
#   tools/slurm/cluster.sh start    # as root; idempotent; prints the export line for SLURM_CONF
#   tools/slurm/cluster.sh status   # exit 0 when the node is up (idle/mixed/allocated)
#   tools/slurm/cluster.sh stop     # cancels the jobs, stops the daemons it started, removes state
#   tools/slurm/cluster.sh env      # prints: export SLURM_CONF=...
#
# Install first: apt-get install -y --no-install-recommends slurm-wlm munge
# (the packages do not start anything in a container: policy-rc.d denies it; this script starts
# munged, slurmctld and slurmd itself). The daemons run as root, jobs run as whoever submits them.
#
# The node "localhost" has SLURM_TEST_CPUS CPUs (default: nproc) and two partitions:
#   low  (default, PriorityTier=1)  - its jobs are preempted and requeued by jobs in high
#   high (PriorityTier=2)
# No cgroups (proctrack/pgid, task/none), no accounting daemon (sacct does not work: use
# `scontrol show job`, kept for SLURM_TEST_MIN_JOB_AGE seconds after a job ends).
#
# Environment (all optional):
#   SLURM_TEST_DIR          state, spool, logs and slurm.conf (default /tmp/slurm-test)
#   SLURM_TEST_CPUS         CPUs declared for the node (default nproc; may exceed it)
#   SLURM_TEST_CTLD_PORT    slurmctld port (default 6817)
#   SLURM_TEST_SLURMD_PORT  slurmd port (default 6818)
#   SLURM_TEST_MIN_JOB_AGE  seconds a finished job stays visible to scontrol (default 300)
#   SLURM_TEST_GRACE_TIME   preemption grace time of partition low, seconds (default 10)
#   SLURM_TEST_CRED_EXPIRE  job credential lifetime, seconds; a requeued job waits this long + 1
#                           before it can start again (default 10; Slurm's default is 120)
#   SLURM_TEST_TIMEOUT      seconds to wait for the node to come up (default 60)
#   SLURM_TEST_ETC          1: also install the config as /etc/slurm/slurm.conf so that plain
#                           sbatch/squeue work without SLURM_CONF; 0: never; default: only when
#                           /etc/slurm/slurm.conf is absent or was written by this script
set -euo pipefail

STATE=${SLURM_TEST_DIR:-/tmp/slurm-test}
CONF=$STATE/slurm.conf
CPUS=${SLURM_TEST_CPUS:-$(nproc)}
CTLD_PORT=${SLURM_TEST_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_TEST_SLURMD_PORT:-6818}
MIN_JOB_AGE=${SLURM_TEST_MIN_JOB_AGE:-300}
GRACE=${SLURM_TEST_GRACE_TIME:-10}
TIMEOUT=${SLURM_TEST_TIMEOUT:-60}
CRED_EXPIRE=${SLURM_TEST_CRED_EXPIRE:-10}
ETC_CONF=/etc/slurm/slurm.conf
MARK="# written by tools/slurm/cluster.sh"
export SLURM_CONF=$CONF

die() { echo "cluster.sh: error: $*" >&2; exit 1; }
say() { echo "cluster.sh: $*" >&2; }

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root (the daemons need it: munged as user munge,
  slurmctld/slurmd as root so that jobs run as the submitting user). Run: sudo $0 $1"
}

# pid from a pid file, if that process is alive and is the named program
live_pid() {  # file comm
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ] || return 1
  echo "$pid"
}

node_state() { sinfo --noheader --nodes=localhost --format=%T 2>/dev/null | head -n1; }

is_up() {
  live_pid "$STATE/slurmctld.pid" slurmctld >/dev/null && live_pid "$STATE/slurmd.pid" slurmd >/dev/null \
    && case "$(node_state)" in idle|mixed|allocated|completing) true ;; *) false ;; esac
}

write_conf() {
  mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/log"
  chmod 755 "$STATE"
  cat > "$CONF.tmp" <<EOF
$MARK (state: $STATE)
ClusterName=slurmtest
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again cred_expire+1 s after the requeue (default 120 s)
AuthInfo=cred_expire=$CRED_EXPIRE
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# containers have no usable cgroups; no accounting daemon
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
# one CPU per job by default, so several jobs share the node; memory is not a resource
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
# fast scheduling for tests
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2,batch_sched_delay=0
MessageTimeout=10
BatchStartTimeout=10
KillWait=5
MinJobAge=$MIN_JOB_AGE
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
# a job in high preempts jobs in low by requeueing them; a job's --signal is sent at preemption
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
JobRequeue=1
NodeName=localhost CPUs=$CPUS RealMemory=1024 State=UNKNOWN
PartitionName=low Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=$GRACE OverSubscribe=NO
PartitionName=high Nodes=localhost Default=NO MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF OverSubscribe=NO
EOF
  mv "$CONF.tmp" "$CONF"
  chmod 644 "$CONF"
}

install_etc_conf() {
  local want=${SLURM_TEST_ETC:-auto}
  [ "$want" = 0 ] && return 0
  if [ "$want" = auto ] && [ -e "$ETC_CONF" ] && ! head -n1 "$ETC_CONF" | grep -qF "$MARK"; then
    say "$ETC_CONF exists and is not ours: left alone (export SLURM_CONF=$CONF)"
    return 0
  fi
  mkdir -p "$(dirname "$ETC_CONF")"
  cp "$CONF" "$ETC_CONF.tmp" && mv "$ETC_CONF.tmp" "$ETC_CONF"
  echo "$ETC_CONF" > "$STATE/etc-conf-installed"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  # Debian's postinst makes the key as user munge (mungekey -c); recreate it the same way if missing
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 700 /etc/munge
    if command -v mungekey >/dev/null; then
      runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  munge_ok && return 0
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge 2>/dev/null || true
  runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
  cp /run/munge/munged.pid "$STATE/munged.pid"   # ours: stop ends it
  for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
  die "munged started but munge -n | unmunge fails (see /var/log/munge/munged.log)"
}

logs_tail() {
  local f
  for f in "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log"; do
    [ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; }
  done
  return 0
}

start() {
  need_root start
  local tool
  for tool in munged munge slurmctld slurmd sinfo sbatch; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install -y --no-install-recommends slurm-wlm munge"
  done
  if is_up; then
    install_etc_conf
    say "already up ($(node_state))"; echo "export SLURM_CONF=$CONF"; return 0
  fi
  local t0=$SECONDS
  stop_daemons            # a half-started cluster: start afresh
  mkdir -p "$STATE"
  [ -d "$STATE/log" ] && for f in "$STATE"/log/*.log; do [ -f "$f" ] && mv "$f" "$f.old"; done
  rm -rf "$STATE/ctld" "$STATE/spool"
  write_conf
  start_munge
  slurmctld -f "$CONF" -c -i || { logs_tail; die "slurmctld did not start"; }
  slurmd -f "$CONF" -N localhost || { logs_tail; die "slurmd did not start"; }
  local deadline=$((SECONDS + TIMEOUT)) st=""
  while [ $SECONDS -lt $deadline ]; do
    st=$(node_state)
    case "$st" in
      idle|mixed|allocated) break ;;
      down*|drain*|fail*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
    esac
    live_pid "$STATE/slurmctld.pid" slurmctld >/dev/null || { logs_tail; die "slurmctld died"; }
    live_pid "$STATE/slurmd.pid" slurmd >/dev/null || { logs_tail; die "slurmd died"; }
    sleep 0.2
  done
  case "$st" in idle|mixed|allocated) ;; *)
    logs_tail; die "node localhost not idle after ${TIMEOUT}s (state: '${st:-no answer from slurmctld}')" ;;
  esac
  install_etc_conf
  say "up in $((SECONDS - t0))s: node localhost $st, $CPUS CPUs, partitions low (default) and high"
  echo "export SLURM_CONF=$CONF"
}

# kill a daemon by its pid file: TERM, then KILL after 10 s
kill_pidfile() {  # file comm
  local pid
  pid=$(live_pid "$1" "$2") || { rm -f "$1"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
  [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
}

# processes of this cluster's jobs: each slurmstepd that holds a file in our state dir, and all
# its descendants (the job shells and their children); never found by a broad name alone.
# A slurmstepd holds our slurmd.log open, so its open files name $STATE/.
job_pids() {
  local table roots="" pid
  [ -d "$STATE/spool" ] || return 0
  table=$(ps -eo pid=,ppid=,comm=)
  for pid in $(awk '$3 == "slurmstepd" {print $1}' <<<"$table"); do
    ls -l "/proc/$pid/fd" 2>/dev/null | grep -qF "$STATE/" && roots="$roots $pid"
  done
  [ -n "$roots" ] || return 0
  awk -v roots="$roots" '
    { parent[$1] = $2 }
    END {
      n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1
      do { added = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; added = 1 } } while (added)
      for (p in keep) print p
    }' <<<"$table"
}

stop_daemons() {
  local ids pids
  if live_pid "$STATE/slurmctld.pid" slurmctld >/dev/null; then
    ids=$(squeue --noheader --format=%A 2>/dev/null || true)
    if [ -n "$ids" ]; then
      # shellcheck disable=SC2086
      scancel --full $ids 2>/dev/null || true
      for _ in $(seq 40); do
        [ -z "$(squeue --noheader --states=RUNNING,COMPLETING,SUSPENDED --format=%A 2>/dev/null)" ] && break
        sleep 0.25
      done
    fi
  fi
  kill_pidfile "$STATE/slurmd.pid" slurmd
  kill_pidfile "$STATE/slurmctld.pid" slurmctld
  pids=$(job_pids)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
}

stop() {
  need_root stop
  stop_daemons
  kill_pidfile "$STATE/munged.pid" munged
  if [ -f "$STATE/etc-conf-installed" ]; then
    head -n1 "$ETC_CONF" 2>/dev/null | grep -qF "$MARK (state: $STATE)" && rm -f "$ETC_CONF"
    rm -f "$STATE/etc-conf-installed"
  fi
  rm -rf "$STATE/ctld" "$STATE/spool"
  say "stopped (logs kept in $STATE/log)"
}

status() {
  if is_up; then
    echo "up: export SLURM_CONF=$CONF"
    sinfo
    squeue
  else
    echo "down (state dir $STATE)"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
