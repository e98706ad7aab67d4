#!/usr/bin/env bash
# Starts recording the expert distribution on the decode group (needs EXPERT_RECORDER_MODE=stat
# in config.sh when the decode servers were launched). Run it before 6.start_benchmark.sh.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
load_node_list
[[ -n $EXPERT_RECORDER_MODE ]] || die "EXPERT_RECORDER_MODE is empty: set it to stat in config.sh and relaunch 4.launch_decode_server.sh"
post_json "$(decode_url)/start_expert_distribution_record" '{}'
