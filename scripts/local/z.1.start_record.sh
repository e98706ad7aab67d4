#!/usr/bin/env bash
# Starts recording the expert distribution on the decode server (launch it with
# EXPERT_RECORDER_MODE=stat). Run it before 4.start_benchmark.sh.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need decode 2.launch_decode_server.sh
[[ -n $EXPERT_RECORDER_MODE ]] || die "EXPERT_RECORDER_MODE is empty: set it to stat and relaunch 2.launch_decode_server.sh"
post_json "$DECODE_URL/start_expert_distribution_record" '{}'
