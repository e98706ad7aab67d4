#!/usr/bin/env bash
# The published fill: every decode batch sleeps SLOW_DOWN_TIME seconds, so requests the prefill
# finishes pile into the next batch. Waits until the global #running-req (Σ over DP ranks of each
# rank's latest Decode line, all decode nodes' logs) reaches TARGET_RUNNING (lib.sh: fill_decode).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
load_node_list
load_decode_logs
fill_decode "$(decode_url)" "${DECODE_LOGS[@]}"
