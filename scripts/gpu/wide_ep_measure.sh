#!/usr/bin/env bash
# Issue 13's measurement on one host of NGPU GPUs (8, or 4 when no 8-GPU machine is lent):
# DeepSeek-V3's real shapes (models/deepseek-v3/config.json, dummy FP8 weights, LAYERS layers),
# DP attention + EP NGPU, decode in low-latency mode with CUDA graphs, prefill in normal mode, with
# and without EPLB (REDUNDANT redundant experts placed from a recorded distribution).
#
# Steps (STEPS, default "record decode prefill"; state kept in WORK so that separate device calls on
# one warm machine can run one step each):
#   record   a plain EP server with the recorder (stat, unbounded) under the benchmark's prompts;
#            the dump is the placement source of the EPLB runs ($WORK/record/*.json)
#   decode   `pdserve repro` (PD: prefill and decode EP servers on the same GPUs, hold fill to
#            NGPU x REQ_PER_GPU running requests, a 5-step profile, `pdserve analyze`): decode
#            tokens/s per GPU, EPLB off then on
#   prefill  a plain EP server, `pdserve bench` with output length 1 at each of PREFILL_INPUTS:
#            input tokens/s per GPU, EPLB off then on
# Prints the table (also $WORK/wide_ep_table.md, copied to $OUT). After run_gpu_checks.sh has
# unpacked the binaries; a CPU dry run of the whole flow (what CI cannot afford to run, but the
# script's logic is checked with it):
#   DEVICE=cpu MODEL=models/tiny-deepseek-v3 LAYERS= NGPU=2 REQ_PER_GPU=4 INPUT=32 OUTPUT=24 \
#     REDUNDANT=4 PREFILL_INPUTS="32 64" PREFILL_PROMPTS=8 BIN=build-router/pdserve \
#     scripts/gpu/wide_ep_measure.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-/tmp/pdserve-gpu/bin/pdserve}
[[ -x $BIN ]] || BIN=build/pdserve
export LD_LIBRARY_PATH=/tmp/pdserve-gpu/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-models/deepseek-v3}
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
LAYERS=${LAYERS-8}                 # empty: the config's own count
REQ_PER_GPU=${REQ_PER_GPU:-256}
INPUT=${INPUT:-2000}
OUTPUT=${OUTPUT:-100}
REDUNDANT=${REDUNDANT:-32}
PREFILL_INPUTS=${PREFILL_INPUTS:-2000 4000}
PREFILL_PROMPTS=${PREFILL_PROMPTS:-$((NGPU * 16))}
WORK=${WORK:-/tmp/wide-ep}
OUT=${OUT:-$WORK}
STEPS=${STEPS:-record decode prefill}
# METRICS=1 (default): decode also runs --enable-expert-distribution-metrics, so `pdserve analyze`
# reports the profiled steps' expert balancedness (what EPLB buys) beside the throughput; it costs
# one count kernel per MoE layer and step on both runs alike.
METRICS=${METRICS:-1}
mkdir -p "$WORK" "$OUT"
[[ $NGPU -ge 1 ]] || { echo "no GPUs (set NGPU)"; exit 2; }
rc=0

OVERRIDE='{}'
[[ -n $LAYERS ]] && OVERRIDE="{\"num_hidden_layers\": $LAYERS}"
EP_FLAGS="--tp-size $NGPU --enable-dp-attention --moe-a2a-backend deepep"  # repro sets --dp-size itself
EP="$EP_FLAGS --dp-size $NGPU"
COMMON=(--model-path "$MODEL" --load-format dummy --device "$DEVICE" --json-model-override-args "$OVERRIDE")
# Decode holds REQ_PER_GPU requests per rank, each INPUT + OUTPUT tokens; its admission also keeps
# --num-reserved-decode-tokens (512) free per held request, so the fill's target needs room for that.
DECODE_TOKENS=$((REQ_PER_GPU * (INPUT + OUTPUT + 512 + 64)))
export SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK=$REQ_PER_GPU

# serve NAME FLAGS...: starts a server on a free port in the background; sets SERVER_PID, SERVER_URL.
serve() {
  local name=$1; shift
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$BIN" serve "${COMMON[@]}" --port "$port" "$@" > "$WORK/$name.log" 2>&1 &
  SERVER_PID=$!
  SERVER_URL=http://127.0.0.1:$port
  for _ in $(seq 1 ${READY_TIMEOUT:-900}); do
    grep -q "fired up" "$WORK/$name.log" && return 0
    kill -0 $SERVER_PID 2>/dev/null || break
    sleep 1
  done
  echo "$name did not start:"; tail -5 "$WORK/$name.log"; return 1
}
stop() { kill -TERM "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; }
post() { curl -s -X POST -H 'Content-Type: application/json' -d '{}' "$SERVER_URL$1"; echo; }
bench() {  # bench OUTFILE INPUT OUTPUT PROMPTS CONCURRENCY
  "$BIN" bench --backend sglang --base-url "$SERVER_URL" --dataset-name random --random-range-ratio 1 \
    --random-input-len "$2" --random-output-len "$3" --num-prompts "$4" --max-concurrency "$5" \
    --tokenizer "$MODEL" --warmup-requests 1 --output-file "$1" --disable-tqdm
}
eplb_args() {  # the placement flags of "off" | "on"
  [[ $1 == on ]] || return 0
  local dump
  dump=$(ls -S "$WORK"/record/*.json 2>/dev/null | head -1)
  [[ -n $dump ]] || { echo "no recording in $WORK/record (run STEPS=record first)" >&2; return 1; }
  echo "--ep-num-redundant-experts $REDUNDANT --init-expert-location $dump"
}

if [[ " $STEPS " == *" record "* ]]; then
  echo "== record: EP$NGPU server with the recorder, ${PREFILL_PROMPTS} prompts of $INPUT tokens"
  rm -rf "$WORK/record"; mkdir -p "$WORK/record"
  SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR=$WORK/record serve record $EP --expert-distribution-recorder-mode stat \
    --expert-distribution-recorder-buffer-size -1 --max-total-tokens $DECODE_TOKENS || rc=1
  if [[ $rc == 0 ]]; then
    post /start_expert_distribution_record
    bench "$WORK/record_bench.jsonl" "$INPUT" 16 "$PREFILL_PROMPTS" "$PREFILL_PROMPTS" > "$WORK/record_bench.log" 2>&1 || rc=1
    post /stop_expert_distribution_record
    post /dump_expert_distribution_record
    stop
    ls -l "$WORK"/record/*.json || rc=1
  fi
fi

if [[ " $STEPS " == *" decode "* ]]; then
  for eplb in off on; do
    args=$(eplb_args $eplb) || { rc=1; continue; }
    echo "== decode: repro, EP$NGPU, $REQ_PER_GPU requests per GPU, input $INPUT, EPLB $eplb"
    # Target: every rank's batch full. Requests go to ranks by bootstrap_room % DP (random), so
    # half as many again are sent: each rank then gets at least its share (the rest wait, as the
    # published runs' #queue-req does).
    n=$((NGPU * REQ_PER_GPU))
    sent=$((n * 3 / 2))
    rm -rf "$WORK/decode-$eplb"
    "$BIN" repro "${COMMON[@]}" \
      --output-dir "$WORK/decode-$eplb" --num-prompts $sent --max-concurrency $sent --target-running $n \
      --input-len "$INPUT" --output-len "$OUTPUT" --prefill-dp-size "$NGPU" --decode-dp-size "$NGPU" \
      --profile-steps 5 --ready-timeout ${READY_TIMEOUT:-900} --fill-timeout ${FILL_TIMEOUT:-600} \
      --bench-timeout ${BENCH_TIMEOUT:-1800} \
      --prefill-extra-args "$EP_FLAGS --deepep-mode normal --max-total-tokens $((16 * INPUT)) --disable-cuda-graph $args" \
      --decode-extra-args "$EP_FLAGS --deepep-mode low_latency --cuda-graph-bs $REQ_PER_GPU --max-running-requests $n --max-total-tokens $DECODE_TOKENS $args $([[ $METRICS == 1 ]] && echo --enable-expert-distribution-metrics)" \
      > "$WORK/decode-$eplb.log" 2>&1 || { echo "repro failed:"; tail -5 "$WORK/decode-$eplb.log"; rc=1; }
    grep -E "^repro:.*(fill|profile|analysis)|tokens/s" "$WORK/decode-$eplb.log" | tail -4 | cut -c1-200
  done
fi

if [[ " $STEPS " == *" prefill "* ]]; then
  for eplb in off on; do
    args=$(eplb_args $eplb) || { rc=1; continue; }
    echo "== prefill: EP$NGPU server (normal mode), EPLB $eplb"
    # shellcheck disable=SC2086
    serve prefill-$eplb $EP --deepep-mode normal --chunked-prefill-size 16384 --max-prefill-tokens 16384 \
      --max-total-tokens $((PREFILL_PROMPTS * 4096 / NGPU + 16384)) --disable-cuda-graph $args || { rc=1; continue; }
    for len in $PREFILL_INPUTS; do
      rm -f "$WORK/prefill-$eplb-$len.jsonl"
      bench "$WORK/prefill-$eplb-$len.jsonl" "$len" 1 "$PREFILL_PROMPTS" "$PREFILL_PROMPTS" > "$WORK/prefill-$eplb-$len.log" 2>&1 || rc=1
    done
    stop
  done
fi

python3 - "$WORK" "$NGPU" "$PREFILL_INPUTS" "$LAYERS" "$REQ_PER_GPU" "$INPUT" <<'PY' | tee "$WORK/wide_ep_table.md"
import json, os, sys
work, ngpu, lens, layers, req, inp = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4], sys.argv[5], sys.argv[6]
print(f"| EP{ngpu}, {layers or 'all'} layers | EPLB off | EPLB on |")
print("| --- | ---: | ---: |")
row = []
for eplb in ("off", "on"):
    try:
        w = json.load(open(f"{work}/decode-{eplb}/repro.json"))["report"]["windows"][0]
        bal = w.get("expert_balancedness")
        row.append(f"{w['tokens_per_s_per_gpu']:.0f} (batch {w['global_batch']:.0f}, step {w['step_time_s'] * 1e3:.1f} ms"
                   + (f", balancedness {bal:.3f})" if bal is not None else ")"))
    except Exception as e:
        row.append("n/a")
print(f"| decode tokens/s per GPU ({req} req/GPU, input {inp}) | {row[0]} | {row[1]} |")
for n in lens:
    row = []
    for eplb in ("off", "on"):
        try:
            j = [json.loads(l) for l in open(f"{work}/prefill-{eplb}-{n}.jsonl")][-1]
            row.append(f"{j['input_throughput'] / ngpu:.0f}")
        except Exception:
            row.append("n/a")
    print(f"| prefill input tokens/s per GPU, {n}-token prompts | {row[0]} | {row[1]} |")
PY
[[ $OUT == "$WORK" ]] || cp "$WORK/wide_ep_table.md" "$OUT/" 2>/dev/null
exit $rc
