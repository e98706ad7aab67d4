# Helpers of the one-machine scripts (sourced; not run by itself). Loads config.sh, then reuses
# scripts/slurm/lib.sh unchanged for what does not depend on SLURM: info/warn/die, tail_of,
# post_json, running_req_sum, alive and wait_ready (they read pid files in $LOG_DIR/pids).
# shellcheck shell=bash disable=SC2034  # the URLs and DECODE_LOG are read by the scripts

source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/config.sh"
source "$REPO_DIR/scripts/slurm/lib.sh"   # its config.sh keeps every value set above (env wins)

LOG_DIR=$RUN_DIR
mkdir -p "$RUN_DIR/pids" "$RUN_DIR/traces" "$RUN_DIR/expert_record"
[[ -x $PDSERVE ]] || die "no pdserve binary at $PDSERVE: build it (scripts/build.sh) or set PDSERVE"

url_of() { echo "http://$HOST:$1"; }
PREFILL_URL=$(url_of "$PREFILL_PORT")
DECODE_URL=$(url_of "$DECODE_PORT")
ROUTER_URL=$(url_of "$ROUTER_PORT")
DECODE_LOG=$RUN_DIR/decode.log

# Fails with what to run first when NAME (a pid file name) is not running.
need() {  # NAME SCRIPT
  alive "$1" || die "$1 is not running (no live pid in $RUN_DIR/pids/$1.pid): run $2 first"
}

# In a wait loop: fails at once, with the log's last lines, when a server started earlier exited.
servers_alive() {
  local n
  for n in prefill decode; do
    [[ ! -f $RUN_DIR/pids/$n.pid ]] || alive "$n" || die "the $n server exited; $(tail_of "$RUN_DIR/$n.log")"
  done
}

# Starts COMMAND in the background in its own session (so stop_all.sh can signal it and any child
# it forks as one process group); output to LOG, pid in pids/NAME.pid, the log path in NAME.log.
start_bg() {  # NAME LOG COMMAND...
  local name=$1 log=$2
  shift 2
  alive "$name" && die "$name is already running (pid $(cat "$RUN_DIR/pids/$name.pid")): run stop_all.sh first"
  setsid "$@" </dev/null >"$log" 2>&1 &
  echo $! >"$RUN_DIR/pids/$name.pid"
  echo "$log" >"$RUN_DIR/pids/$name.log"
  info "started $name (pid $!), log $log"
}

# start_server MODE PORT DP: `pdserve serve` of one side of the PD pair; waits until fired up.
start_server() {
  local mode=$1 port=$2 dp=$3 extra
  extra=$([[ $mode == prefill ]] && echo "$PREFILL_EXTRA_ARGS" || echo "$DECODE_EXTRA_ARGS")
  local args=(serve --model-path "$MODEL_PATH" --load-format "$LOAD_FORMAT" --device "$DEVICE"
    --host "$HOST" --port "$port" --disaggregation-mode "$mode"
    --disaggregation-bootstrap-port "$BOOTSTRAP_PORT" --dp-size "$dp" --decode-log-interval 1)
  [[ $mode == decode && -n $EXPERT_RECORDER_MODE ]] &&
    args+=(--expert-distribution-recorder-mode "$EXPERT_RECORDER_MODE" --expert-distribution-recorder-buffer-size -1)
  # shellcheck disable=SC2206  # the extra flags are meant to split on spaces
  args+=($EXTRA_SERVE_ARGS $extra)
  start_bg "$mode" "$RUN_DIR/$mode.log" env SGLANG_TORCH_PROFILER_DIR="$RUN_DIR/traces" \
    SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR="$RUN_DIR/expert_record" "$PDSERVE" "${args[@]}"
  wait_ready "$mode server" "$RUN_DIR/$mode.log" "$(url_of "$port")" "$mode"
}
