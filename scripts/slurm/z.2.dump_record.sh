#!/usr/bin/env bash
# Dumps the expert distribution recorded since z.1 into $LOG_DIR/expert_record (the input of
# `pdserve eplb` and of --init-expert-location; docs/eplb.md).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
load_node_list
before=$(find "$LOG_DIR/expert_record" -name 'expert_distribution_recorder_*.json' | wc -l)
post_json "$(decode_url)/dump_expert_distribution_record" '{}'
for _ in $(seq 120); do
  files=$(find "$LOG_DIR/expert_record" -name 'expert_distribution_recorder_*.json' | sort)
  if (($(echo "$files" | grep -c .) > before)); then
    info "expert distribution written: $(echo "$files" | tail -n 1)"
    exit 0
  fi
  sleep 0.5
done
die "no new expert_distribution_recorder_*.json in $LOG_DIR/expert_record after 60 s; see the decode logs"
