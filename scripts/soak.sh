#!/usr/bin/env bash
# Load soak (issue 12 part 4): SOAK_CLIENTS (default 1,024) concurrent streaming clients through
# `pdserve router --pd-disaggregation` to one prefill and one decode `pdserve serve` (tiny model,
# dummy weights, CPU, KV over TCP on loopback) for SECONDS (default 180), driven by `pdserve bench`
# runs back to back (each SOAK_CLIENTS x SOAK_REQUESTS_PER_CLIENT (default 4) requests, 8-16 prompt
# and 2-5 output tokens, at most SOAK_CLIENTS in flight). RSS and open descriptors of the three
# processes are sampled every second. Passes when no request failed, the servers' accounting is all free afterwards and no
# process's RSS at the end (idle, after the load) exceeds its peak during the warm-up (the first
# bench run) by more than SOAK_RSS_GROWTH_MIB (default 64) MiB. Prints the p99 latencies of every run.
#
#   scripts/soak.sh [SECONDS]     PDSERVE=build/pdserve SOAK_OUT=build/soak (logs, samples, JSONL)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TOTAL=${1:-180}
CLIENTS=${SOAK_CLIENTS:-1024}
GROWTH_MIB=${SOAK_RSS_GROWTH_MIB:-64}
PER_CLIENT=${SOAK_REQUESTS_PER_CLIENT:-4}
PDSERVE=${PDSERVE:-build/pdserve}
OUT=${SOAK_OUT:-build/soak}
MODEL=models/tiny-deepseek-v3
[[ -x "$PDSERVE" ]] || { echo "soak: $PDSERVE is not built (set PDSERVE=...)" >&2; exit 2; }
[[ "$SECONDS_TOTAL" =~ ^[0-9]+$ && "$SECONDS_TOTAL" -ge 10 ]] || { echo "soak: SECONDS must be an integer >= 10" >&2; exit 2; }
mkdir -p "$OUT"
rm -f "$OUT"/bench.jsonl "$OUT"/bench-*.txt "$OUT"/rss.csv "$OUT"/server_info_*.json

# Free loopback ports, from below the kernel's ephemeral range: a port bind(0) picks lies inside
# it, where any process's outgoing connection may take it before the server listens (the ctest
# suites beside this one open thousands). Same choice as the C++ tests' free_port().
free_port() {
  python3 - <<'PY'
import random, socket
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(500):
    p = random.randint(15000, lo - 1) if lo - 1 - 15000 >= 2000 else 0
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        print(s.getsockname()[1])
        break
    except OSError:
        pass
    finally:
        s.close()
PY
}
PREFILL=$(free_port); BOOTSTRAP=$(free_port); DECODE=$(free_port); ROUTER=$(free_port)

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# Each streaming client holds a socket in the router and one to each server: raise the soft limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# --num-reserved-decode-tokens: decode admission reserves this much per request (the default 512
# would hold 1,024 requests back for KV they never use with 5 output tokens). --max-total-tokens:
# a KV pool small enough (21 MB) that the prefix cache has touched all of it during the warm-up, so
# that RSS growth afterwards is not pages of a preallocated pool being touched for the first time.
COMMON=(serve --model-path "$MODEL" --load-format dummy --host 127.0.0.1 --log-level warning --decode-log-interval 100000
  --max-total-tokens 65536)
"$PDSERVE" "${COMMON[@]}" --port "$PREFILL" --disaggregation-mode prefill --disaggregation-bootstrap-port "$BOOTSTRAP" \
  > "$OUT/prefill.log" 2>&1 & PIDS+=($!); PREFILL_PID=$!
"$PDSERVE" "${COMMON[@]}" --port "$DECODE" --disaggregation-mode decode --num-reserved-decode-tokens 16 \
  > "$OUT/decode.log" 2>&1 & PIDS+=($!); DECODE_PID=$!
wait_ok() {
  for _ in $(seq 1 900); do curl -sf "$1" > /dev/null 2>&1 && return 0; sleep 0.2; done
  echo "soak: $1 never answered; logs in $OUT" >&2; exit 1
}
wait_ok "http://127.0.0.1:$PREFILL/health"; wait_ok "http://127.0.0.1:$DECODE/health"
"$PDSERVE" router --pd-disaggregation --host 127.0.0.1 --port "$ROUTER" --prometheus-port -1 --log-level warning \
  --prefill "http://127.0.0.1:$PREFILL" "$BOOTSTRAP" --decode "http://127.0.0.1:$DECODE" \
  --worker-startup-check-interval 1 --request-timeout-secs 300 > "$OUT/router.log" 2>&1 & PIDS+=($!); ROUTER_PID=$!
wait_ok "http://127.0.0.1:$ROUTER/readiness"

# One line per second: seconds since start, then RSS (KiB) and descriptors of router, prefill, decode.
sample() {
  local t0=$1
  echo "t,router_rss_kib,prefill_rss_kib,decode_rss_kib,router_fds,prefill_fds,decode_fds" > "$OUT/rss.csv"
  while :; do
    local line="$(( $(date +%s) - t0 ))"
    for p in $ROUTER_PID $PREFILL_PID $DECODE_PID; do line+=",$(awk '/^VmRSS/ {print $2}' /proc/$p/status 2>/dev/null || echo -1)"; done
    for p in $ROUTER_PID $PREFILL_PID $DECODE_PID; do line+=",$(ls /proc/$p/fd 2>/dev/null | wc -l)"; done
    echo "$line" >> "$OUT/rss.csv"
    sleep 1
  done
}
START=$(date +%s)
sample "$START" & SAMPLER=$!; PIDS+=($SAMPLER)

RUNS=0; WARMUP_END=""
while (( $(date +%s) - START < SECONDS_TOTAL )); do
  "$PDSERVE" bench --backend sglang --base-url "http://127.0.0.1:$ROUTER" --tokenizer "$MODEL" \
    --dataset-name random-ids --random-input-len 16 --random-output-len 5 --random-range-ratio 0.5 \
    --num-prompts $((CLIENTS * PER_CLIENT)) --max-concurrency "$CLIENTS" --seed $((RUNS + 1)) --warmup-requests 0 --request-timeout 300 \
    --disable-tqdm --output-file "$OUT/bench.jsonl" --tag "soak-run-$RUNS" > "$OUT/bench-$RUNS.txt" 2>&1 \
    || { echo "soak: bench run $RUNS exited with an error:"; tail -5 "$OUT/bench-$RUNS.txt"; exit 1; }
  RUNS=$((RUNS + 1))
  [[ -n "$WARMUP_END" ]] || WARMUP_END=$(( $(date +%s) - START ))
done
END=$(( $(date +%s) - START ))
sleep 2  # one more sample after the load
kill "$SAMPLER" 2>/dev/null || true

# Afterwards: nothing owned by a request, nothing queued, accounting consistent.
ACCOUNTING_OK=1
for port in $PREFILL $DECODE; do
  if ! curl -sf "http://127.0.0.1:$port/server_info" -o "$OUT/server_info_$port.json"; then
    echo "soak: GET /server_info on port $port failed: $(curl -s "http://127.0.0.1:$port/server_info" | head -c 300)"
    ACCOUNTING_OK=0
    continue
  fi
  python3 -c '
import json, sys
for s in json.load(open(sys.argv[2]))["internal_states"]:
    busy = s["num_running_reqs"] + s["num_queue_reqs"] + s.get("num_prealloc_reqs", 0) + s.get("num_inflight_reqs", 0) + s.get("num_transfer_reqs", 0)
    if busy or s["memory_usage"]["kvcache_pages_in_requests"] or not s["kv_accounting_consistent"]:
        sys.exit("soak: server %s not all free after the soak: %s" % (sys.argv[1], json.dumps(s)))
print("soak: server %s all free (no page owned by a request, nothing queued, accounting consistent)" % sys.argv[1])
' "$port" "$OUT/server_info_$port.json" || ACCOUNTING_OK=0
done

python3 - "$OUT" "$WARMUP_END" "$END" "$GROWTH_MIB" "$CLIENTS" "$SECONDS_TOTAL" "$PER_CLIENT" "$ACCOUNTING_OK" <<'EOF'
import csv, json, sys
out, warm_end, end, growth_mib, clients, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
per_client, accounting_ok = int(sys.argv[7]), sys.argv[8] == "1"
runs = [json.loads(l) for l in open(out + "/bench.jsonl")]
sent = len(runs) * clients * per_client
done = sum(r["completed"] for r in runs)
print(f"soak: {clients} streaming clients, {seconds} s asked, {end} s run, {len(runs)} bench runs, {done}/{sent} requests completed, {sent - done} failed")
for r in runs:
    print(f"  {r['tag']}: {r['completed']} ok in {r['duration']:.1f} s, {r['request_throughput']:.0f} req/s, concurrency {r['concurrency']:.0f}, "
          f"p99 e2e {r['p99_e2e_latency_ms']:.0f} ms, p99 TTFT {r['p99_ttft_ms']:.0f} ms, p99 ITL {r['p99_itl_ms']:.0f} ms")
rows = [r for r in csv.DictReader(open(out + "/rss.csv"))]
ok = done == sent and accounting_ok
for name in ("router", "prefill", "decode"):
    rss = [(int(r["t"]), int(r[name + "_rss_kib"])) for r in rows if int(r[name + "_rss_kib"]) > 0]
    fds = [int(r[name + "_fds"]) for r in rows]
    at_warm = max(v for t, v in rss if t <= warm_end)
    later = [v for t, v in rss if t > warm_end] or [at_warm]
    # What stays once the load is gone (the last sample, 1-2 s after it) against the warm-up's
    # peak. Peaks under load follow the batch: a decode step of 236 streams holds 236 rows of f32
    # logits over the 129k vocabulary, ~118 MiB, freed when the step ends; so a later run that
    # reached a larger batch than the warm-up peaked higher without keeping anything (once +131
    # MiB at the peak, +8 MiB at the end).
    grow = (rss[-1][1] - at_warm) / 1024
    print(f"  {name}: RSS {rss[0][1]/1024:.0f} MiB at start, {at_warm/1024:.0f} MiB (max) by the end of the warm-up at {warm_end} s, "
          f"max {max(later)/1024:.0f} MiB after, {rss[-1][1]/1024:.0f} MiB at the end: growth {grow:+.1f} MiB (bound {growth_mib:.0f}); "
          f"descriptors {fds[0]}..{max(fds)}, {fds[-1]} at the end")
    if grow > growth_mib:
        ok = False
        print(f"soak: {name} RSS grew by {grow:.1f} MiB after the warm-up (bound {growth_mib:.0f} MiB)")
if warm_end >= end:
    print("soak: only one bench run: no time after the warm-up to judge RSS growth (give more SECONDS)")
print("soak: PASS" if ok else "soak: FAIL")
sys.exit(0 if ok else 1)
EOF
