#!/usr/bin/env bash
# Runs on a GPU machine after scripts/gpu/run_gpu_checks.sh has unpacked the binaries: PD
# disaggregation with the cuda-ipc transfer backend between two GPU processes, against a single GPU
# server, through `pdserve router --pd-disaggregation`.
#
# Prefill and decode go to different GPUs when there are two (PD_PREFILL_GPU / PD_DECODE_GPU);
# on a one-GPU machine both share GPU 0 (CUDA IPC works between processes of one device, the copy
# is then device-local rather than over NVLink). Greedy requests go one at a time, so the single
# server and the pair run the same batch shapes and their outputs must be equal.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/pdserve-gpu-out}
BIN=/tmp/pdserve-gpu/bin/pdserve
export LD_LIBRARY_PATH=/tmp/pdserve-gpu/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
NGPU=$(nvidia-smi -L | wc -l)
PGPU=${PD_PREFILL_GPU:-0}
DGPU=${PD_DECODE_GPU:-$((NGPU > 1 ? 1 : 0))}
MODEL=${PD_MODEL:-models/tiny-deepseek-v3}
# Three servers share a GPU: a capped pool each (the fraction alone counts the others' memory as used).
COMMON=(--model-path "$MODEL" --load-format dummy --mem-fraction-static 0.85 --max-total-tokens 65536 --context-length 4096 --enable-metrics)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
wait_ready() {  # log file, pid
  for _ in $(seq 1 240); do
    grep -q "fired up" "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "process died: $1"; tail -5 "$1"; return 1; }
    sleep 1
  done
  echo "not ready in 240 s: $1"; return 1
}
echo "== PD cuda-ipc: prefill on GPU $PGPU, decode on GPU $DGPU, single server on GPU $PGPU ($NGPU GPUs, $MODEL)"
$BIN serve "${COMMON[@]}" --base-gpu-id "$PGPU" --port 32100 > "$OUT/pd_single.log" 2>&1 & pids+=($!); S=$!
$BIN serve "${COMMON[@]}" --base-gpu-id "$PGPU" --port 32101 --disaggregation-mode prefill \
  --disaggregation-bootstrap-port 32198 --disaggregation-transfer-backend cuda-ipc > "$OUT/pd_prefill.log" 2>&1 & pids+=($!); P=$!
$BIN serve "${COMMON[@]}" --base-gpu-id "$DGPU" --port 32102 --disaggregation-mode decode \
  --disaggregation-transfer-backend cuda-ipc > "$OUT/pd_decode.log" 2>&1 & pids+=($!); D=$!
wait_ready "$OUT/pd_single.log" $S && wait_ready "$OUT/pd_prefill.log" $P && wait_ready "$OUT/pd_decode.log" $D || exit 1
$BIN router --pd-disaggregation --prefill http://127.0.0.1:32101 32198 --decode http://127.0.0.1:32102 \
  --host 127.0.0.1 --port 32103 > "$OUT/pd_router.log" 2>&1 & pids+=($!)
for _ in $(seq 1 60); do curl -sf http://127.0.0.1:32103/health >/dev/null && break; sleep 0.5; done
python3 - <<'PY'
import json, sys, time, urllib.request
def gen(port, i, n):
    body = json.dumps({"text": f"Prompt {i}: " + "expert parallelism " * (1 + 37 * i % 200),
                       "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=body, headers={"Content-Type": "application/json"})
    t = time.time()
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read()), time.time() - t
same = 0
N = 16
for i in range(N):
    a, _ = gen(32100, i, 32)
    b, _ = gen(32103, i, 32)
    ok = a["output_ids"] == b["output_ids"] if "output_ids" in a else a["text"] == b["text"]
    same += ok
    if not ok: print(f"prompt {i}: single {a.get('text','')[:60]!r} vs PD {b.get('text','')[:60]!r}")
print(f"PD (cuda-ipc) equals the single GPU server on {same}/{N} greedy requests")
sys.exit(0 if same == N else 1)
PY
rc=$?
echo "-- decode transfer log/metrics"
grep -E "transfer|Transfer" "$OUT/pd_decode.log" | tail -3 | cut -c1-200
curl -s http://127.0.0.1:32102/metrics | grep -E "^sglang:kv_transfer|transfer_failed|bootstrap_failed" | head -12
exit $rc
