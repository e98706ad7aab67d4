# Helpers shared by the numbered scripts (sourced; not run by itself). Loads config.sh.
# shellcheck shell=bash

source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/config.sh"

SCRIPT_NAME=$(basename "$0")
READY_LINE="The server is fired up and ready to roll!"
PROFILE_DONE_LINE="Profiling done. Traces are saved to:"

info() { echo "[$(date '+%F %T')] $SCRIPT_NAME: $*"; }
warn() { echo "[$(date '+%F %T')] $SCRIPT_NAME: WARNING: $*" >&2; }
die() { echo "[$(date '+%F %T')] $SCRIPT_NAME: ERROR: $*" >&2; exit 1; }

total_nodes() { echo $((PREFILL_GROUPS * PREFILL_NODES_PER_GROUP + DECODE_NODES)); }

# Checks the layout in config.sh before anything is allocated or launched.
check_layout() {
  ((PREFILL_GROUPS >= 1 && PREFILL_GROUPS <= 3)) || die "PREFILL_GROUPS=$PREFILL_GROUPS: 1 to 3 prefill groups are supported"
  ((PREFILL_NODES_PER_GROUP >= 1 && DECODE_NODES >= 1)) || die "PREFILL_NODES_PER_GROUP and DECODE_NODES must be at least 1"
  ((PREFILL_DP_SIZE % PREFILL_NODES_PER_GROUP == 0)) ||
    die "PREFILL_DP_SIZE=$PREFILL_DP_SIZE must be a multiple of PREFILL_NODES_PER_GROUP=$PREFILL_NODES_PER_GROUP (DP ranks per node)"
  ((DECODE_DP_SIZE % DECODE_NODES == 0)) ||
    die "DECODE_DP_SIZE=$DECODE_DP_SIZE must be a multiple of DECODE_NODES=$DECODE_NODES (DP ranks per node)"
}

# Sources node_list_env.sh (node names, addresses, LOG_DIR of this run) or says what to run first.
load_node_list() {
  [[ -f $NODE_LIST_ENV ]] ||
    die "$NODE_LIST_ENV not found: run 2.get_node_list_env.sh first, inside the allocation of 1.salloc.sh"
  # shellcheck disable=SC1090
  source "$NODE_LIST_ENV"
  if [[ -n ${SLURM_JOB_ID:-} && $SLURM_JOB_ID != "$NODE_LIST_JOB_ID" ]]; then
    die "$NODE_LIST_ENV is for job $NODE_LIST_JOB_ID but this shell is in job $SLURM_JOB_ID: run 2.get_node_list_env.sh again"
  fi
  mkdir -p "$LOG_DIR/pids"
}

# Port BASE of group K (prefill groups 0..PREFILL_GROUPS-1, the decode group PREFILL_GROUPS).
group_port() { echo $(($1 + $2 * GROUP_PORT_STRIDE)); }
decode_group() { echo "$PREFILL_GROUPS"; }
prefill_url() { echo "http://${PREFILL_HEAD_ADDRS[$1]}:$(group_port "$SERVER_PORT" "$1")"; }
decode_url() { echo "http://$DECODE_HEAD_ADDR:$(group_port "$SERVER_PORT" "$(decode_group)")"; }
router_url() { echo "http://$ROUTER_ADDR:$ROUTER_PORT"; }

# launch_server_prefill_node_rank_R.log for prefill group 0 and the decode group (the published
# names); prefill groups 1 and 2 get _gG after "prefill".
server_log() {  # MODE GROUP RANK
  local tag=$1
  [[ $1 == prefill && $2 -gt 0 ]] && tag="prefill_g$2"
  echo "$LOG_DIR/launch_server_${tag}_node_rank_$3.log"
}
# The srun step (and pid file) name of a server node: prefillG_node_rank_R, decode_node_rank_R.
step_name() { [[ $1 == prefill ]] && echo "prefill$2_node_rank_$3" || echo "decode_node_rank_$3"; }
# Sets DECODE_LOGS to every decode node's log, or says to launch the decode group first.
load_decode_logs() {
  mapfile -t DECODE_LOGS < <(ls "$LOG_DIR"/launch_server_decode_node_rank_*.log 2>/dev/null)
  ((${#DECODE_LOGS[@]})) || die "no decode logs in $LOG_DIR: run 4.launch_decode_server.sh first"
}

# Starts `srun` for one task on NODE in the background; its output (the task's and srun's own
# messages) goes to LOG; the srun pid is kept in $LOG_DIR/pids/NAME.pid, the log path in NAME.log.
# --overlap: the router and the benchmark share the first node with a server step.
srun_on() {  # NAME NODE LOG COMMAND...
  local name=$1 node=$2 log=$3
  shift 3
  srun --jobid="$NODE_LIST_JOB_ID" --nodes=1 --ntasks=1 --overlap -w "$node" --job-name="$name" \
    "$@" </dev/null >"$log" 2>&1 &
  echo $! >"$LOG_DIR/pids/$name.pid"
  echo "$log" >"$LOG_DIR/pids/$name.log"
  info "started $name on $node (srun pid $!), log $log"
}

alive() { [[ -f $LOG_DIR/pids/$1.pid ]] && kill -0 "$(cat "$LOG_DIR/pids/$1.pid")" 2>/dev/null; }

tail_of() { echo "--- last lines of $1:"; tail -n "${2:-15}" "$1" 2>/dev/null | sed 's/^/    /'; }

# wait_ready WHAT LOG URL NAME...: until LOG has the ready line and URL/health answers 200; fails
# when the timeout passes or one of the srun steps NAME... ended (its log is shown).
wait_ready() {
  local what=$1 log=$2 url=$3
  shift 3
  local deadline=$((SECONDS + READY_TIMEOUT)) n
  while :; do
    if grep -qF "$READY_LINE" "$log" 2>/dev/null && curl -sf -o /dev/null --max-time 5 "$url/health"; then
      info "$what is ready at $url"
      return 0
    fi
    for n in "$@"; do
      alive "$n" || die "$what: step $n ended before the server was ready; $(tail_of "$(step_log "$n")")"
    done
    ((SECONDS < deadline)) || die "$what: not ready after $READY_TIMEOUT s (no '$READY_LINE' in $log or no /health at $url); $(tail_of "$log")"
    sleep 1
  done
}
step_log() { cat "$LOG_DIR/pids/$1.log" 2>/dev/null; }

# POST JSON to URL; prints the answer; fails with the HTTP status and body.
post_json() {  # URL BODY
  local out code
  out=$(curl -sS --max-time "${POST_TIMEOUT:-600}" -H 'Content-Type: application/json' -X POST -d "$2" -w '\n%{http_code}' "$1") ||
    die "POST $1 $2: no answer (is the server up? see $LOG_DIR)"
  code=${out##*$'\n'}
  out=${out%$'\n'*}
  out=${out%$'\n'}
  [[ $code == 200 ]] || die "POST $1 $2 answered $code: $out"
  info "POST $1 $2 -> $out"
}

# Σ over DP ranks of each rank's latest `#running-req` in the decode logs (the global batch).
running_req_sum() {
  awk '/Decode batch/ && /#running-req: / {
         dp = "0"
         if (match($0, / DP[0-9]+/)) dp = substr($0, RSTART + 3, RLENGTH - 3)
         s = $0; sub(/.*#running-req: /, "", s); sub(/[^0-9].*/, "", s)
         last[dp] = s + 0
       }
       END { t = 0; for (k in last) t += last[k]; print t }' "$@"
}

# The published fill: POST slow_down {forward_sleep_time: SLOW_DOWN_TIME} to DECODE_URL, then wait
# until the global #running-req over LOG... reaches the target (TARGET_RUNNING, else
# min(NUM_PROMPTS, MAX_CONCURRENCY)); after FILL_TIMEOUT warn and return (the published procedure
# leaves it to the eye). A caller may define fill_poll_check, run at every poll (e.g. liveness).
fill_decode() {  # DECODE_URL LOG...
  local url=$1 target=${TARGET_RUNNING:-$((NUM_PROMPTS < MAX_CONCURRENCY ? NUM_PROMPTS : MAX_CONCURRENCY))}
  shift
  local t0=$SECONDS running
  post_json "$url/slow_down" "{\"forward_sleep_time\": $SLOW_DOWN_TIME}"
  while :; do
    running=$(running_req_sum "$@")
    if ((running >= target)); then
      info "fill reached #running-req $running (target $target) in $((SECONDS - t0)) s"
      return 0
    fi
    if ((SECONDS - t0 >= FILL_TIMEOUT)); then
      warn "fill reached #running-req $running of target $target within $FILL_TIMEOUT s; go on anyway"
      return 0
    fi
    if declare -F fill_poll_check >/dev/null; then fill_poll_check; fi
    sleep 0.5
  done
}

# launch_group MODE GROUP DP HEAD_ADDR NODE...: one srun step per node, node rank = position in
# the list. Single-node groups start a plain server; larger ones rendezvous at HEAD_ADDR:DIST port.
launch_group() {
  local mode=$1 g=$2 dp=$3 head_addr=$4
  shift 4
  local nodes=("$@") nnodes=$# r
  local port boot dist extra
  port=$(group_port "$SERVER_PORT" "$g")
  boot=$(group_port "$BOOTSTRAP_PORT" "$g")
  dist=$(group_port "$DIST_INIT_PORT" "$g")
  extra=$([[ $mode == prefill ]] && echo "$PREFILL_EXTRA_ARGS" || echo "$DECODE_EXTRA_ARGS")
  for r in $(seq 0 $((nnodes - 1))); do
    local args=(serve --model-path "$MODEL_PATH" --load-format "$LOAD_FORMAT" --device "$DEVICE"
      --host "$SERVE_HOST" --port "$port" --disaggregation-mode "$mode"
      --disaggregation-bootstrap-port "$boot" --dp-size "$dp" --decode-log-interval 1)
    ((dp > 1)) && args+=(--tp-size "$dp" --enable-dp-attention)
    ((nnodes > 1)) && args+=(--dist-init-addr "$head_addr:$dist" --nnodes "$nnodes" --node-rank "$r")
    [[ $mode == decode && -n $EXPERT_RECORDER_MODE ]] &&
      args+=(--expert-distribution-recorder-mode "$EXPERT_RECORDER_MODE" --expert-distribution-recorder-buffer-size -1)
    # shellcheck disable=SC2206  # the extra flags are meant to split on spaces
    args+=($EXTRA_SERVE_ARGS $extra)
    srun_on "$(step_name "$mode" "$g" "$r")" "${nodes[$r]}" "$(server_log "$mode" "$g" "$r")" \
      env SGLANG_TORCH_PROFILER_DIR="$LOG_DIR/traces" SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR="$LOG_DIR/expert_record" \
      "$PDSERVE" "${args[@]}"
  done
}

# wait_group MODE GROUP NNODES HEAD_ADDR: node 0's log says fired up and its /health answers.
wait_group() {
  local mode=$1 g=$2 nnodes=$3 head_addr=$4 names=() r
  for r in $(seq 0 $((nnodes - 1))); do names+=("$(step_name "$mode" "$g" "$r")"); done
  local what="prefill group $g"
  [[ $mode == decode ]] && what="decode group"
  wait_ready "$what" "$(server_log "$mode" "$g" 0)" "http://$head_addr:$(group_port "$SERVER_PORT" "$g")" "${names[@]}"
}
