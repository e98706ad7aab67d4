#!/usr/bin/env bash
# Waits for the benchmark of 4. to end (BENCH_TIMEOUT), then computes tokens/s per GPU from the
# decode log and the traces: `pdserve analyze` (docs/analyze.md) writes report.txt (also printed),
# report.json and report.html into $RUN_DIR.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[[ -f $DECODE_LOG ]] || die "no $DECODE_LOG: run 2.launch_decode_server.sh first"
compgen -G "$RUN_DIR/traces/*.trace.json.gz" >/dev/null || die "no traces in $RUN_DIR/traces: run 7.profile.sh first"

if [[ -f $RUN_DIR/pids/bench.pid ]]; then
  deadline=$((SECONDS + BENCH_TIMEOUT))
  while alive bench; do
    ((SECONDS < deadline)) || die "the benchmark did not end within $BENCH_TIMEOUT s; see $RUN_DIR/bench.log"
    sleep 1
  done
  rc=$(cat "$RUN_DIR/bench.rc" 2>/dev/null || echo "none (killed?)")
  [[ $rc == 0 ]] || die "the benchmark failed (exit code $rc); $(tail_of "$RUN_DIR/bench.log")"
  info "benchmark: $(grep -E '^Successful requests:' "$RUN_DIR/bench.log" | tr -s ' ')"
fi

"$PDSERVE" analyze --log "$DECODE_LOG" --trace-dir "$RUN_DIR/traces" --output-json "$RUN_DIR/report.json" \
  --html "$RUN_DIR/report.html" >"$RUN_DIR/report.txt" 2>&1 || die "pdserve analyze failed; $(tail_of "$RUN_DIR/report.txt")"
cat "$RUN_DIR/report.txt"
info "report: $RUN_DIR/report.txt report.json report.html"
