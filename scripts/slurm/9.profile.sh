#!/usr/bin/env bash
# Profiles PROFILE_STEPS decode steps on every decode rank; traces go to $LOG_DIR/traces. Waits for
# "Profiling done" from all DECODE_DP_SIZE ranks; if the benchmark ends first (no more steps to
# end the capture) it sends /stop_profile.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
load_node_list
load_decode_logs
done_count() { cat "${DECODE_LOGS[@]}" | grep -cF "$PROFILE_DONE_LINE" || true; }

before=$(done_count)
post_json "$(decode_url)/start_profile" "{\"num_steps\": $PROFILE_STEPS, \"output_dir\": \"$LOG_DIR/traces\"}"
deadline=$((SECONDS + PROFILE_TIMEOUT))
stopped=0
until (($(done_count) - before >= DECODE_DP_SIZE)); do
  ((SECONDS < deadline)) || die "not every decode rank logged '$PROFILE_DONE_LINE' within $PROFILE_TIMEOUT s; see ${DECODE_LOGS[*]}"
  if ((!stopped)) && [[ -f $LOG_DIR/bench.rc ]]; then
    warn "the benchmark ended before $PROFILE_STEPS profiled steps; stopping the profile"
    # The capture may end on its own meanwhile (then: 400 "not in progress"); the done lines decide.
    (post_json "$(decode_url)/stop_profile" '{}') || true
    stopped=1
  fi
  sleep 0.5
done
info "profile done: $(ls "$LOG_DIR/traces" | wc -l) trace file(s) in $LOG_DIR/traces"
