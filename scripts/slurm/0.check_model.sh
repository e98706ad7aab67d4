#!/usr/bin/env bash
# Checks MODEL_PATH before anything is launched: config and tokenizer present, and weights unless
# LOAD_FORMAT=dummy; inside an allocation, that every node sees the folder.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[[ -d $MODEL_PATH ]] || die "MODEL_PATH=$MODEL_PATH is not a folder (set it in config.sh)"
for f in config.json tokenizer.json tokenizer_config.json; do
  [[ -f $MODEL_PATH/$f ]] || die "$MODEL_PATH/$f is missing"
done
shards=$(find "$MODEL_PATH" -maxdepth 1 -name '*.safetensors' | wc -l)
if [[ $LOAD_FORMAT == dummy ]]; then
  info "LOAD_FORMAT=dummy: random weights, the $shards weight files are not read"
else
  ((shards > 0)) || die "$MODEL_PATH has no *.safetensors; download the weights or set LOAD_FORMAT=dummy"
fi
info "model $MODEL_PATH: $(grep -oE '"(num_hidden_layers|n_routed_experts|hidden_size)": *[0-9]+' "$MODEL_PATH/config.json" | tr -d '"' | tr '\n' ' ')"

if [[ -n ${SLURM_JOB_ID:-} ]]; then
  srun --overlap --ntasks-per-node=1 bash -c "test -f \"$MODEL_PATH/config.json\" && echo \"\$SLURMD_NODENAME: model ok\"" ||
    die "some node cannot read $MODEL_PATH (is it on a shared file system?)"
fi
