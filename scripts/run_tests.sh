#!/usr/bin/env bash
# The test command: set up, build, run every test that needs no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -j "$(nproc)" -LE gpu "$@"
