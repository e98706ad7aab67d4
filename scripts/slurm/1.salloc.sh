#!/usr/bin/env bash
# Allocates PREFILL_GROUPS x PREFILL_NODES_PER_GROUP + DECODE_NODES whole nodes. Without
# arguments salloc opens a shell in the allocation; with arguments it runs that command in it:
#   scripts/slurm/1.salloc.sh                       # then run 2.-10. in the new shell
#   scripts/slurm/1.salloc.sh bash -c '2.get_node_list_env.sh && ...'
set -euo pipefail
source "$(dirname "$0")/lib.sh"
check_layout
command -v salloc >/dev/null || die "salloc not found: this must run on a SLURM login node (or run scripts/setup.sh)"

args=(-N "$(total_nodes)" -J "$JOB_NAME" --exclusive --time "$TIME_LIMIT")
[[ -n $PARTITION ]] && args+=(-p "$PARTITION")
[[ -n $ACCOUNT ]] && args+=(-A "$ACCOUNT")
[[ -n $GPUS_PER_NODE ]] && args+=(--gpus-per-node "$GPUS_PER_NODE")
# shellcheck disable=SC2206
args+=($SALLOC_EXTRA)
info "salloc ${args[*]} $*"
exec salloc "${args[@]}" "$@"
