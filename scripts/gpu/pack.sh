#!/usr/bin/env bash
# Packs the GPU test and benchmark binaries built here, with the shared libraries they need that
# the GPU machines' image lacks (spdlog, fmt, OpenBLAS, ...), into .devpack/pdserve-gpu.tar.xz.
# The GPU machines cannot install Debian packages, so we build here and run there; the archive
# travels with the device tool's `carry` (see scripts/gpu/run_gpu_checks.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build}
# The GPU tests and every GPU benchmark (bench/gpu/*_bench.*).
BENCHES=$(cd bench/gpu && ls *_bench.cpp *_bench.cu 2>/dev/null | sed 's/\.[^.]*$//' || true)
ninja -C "$BUILD_DIR" gpu_tests $BENCHES >/dev/null
STAGE=$(mktemp -d)
mkdir -p "$STAGE/bin" "$STAGE/lib"
BINS=("$BUILD_DIR/tests/gpu_tests")
# The server binary too (scripts/gpu/serve_smoke.sh), when it builds.
if ninja -C "$BUILD_DIR" pdserve >/dev/null; then BINS+=("$BUILD_DIR/pdserve"); else echo "pack.sh: pdserve did not build; packing without it" >&2; fi
for b in $BENCHES; do BINS+=("$BUILD_DIR/bench/gpu/$b"); done
for b in "${BINS[@]}"; do
  cp "$b" "$STAGE/bin/"
  # Every resolved library except libc/libm/libstdc++/libgcc and CUDA's own (present there).
  # (`|| true`: a binary needing none of them, e.g. a probe linking only cudart, is fine.)
  { ldd "$b" | awk '/=> \//{print $3}' | grep -vE 'libc\.so|libm\.so|libstdc\+\+|libgcc_s|libcuda|libcublas|libcudart|ld-linux' || true; } |
    while read -r lib; do cp -L "$lib" "$STAGE/lib/"; done
done
mkdir -p .devpack
tar -C "$STAGE" -cJf .devpack/pdserve-gpu.tar.xz bin lib
rm -rf "$STAGE"
ls -la .devpack/pdserve-gpu.tar.xz
