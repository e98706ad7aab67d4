#!/usr/bin/env bash
# GPU EP exchange stress, after scripts/gpu/run_gpu_checks.sh has unpacked the binaries:
#  1. bench/gpu/coschedule_probe_bench: do kernels on R streams of one GPU run at the same time
#     (fresh, primed and long-lived streams; see ep_gpu_common.h, PrimedStreams);
#  2. the four-rank dispatch/combine tests (ranks sharing the GPU) EP_STRESS_RUNS times (default 10),
#     each in a fresh process, printing every failure's per-rank report and exchange state.
# A stall that happens in a few percent of runs only shows up here, not in one pass of gpu_tests.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/pdserve-gpu-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/tmp/pdserve-gpu/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
BIN=/tmp/pdserve-gpu/bin
rc=0
echo "== co-scheduling probe"
timeout 120 "$BIN/coschedule_probe_bench" 4 ${EP_PROBE_TRIALS:-300} || rc=1
runs=${EP_STRESS_RUNS:-10} fails=0
echo "== four-rank EP dispatch tests, $runs runs"
for i in $(seq 1 "$runs"); do
  if ! timeout 120 "$BIN/gpu_tests" --gtest_filter="${EP_STRESS_FILTER:-*EpLowLatencyGpu*ep4*:*EpNormalGpu*ep4*}" > "$OUT/ep_stress_$i.log" 2>&1; then
    fails=$((fails + 1))
    grep -E "^  rank [0-9]|blocks per|Failure|FAILED  \]" "$OUT/ep_stress_$i.log" | cut -c1-400 | head -12
  fi
done
echo "four-rank EP dispatch tests: $fails of $runs runs failed"
[[ $fails -eq 0 ]] || rc=1
exit $rc
