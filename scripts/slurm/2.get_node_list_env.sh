#!/usr/bin/env bash
# Splits the allocation's nodes (in $SLURM_JOB_NODELIST order) into the prefill groups, then the
# decode group; the router runs on the first node. Writes $NODE_LIST_ENV, which every later
# script reads, and creates this run's log folder.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
check_layout
[[ -n ${SLURM_JOB_NODELIST:-} && -n ${SLURM_JOB_ID:-} ]] ||
  die "SLURM_JOB_NODELIST is not set: run this inside the allocation (the shell 1.salloc.sh opens)"

mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
need=$(total_nodes)
((${#NODES[@]} >= need)) ||
  die "the allocation has ${#NODES[@]} nodes, the layout in config.sh needs $need ($PREFILL_GROUPS x $PREFILL_NODES_PER_GROUP prefill + $DECODE_NODES decode)"

# The address the other nodes reach a node at (NodeAddr; on most clusters the node name itself).
node_addr() { scontrol show node -o "$1" | grep -oE 'NodeAddr=[^ ]+' | cut -d= -f2; }

groups=() heads=() addrs=()
for g in $(seq 0 $((PREFILL_GROUPS - 1))); do
  members=("${NODES[@]:$((g * PREFILL_NODES_PER_GROUP)):$PREFILL_NODES_PER_GROUP}")
  groups+=("${members[*]}")
  heads+=("${members[0]}")
  addrs+=("$(node_addr "${members[0]}")")
done
decode=("${NODES[@]:$((PREFILL_GROUPS * PREFILL_NODES_PER_GROUP)):$DECODE_NODES}")
decode_addr=$(node_addr "${decode[0]}")

# Group heads sharing an address (the test cluster) need distinct ports.
if [[ $GROUP_PORT_STRIDE == 0 ]] && (($(printf '%s\n' "${addrs[@]}" "$decode_addr" | sort -u | wc -l) < PREFILL_GROUPS + 1)); then
  die "group heads share an address (${addrs[*]} $decode_addr): set GROUP_PORT_STRIDE in config.sh (e.g. 100)"
fi

run_id=${SLURM_JOB_ID}_$(date +%Y%m%d_%H%M%S)
log_dir=$LOG_ROOT/$run_id
mkdir -p "$(dirname "$NODE_LIST_ENV")" "$log_dir/traces" "$log_dir/expert_record" "$log_dir/pids"
join() { local IFS=,; echo "$*"; }
# shellcheck disable=SC2086  # groups[0] is the space-separated member list
cat >"$NODE_LIST_ENV" <<ENV
# Written by 2.get_node_list_env.sh for job $SLURM_JOB_ID ($SLURM_JOB_NODELIST) at $(date '+%F %T').
NODE_LIST_JOB_ID=$SLURM_JOB_ID
RUN_ID=$run_id
LOG_DIR=$log_dir
# The layout this list was cut for (later scripts use it, whatever config.sh says by then).
PREFILL_GROUPS=$PREFILL_GROUPS
PREFILL_NODES_PER_GROUP=$PREFILL_NODES_PER_GROUP
DECODE_NODES=$DECODE_NODES
PREFILL_GROUP_NODES=($(printf '"%s" ' "${groups[@]}"))
PREFILL_HEAD_ADDRS=(${addrs[*]})
DECODE_GROUP_NODES="${decode[*]}"
DECODE_HEAD_ADDR=$decode_addr
ROUTER_NODE=${NODES[0]}
ROUTER_ADDR=${addrs[0]}
# The published scripts' names (prefill group 0).
export PREFILL_NODE_LIST=$(join ${groups[0]})
export PREFILL_HEAD_NODE=${heads[0]}
export DECODE_NODE_LIST=$(join "${decode[@]}")
export DECODE_HEAD_NODE=${decode[0]}
ENV
cat "$NODE_LIST_ENV"
info "wrote $NODE_LIST_ENV; logs of this run go to $log_dir"
