#!/usr/bin/env bash
# The published fill: every decode batch sleeps SLOW_DOWN_TIME seconds, so requests the prefill
# finishes pile into the next batch. Waits until decode's global #running-req (Σ over DP ranks of
# each rank's latest Decode line) reaches TARGET_RUNNING; after FILL_TIMEOUT it warns and returns.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need decode 2.launch_decode_server.sh
target=${TARGET_RUNNING:-$((NUM_PROMPTS < MAX_CONCURRENCY ? NUM_PROMPTS : MAX_CONCURRENCY))}

t0=$SECONDS
post_json "$DECODE_URL/slow_down" "{\"forward_sleep_time\": $SLOW_DOWN_TIME}"
while :; do
  running=$(running_req_sum "$DECODE_LOG")
  if ((running >= target)); then
    info "fill reached #running-req $running (target $target) in $((SECONDS - t0)) s"
    exit 0
  fi
  if ((SECONDS - t0 >= FILL_TIMEOUT)); then
    warn "fill reached #running-req $running of target $target within $FILL_TIMEOUT s; go on anyway"
    exit 0
  fi
  servers_alive
  alive bench || warn "the benchmark is not running (4.start_benchmark.sh): the batch may never fill"
  sleep 0.5
done
