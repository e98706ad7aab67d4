#!/usr/bin/env bash
# Stops everything the numbered scripts started (bench, router, decode, prefill): SIGTERM to each
# one's process group, SIGKILL after STOP_GRACE s; fails if a process is left.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
# A process of the session start_bg made (pid = session id) that is not a zombie: a killed one may
# stay a zombie until its new parent (init) reaps it, and then it is gone for good.
# shellcheck disable=SC2009  # pgrep cannot tell zombies apart
group_alive() { ps -o stat= --sid "$1" 2>/dev/null | grep -qv '^Z'; }

pids=()
for name in bench router decode prefill; do
  f=$RUN_DIR/pids/$name.pid
  [[ -f $f ]] || continue
  pid=$(cat "$f")
  if group_alive "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    info "SIGTERM to $name (pid $pid)"
    pids+=("$pid")
  fi
  rm -f "$f"
done
deadline=$((SECONDS + STOP_GRACE))
for pid in "${pids[@]}"; do
  while group_alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
  if group_alive "$pid"; then
    warn "process group $pid still alive after ${STOP_GRACE}s: SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || true
    sleep 0.5
  fi
done
left=()
for pid in "${pids[@]}"; do group_alive "$pid" && left+=("$pid"); done
((${#left[@]} == 0)) || die "process groups still alive: ${left[*]}"
info "stopped ${#pids[@]} process group(s); nothing left"
