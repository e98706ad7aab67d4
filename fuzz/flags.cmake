# Compile flags of a PDSERVE_FUZZ build tree (included by the top-level CMakeLists.txt before
# src/): coverage for libFuzzer plus ASan and UBSan on every translation unit, so a bug in a
# library a target links is found as well as one in the target itself. UBSan findings abort
# (no recovery) so that the fuzzer records them as crashes.
if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "PDSERVE_FUZZ needs clang (libFuzzer): configure with -DCMAKE_CXX_COMPILER=clang++ "
                      "-DCMAKE_C_COMPILER=clang (scripts/fuzz.sh does)")
endif()
if(PDSERVE_CUDA)
  message(FATAL_ERROR "PDSERVE_FUZZ builds CPU code only: add -DPDSERVE_CUDA=OFF")
endif()
set(PDSERVE_FUZZ_SANITIZERS -fsanitize=address,undefined -fno-sanitize-recover=undefined)
add_compile_options(-fsanitize=fuzzer-no-link ${PDSERVE_FUZZ_SANITIZERS} -fno-omit-frame-pointer)
add_link_options(${PDSERVE_FUZZ_SANITIZERS})
