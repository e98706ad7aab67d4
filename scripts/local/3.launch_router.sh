#!/usr/bin/env bash
# Starts the PD router in front of the prefill (with its bootstrap port) and the decode server;
# returns once it listens. Log: $RUN_DIR/router.log.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need prefill 1.launch_prefill_server.sh
need decode 2.launch_decode_server.sh

start_bg router "$RUN_DIR/router.log" "$PDSERVE" router --pd-disaggregation --host "$HOST" --port "$ROUTER_PORT" \
  --prometheus-port -1 --prefill "$PREFILL_URL" "$BOOTSTRAP_PORT" --decode "$DECODE_URL"
deadline=$((SECONDS + READY_TIMEOUT))
until grep -q "listening on" "$RUN_DIR/router.log" 2>/dev/null && curl -sf -o /dev/null --max-time 5 "$ROUTER_URL/health"; do
  alive router || die "the router exited; $(tail_of "$RUN_DIR/router.log")"
  servers_alive
  ((SECONDS < deadline)) || die "the router is not up after $READY_TIMEOUT s; $(tail_of "$RUN_DIR/router.log")"
  sleep 0.5
done
info "router ready at $ROUTER_URL"
