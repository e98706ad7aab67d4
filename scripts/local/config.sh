# shellcheck shell=bash disable=SC2034  # read by the scripts that source it
# The one configuration of the one-machine scripts (docs/repro.md, "The same steps as scripts").
# Edit the defaults here, or export a variable of the same name before running a script: the
# environment wins. Sourced by every script (through lib.sh); plain assignments only.

LOCAL_SCRIPTS_DIR=${LOCAL_SCRIPTS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
REPO_DIR=${REPO_DIR:-$(cd "$LOCAL_SCRIPTS_DIR/../.." && pwd)}

# --- what runs -------------------------------------------------------------------------------
PDSERVE=${PDSERVE:-$REPO_DIR/build/pdserve}
MODEL_PATH=${MODEL_PATH:-$REPO_DIR/models/tiny-deepseek-v3}
# Random weights when the folder has none (the tiny and mini models ship only config + tokenizer).
if [[ -z ${LOAD_FORMAT:-} ]]; then
  LOAD_FORMAT=auto
  compgen -G "$MODEL_PATH/*.safetensors" >/dev/null || LOAD_FORMAT=dummy
fi
DEVICE=${DEVICE:-auto}                               # auto | cuda | cpu
HOST=${HOST:-127.0.0.1}
EXTRA_SERVE_ARGS=${EXTRA_SERVE_ARGS:-}               # appended to both `pdserve serve`
PREFILL_EXTRA_ARGS=${PREFILL_EXTRA_ARGS:-}
DECODE_EXTRA_ARGS=${DECODE_EXTRA_ARGS:-}
EXPERT_RECORDER_MODE=${EXPERT_RECORDER_MODE:-}      # "stat" for z.1/z.2 (decode records experts)

# --- ports (one machine: every server needs its own) --------------------------------------------
PREFILL_PORT=${PREFILL_PORT:-30000}
DECODE_PORT=${DECODE_PORT:-30001}
BOOTSTRAP_PORT=${BOOTSTRAP_PORT:-8998}
ROUTER_PORT=${ROUTER_PORT:-8000}

# --- data parallelism: DP ranks of each server (GPUs each, on a GPU machine) --------------------
PREFILL_DP_SIZE=${PREFILL_DP_SIZE:-1}
DECODE_DP_SIZE=${DECODE_DP_SIZE:-1}

# --- benchmark (4.) and the measurement (5.-7.) -------------------------------------------------
NUM_PROMPTS=${NUM_PROMPTS:-32}
MAX_CONCURRENCY=${MAX_CONCURRENCY:-$NUM_PROMPTS}
INPUT_LEN=${INPUT_LEN:-64}
OUTPUT_LEN=${OUTPUT_LEN:-256}
TARGET_RUNNING=${TARGET_RUNNING:-}                   # empty: min(NUM_PROMPTS, MAX_CONCURRENCY)
SLOW_DOWN_TIME=${SLOW_DOWN_TIME:-1}                  # seconds each decode batch sleeps (published: 180)
PROFILE_STEPS=${PROFILE_STEPS:-5}

# --- waits (seconds) ---------------------------------------------------------------------------
READY_TIMEOUT=${READY_TIMEOUT:-300}
FILL_TIMEOUT=${FILL_TIMEOUT:-120}
PROFILE_TIMEOUT=${PROFILE_TIMEOUT:-120}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-600}
STOP_GRACE=${STOP_GRACE:-10}                         # stop_all.sh: SIGTERM, then SIGKILL after this

# --- where files go: logs, traces, pid files of one run -------------------------------------------
RUN_DIR=${RUN_DIR:-$REPO_DIR/local-runs/$(date +%F)}
