#!/usr/bin/env bash
# End-to-end: the scripts/slurm sequence on a real SLURM cluster on this machine (slurm_fixture.sh)
# with the tiny model on CPU ranks: allocation, node list, a multi-node prefill group and a
# multi-node decode group, router, expert record, benchmark, slow-down fill, profile, analysis.
#
#   tests/slurm/slurm_e2e.sh PDSERVE_BINARY SOURCE_DIR        (ctest: slurm_e2e, label e2e)
#
# Runs in its own PID namespace: whatever goes wrong, no process outlives the test. Exit 0 only
# when every check passed; otherwise the first failed check is named and the run's files kept
# (SLURM_E2E_KEEP=1 keeps them after a pass too).
set -euo pipefail

PDSERVE=$(realpath "${1:?usage: $0 PDSERVE_BINARY SOURCE_DIR}")
SRC=$(realpath "${2:?usage: $0 PDSERVE_BINARY SOURCE_DIR}")
S=$SRC/scripts/slurm
source "$SRC/tests/slurm/slurm_fixture.sh"

fail() { echo "slurm_e2e: FAIL: $*" >&2; exit 1; }
pass() { echo "slurm_e2e: ok: $*"; }

slurm_fixture_check_installed || fail "SLURM is not usable here (see above)"
[[ -x $PDSERVE ]] || fail "no pdserve binary at $PDSERVE"
slurm_fixture_isolate "$0" "$@"

# Nodes per group: 2, a 2-node prefill group and a 2-node decode group (SLURM_E2E_NODES_PER_GROUP=1
# checks the scripts alone, with single-node servers).
NPG=${SLURM_E2E_NODES_PER_GROUP:-2}
if ((NPG > 1)) && ! "$PDSERVE" serve --help | grep -- --nnodes >/dev/null; then
  fail "$PDSERVE serve has no --nnodes: multi-node groups cannot start"
fi

WORK=$(mktemp -d /tmp/pdserve-slurm-e2e.XXXXXX)
status=1
cleanup() {
  set +e
  # salloc ends its allocation on SIGTERM (timeout passes it on); the fixture cancels the rest.
  [[ -n ${sequence_pid:-} ]] && kill -TERM "$sequence_pid" 2>/dev/null
  slurm_fixture_down
  # Everything the run started ended with the job and the daemons; check, and name what did not.
  local left=""
  for _ in $(seq 50); do
    # ps into a file first: a $(...) subshell would list itself.
    ps -e -o pid=,args= >"$WORK/ps.txt"
    left=$(awk -v self=$$ '$1 != self && $2 != "ps"' "$WORK/ps.txt")
    [[ -z $left ]] && break
    sleep 0.2
  done
  if [[ -n $left ]]; then
    echo "slurm_e2e: FAIL: processes left after teardown:" >&2
    echo "$left" >&2
    status=1
  fi
  if ((status == 0)) && [[ ${SLURM_E2E_KEEP:-0} != 1 ]]; then
    rm -rf "$WORK"
  else
    echo "slurm_e2e: files of this run kept in $WORK (sequence.log, logs/)" >&2
  fi
  exit $status
}
trap cleanup EXIT
trap 'echo "slurm_e2e: FAIL: interrupted by a signal" >&2; exit 130' INT TERM

# --- the test cluster: prefill nodes, then decode nodes --------------------------------------
slurm_fixture_up $((2 * NPG))

# --- the configuration (config.sh reads these from the environment) --------------------------
export PDSERVE MODEL_PATH=$SRC/models/tiny-deepseek-v3 LOAD_FORMAT=dummy DEVICE=cpu SERVE_HOST=127.0.0.1
export PREFILL_GROUPS=1 PREFILL_NODES_PER_GROUP=$NPG DECODE_NODES=$NPG
export PREFILL_DP_SIZE=$NPG DECODE_DP_SIZE=$NPG   # one CPU rank per node
# OUTPUT_LEN: long enough that the batch still runs when 9. starts profiling (a few seconds after
# the release, even with a fast tiny-model step), short enough for a ~1-2 minute test.
export NUM_PROMPTS=16 MAX_CONCURRENCY=16 INPUT_LEN=64 OUTPUT_LEN=768
export SLOW_DOWN_TIME=1 PROFILE_STEPS=5 EXPERT_RECORDER_MODE=stat
export READY_TIMEOUT=120 FILL_TIMEOUT=60 PROFILE_TIMEOUT=60 BENCH_TIMEOUT=300
export WORK_DIR=$WORK JOB_NAME=pdserve-e2e TIME_LIMIT=10
# Every "node" is 127.0.0.1: groups get their own ports (base + group x stride). The four bases
# come from one free block, 100 apart, so no group's port can land on another base (picked one by
# one, the router's once drew the decode group's port: base + 7).
base=$(slurm_fixture_free_port_block 400) || fail "no free ports"
export SERVER_PORT=$base BOOTSTRAP_PORT=$((base + 100)) DIST_INIT_PORT=$((base + 200)) ROUTER_PORT=$((base + 300))
export GROUP_PORT_STRIDE=7

# --- scripts fail clearly when run out of order ----------------------------------------------
out=$(env -u SLURM_JOB_NODELIST -u SLURM_JOB_ID "$S/2.get_node_list_env.sh" 2>&1) && fail "2. outside an allocation succeeded"
grep -q "run this inside the allocation" <<<"$out" || fail "2. outside an allocation: unclear message: $out"
out=$("$S/3.launch_prefill_server.sh" 2>&1) && fail "3. without a node list succeeded"
grep -q "run 2.get_node_list_env.sh first" <<<"$out" || fail "3. without a node list: unclear message: $out"
out=$(MODEL_PATH=$WORK/no-model "$S/0.check_model.sh" 2>&1) && fail "0.check_model.sh accepted a missing model"
grep -q "is not a folder" <<<"$out" || fail "0.check_model.sh, missing model: unclear message: $out"
# shellcheck disable=SC2123  # an empty search path is the point: no SLURM binary is found
out=$(PATH=/nonexistent; slurm_fixture_check_installed 2>&1) && fail "the fixture did not notice a missing SLURM"
grep -q "run scripts/setup.sh" <<<"$out" || fail "missing SLURM: unclear message: $out"
pass "scripts run out of order or without their inputs say what is missing"

# A server that cannot start: 3. fails naming the step and showing its log, within seconds.
out=$(EXTRA_SERVE_ARGS=--no-such-flag timeout -k 10 120 "$S/1.salloc.sh" bash -c "'$S/2.get_node_list_env.sh' && '$S/3.launch_prefill_server.sh'" 2>&1) &&
  fail "3. succeeded with a bad server flag"
if ! grep -q "ended before the server was ready" <<<"$out" || ! grep -q -- "--no-such-flag" <<<"$out"; then
  fail "3. with a bad server flag: unclear message: $out"
fi
pass "a server that fails at startup is reported with its log"

# --- the published sequence inside one allocation --------------------------------------------
t0=$SECONDS
sequence="set -euo pipefail
  cd '$S'
  ./0.prepare_env.sh
  ./0.check_model.sh
  ./2.get_node_list_env.sh
  ./3.launch_prefill_server.sh
  ./4.launch_decode_server.sh
  ./5.launch_router.sh
  ./z.1.start_record.sh
  ./6.start_benchmark.sh
  ./7.start_slow_down_decode.sh
  ./8.stop_slow_down_decode.sh
  ./9.profile.sh
  ./z.2.dump_record.sh
  ./10.analyze.sh"
# In the background with `wait`: a signal (Ctrl-C, a ctest timeout) then runs the traps at once.
timeout -k 10 300 "$S/1.salloc.sh" bash -c "$sequence" >"$WORK/sequence.log" 2>&1 &
sequence_pid=$!
if ! wait "$sequence_pid"; then
  tail -n 40 "$WORK/sequence.log" >&2
  fail "the script sequence failed (above: the end of $WORK/sequence.log)"
fi
echo "slurm_e2e: sequence took $((SECONDS - t0)) s"
source "$WORK/env/node_list_env.sh"
L=$LOG_DIR

# --- checks ----------------------------------------------------------------------------------
grep -q "Granted job allocation" "$WORK/sequence.log" || fail "salloc granted no allocation"
[[ $(wc -w <<<"${PREFILL_GROUP_NODES[0]}") == "$NPG" && $(wc -w <<<"$DECODE_GROUP_NODES") == "$NPG" ]] ||
  fail "node list: prefill '${PREFILL_GROUP_NODES[0]}', decode '$DECODE_GROUP_NODES' (want $NPG nodes each)"
pass "node list: prefill ${PREFILL_GROUP_NODES[0]}, decode $DECODE_GROUP_NODES, router $ROUTER_NODE"

for mode in prefill decode; do
  for r in $(seq 0 $((NPG - 1))); do
    log=$L/launch_server_${mode}_node_rank_$r.log
    [[ -s $log ]] || fail "$log is missing or empty"
  done
  grep -qF "The server is fired up and ready to roll!" "$L/launch_server_${mode}_node_rank_0.log" ||
    fail "$mode node 0 never logged 'fired up'"
done
pass "server logs: $(cd "$L" && ls launch_server_*.log | tr '\n' ' ')"

grep -qE "^Successful requests: +$NUM_PROMPTS\b" "$L/bench.log" ||
  fail "the benchmark did not finish all $NUM_PROMPTS requests: $(grep -E '^Successful requests' "$L/bench.log")"
pass "benchmark: $NUM_PROMPTS of $NUM_PROMPTS requests"

fill=$(grep -oE "fill reached #running-req [0-9]+ \(target [0-9]+\)" "$WORK/sequence.log") ||
  fail "the slow-down fill did not reach its target: $(grep -E 'fill reached' "$WORK/sequence.log")"
pass "slow-down: $fill"

traces=$(find "$L/traces" -name '*.trace.json.gz' | wc -l)
((traces >= DECODE_DP_SIZE)) || fail "$traces trace files in $L/traces, want one per decode rank ($DECODE_DP_SIZE)"
pass "profile: $traces trace file(s)"

ls "$L"/expert_record/expert_distribution_recorder_*.json >/dev/null 2>&1 || fail "no expert distribution dump in $L/expert_record"
pass "expert record dumped"

rate=$(grep -oE "output tokens/s per GPU = .*" "$L/report.txt") || fail "no tokens/s per GPU in $L/report.txt"
[[ $rate =~ =\ ([0-9.]+)$ ]] || fail "no figure in: $rate"
awk -v r="${BASH_REMATCH[1]}" 'BEGIN { exit !(r > 0) }' || fail "the figure is not positive: $rate"
pass "analyze: $rate"

status=0
echo "slurm_e2e: PASS ($((2 * NPG)) nodes, $NPG-node groups)"
