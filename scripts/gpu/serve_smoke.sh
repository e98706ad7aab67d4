#!/usr/bin/env bash
# Runs on a GPU machine after scripts/gpu/run_gpu_checks.sh has unpacked the binaries (the device
# tool carries .devpack and the model folders' tokenizer files):
#  1. `pdserve generate` on the tiny model, --device cuda against --device cpu (greedy ids);
#  2. `pdserve serve` on mini-deepseek-v3 (DeepSeek-V3's real layer shapes, 4 layers, dummy FP8
#     weights) on one GPU: concurrent /generate requests, and the log must show CUDA graphs in use;
#     also while the expert distribution recorder records (graphs-metrics: the tok/s beside the
#     graphs mode's is the cost of counting experts on the device).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/pdserve-gpu-out}
BIN=/tmp/pdserve-gpu/bin/pdserve
export LD_LIBRARY_PATH=/tmp/pdserve-gpu/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
rc=0

# SERVE_SKIP_GENERATE=1 skips step 1 (for scripts that only want servers).
[[ ${SERVE_SKIP_GENERATE:-0} == 1 ]] || {
echo "== generate: tiny model, cuda vs cpu"
for dev in cpu cuda; do
  $BIN generate --model-path models/tiny-deepseek-v3 --load-format dummy --device $dev --max-new-tokens 24 \
    --input-ids-file models/tiny-deepseek-v3/example_prompts.json --output-json "$OUT/generate_$dev.json" \
    > "$OUT/generate_$dev.log" 2>&1 || { echo "generate --device $dev failed"; tail -5 "$OUT/generate_$dev.log"; rc=1; }
done
python3 - "$OUT" <<'PY' || rc=1
import json, sys
out = sys.argv[1]
a = json.load(open(f"{out}/generate_cpu.json"))["outputs"]
b = json.load(open(f"{out}/generate_cuda.json"))["outputs"]
same = sum(x["output_ids"] == y["output_ids"] for x, y in zip(a, b))
prefix = [next((i for i, (p, q) in enumerate(zip(x["output_ids"], y["output_ids"])) if p != q), len(x["output_ids"])) for x, y in zip(a, b)]
print(f"identical sequences: {same}/{len(a)}; common prefix lengths: {prefix}")
PY
}

# One server per mode: CUDA graphs with device sampling (the default), the same with sampling on
# the host (PDSERVE_HOST_SAMPLING=1), the same with --enable-expert-distribution-metrics (recording
# from startup, a balancedness line per pass), then --disable-cuda-graph; SERVE_MODES picks a subset,
# SERVE_EXTRA adds server flags (e.g. "--page-size 64") and SERVE_TAG names that run's files. Each
# mode writes the output ids of the 32 concurrent and 8 sequential requests to
# $OUT/serve_ids_<mode><tag>.json.
PORT=31555
for mode in ${SERVE_MODES:-graphs graphs-host-sampling graphs-metrics eager}; do
  echo "== serve: mini-deepseek-v3 on one GPU ($mode)"
  extra=""
  [[ $mode == eager ]] && extra="--disable-cuda-graph"
  [[ $mode == graphs-metrics ]] && extra="--enable-expert-distribution-metrics"
  host_sampling=0
  [[ $mode == graphs-host-sampling ]] && host_sampling=1
  LOG="$OUT/serve_mini_$mode${SERVE_TAG:-}.log"
  mkdir -p "$OUT/prof"
  SGLANG_TORCH_PROFILER_DIR="$OUT" PDSERVE_HOST_SAMPLING=$host_sampling $BIN serve --model-path models/mini-deepseek-v3 --load-format dummy --port $PORT --decode-log-interval 4 \
    --max-running-requests 64 --context-length 4096 --chunked-prefill-size 4096 --max-prefill-tokens 8192 $extra ${SERVE_EXTRA:-} \
    > "$LOG" 2>&1 &
  PID=$!
  for i in $(seq 1 ${SERVE_WAIT:-300}); do
    grep -q "fired up" "$LOG" && break
    kill -0 $PID 2>/dev/null || break
    sleep 1
  done
  grep -E "Load weight|KV Cache|Capture cuda graph|max_total_num_tokens|fired up" "$LOG" | cut -c1-220
  python3 - $PORT "$OUT/serve_ids_$mode${SERVE_TAG:-}.json" <<'PY' || rc=1
import json, sys, time, urllib.request, concurrent.futures as cf
port = sys.argv[1]
def gen(i, n=48):
    body = json.dumps({"text": f"Request {i}: tell me about expert parallelism.",
                       "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=body, headers={"Content-Type": "application/json"})
    t = time.time()
    with urllib.request.urlopen(req, timeout=300) as r:
        j = json.loads(r.read())
    return j, time.time() - t
gen(0, 4)  # warm-up
_, one = gen(1)
print(f"one request, 48 tokens: {one:.3f} s ({48 / one:.1f} tok/s)")
t0 = time.time()
with cf.ThreadPoolExecutor(32) as ex:
    res = list(ex.map(gen, range(32)))
wall = time.time() - t0
ok = all(j["meta_info"]["completion_tokens"] == 48 for j, _ in res)
print(f"32 concurrent requests x 48 tokens: all complete={ok}, wall {wall:.2f} s, {32 * 48 / wall:.1f} tok/s")
# Eight more one at a time: the same batch shapes in every run, so two runs' ids must be equal
# wherever only a kernel's load path differs (e.g. --page-size 64's TMA tiles).
seq = [gen(100 + i)[0]["output_ids"] for i in range(8)]
# The same eight prompts' first-token top-5 log-probabilities (to tell a near-tie from a real
# difference when two runs' greedy ids differ).
def first_top(i):
    body = json.dumps({"text": f"Request {100 + i}: tell me about expert parallelism.", "return_logprob": True, "top_logprobs_num": 5,
                       "sampling_params": {"max_new_tokens": 1, "temperature": 0}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return [[t[0], t[1]] for t in json.loads(r.read())["meta_info"]["output_top_logprobs"][0]]
try:
    tops = [first_top(i) for i in range(8)]
except Exception as e:
    print(f"first-token logprobs unavailable: {e}")
    tops = []
json.dump({"concurrent": [j["output_ids"] for j, _ in res], "sequential": seq, "first_top": tops}, open(sys.argv[2], "w"))
sys.exit(0 if ok else 1)
PY
  grep "Decode batch" "$LOG" | tail -2 | cut -c1-240
  if [[ $mode == graphs ]]; then
    # A 5-step profile while 16 requests decode: the trace must hold CUPTI kernel records.
    python3 - $PORT "$OUT/prof" <<'PY' || rc=1
import glob, gzip, json, os, sys, threading, time, urllib.request
port, out = sys.argv[1], sys.argv[2]
def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r: return r.read()
ts = [threading.Thread(target=post, args=("/generate", {"text": f"profile {i}", "sampling_params": {"max_new_tokens": 64, "temperature": 0, "ignore_eos": True}})) for i in range(16)]
for t in ts: t.start()
time.sleep(0.05)
post("/start_profile", {"num_steps": 5, "output_dir": out})
for t in ts: t.join()
time.sleep(1)
files = glob.glob(os.path.join(out, "*.trace.json.gz"))
ev = json.load(gzip.open(files[0]))["traceEvents"] if files else []
cats = {}
for e in ev: cats[e.get("cat")] = cats.get(e.get("cat"), 0) + 1
print(f"profile: {len(files)} trace file(s), events by category: {cats}")
k = [e for e in ev if e.get("cat") == "kernel"]
if k: print("  e.g. kernel", k[0]["name"][:80], f"{k[0].get('dur')} us")
sys.exit(0 if k else 1)
PY
  fi
  if [[ $mode != eager ]]; then
    grep -q "cuda graph: True" "$LOG" || { echo "no decode batch ran with a CUDA graph"; rc=1; }
  fi
  if [[ $mode == graphs-metrics ]]; then
    grep "\[Expert Balancedness\] forward_pass_id" "$LOG" | tail -1 | cut -c1-240
    grep -q "\[Expert Balancedness\] forward_pass_id" "$LOG" || { echo "no per-pass balancedness line"; rc=1; }
  fi
  kill -TERM $PID; wait $PID
  echo "serve exit code: $?"
done
exit $rc
