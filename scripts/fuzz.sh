#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/<name>_fuzz.cpp) in build-fuzz/ with clang + ASan + UBSan and
# runs each for FUZZ_SECONDS (default 60) from its seed corpus (fuzz/corpus/<name>/). Fails if any
# target finds a crash, a leak, a timeout (FUZZ_TIMEOUT s for one input, default 10) or an
# out-of-memory (FUZZ_RSS_MB, default 2048). The failing input is kept under
# build-fuzz/artifacts/<name>/; reproduce with `build-fuzz/fuzz/<name>_fuzz <that file>`.
#
#   scripts/fuzz.sh                       # all targets, 60 s each
#   FUZZ_SECONDS=30 scripts/fuzz.sh sse_parser http_request
#
# New inputs that reach new code go to build-fuzz/corpus/<name>/ (kept between local runs; the
# committed seeds stay small). A summary (executions, exec/s, coverage edges per target) is
# printed at the end and written to build-fuzz/fuzz_summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${FUZZ_BUILD_DIR:-build-fuzz}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-10}
FUZZ_RSS_MB=${FUZZ_RSS_MB:-2048}
JOBS=${JOBS:-$(nproc)}

if (($#)); then
  targets=("$@")
else
  targets=()
  for f in fuzz/*_fuzz.cpp; do
    n=$(basename "$f" .cpp)
    targets+=("${n%_fuzz}")
  done
fi

if [[ ${FUZZ_BUILD:-1} == 0 ]]; then
  :  # FUZZ_BUILD=0: run the targets as built
elif [[ ! -f $BUILD_DIR/build.ninja ]]; then
  # -O1 and line tables only: the usual fuzzing trade-off (fast enough, symbolised stacks).
  cmake -S . -B "$BUILD_DIR" -G Ninja -DPDSERVE_FUZZ=ON -DPDSERVE_CUDA=OFF \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only"
fi
[[ ${FUZZ_BUILD:-1} == 0 ]] || ninja -C "$BUILD_DIR" -j "$JOBS" "${targets[@]/%/_fuzz}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export PDSERVE_SOURCE_DIR=$PWD

summary=$BUILD_DIR/fuzz_summary.txt
printf '%-18s %8s %12s %10s %8s %8s %s\n' target seconds executions exec/s edges corpus result >"$summary"
failed=()
for t in "${targets[@]}"; do
  bin=$BUILD_DIR/fuzz/${t}_fuzz
  work=$BUILD_DIR/corpus/$t
  art=$BUILD_DIR/artifacts/$t/
  log=$BUILD_DIR/fuzz_$t.log
  mkdir -p "$work" "$art"
  echo "fuzz.sh: $t for ${FUZZ_SECONDS}s"
  start=$(date +%s)
  rc=0
  # The first folder receives new inputs; the committed seeds are read only.
  # A fixed seed (FUZZ_SEED, default 1) makes a run repeat the same mutations: a CI failure can be
  # reproduced, and a clean run stays clean until the code or the corpus changes.
  "$bin" -seed="${FUZZ_SEED:-1}" -max_total_time="$FUZZ_SECONDS" -timeout="$FUZZ_TIMEOUT" -rss_limit_mb="$FUZZ_RSS_MB" \
    -artifact_prefix="$art" -print_final_stats=1 "$work" "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  secs=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  edges=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  files=$(find "$work" -type f | wc -l)
  result=ok
  if ((rc != 0)); then
    result="FAILED (rc $rc, see $log and $art)"
    failed+=("$t")
    grep -E 'ERROR: |SUMMARY: |runtime error|Test unit written' "$log" | head -5 || true
  fi
  printf '%-18s %8s %12s %10s %8s %8s %s\n' "$t" "$secs" "${execs:-?}" "${rate:-?}" "${edges:-?}" "$files" "$result" | tee -a "$summary"
done
echo
cat "$summary"
if ((${#failed[@]})); then
  echo "fuzz.sh: failures in: ${failed[*]}" >&2
  exit 1
fi
