#!/usr/bin/env bash
# Profiles PROFILE_STEPS decode steps (N captures N-1 batches) into $RUN_DIR/traces (earlier traces
# there are removed: 8.analyze.sh reads them all). Waits for "Profiling done" from every decode
# rank; if the benchmark ends first (no step left to end the capture) it sends /stop_profile.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need decode 2.launch_decode_server.sh
done_count() { grep -cF "$PROFILE_DONE_LINE" "$DECODE_LOG" || true; }

rm -f "$RUN_DIR"/traces/*.trace.json.gz
before=$(done_count)
post_json "$DECODE_URL/start_profile" "{\"num_steps\": $PROFILE_STEPS, \"output_dir\": \"$RUN_DIR/traces\"}"
deadline=$((SECONDS + PROFILE_TIMEOUT))
stopped=0
until (($(done_count) - before >= DECODE_DP_SIZE)); do
  ((SECONDS < deadline)) || die "not every decode rank logged '$PROFILE_DONE_LINE' within $PROFILE_TIMEOUT s; see $DECODE_LOG"
  servers_alive
  if ((!stopped)) && ! alive bench; then
    warn "the benchmark is not running: stopping the profile"
    # The capture may end on its own meanwhile (then: 400 "not in progress"); the done lines decide.
    (post_json "$DECODE_URL/stop_profile" '{}') || true
    stopped=1
  fi
  sleep 0.5
done
info "profile done: $(find "$RUN_DIR/traces" -name '*.trace.json.gz' | wc -l) trace file(s) in $RUN_DIR/traces"
