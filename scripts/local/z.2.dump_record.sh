#!/usr/bin/env bash
# Dumps the expert distribution recorded since z.1 into $RUN_DIR/expert_record (the input of
# `pdserve eplb` and of --init-expert-location; docs/eplb.md).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need decode 2.launch_decode_server.sh
count() { find "$RUN_DIR/expert_record" -name 'expert_distribution_recorder_*.json' | wc -l; }
before=$(count)
post_json "$DECODE_URL/dump_expert_distribution_record" '{}'
for _ in $(seq 120); do
  if (($(count) > before)); then
    info "expert distribution written: $(find "$RUN_DIR/expert_record" -name 'expert_distribution_recorder_*.json' | sort | tail -n 1)"
    exit 0
  fi
  sleep 0.5
done
die "no new expert_distribution_recorder_*.json in $RUN_DIR/expert_record after 60 s; see $DECODE_LOG"
