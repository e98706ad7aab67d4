#!/usr/bin/env bash
# The published fill: every decode batch sleeps SLOW_DOWN_TIME seconds, so requests the prefill
# finishes pile into the next batch. Waits until decode's global #running-req (Σ over DP ranks of
# each rank's latest Decode line) reaches TARGET_RUNNING (scripts/slurm/lib.sh: fill_decode).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need decode 2.launch_decode_server.sh
fill_poll_check() {
  servers_alive
  alive bench || warn "the benchmark is not running (4.start_benchmark.sh): the batch may never fill"
}
fill_decode "$DECODE_URL" "$DECODE_LOG"
