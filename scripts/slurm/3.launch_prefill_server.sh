#!/usr/bin/env bash
# Starts every prefill group (PREFILL_GROUPS of PREFILL_NODES_PER_GROUP nodes): one srun step per
# node, `pdserve serve --disaggregation-mode prefill` with --node-rank = its place in the group.
# Returns once each group's node 0 is fired up; the servers keep running in the allocation.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
load_node_list

for g in $(seq 0 $((PREFILL_GROUPS - 1))); do
  # shellcheck disable=SC2086  # the group's node names, split on spaces
  launch_group prefill "$g" "$PREFILL_DP_SIZE" "${PREFILL_HEAD_ADDRS[$g]}" ${PREFILL_GROUP_NODES[$g]}
done
for g in $(seq 0 $((PREFILL_GROUPS - 1))); do
  wait_group prefill "$g" "$PREFILL_NODES_PER_GROUP" "${PREFILL_HEAD_ADDRS[$g]}"
done
