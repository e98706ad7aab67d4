#!/usr/bin/env bash
# A real SLURM cluster on this machine for the tests: munged, slurmctld and several slurmd "nodes"
# (Debian's packages), configured in a temporary folder.
#
#   tests/slurm/slurm_fixture.sh NODES [COMMAND ARGS...]   # up, run COMMAND (default: a shell), down
#   source tests/slurm/slurm_fixture.sh; slurm_fixture_up 4; ...; slurm_fixture_down
#
# Every node is a `slurmd -N nodeK` on 127.0.0.1 with its own Port= and spool folder (Debian's
# slurmd accepts -N; nodes differ by NodeName/NodeHostname, so no duplicate-host check fires).
# Processes on different "nodes" therefore share one network: the scripts' config gives every
# server group its own ports. No cgroups, no accounting: proctrack/linuxproc, task/none.
#
# Teardown (slurm_fixture_down, also from the EXIT trap when run directly) cancels the jobs, stops
# the daemons by pid, and removes the folder (kept when SLURM_FIXTURE_KEEP=1). Callers that must
# leave no process behind whatever happens run inside a PID namespace (slurm_fixture_isolate):
# when its first process exits, the kernel kills everything else in it, slurmstepd included.

# Re-executes the calling script inside a new PID + mount namespace (with its own /proc, which
# proctrack/linuxproc reads), unless already inside one. Call it first, with "$0" "$@".
slurm_fixture_isolate() {
  if [[ ${SLURM_FIXTURE_ISOLATED:-} == 1 ]]; then return 0; fi
  command -v unshare >/dev/null || { echo "slurm fixture: unshare (util-linux) is missing" >&2; return 1; }
  export SLURM_FIXTURE_ISOLATED=1
  # --kill-child=SIGTERM: if unshare itself is killed (e.g. by a ctest timeout), the script inside
  # gets SIGTERM and its EXIT trap tears down; when it exits, the namespace goes too.
  exec unshare --pid --fork --mount-proc --kill-child=SIGTERM -- "$@"
}

slurm_fixture_check_installed() {
  local missing=()
  for b in munged slurmctld slurmd salloc srun scontrol squeue scancel; do
    command -v "$b" >/dev/null || missing+=("$b")
  done
  if ((${#missing[@]})); then
    echo "slurm fixture: ${missing[*]} not installed; run scripts/setup.sh (Debian packages slurmd slurmctld munge slurm-client)" >&2
    return 1
  fi
  if [[ $(id -u) -ne 0 ]]; then
    echo "slurm fixture: slurmd must run as root (it starts job steps as their user)" >&2
    return 1
  fi
}

# A TCP port nothing listens on now, from a range the kernel does not hand out by itself.
slurm_fixture_free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 10000))
    if ! ss -Htan "sport = :$p" | grep -q .; then echo "$p"; return 0; fi
  done
  echo "slurm fixture: no free port found" >&2
  return 1
}

# The first of N consecutive TCP ports none of which is in use now (same range as above): for a
# base port whose neighbours get derived from it (the scripts' group ports, base + group x stride).
slurm_fixture_free_port_block() {
  local n=${1:?slurm_fixture_free_port_block: number of ports} used base
  used=$(ss -Htan | awk '{print $4}' | sed 's/.*://' | sort -un)
  for _ in $(seq 200); do
    base=$((20000 + RANDOM % (10000 - n)))
    if ! awk -v lo="$base" -v hi="$((base + n))" '$1 >= lo && $1 < hi {hit = 1} END {exit !hit}' <<<"$used"; then
      echo "$base"
      return 0
    fi
  done
  echo "slurm fixture: no block of $n free ports found" >&2
  return 1
}

# slurm_fixture_up NODES: starts the cluster; exports SLURM_CONF (read by salloc/srun/scontrol) and
# SLURM_FIXTURE_DIR, and waits until every node is idle.
slurm_fixture_up() {
  local nodes=${1:?slurm_fixture_up: number of nodes}
  slurm_fixture_check_installed || return 1
  SLURM_FIXTURE_DIR=$(mktemp -d /tmp/pdserve-slurm.XXXXXX)
  export SLURM_FIXTURE_DIR
  SLURM_FIXTURE_PIDS=()
  local d=$SLURM_FIXTURE_DIR
  mkdir -p "$d/state" "$d/log"

  # munge: its own key and socket, so nothing of a system munge is used or disturbed.
  head -c 1024 /dev/urandom >"$d/munge.key"
  chmod 400 "$d/munge.key"
  munged --force --foreground --key-file="$d/munge.key" --socket="$d/munge.socket" \
    --pid-file="$d/munged.pid" --log-file="$d/log/munged.log" --seed-file="$d/munged.seed" \
    >>"$d/log/munged.log" 2>&1 &
  SLURM_FIXTURE_PIDS+=($!)

  local ctld_port host
  ctld_port=$(slurm_fixture_free_port) || return 1
  host=$(hostname -s)
  {
    echo "ClusterName=pdserve-test"
    echo "SlurmctldHost=$host(127.0.0.1)"
    echo "SlurmctldPort=$ctld_port"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=$d/munge.socket"
    echo "StateSaveLocation=$d/state"
    echo "SlurmdSpoolDir=$d/spool/%n"
    echo "SlurmctldPidFile=$d/slurmctld.pid"
    echo "SlurmdPidFile=$d/slurmd.%n.pid"
    echo "SlurmctldLogFile=$d/log/slurmctld.log"
    echo "SlurmdLogFile=$d/log/slurmd.%n.log"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "SwitchType=switch/none"
    echo "MpiDefault=none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobCompType=jobcomp/none"
    # Whole nodes per job, as the published runs (--exclusive).
    echo "SelectType=select/linear"
    echo "SchedulerType=sched/builtin"
    echo "ReturnToService=2"
    echo "SlurmdTimeout=30"
    echo "InactiveLimit=0"
    echo "KillWait=5"
    echo "MinJobAge=30"
    echo "MailProg=/bin/true"
    echo "SlurmctldDebug=info"
    echo "SlurmdDebug=info"
    local k port
    for k in $(seq 1 "$nodes"); do
      port=$(slurm_fixture_free_port) || return 1
      echo "NodeName=node$k NodeHostname=node$k NodeAddr=127.0.0.1 Port=$port CPUs=2 RealMemory=1 State=UNKNOWN"
    done
    echo "PartitionName=test Nodes=node[1-$nodes] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
  } >"$d/slurm.conf"
  export SLURM_CONF=$d/slurm.conf

  for _ in $(seq 50); do [[ -S $d/munge.socket ]] && break; sleep 0.1; done
  [[ -S $d/munge.socket ]] || { echo "slurm fixture: munged did not start; see $d/log/munged.log" >&2; return 1; }

  slurmctld -D -i -f "$SLURM_CONF" >>"$d/log/slurmctld.out" 2>&1 &
  SLURM_FIXTURE_PIDS+=($!)
  for k in $(seq 1 "$nodes"); do
    mkdir -p "$d/spool/node$k"
    slurmd -D -N "node$k" -f "$SLURM_CONF" >>"$d/log/slurmd.node$k.out" 2>&1 &
    SLURM_FIXTURE_PIDS+=($!)
  done

  # Ready when sinfo lists every node idle.
  local idle=0
  for _ in $(seq 120); do
    idle=$(sinfo -h -N -t idle -o '%N' 2>/dev/null | wc -l)
    ((idle >= nodes)) && break
    sleep 0.5
  done
  if ((idle < nodes)); then
    echo "slurm fixture: only $idle of $nodes nodes idle after 60 s; logs in $d/log:" >&2
    sinfo -N -l >&2 || true
    tail -n 5 "$d"/log/*.log >&2 || true
    return 1
  fi
  echo "slurm fixture: $nodes nodes up (SLURM_CONF=$SLURM_CONF)"
}

# Cancels every job, then stops the daemons (TERM, KILL after 10 s) and removes the folder.
slurm_fixture_down() {
  [[ -n ${SLURM_FIXTURE_DIR:-} && -d $SLURM_FIXTURE_DIR ]] || return 0
  local d=$SLURM_FIXTURE_DIR
  if [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
    # shellcheck disable=SC2046  # one argument per job id
    scancel --full $(squeue -h -o %i) 2>/dev/null || true
    for _ in $(seq 40); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.5; done
  fi
  local pid
  for pid in "${SLURM_FIXTURE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 100); do
    local alive=0
    for pid in "${SLURM_FIXTURE_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${SLURM_FIXTURE_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait "${SLURM_FIXTURE_PIDS[@]}" 2>/dev/null || true
  SLURM_FIXTURE_PIDS=()
  if [[ ${SLURM_FIXTURE_KEEP:-0} == 1 ]]; then
    echo "slurm fixture: kept $d"
  else
    rm -rf "$d"
  fi
  unset SLURM_FIXTURE_DIR
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  if (($# < 1)); then echo "usage: $0 NODES [COMMAND ARGS...]" >&2; exit 2; fi
  slurm_fixture_isolate "$0" "$@"
  trap slurm_fixture_down EXIT
  trap 'exit 130' INT TERM
  slurm_fixture_up "$1"
  shift
  if (($#)); then
    "$@" &
    wait $!  # a signal interrupts `wait` (not a foreground command): the EXIT trap runs at once
  else
    "${SHELL:-bash}" -i
  fi
fi
