#!/usr/bin/env python3
"""Builds tiny random DeepSeek-V3 checkpoints with Hugging Face transformers and records the
reference outputs pdserve's CPU backend must reproduce.

Run on a machine with transformers 5.17 + PyTorch (the GPU machines have them; no GPU is needed):

    python3 tests/golden/make_hf_golden.py --out tests/golden/data

For each model it writes DIR/<name>/: config.json, safetensors (sharded with an index, or single),
and golden.json with
  prompts        the token-id prompts (lengths 1 to several hundred, so YaRN matters)
  last_logits    fp32 logits of each prompt's last position (HF, eager attention, eager experts)
  all_logits     fp32 logits of every position of one prompt
  routing        per MoE layer and prompt: HF's chosen experts per token and the selection margin
                 (how far the weakest kept candidate is above the best dropped one, in score units)
  greedy         greedy continuation per prompt (HF with its KV cache) and the top-1/top-2 logit
                 margin at each step

Models:
  tiny-bf16      q_lora, 2 dense + 2 MoE layers, 4 groups, shared expert, YaRN; bf16, sharded
  tiny-fp8       same architecture, other seed; projection and expert weights quantized by this
                 script to e4m3 with 128x128 block scales (weight_scale_inv), the rest bf16. The
                 reference is HF run in fp32 on the dequantized weights (W8A16 semantics).
  tiny-noq-bf16  q_lora_rank null (a single q_proj), default RoPE, one file without an index,
                 transformers' own config layout.

The bf16 references run HF in fp32 on the bf16-rounded weights, so pdserve (fp32 compute on bf16
weights) must agree to rounding error.
"""
import argparse
import json
import math
import os
import shutil
import tempfile

import torch
from safetensors.torch import load_file, save_file
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

BLOCK = 128
FP8_MAX = 448.0

BASE = dict(
    vocab_size=512,
    hidden_size=192,          # 1.5 blocks of 128: partial fp8 blocks
    intermediate_size=256,
    moe_intermediate_size=64,
    num_hidden_layers=4,
    first_k_dense_replace=2,
    n_routed_experts=16,
    n_shared_experts=1,
    num_experts_per_tok=4,
    n_group=4,
    topk_group=2,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    q_lora_rank=96,
    kv_lora_rank=64,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=1024,  # = factor x original, as YaRN expects
    rms_norm_eps=1e-6,
    initializer_range=0.06,   # larger than 0.02 so greedy top-1/top-2 margins are usable
    bos_token_id=0,
    eos_token_id=1,
    tie_word_embeddings=False,
)
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0,
        "original_max_position_embeddings": 128, "beta_fast": 32.0, "beta_slow": 1.0,
        "mscale": 1.0, "mscale_all_dim": 1.0}

PROMPT_LENGTHS = [1, 5, 33, 130, 300]
ALL_LOGITS_PROMPT = 2
GREEDY_STEPS = 10


def make_config(q_lora_rank, rope):
    kw = dict(BASE)
    kw["q_lora_rank"] = q_lora_rank
    try:
        cfg = DeepseekV3Config(**kw, rope_parameters=rope)
    except TypeError:  # older transformers: rope_scaling + rope_theta
        r = dict(rope)
        theta = r.pop("rope_theta")
        cfg = DeepseekV3Config(**kw, rope_theta=theta, rope_scaling=r if r.get("rope_type") != "default" else None)
    return cfg


def randomize(model, seed):
    """Default init leaves norms at 1 and the correction bias at 0, and the router so weak that
    expert scores tie; randomize those so every code path is exercised and routing is decisive."""
    g = torch.Generator().manual_seed(seed + 1000)
    hidden = model.config.hidden_size
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(0.6 + 0.8 * torch.rand(p.shape, generator=g))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * (3.0 / math.sqrt(hidden)))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_((torch.rand(b.shape, generator=g) - 0.5) * 0.2)


def load_reference(path):
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    try:
        m = DeepseekV3ForCausalLM.from_pretrained(path, experts_implementation="eager", **kw)
    except (TypeError, ValueError):
        m = DeepseekV3ForCausalLM.from_pretrained(path, **kw)
    m.eval()
    return m


class RoutingRecorder:
    """Hooks each MoE router to record the experts HF chose and the router logits they came from
    (to compute how clear each choice was)."""

    def __init__(self, model):
        self.records = {}
        self.cfg = model.config
        for idx, layer in enumerate(model.model.layers):
            gate = getattr(layer.mlp, "gate", None)
            if gate is None or not hasattr(gate, "e_score_correction_bias"):
                continue
            # transformers 5.17: the router returns (router_logits, topk_weights, topk_indices)
            gate.register_forward_hook(self._hook(idx, gate))

    def _hook(self, idx, gate):
        def hook(_module, _inputs, output):
            logits, _weights, ids = output
            self.records[idx] = (ids.detach().clone(), logits.detach().float().clone(),
                                 gate.e_score_correction_bias.detach().float())
        return hook

    def margins(self, layer):
        ids, logits, bias = self.records[layer]
        c = self.cfg
        s = torch.sigmoid(logits.view(-1, c.n_routed_experts))
        sc = s + bias
        per = c.n_routed_experts // c.n_group
        gs = sc.view(-1, c.n_group, per).topk(2, dim=-1)[0].sum(-1)
        gsorted = gs.sort(dim=-1, descending=True)[0]
        group_margin = gsorted[:, c.topk_group - 1] - gsorted[:, c.topk_group]
        keep = gs.topk(c.topk_group, dim=-1)[1]
        mask = torch.zeros_like(gs).scatter_(1, keep, 1).bool()
        masked = sc.masked_fill(~mask.repeat_interleave(per, dim=1), float("-inf"))
        ms = masked.sort(dim=-1, descending=True)[0]
        expert_margin = ms[:, c.num_experts_per_tok - 1] - ms[:, c.num_experts_per_tok]
        expert_margin = torch.nan_to_num(expert_margin, posinf=1e9)
        return ids.view(-1, c.num_experts_per_tok).sort(dim=-1)[0], torch.minimum(group_margin, expert_margin)


def run_golden(model, prompts):
    rec = RoutingRecorder(model)
    out = {"prompts": prompts, "last_logits": [], "routing": [], "greedy": []}
    moe_layers = [i for i in range(model.config.num_hidden_layers) if i >= model.config.first_k_dense_replace]
    with torch.no_grad():
        for pi, p in enumerate(prompts):
            ids = torch.tensor([p])
            r = model(ids, use_cache=True)
            logits = r.logits[0].float()
            out["last_logits"].append(logits[-1].tolist())
            if pi == ALL_LOGITS_PROMPT:
                out["all_logits"] = {"prompt": pi, "logits": logits.tolist()}
            for layer in moe_layers:
                ids_sorted, margin = rec.margins(layer)
                out["routing"].append({"prompt": pi, "layer": layer, "experts": ids_sorted.tolist(),
                                       "margin": margin.tolist()})
            # greedy continuation through HF's own KV cache
            past = r.past_key_values
            nxt = int(torch.argmax(logits[-1]))
            top2 = logits[-1].topk(2)[0]
            tokens, margins = [nxt], [float(top2[0] - top2[1])]
            for _ in range(GREEDY_STEPS - 1):
                r = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = r.past_key_values
                lg = r.logits[0, -1].float()
                nxt = int(torch.argmax(lg))
                top2 = lg.topk(2)[0]
                tokens.append(nxt)
                margins.append(float(top2[0] - top2[1]))
            out["greedy"].append({"tokens": tokens, "margins": margins})
    return out


def quantize_block_fp8(w):
    """DeepSeek's 128x128 block quantization: scale_inv = amax/448 per block, e4m3 values."""
    rows, cols = w.shape
    br, bc = math.ceil(rows / BLOCK), math.ceil(cols / BLOCK)
    padded = torch.zeros(br * BLOCK, bc * BLOCK, dtype=torch.float32)
    padded[:rows, :cols] = w.float()
    blocks = padded.view(br, BLOCK, bc, BLOCK)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale_inv = (amax / FP8_MAX).float()
    q = (blocks / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    deq = (q.float() * scale_inv[:, None, :, None]).view(br * BLOCK, bc * BLOCK)[:rows, :cols]
    q = q.view(br * BLOCK, bc * BLOCK)[:rows, :cols].contiguous()
    return q, scale_inv.contiguous(), deq.contiguous()


def is_quantized(name):
    if not name.endswith(".weight") or "norm" in name:
        return False
    if name.endswith("mlp.gate.weight") or "embed_tokens" in name or name.startswith("lm_head"):
        return False
    return True


def write_sharded(tensors, out_dir, shard_bytes):
    names = sorted(tensors)
    shards, cur, size = [], {}, 0
    for n in names:
        nb = tensors[n].numel() * tensors[n].element_size()
        if cur and size + nb > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[n] = tensors[n]
        size += nb
    shards.append(cur)
    weight_map, total = {}, 0
    for i, sh in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, os.path.join(out_dir, fname), metadata={"format": "pt"})
        for n, t in sh.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)


def read_all(path):
    tensors = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(path, f)))
    return tensors


def make_prompts(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def save_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def build_bf16(name, cfg, seed, out_root, shard_bytes):
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(cfg)
    randomize(model, seed)
    out_dir = os.path.join(out_root, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    model = model.to(torch.bfloat16)
    if shard_bytes:
        model.save_pretrained(out_dir, max_shard_size=shard_bytes)
    else:
        model.save_pretrained(out_dir)
    for extra in ("generation_config.json",):
        p = os.path.join(out_dir, extra)
        if os.path.exists(p):
            os.remove(p)
    ref = load_reference(out_dir)
    golden = run_golden(ref, make_prompts(cfg.vocab_size, seed))
    golden["reference"] = "transformers fp32 eager on the bf16 checkpoint"
    save_json(golden, os.path.join(out_dir, "golden.json"))
    return out_dir


def build_fp8(name, bf16_dir, out_root, seed):
    """Quantizes a bf16 checkpoint written by transformers (per-expert names as on the Hub)."""
    src = read_all(bf16_dir)
    fp8, deq = {}, {}
    for n, t in src.items():
        if is_quantized(n) and t.dim() == 2:
            q, s, d = quantize_block_fp8(t)
            fp8[n] = q
            fp8[n + "_scale_inv"] = s
            deq[n] = d
        else:
            fp8[n] = t
            deq[n] = t.float()
    out_dir = os.path.join(out_root, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    write_sharded(fp8, out_dir, 1_000_000)
    with open(os.path.join(bf16_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": [BLOCK, BLOCK]}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    # reference: HF on the dequantized weights, loaded through HF's own checkpoint conversion
    with tempfile.TemporaryDirectory() as tmp:
        plain = dict(cfg)
        del plain["quantization_config"]
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(plain, f)
        save_file({k: v.contiguous() for k, v in deq.items()}, os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        ref = load_reference(tmp)
        golden = run_golden(ref, make_prompts(cfg["vocab_size"], seed))
    golden["reference"] = "transformers fp32 eager on the dequantized fp8 weights (W8A16)"
    save_json(golden, os.path.join(out_dir, "golden.json"))
    return out_dir


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    import transformers
    print("transformers", transformers.__version__, "torch", torch.__version__)

    cfg = make_config(96, YARN)
    bf16_dir = build_bf16("tiny-bf16", cfg, 1, args.out, "400KB")
    # fp8 from a second random model so the two goldens are independent
    with tempfile.TemporaryDirectory() as tmp:
        src = build_bf16("src", cfg, 2, tmp, None)
        build_fp8("tiny-fp8", src, args.out, 2)
    noq = make_config(None, {"rope_type": "default", "rope_theta": 10000.0})
    noq.hidden_size = 128
    build_bf16("tiny-noq-bf16", noq, 3, args.out, None)
    for d in sorted(os.listdir(args.out)):
        p = os.path.join(args.out, d)
        size = sum(os.path.getsize(os.path.join(p, f)) for f in os.listdir(p))
        print(f"{d}: {size / 1e6:.2f} MB, files: {sorted(os.listdir(p))}")
    print("bf16 source:", bf16_dir)


if __name__ == "__main__":
    main()
