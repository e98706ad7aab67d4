#!/usr/bin/env bash
# Starts `pdserve serve` on the tiny model (dummy weights), runs the request-rate benchmark against
# it, stops it. Also runs the scheduler step benchmark. Results: docs/perf/server.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-31999}
build/pdserve serve --model-path models/tiny-deepseek-v3 --load-format dummy --port "$PORT" \
  --log-level warning --decode-log-interval 1000000 > build/bench_server.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.2
done
build/bench/server_rps_bench --url "http://127.0.0.1:$PORT" --connections "${CONNECTIONS:-16}" --seconds "${SECONDS_PER_ROW:-5}"
build/bench/scheduler_bench
