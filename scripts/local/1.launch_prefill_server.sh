#!/usr/bin/env bash
# Starts the prefill server (`pdserve serve --disaggregation-mode prefill`, PREFILL_DP_SIZE ranks)
# in the background; returns once it is fired up. Log: $RUN_DIR/prefill.log.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
start_server prefill "$PREFILL_PORT" "$PREFILL_DP_SIZE"
