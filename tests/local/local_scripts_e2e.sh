#!/usr/bin/env bash
# End-to-end: the scripts/local sequence on this machine with the tiny model on CPU: prefill,
# decode (recording experts), router, expert record, benchmark, slow-down fill, release, profile,
# expert dump, analysis, stop_all. Small sizes (8 prompts, 32 in, 256 out): about a minute on 2 cores.
#
#   tests/local/local_scripts_e2e.sh PDSERVE_BINARY SOURCE_DIR        (ctest: local_scripts_e2e, label e2e)
#
# Exit 0 only when every check passed; otherwise the first failed check is named and the run's
# folder kept (LOCAL_E2E_KEEP=1 keeps it after a pass too). A trap runs stop_all.sh in every case.
set -euo pipefail

PDSERVE=$(realpath "${1:?usage: $0 PDSERVE_BINARY SOURCE_DIR}")
SRC=$(realpath "${2:?usage: $0 PDSERVE_BINARY SOURCE_DIR}")
S=$SRC/scripts/local

fail() { echo "local_scripts_e2e: FAIL: $*" >&2; exit 1; }
pass() { echo "local_scripts_e2e: ok: $*"; }
[[ -x $PDSERVE ]] || fail "no pdserve binary at $PDSERVE"

# Four ports the kernel says are free now (the defaults may be taken by other tests).
read -r PREFILL_PORT DECODE_PORT BOOTSTRAP_PORT ROUTER_PORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
RUN_DIR=$(mktemp -d /tmp/local_scripts_e2e.XXXXXX)
export PDSERVE RUN_DIR PREFILL_PORT DECODE_PORT BOOTSTRAP_PORT ROUTER_PORT
export MODEL_PATH=$SRC/models/tiny-deepseek-v3 DEVICE=cpu EXPERT_RECORDER_MODE=stat
export NUM_PROMPTS=8 MAX_CONCURRENCY=8 INPUT_LEN=32 OUTPUT_LEN=256 SLOW_DOWN_TIME=0.5 PROFILE_STEPS=5
export READY_TIMEOUT=120 FILL_TIMEOUT=60 PROFILE_TIMEOUT=60 BENCH_TIMEOUT=120 STOP_GRACE=10

# Every process the scripts start carries RUN_DIR in its environment (SGLANG_TORCH_PROFILER_DIR of
# the servers, BENCH_RC of the benchmark) or its arguments: those are the ones that must not stay.
leftovers() {
  local p
  for p in /proc/[0-9]*; do
    [[ ${p#/proc/} == "$$" || ${p#/proc/} == "$BASHPID" ]] && continue
    [[ $(awk '{ print $3 }' "$p/stat" 2>/dev/null) == Z ]] && continue   # a zombie waits for init to reap it
    # grep reads everything: with -q it would stop early and, under pipefail, tr's SIGPIPE hides the match.
    { tr '\0' '\n' <"$p/environ"; tr '\0' '\n' <"$p/cmdline"; } 2>/dev/null | grep -F "$RUN_DIR" >/dev/null && echo "${p#/proc/}"
  done
  return 0
}
stopped=0
cleanup() {
  local rc=$?
  ((stopped)) || bash "$S/stop_all.sh" >/dev/null 2>&1 || true
  local left
  left=$(leftovers)
  if [[ -n $left ]]; then
    echo "local_scripts_e2e: FAIL: processes left: $left" >&2
    # shellcheck disable=SC2086  # one pid a word
    kill -KILL $left 2>/dev/null || true
    rc=1
  fi
  if ((rc == 0)) && [[ -z ${LOCAL_E2E_KEEP:-} ]]; then rm -rf "$RUN_DIR"; else echo "local_scripts_e2e: files kept in $RUN_DIR"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() {  # SCRIPT [ARGS]: runs one numbered script, timed; fails naming it
  local t0=$SECONDS
  bash "$S/$1" "${@:2}" >"$RUN_DIR/step.$1.out" 2>&1 || { cat "$RUN_DIR/step.$1.out" >&2; fail "$1 failed"; }
  pass "$1 ($((SECONDS - t0)) s)"
}

# A script run out of order says what to run first.
out=$(bash "$S/3.launch_router.sh" 2>&1) && fail "3.launch_router.sh succeeded without servers"
grep -q "run 1.launch_prefill_server.sh first" <<<"$out" || fail "3.launch_router.sh without servers said: $out"
pass "out of order: $(tail -n 1 <<<"$out")"

t_all=$SECONDS
step 1.launch_prefill_server.sh
step 2.launch_decode_server.sh
step 3.launch_router.sh
step z.1.start_record.sh
step 4.start_benchmark.sh
step 5.start_slow_down_decode.sh
grep -q "fill reached #running-req 8 (target 8)" "$RUN_DIR/step.5.start_slow_down_decode.sh.out" ||
  fail "the fill did not reach 8: $(cat "$RUN_DIR/step.5.start_slow_down_decode.sh.out")"
step 6.stop_slow_down_decode.sh
step 7.profile.sh
step z.2.dump_record.sh
step 8.analyze.sh
echo "--- report:"; cat "$RUN_DIR/report.txt"

# The benchmark served every prompt, and the report's formula has a positive per-GPU rate.
grep -Eq '^Successful requests: +8 *$' "$RUN_DIR/bench.log" || fail "bench.log: not 8 successful requests"
rate=$(grep -Eo 'tokens/s per GPU = [^=]+= *[0-9.]+' "$RUN_DIR/report.txt" | head -n 1 | sed 's/.*= *//')
[[ -n $rate ]] || fail "no 'tokens/s per GPU = ... = N' line in report.txt"
awk -v r="$rate" 'BEGIN { exit !(r > 0) }' || fail "tokens/s per GPU is $rate, not positive"
pass "tokens/s per GPU = $rate"
for f in prefill.log decode.log router.log bench.jsonl report.json report.html; do
  [[ -s $RUN_DIR/$f ]] || fail "$f missing or empty"
done
compgen -G "$RUN_DIR/traces/*.trace.json.gz" >/dev/null || fail "no traces"
compgen -G "$RUN_DIR/expert_record/expert_distribution_recorder_*.json" >/dev/null || fail "no expert record"

mapfile -t pids < <(cat "$RUN_DIR"/pids/*.pid)
step stop_all.sh
stopped=1
[[ -z $(leftovers) ]] || fail "processes left after stop_all.sh: $(leftovers)"
pass "stop_all.sh left no process (${#pids[@]} started); whole sequence $((SECONDS - t_all)) s"
