#!/usr/bin/env bash
# Starts the decode server (`pdserve serve --disaggregation-mode decode`, DECODE_DP_SIZE ranks) in
# the background; returns once it is fired up. Log: $RUN_DIR/decode.log.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
start_server decode "$DECODE_PORT" "$DECODE_DP_SIZE"
