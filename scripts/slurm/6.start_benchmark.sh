#!/usr/bin/env bash
# Runs the serving benchmark on the router node against the router: NUM_PROMPTS random prompts of
# INPUT_LEN tokens, OUTPUT_LEN tokens each, at most MAX_CONCURRENCY in flight. It runs in the
# background (the slow-down and profile scripts come next); its exit code lands in bench.rc.
#   --wait: stay in the foreground until it ends (as the published script does).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
load_node_list
curl -sf -o /dev/null --max-time 5 "$(router_url)/health" || die "no router at $(router_url): run 5.launch_router.sh first"

rm -f "$LOG_DIR/bench.rc"
# No warmup request: the servers warmed up at startup, and a warmup caught in the slow-down would
# hold the benchmark for OUTPUT_LEN x SLOW_DOWN_TIME seconds.
(
  srun --jobid="$NODE_LIST_JOB_ID" --nodes=1 --ntasks=1 --overlap -w "$ROUTER_NODE" --job-name=bench \
    "$PDSERVE" bench --backend sglang --base-url "$(router_url)" --dataset-name random \
    --random-input-len "$INPUT_LEN" --random-output-len "$OUTPUT_LEN" --random-range-ratio 1 \
    --num-prompts "$NUM_PROMPTS" --max-concurrency "$MAX_CONCURRENCY" --tokenizer "$MODEL_PATH" \
    --warmup-requests 0 --output-file "$LOG_DIR/bench.jsonl" --disable-tqdm </dev/null >"$LOG_DIR/bench.log" 2>&1
  echo $? >"$LOG_DIR/bench.rc"
) &
echo $! >"$LOG_DIR/pids/bench.pid"
info "benchmark started on $ROUTER_NODE: $NUM_PROMPTS prompts, in $INPUT_LEN, out $OUTPUT_LEN, concurrency $MAX_CONCURRENCY; log $LOG_DIR/bench.log"
if [[ ${1:-} == --wait ]]; then
  wait
  cat "$LOG_DIR/bench.log"
  exit "$(cat "$LOG_DIR/bench.rc")"
fi
