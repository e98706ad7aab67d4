#!/usr/bin/env bash
# Starts the PD router on the first node (as published): every prefill group (with its bootstrap
# port) and the decode group. Returns once it listens.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
load_node_list

args=(router --pd-disaggregation --host "$SERVE_HOST" --port "$ROUTER_PORT" --prometheus-port -1)
for g in $(seq 0 $((PREFILL_GROUPS - 1))); do
  args+=(--prefill "$(prefill_url "$g")" "$(group_port "$BOOTSTRAP_PORT" "$g")")
done
args+=(--decode "$(decode_url)")
srun_on router "$ROUTER_NODE" "$LOG_DIR/router.log" "$PDSERVE" "${args[@]}"

deadline=$((SECONDS + READY_TIMEOUT))
until grep -q "listening on" "$LOG_DIR/router.log" 2>/dev/null && curl -sf -o /dev/null --max-time 5 "$(router_url)/health"; do
  alive router || die "the router step ended; $(tail_of "$LOG_DIR/router.log")"
  ((SECONDS < deadline)) || die "the router is not up after $READY_TIMEOUT s; $(tail_of "$LOG_DIR/router.log")"
  sleep 1
done
info "router ready at $(router_url)"
