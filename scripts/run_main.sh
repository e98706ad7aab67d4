#!/usr/bin/env bash
# The main job: set up, build, then run the published PD reproduction on this machine with the
# built-in tiny DeepSeek-V3 (dummy weights): prefill and decode servers, router, benchmark,
# batch fill (hold by default), profile, and the per-GPU throughput report (docs/repro.md). Extra arguments go to
# `pdserve repro`; the logs, traces and reports land in build/repro-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
exec build/pdserve repro --model-path models/tiny-deepseek-v3 --output-dir build/repro-out "$@"
