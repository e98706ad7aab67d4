#!/usr/bin/env bash
# The published fill: every decode batch sleeps SLOW_DOWN_TIME seconds, so requests the prefill
# finishes pile into the next batch. Waits until the global #running-req (Σ over DP ranks of each
# rank's latest Decode line, all decode nodes' logs) reaches TARGET_RUNNING; after FILL_TIMEOUT it
# warns and returns (profile anyway, as the published procedure leaves it to the eye).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
load_node_list
target=${TARGET_RUNNING:-$((NUM_PROMPTS < MAX_CONCURRENCY ? NUM_PROMPTS : MAX_CONCURRENCY))}

t0=$SECONDS
post_json "$(decode_url)/slow_down" "{\"forward_sleep_time\": $SLOW_DOWN_TIME}"
load_decode_logs
while :; do
  running=$(running_req_sum "${DECODE_LOGS[@]}")
  if ((running >= target)); then
    info "fill reached #running-req $running (target $target) in $((SECONDS - t0)) s"
    exit 0
  fi
  if ((SECONDS - t0 >= FILL_TIMEOUT)); then
    warn "fill reached #running-req $running of target $target within $FILL_TIMEOUT s; go on anyway"
    exit 0
  fi
  sleep 0.5
done
