#!/usr/bin/env bash
# Issue 5's whole check in one device call (one GPU): the GPU tests, the kernel benchmarks, the
# PyTorch eager baseline layer, then `pdserve serve` on mini-deepseek-v3 (scripts/gpu/serve_smoke.sh).
# Carry .devpack (scripts/gpu/pack.sh) and models/{tiny,mini}-deepseek-v3/tokenizer*.json.
# Every log goes into one archive, $OUT/acceptance.tgz (the device tool brings back at most 8
# files); BUDGET_S (560) bounds the whole run, and the archive is written even when a step hangs.
set -uo pipefail
cd "$(dirname "$0")/../.."
DEST=${OUT:-/tmp/pdserve-acceptance}
mkdir -p "$DEST"
export OUT=/tmp/acceptance
rm -rf "$OUT" && mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-560}
START=$(date +%s)
elapsed() { echo $(($(date +%s) - START)); }
left() { local l=$((BUDGET_S - $(elapsed))); echo $((l > 5 ? l : 5)); }
step() { echo "[$(elapsed) s] $*" | tee -a "$OUT/steps.log"; }
pack() { tar -C "$(dirname "$OUT")" -czf "$DEST/acceptance.tgz" "$(basename "$OUT")"; }
# Whatever happens, an archive exists shortly before the device tool's limit. (The sleep's pid is
# kept: killing only the subshell leaves the sleep running, and the device call waits for it.)
(sleep $((BUDGET_S + 10)) & echo $! > "$OUT/.watchdog_sleep"; wait; pack) &
WATCHDOG=$!

# TEST_GROUPS: gtest filters run one after another, each under its own timeout, so a kernel that
# hangs in one group costs only that group (default: one group, every test).
read -r -a groups <<< "${TEST_GROUPS:-*}"  # (read, not word splitting: no globbing of '*')
i=0
for f in "${groups[@]}"; do
  i=$((i + 1))
  GTEST_FILTER=$f TEST_TIMEOUT=${TEST_TIMEOUT:-300} scripts/gpu/run_gpu_checks.sh > "$OUT/checks$i.log" 2>&1
  step "gpu tests group $i ($f) rc=$?"
  grep -E "^\[  (PASSED|FAILED) |tests from .* ran|H100|H200" "$OUT/checks$i.log" | head -20
done
export LD_LIBRARY_PATH=/tmp/pdserve-gpu/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
# A BENCHES entry VAR=value:bench runs the bench with that variable set (log bench-value.log).
for entry in ${BENCHES:-attention_bench gemm_bench small_ops_bench}; do
  b=${entry##*:}
  log=$b
  if [[ $entry == *=*:* ]]; then var=${entry%%:*}; log="$b-${var#*=}"; else var=""; fi
  env $var timeout $(($(left) < 90 ? $(left) : 90)) /tmp/pdserve-gpu/bin/$b > "$OUT/$log.log" 2>&1
  step "$log rc=$?"
  if [[ $b == prefill_layer_bench ]]; then  # its PyTorch eager counterpart, same card and run
    timeout $(($(left) < 60 ? $(left) : 60)) python3 bench/gpu/torch_layer_ref.py --prefill > "$OUT/torch_prefill_layer_ref.log" 2>&1
    step "torch prefill layer rc=$?"
  fi
done
timeout $(($(left) < 60 ? $(left) : 60)) python3 bench/gpu/torch_layer_ref.py > "$OUT/torch_layer_ref.log" 2>&1
step "torch baseline rc=$?"
SERVE_MODES=${SERVE_MODES:-graphs eager graphs-metrics} SERVE_WAIT=150 timeout "$(left)" scripts/gpu/serve_smoke.sh > "$OUT/serve.log" 2>&1
step "serve smoke rc=$?"
grep -vE '^\[ +(RUN|OK) ' "$OUT/serve.log" | tail -40
kill $WATCHDOG 2>/dev/null
kill "$(cat "$OUT/.watchdog_sleep" 2>/dev/null)" 2>/dev/null
rm -f "$OUT/.watchdog_sleep"
pack
ls -la "$DEST"
