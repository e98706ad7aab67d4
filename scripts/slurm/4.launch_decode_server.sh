#!/usr/bin/env bash
# Starts the decode group (DECODE_NODES nodes, DECODE_DP_SIZE ranks): one srun step per node,
# `pdserve serve --disaggregation-mode decode`. Returns once node 0 is fired up.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
load_node_list

# shellcheck disable=SC2086
launch_group decode "$(decode_group)" "$DECODE_DP_SIZE" "$DECODE_HEAD_ADDR" $DECODE_GROUP_NODES
wait_group decode "$(decode_group)" "$DECODE_NODES" "$DECODE_HEAD_ADDR"
