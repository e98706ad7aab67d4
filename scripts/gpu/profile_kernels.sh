#!/usr/bin/env bash
# Nsight Compute over one launch of chosen kernels, on a GPU machine (.devpack carried, see
# scripts/gpu/pack.sh): the sections that say what bounds a kernel (speed of light, compute and
# memory workload, warp states, occupancy, scheduler), as text in $OUT/ncu-<name>.log, with the
# headline rows printed.
#
# PROFILES: space-separated entries name:bench:regex[:skip] -- the kernel whose demangled name
# matches regex, in bench (bench/gpu/<bench>), after skipping `skip` matching launches (default
# 3: past the warm-up). Default: the masked wgmma GEMM with 256-column tiles (the first shape of
# grouped_masked_bench: gate|up 4 x 512) and the MLA decode ping-pong core (attention_bench,
# B 256, ctx 2000). Clocks are not locked (--clock-control none), as in the benchmarks.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/pdserve-ncu}
mkdir -p "$OUT" /tmp/pdserve-gpu
[[ -x /tmp/pdserve-gpu/bin/gpu_tests ]] || tar -C /tmp/pdserve-gpu -xJf .devpack/pdserve-gpu.tar.xz
export LD_LIBRARY_PATH=/tmp/pdserve-gpu/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
if [[ -z $NCU ]]; then
  echo "profile_kernels.sh: ncu (Nsight Compute) not found on this machine" >&2
  exit 1
fi
rc=0
# (Demangled template arguments read "<(int)256, ...": the regexes match the parentheses with ".".)
for entry in ${PROFILES:-masked_wgmma_bn256:grouped_masked_bench:masked_wgmma_kernel<.int.256 mla_decode_pingpong:attention_bench:decode_core_pingpong_kernel<.int.7>}; do
  IFS=: read -r name bench regex skip <<< "$entry"
  log="$OUT/ncu-$name.log"
  timeout "${NCU_TIMEOUT:-150}" "$NCU" --clock-control none --kernel-name-base demangled -k "regex:$regex" \
    --launch-skip "${skip:-3}" --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats \
    --section SchedulerStats "/tmp/pdserve-gpu/bin/$bench" > "$log" 2>&1
  status=$?
  # ncu exits 0 when the regex matched nothing; that is a failure here.
  if grep -q "No kernels were profiled" "$log"; then
    status=3
    echo "profile_kernels.sh: no kernel of $bench matched $regex (the log lists the available ones)" >&2
  fi
  echo "== $name ($bench, $regex): rc=$status, $log"
  [[ $status -eq 0 ]] || rc=1
  grep -E "^  [a-z].*\(CUtensorMap|Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|L1/TEX Cache Throughput|L2 Cache Throughput|Achieved Occupancy|Registers Per Thread|No Eligible|Issued Warp Per Scheduler|Warp Cycles Per Issued" "$log" | head -20
done
exit $rc
