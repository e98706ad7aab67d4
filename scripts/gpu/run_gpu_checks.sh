#!/usr/bin/env bash
# Runs on a GPU machine (through the device tool, with .devpack carried): unpacks the binaries
# packed by scripts/gpu/pack.sh, runs the GPU tests, then any benchmark passed as arguments.
# Output files go to $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/pdserve-gpu-out}
mkdir -p "$OUT" /tmp/pdserve-gpu
tar -C /tmp/pdserve-gpu -xJf .devpack/pdserve-gpu.tar.xz
export LD_LIBRARY_PATH=/tmp/pdserve-gpu/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
rc=0
# GPU_TEST_WRAPPER, e.g. "compute-sanitizer --tool memcheck --error-exitcode 7", runs the tests under it.
timeout ${TEST_TIMEOUT:-240} ${GPU_TEST_WRAPPER:-} /tmp/pdserve-gpu/bin/gpu_tests ${GTEST_FILTER:+--gtest_filter=$GTEST_FILTER} --gtest_output=xml:"$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log" | grep -vE '^\[ +(RUN|OK) '
# (PIPESTATUS read at once: after "|| true" it would be true's, and a timed-out run would pass.)
test_status=${PIPESTATUS[0]}
if [[ $test_status -ne 0 ]]; then
  rc=1
  [[ $test_status -eq 124 ]] && echo "gpu_tests: TIMED OUT after ${TEST_TIMEOUT:-240} s (the log above ends where it stopped)"
fi
if [[ ${RUN_TORCH:-0} == 1 ]]; then
  echo "== PyTorch eager baseline"
  timeout ${BENCH_TIMEOUT:-150} python3 bench/gpu/torch_layer_ref.py 2>&1 | tee "$OUT/torch_layer_ref.log" || rc=1
fi
for bench in "$@"; do
  echo "== $bench"
  timeout ${BENCH_TIMEOUT:-150} /tmp/pdserve-gpu/bin/$bench 2>&1 | tee "$OUT/$bench.log" || rc=1
  # The same prefill layer in PyTorch eager, on the same card in the same run.
  if [[ $bench == prefill_layer_bench ]]; then
    echo "== PyTorch eager prefill layer"
    timeout ${BENCH_TIMEOUT:-150} python3 bench/gpu/torch_layer_ref.py --prefill 2>&1 | tee "$OUT/torch_prefill_layer_ref.log" || rc=1
  fi
done
exit $rc
