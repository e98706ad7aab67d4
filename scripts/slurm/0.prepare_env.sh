#!/usr/bin/env bash
# Builds pdserve when $PDSERVE is missing (Debian packages, CMake, Ninja), then, inside an
# allocation, checks that every allocated node can run it (the build must be on a shared path).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if [[ ! -x $PDSERVE ]]; then
  info "building pdserve in $BUILD_DIR ($CMAKE_ARGS)"
  (cd "$REPO_DIR" && scripts/setup.sh)
  # shellcheck disable=SC2086  # CMAKE_ARGS is a list of flags
  cmake -S "$REPO_DIR" -B "$BUILD_DIR" -G Ninja $CMAKE_ARGS
  ninja -C "$BUILD_DIR" pdserve
fi
[[ -x $PDSERVE ]] || die "$PDSERVE was not built; set PDSERVE in config.sh to the binary"
"$PDSERVE" serve --help | grep -- --nnodes >/dev/null ||
  warn "$PDSERVE has no --nnodes: only 1-node groups (PREFILL_NODES_PER_GROUP=DECODE_NODES=1) will work"

if [[ -n ${SLURM_JOB_ID:-} ]]; then
  info "checking $PDSERVE on every node of job $SLURM_JOB_ID"
  srun --overlap --ntasks-per-node=1 bash -c "\"$PDSERVE\" --help >/dev/null && echo \"\$SLURMD_NODENAME: ok\"" ||
    die "$PDSERVE does not run on every node (is it on a shared file system?)"
fi
info "pdserve: $PDSERVE"
