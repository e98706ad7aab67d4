#!/usr/bin/env bash
# Runs `pdserve bench` against the router in the background: NUM_PROMPTS random prompts of
# INPUT_LEN tokens, OUTPUT_LEN tokens each, at most MAX_CONCURRENCY in flight. The results block
# goes to bench.log, its exit code to bench.rc (8.analyze.sh waits for it).
#   --wait: stay in the foreground until it ends (as the published script does).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need router 3.launch_router.sh

rm -f "$RUN_DIR/bench.rc"
# No warmup request: a warmup caught in the slow-down would hold the benchmark for a long time.
# bash -c records the exit code once bench ends (the script itself returns at once).
# shellcheck disable=SC2016  # expanded by that inner bash
start_bg bench "$RUN_DIR/bench.log" env BENCH_RC="$RUN_DIR/bench.rc" bash -c '"$@"; echo $? >"$BENCH_RC"' bench \
  "$PDSERVE" bench --backend sglang --base-url "$ROUTER_URL" --dataset-name random \
  --random-input-len "$INPUT_LEN" --random-output-len "$OUTPUT_LEN" --random-range-ratio 1 \
  --num-prompts "$NUM_PROMPTS" --max-concurrency "$MAX_CONCURRENCY" --tokenizer "$MODEL_PATH" \
  --warmup-requests 0 --output-file "$RUN_DIR/bench.jsonl" --disable-tqdm
info "benchmark: $NUM_PROMPTS prompts, in $INPUT_LEN, out $OUTPUT_LEN, concurrency $MAX_CONCURRENCY"
if [[ ${1:-} == --wait ]]; then
  while alive bench; do sleep 1; done
  cat "$RUN_DIR/bench.log"
  exit "$(cat "$RUN_DIR/bench.rc" 2>/dev/null || echo 1)"
fi
