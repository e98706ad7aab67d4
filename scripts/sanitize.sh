#!/usr/bin/env bash
# Sanitizer builds (g++, PDSERVE_CUDA=OFF):
#   asan: build-asan/ with AddressSanitizer + UndefinedBehaviorSanitizer (leak checking on, any
#         UB finding aborts), running every unit and e2e test (ctest -LE gpu), as the README's
#         test command does in build/. ASAN_SCOPE=ci (what .ci/run runs, to stay within its time
#         limit) leaves out the e2e suites in ASAN_CI_SKIP, those whose time goes to process
#         start-up, fixed-length load and scripts rather than to parsing or fault paths; run the
#         default (all) before merging changes to parsers or memory ownership, and nightly.
#   tsan: build-tsan/ with ThreadSanitizer, running the unit tests of the threaded modules:
#         scheduler, http, parallel, moe (EP exchanges, the EPLB manager, recorder metrics), and
#         router/disagg where present.
# Each prints its wall time; a failing test or a sanitizer report fails the script.
#
#   scripts/sanitize.sh            # both
#   scripts/sanitize.sh tsan       # one of them
#   CTEST_ARGS="-R Radix" scripts/sanitize.sh asan
#   ASAN_SCOPE=ci scripts/sanitize.sh asan
#   TSAN_MODULES=http scripts/sanitize.sh tsan
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
modes=("$@")
((${#modes[@]})) || modes=(asan tsan)

configure() {  # dir, sanitizer flags
  local dir=$1 flags=$2
  if [[ ! -f $dir/build.ninja ]]; then
    # -O1 keeps the tests fast enough under the sanitizers; -g1 gives file:line in reports.
    cmake -S . -B "$dir" -G Ninja -DPDSERVE_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 $flags -fno-omit-frame-pointer" \
      "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1 $flags -fno-omit-frame-pointer" \
      "-DCMAKE_EXE_LINKER_FLAGS=$flags" "-DCMAKE_SHARED_LINKER_FLAGS=$flags"
  fi
}

run_asan() {
  local dir=build-asan start=$SECONDS
  configure "$dir" "-fsanitize=address,undefined -fno-sanitize-recover=undefined"
  cmake --build "$dir" -j "$JOBS"
  local built=$SECONDS
  local select=(-LE gpu)
  case ${ASAN_SCOPE:-all} in
    all) ;;
    ci) local skip=${ASAN_CI_SKIP:-multinode_e2e soak_e2e slurm_e2e launch_e2e local_scripts_e2e}
        select+=(-E "^(${skip// /|})\$") ;;
    *) echo "sanitize.sh: unknown ASAN_SCOPE '$ASAN_SCOPE' (all, ci)" >&2; return 2 ;;
  esac
  # exitcode 23 is ASan's own; a leak at exit of a server the e2e tests started fails them too.
  # The e2e suites' own deadlines (KV transfer timeouts, waits for pages to come back) stretch by
  # PDSERVE_TEST_TIME_SCALE: instrumented servers run several times slower.
  export PDSERVE_TEST_TIME_SCALE=${PDSERVE_TEST_TIME_SCALE:-4}
  # scripts/lsan.supp: a block libzmq itself allocates and, at shutdown, sometimes fails to free.
  LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/scripts/lsan.supp} \
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    ctest --test-dir "$dir" --output-on-failure -j "$JOBS" "${select[@]}" ${CTEST_ARGS:-}
  echo "sanitize.sh: asan+ubsan (${ASAN_SCOPE:-all}): build $((built - start)) s, tests $((SECONDS - built)) s"
}

run_tsan() {
  local dir=build-tsan start=$SECONDS
  configure "$dir" "-fsanitize=thread"
  local tests=()
  for m in ${TSAN_MODULES:-scheduler http parallel router disagg moe}; do
    compgen -G "tests/$m/*_test.cpp" >/dev/null && tests+=("${m}_tests")
  done
  cmake --build "$dir" -j "$JOBS" --target "${tests[@]}"
  local built=$SECONDS
  # libgomp is not built with TSan, so its worker threads would be reported as races: the CPU
  # kernels run on one OpenMP thread here (the code under test is our own threads, not OpenMP's).
  export OMP_NUM_THREADS=1
  # scripts/tsan.supp: libzmq's I/O thread reading our zero-copy buffers (synchronised inside the
  # uninstrumented library).
  export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/scripts/tsan.supp}
  local failed=()
  for t in "${tests[@]}"; do
    local t0=$SECONDS
    if "$dir/tests/$t" --gtest_brief=1 ${GTEST_ARGS:-}; then
      echo "sanitize.sh: tsan $t passed in $((SECONDS - t0)) s"
    else
      echo "sanitize.sh: tsan $t FAILED after $((SECONDS - t0)) s" >&2
      failed+=("$t")
    fi
  done
  echo "sanitize.sh: tsan: build $((built - start)) s, tests $((SECONDS - built)) s"
  ((${#failed[@]} == 0)) || { echo "sanitize.sh: tsan failures: ${failed[*]}" >&2; return 1; }
}

for m in "${modes[@]}"; do
  case $m in
    asan) run_asan ;;
    tsan) run_tsan ;;
    *) echo "sanitize.sh: unknown mode '$m' (asan, tsan)" >&2; exit 2 ;;
  esac
done
