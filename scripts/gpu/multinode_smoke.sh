#!/usr/bin/env bash
# Runs on a GPU machine after scripts/gpu/run_gpu_checks.sh has unpacked the binaries: a two-node
# server (two processes, `--nnodes 2`, DP attention, one GPU rank each; both on GPU 0 when the
# machine has one GPU, each with a small capped KV cache) against a one-process server on the tiny
# model. The
# greedy outputs must match, and both nodes' ranks must have served requests.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/pdserve-gpu-out}
BIN=/tmp/pdserve-gpu/bin/pdserve
export LD_LIBRARY_PATH=/tmp/pdserve-gpu/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
NGPU=$(nvidia-smi -L | wc -l)
GPU1=$((NGPU > 1 ? 1 : 0))
COMMON=(--model-path models/tiny-deepseek-v3 --load-format dummy --device cuda --mem-fraction-static 0.9
        --max-total-tokens 65536 --max-running-requests 32 --context-length 2048)
wait_ready() {  # LOG PID
  for _ in $(seq 1 240); do
    grep -q "fired up" "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 1
  done
  return 1
}
$BIN serve "${COMMON[@]}" --port 31600 > "$OUT/mn_single.log" 2>&1 &
SINGLE=$!
wait_ready "$OUT/mn_single.log" $SINGLE || { echo "single server failed"; tail -n 5 "$OUT/mn_single.log"; exit 1; }
NODE=(--tp-size 2 --dp-size 2 --enable-dp-attention --dist-init-addr 127.0.0.1:31657 --nnodes 2)
$BIN serve "${COMMON[@]}" "${NODE[@]}" --node-rank 1 --base-gpu-id $GPU1 --port 31602 > "$OUT/mn_node1.log" 2>&1 &
N1=$!
$BIN serve "${COMMON[@]}" "${NODE[@]}" --node-rank 0 --base-gpu-id 0 --port 31601 > "$OUT/mn_node0.log" 2>&1 &
N0=$!
rc=0
if wait_ready "$OUT/mn_node0.log" $N0; then
  python3 - <<'PY' || rc=1
import json, urllib.request
def gen(port, text):
    body = json.dumps({"text": text, "sampling_params": {"max_new_tokens": 24, "temperature": 0}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())["output_ids"]
prompts = [f"prompt {i}: the quick brown fox" for i in range(8)]
same = sum(gen(31600, p) == gen(31601, p) for p in prompts)
print(f"two-node (GPU ranks) vs one process: identical greedy outputs {same}/{len(prompts)}")
raise SystemExit(0 if same == len(prompts) else 1)
PY
  grep -c "DP1\] Prefill batch" "$OUT/mn_node1.log" | sed 's/^/node 1 prefill batches: /'
else
  echo "two-node server failed"; tail -n 5 "$OUT/mn_node0.log" "$OUT/mn_node1.log"; rc=1
fi
kill -TERM $N0 $SINGLE 2>/dev/null
for _ in $(seq 30); do kill -0 $N1 2>/dev/null || break; sleep 0.5; done
kill -0 $N1 2>/dev/null && { echo "node 1 did not exit after node 0 stopped"; rc=1; kill -9 $N1; }
wait
exit $rc
