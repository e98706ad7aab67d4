#!/usr/bin/env bash
# The main job (for now): set up, build, then generate with the built-in tiny DeepSeek-V3
# (dummy weights) on a batch of prompts, printing the generated ids and tokens/s.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
exec build/pdserve generate --model-path models/tiny-deepseek-v3 --load-format dummy \
  --input-ids-file models/tiny-deepseek-v3/example_prompts.json --max-new-tokens 32 --ignore-eos \
  --output-json build/generate_output.json "$@"
