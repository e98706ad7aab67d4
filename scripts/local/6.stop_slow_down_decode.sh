#!/usr/bin/env bash
# Releases the slow-down. The batch asleep when the release arrives still sleeps to the end, so
# this waits SLOW_DOWN_TIME (+ a margin): a profile started earlier would count that sleep.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need decode 2.launch_decode_server.sh

post_json "$DECODE_URL/slow_down" '{"forward_sleep_time": null}'
info "waiting ${SLOW_DOWN_TIME}s for the slowed batch to end"
sleep "$(awk -v s="$SLOW_DOWN_TIME" 'BEGIN { print s + 0.25 }')"
