#!/usr/bin/env bash
# Waits for the benchmark of 6. to end (BENCH_TIMEOUT), then computes the throughput per GPU from
# the decode logs and the traces: `pdserve analyze` (docs/analyze.md) writes report.txt (also
# printed), report.json and report.html into the run's log folder.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
load_node_list

if [[ -f $LOG_DIR/pids/bench.pid ]]; then
  deadline=$((SECONDS + BENCH_TIMEOUT))
  until [[ -f $LOG_DIR/bench.rc ]]; do
    ((SECONDS < deadline)) || die "the benchmark did not end within $BENCH_TIMEOUT s; see $LOG_DIR/bench.log"
    sleep 1
  done
  rc=$(cat "$LOG_DIR/bench.rc")
  ((rc == 0)) || die "the benchmark failed (exit code $rc); $(tail_of "$LOG_DIR/bench.log")"
  info "benchmark: $(grep -E '^Successful requests:' "$LOG_DIR/bench.log" | tr -s ' ')"
fi

load_decode_logs
args=(analyze --trace-dir "$LOG_DIR/traces" --output-json "$LOG_DIR/report.json" --html "$LOG_DIR/report.html")
for l in "${DECODE_LOGS[@]}"; do args+=(--log "$l"); done
"$PDSERVE" "${args[@]}" >"$LOG_DIR/report.txt" 2>&1 || die "pdserve analyze failed; $(tail_of "$LOG_DIR/report.txt")"
cat "$LOG_DIR/report.txt"
info "report: $LOG_DIR/report.txt report.json report.html"
