#!/usr/bin/env bash
# GPU expert parallelism with the ranks sharing one GPU, after scripts/gpu/run_gpu_checks.sh has
# unpacked the binaries (carry .devpack and the model folders' tokenizer files):
#  1. the EP model tests, the four-rank one included (disabled in the default run), with the
#     device allocation log on: any cudaMalloc or free made while ranks spin shows up there, and a
#     stalled pass prints where each rank's host thread is;
#  2. `pdserve serve --tp-size 2 --dp-size 2 --enable-dp-attention --moe-a2a-backend deepep`
#     (PDSERVE_GPU_EP=1) on mini-deepseek-v3 beside one GPU rank (eager), the EP server with
#     decode CUDA graphs and eagerly (EP_MODES, default "graphs eager"), through
#     scripts/gpu/serve_smoke.sh; the greedy ids of the sequential requests are compared;
#  3. (EP_PLACEMENT=1, default) the EP server with --ep-num-redundant-experts 2, static and dynamic
#     dispatch (EP_DISPATCH_ALGOS), ids compared with 2;
#  4. (EP_EPLB=1, default) the same with --enable-eplb rebalancing every 20 passes: decode must
#     still replay CUDA graphs (the recorder counts experts inside them), rebalances must happen
#     (weights reloaded into the slots), ids compared with 2.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/pdserve-gpu-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/tmp/pdserve-gpu/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
rc=0

echo "== EP model tests (two and four ranks on one GPU)"
PDSERVE_DEBUG_DEVICE_ALLOC=1 timeout ${EP_TEST_TIMEOUT:-200} /tmp/pdserve-gpu/bin/gpu_tests --gtest_filter='EpModelGpu.*' \
  --gtest_also_run_disabled_tests > "$OUT/ep_model_tests.log" 2>&1 || rc=1
grep -E "^\[ +(OK|FAILED) |stall report|rel L2 .* pass 3 rank 0" "$OUT/ep_model_tests.log" | head -40
echo "device allocations logged while a group lived: $(grep -c 'device-alloc' "$OUT/ep_model_tests.log")"

echo "== serve: one GPU rank, then two EP ranks sharing the GPU (eager)"
# EP_SKIP_ONE=1: skip the one-rank server (its ids from an earlier run already in $OUT).
[[ ${EP_SKIP_ONE:-0} == 1 ]] || SERVE_SKIP_GENERATE=1 SERVE_MODES=eager SERVE_TAG=-one scripts/gpu/serve_smoke.sh || rc=1
EP_MODES=${EP_MODES:-graphs eager}
PDSERVE_GPU_EP=1 PDSERVE_DEBUG_DEVICE_ALLOC=${EP_DEBUG_ALLOC:-1} SERVE_SKIP_GENERATE=1 SERVE_MODES="$EP_MODES" SERVE_TAG=-ep2 \
  SERVE_EXTRA="--tp-size 2 --dp-size 2 --enable-dp-attention --moe-a2a-backend deepep --watchdog-timeout ${EP_WATCHDOG:-40} ${EP_EXTRA:-}" \
  scripts/gpu/serve_smoke.sh || rc=1
for mode in $EP_MODES; do
  LOG="$OUT/serve_mini_$mode-ep2.log"
  echo "-- EP server, $mode"
  grep -E "EP low-latency GPU group|EP normal-mode GPU group|EP rank|Capture cuda graph (bs|end)|timed out|aborted|Traceback|error" "$LOG" | head -14 | cut -c1-300
  echo "device allocations logged by the EP server: $(grep -c 'device-alloc' "$LOG"); after the start-up:"
  awk '/fired up/{f=1} f && /device-alloc/' "$LOG" | head -8
done
if [[ " $EP_MODES " == *" graphs "* && " $EP_MODES " == *" eager "* ]]; then
  python3 - "$OUT/serve_ids_eager-ep2.json" "$OUT/serve_ids_graphs-ep2.json" <<'PY' || rc=1
import json, sys
a, b = (json.load(open(p))["sequential"] for p in sys.argv[1:3])
print(f"EP graphs vs EP eager, sequential greedy requests: identical {sum(x == y for x, y in zip(a, b))}/{len(a)}")
PY
fi
if [[ ${EP_PLACEMENT:-1} == 1 ]]; then
  # Redundant experts (trivial placement: physical 256 and 257 copy logical 0 and 1, on rank 1),
  # with graphs. static: rank 1 sends its tokens for experts 0 and 1 to its own copies; dynamic:
  # every rank draws a copy per entry on the device, afresh on each graph replay.
  for algo in ${EP_DISPATCH_ALGOS:-static dynamic}; do
    tag=-ep2-redundant; [[ $algo == static ]] || tag=-ep2-redundant-$algo
    echo "== serve: two EP ranks with 2 redundant experts, --ep-dispatch-algorithm $algo (graphs)"
    PDSERVE_GPU_EP=1 SERVE_SKIP_GENERATE=1 SERVE_MODES=graphs SERVE_TAG=$tag \
      SERVE_EXTRA="--tp-size 2 --dp-size 2 --enable-dp-attention --moe-a2a-backend deepep --watchdog-timeout ${EP_WATCHDOG:-40} --ep-num-redundant-experts 2 --ep-dispatch-algorithm $algo ${EP_EXTRA:-}" \
      scripts/gpu/serve_smoke.sh || rc=1
    grep -E "Expert placement|DeepEP MoE|timed out|aborted|error" "$OUT/serve_mini_graphs$tag.log" | head -6 | cut -c1-300
    python3 - "$OUT/serve_ids_graphs-ep2.json" "$OUT/serve_ids_graphs$tag.json" "$algo" <<'PY' || rc=1
import json, sys
try:
    a, b = (json.load(open(p))["sequential"] for p in sys.argv[1:3])
except Exception as e:
    print(f"no ids to compare: {e}"); sys.exit(1)
print(f"EP with 2 redundant experts ({sys.argv[3]}) vs EP, sequential greedy requests: identical {sum(x == y for x, y in zip(a, b))}/{len(a)}")
PY
  done
fi
if [[ ${EP_EPLB:-1} == 1 ]]; then
  tag=-ep2-eplb
  echo "== serve: two EP ranks, 2 redundant experts, --enable-eplb every 20 passes (graphs)"
  PDSERVE_GPU_EP=1 SERVE_SKIP_GENERATE=1 SERVE_MODES=graphs SERVE_TAG=$tag \
    SERVE_EXTRA="--tp-size 2 --dp-size 2 --enable-dp-attention --moe-a2a-backend deepep --watchdog-timeout ${EP_WATCHDOG:-40} --ep-num-redundant-experts 2 --enable-eplb --eplb-rebalance-num-iterations 20 ${EP_EXTRA:-}" \
    scripts/gpu/serve_smoke.sh || rc=1
  grep -E "EPLBManager\] rebalance (start|end)|Expert Balancedness|timed out|aborted|error" "$OUT/serve_mini_graphs$tag.log" | head -6 | cut -c1-300
  grep -q "rebalance end" "$OUT/serve_mini_graphs$tag.log" || { echo "no online rebalance completed"; rc=1; }
  python3 - "$OUT/serve_ids_graphs-ep2.json" "$OUT/serve_ids_graphs$tag.json" <<'PY' || rc=1
import json, sys
try:
    a, b = (json.load(open(p))["sequential"] for p in sys.argv[1:3])
except Exception as e:
    print(f"no ids to compare: {e}"); sys.exit(1)
print(f"EP with online EPLB vs EP, sequential greedy requests: identical {sum(x == y for x, y in zip(a, b))}/{len(a)}")
PY
fi
python3 - "$OUT/serve_ids_eager-one.json" "$OUT/serve_ids_eager-ep2.json" <<'PY' || rc=1
import json, sys
try:
    a, b = (json.load(open(p))["sequential"] for p in sys.argv[1:3])
except Exception as e:
    print(f"no ids to compare: {e}"); sys.exit(1)
prefix = [next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), len(x)) for x, y in zip(a, b)]
print(f"EP (2 ranks) vs one rank, sequential greedy requests: identical {sum(x == y for x, y in zip(a, b))}/{len(a)}; common prefix lengths {prefix}")
ta, tb = (json.load(open(p)).get("first_top", []) for p in sys.argv[1:3])
for i, (x, y) in enumerate(zip(ta, tb)):
    lx, ly = {t[1]: t[0] for t in x}, {t[1]: t[0] for t in y}
    shared = [t for t in lx if t in ly]
    diff = max((abs(lx[t] - ly[t]) for t in shared), default=float("nan"))
    print(f"  prompt {i}: top-1 one rank {x[0][1]} ({x[0][0]:.4f}, next {x[1][0]:.4f}), EP {y[0][1]} ({y[0][0]:.4f}); "
          f"{len(shared)}/5 of the top-5 shared, max |logprob diff| {diff:.2e}")
PY
exit $rc
