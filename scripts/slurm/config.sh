# shellcheck shell=bash disable=SC2034  # read by the scripts that source it
# The one configuration of the SLURM scripts (docs/cluster.md). Edit the defaults here, or export
# a variable of the same name before running a script: the environment wins.
# Sourced by every script (through lib.sh); plain assignments only.

SLURM_SCRIPTS_DIR=${SLURM_SCRIPTS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
REPO_DIR=${REPO_DIR:-$(cd "$SLURM_SCRIPTS_DIR/../.." && pwd)}

# --- what runs -------------------------------------------------------------------------------
PDSERVE=${PDSERVE:-$REPO_DIR/build/pdserve}          # the binary every node runs (shared file system)
BUILD_DIR=${BUILD_DIR:-$(dirname "$PDSERVE")}        # 0.prepare_env.sh builds here when PDSERVE is missing
CMAKE_ARGS=${CMAKE_ARGS:--DCMAKE_BUILD_TYPE=Release}
MODEL_PATH=${MODEL_PATH:-$REPO_DIR/models/deepseek-v3}
LOAD_FORMAT=${LOAD_FORMAT:-auto}                     # auto | safetensors | dummy
DEVICE=${DEVICE:-auto}                               # auto | cuda | cpu
SERVE_HOST=${SERVE_HOST:-0.0.0.0}                    # what the servers and the router bind
EXTRA_SERVE_ARGS=${EXTRA_SERVE_ARGS:-}               # appended to every `pdserve serve`

# --- allocation (1.salloc.sh) -----------------------------------------------------------------
JOB_NAME=${JOB_NAME:-pdserve-pd}
PARTITION=${PARTITION:-}                             # empty: the cluster's default partition
ACCOUNT=${ACCOUNT:-}
TIME_LIMIT=${TIME_LIMIT:-4:00:00}
GPUS_PER_NODE=${GPUS_PER_NODE:-}                     # e.g. 8 (H100) or 4 (GB200); empty: none asked
SALLOC_EXTRA=${SALLOC_EXTRA:-}                       # e.g. "--segment=14 --mem 0"

# --- layout: prefill groups, then the decode group; the router runs on the first node --------
PREFILL_GROUPS=${PREFILL_GROUPS:-1}                  # 1..3 prefill servers (the router balances them)
PREFILL_NODES_PER_GROUP=${PREFILL_NODES_PER_GROUP:-2}
DECODE_NODES=${DECODE_NODES:-12}
PREFILL_DP_SIZE=${PREFILL_DP_SIZE:-8}                # DP ranks of one prefill group (= its TP size)
DECODE_DP_SIZE=${DECODE_DP_SIZE:-48}                 # DP ranks of the decode group (= its TP size)
PREFILL_EXTRA_ARGS=${PREFILL_EXTRA_ARGS:-}
DECODE_EXTRA_ARGS=${DECODE_EXTRA_ARGS:-}
EXPERT_RECORDER_MODE=${EXPERT_RECORDER_MODE:-}      # "stat" for z.1/z.2 (decode records experts)

# --- ports: group k (prefill groups 0.., then decode) uses BASE + k * GROUP_PORT_STRIDE.
# On a real cluster every group head is another host, so the stride can be 0 (the published
# ports); when group heads share an address (the test cluster) it must be large enough.
SERVER_PORT=${SERVER_PORT:-30000}
BOOTSTRAP_PORT=${BOOTSTRAP_PORT:-8991}
DIST_INIT_PORT=${DIST_INIT_PORT:-5757}
GROUP_PORT_STRIDE=${GROUP_PORT_STRIDE:-0}
ROUTER_PORT=${ROUTER_PORT:-7000}

# --- benchmark (6.) and the measurement (7.-9.) -----------------------------------------------
NUM_PROMPTS=${NUM_PROMPTS:-135168}
MAX_CONCURRENCY=${MAX_CONCURRENCY:-135168}
INPUT_LEN=${INPUT_LEN:-1000}
OUTPUT_LEN=${OUTPUT_LEN:-1000}
TARGET_RUNNING=${TARGET_RUNNING:-}                   # empty: min(NUM_PROMPTS, MAX_CONCURRENCY)
SLOW_DOWN_TIME=${SLOW_DOWN_TIME:-180}                # seconds every decode batch sleeps in the fill
PROFILE_STEPS=${PROFILE_STEPS:-5}

# --- waits (seconds) ---------------------------------------------------------------------------
READY_TIMEOUT=${READY_TIMEOUT:-1800}
FILL_TIMEOUT=${FILL_TIMEOUT:-3600}
PROFILE_TIMEOUT=${PROFILE_TIMEOUT:-600}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-21600}

# --- where files go (a shared file system on a real cluster) -----------------------------------
WORK_DIR=${WORK_DIR:-$HOME/pdserve-slurm}
NODE_LIST_ENV=${NODE_LIST_ENV:-$WORK_DIR/env/node_list_env.sh}   # written by 2.get_node_list_env.sh
LOG_ROOT=${LOG_ROOT:-$WORK_DIR/logs}                             # one folder per run below it
