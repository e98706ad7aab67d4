#!/usr/bin/env python3
"""PyTorch eager baseline for one DeepSeek-V3 layer of one rank of the published deployments,
timed on the same GPU in the same run as pdserve's kernels (scripts/gpu/run_gpu_checks.sh).

Real shapes (hidden 7168, 128 heads, q_lora 1536, kv_lora 512 + rope 64, expert width 2048), BF16:
  decode  (EP72 rank): 256 requests at context 2000, absorbed MLA over a latent cache;
           4 local experts x 512 tokens + the shared expert for 256 tokens.
  prefill (EP32 rank): 16,384 tokens (4 prompts x 4,096, causal SDPA, expanded MLA);
           9 local experts x 14,563 tokens + the shared expert.
Prints a table in milliseconds (median of 20 after warm-up), and the device name.

--prefill: instead, the whole prefill layer of prefill_layer_bench.cu (EP32 rank) in eager BF16,
timed as attention block, MoE block and layer: input RMSNorm, q_a/q_b and kv_a with their norms,
RoPE, kv_b expansion, causal SDPA per prompt (4 x 4096; v zero-padded to the qk head dim 192 so
that a flash kernel applies: with 192/128 SDPA falls back to its math path, 262 ms on an H100),
o_proj, residual add; post-attention RMSNorm, f32 router and the noaux_tc gate (as HF), the
shared expert and 9 local experts x 14,564 rows with gate|up fused, and a weighted combine of the
expert rows into the residual (the stand-in for the cross-GPU combine, as the C++ benchmark's).
"""
import sys

import torch
import torch.nn.functional as F

H, NH, QL, KL, RD, ND, VD, EI = 7168, 128, 1536, 512, 64, 128, 128, 2048
dev = "cuda"
dt = torch.bfloat16


def timed(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def w(*shape):
    return (torch.randn(*shape, device=dev, dtype=dt) * 0.02)


def rmsnorm(x, g):
    v = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(v + 1e-6)).to(dt) * g


class Attn:
    def __init__(self):
        self.q_a, self.q_b = w(QL, H), w(NH * (ND + RD), QL)
        self.kv_a, self.kv_b = w(KL + RD, H), w(NH * (ND + VD), KL)
        self.o = w(H, NH * VD)
        self.gq, self.gkv = torch.ones(QL, device=dev, dtype=dt), torch.ones(KL, device=dev, dtype=dt)
        kvb = self.kv_b.view(NH, ND + VD, KL)
        self.w_uk, self.w_uv = kvb[:, :ND, :].contiguous(), kvb[:, ND:, :].contiguous()

    def decode(self, x, cache):  # x [B, H], cache [B, T, 576]
        B = x.shape[0]
        q = F.linear(rmsnorm(F.linear(x, self.q_a), self.gq), self.q_b).view(B, NH, ND + RD)
        ckv = F.linear(x, self.kv_a)
        _ = rmsnorm(ckv[:, :KL], self.gkv)
        q_lat = torch.einsum("bhd,hdk->bhk", q[..., :ND], self.w_uk)  # absorb W_UK
        qf = torch.cat([q_lat, q[..., ND:]], dim=-1)  # [B, NH, 576]
        scores = torch.einsum("bhk,btk->bht", qf, cache) * 0.1352
        p = torch.softmax(scores.float(), dim=-1).to(dt)
        o_lat = torch.einsum("bht,btk->bhk", p, cache[..., :KL])
        o = torch.einsum("bhk,hdk->bhd", o_lat, self.w_uv).reshape(B, NH * VD)
        return F.linear(o, self.o)

    def prefill(self, x, seqs):  # x [S_total, H]
        S = x.shape[0]
        q = F.linear(rmsnorm(F.linear(x, self.q_a), self.gq), self.q_b).view(S, NH, ND + RD)
        ckv = F.linear(x, self.kv_a)
        c = rmsnorm(ckv[:, :KL], self.gkv)
        kv = F.linear(c, self.kv_b).view(S, NH, ND + VD)
        k = torch.cat([kv[..., :ND], ckv[:, None, KL:].expand(S, NH, RD)], dim=-1)
        v = kv[..., ND:]
        outs, start = [], 0
        for n in seqs:
            qs, ks, vs = (t[start:start + n].transpose(0, 1) for t in (q, k, v))
            outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=0.1352).transpose(0, 1))
            start += n
        return F.linear(torch.cat(outs).reshape(S, NH * VD), self.o)


def mlp(x, g, u, d):
    return F.linear(F.silu(F.linear(x, g)) * F.linear(x, u), d)


def moe(x_per_expert, experts, shared, x_shared):
    out = [mlp(xe, *e) for xe, e in zip(x_per_expert, experts)]
    return out, mlp(x_shared, *shared)


def rope_cos_sin(n, dim=RD, base=10000.0):
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=dev, dtype=torch.float32) / dim))
    f = torch.outer(torch.arange(n, device=dev, dtype=torch.float32), inv)
    e = torch.cat([f, f], dim=-1)
    return e.cos().to(dt), e.sin().to(dt)


def rotate(x, cos, sin):  # HF's rotate_half form on [..., S, (H,) RD]
    x1, x2 = x[..., : RD // 2], x[..., RD // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def prefill_layer():
    """The prefill layer of prefill_layer_bench.cu in PyTorch eager BF16; returns the timings."""
    P, S, E, K, G, M = 4, 4096, 256, 8, 9, 14564
    T = P * S
    g_in, g_post = torch.ones(H, device=dev, dtype=dt), torch.ones(H, device=dev, dtype=dt)
    attn = Attn()
    cos, sin = rope_cos_sin(S)
    cos_t, sin_t = cos.repeat(P, 1), sin.repeat(P, 1)  # positions 0..4095 of each prompt
    router = torch.randn(E, H, device=dev, dtype=torch.float32) * 0.02
    bias = torch.randn(E, device=dev, dtype=torch.float32) * 0.01
    sh_gu, sh_d = w(2 * EI, H), w(H, EI)
    experts = [(w(2 * EI, H), w(H, EI)) for _ in range(G)]
    xe = torch.randn(G * M, H, device=dev, dtype=dt)  # the received rows, contiguous by expert
    i = torch.arange(T * K, device=dev)
    slots = ((i % G) * M + i // G).view(T, K)  # each token's 8 choices on 8 experts' rows
    x0 = torch.randn(T, H, device=dev, dtype=dt)
    state = {}

    def attention_block(x):
        h = rmsnorm(x, g_in)
        q = F.linear(rmsnorm(F.linear(h, attn.q_a), attn.gq), attn.q_b).view(T, NH, ND + RD)
        ckv = F.linear(h, attn.kv_a)
        c = rmsnorm(ckv[:, :KL], attn.gkv)
        q_pe = rotate(q[..., ND:], cos_t[:, None], sin_t[:, None])
        k_pe = rotate(ckv[:, KL:], cos_t, sin_t)
        kv = F.linear(c, attn.kv_b).view(T, NH, ND + VD)
        qf = torch.cat([q[..., :ND], q_pe], dim=-1)
        k = torch.cat([kv[..., :ND], k_pe[:, None].expand(T, NH, RD)], dim=-1)
        v = F.pad(kv[..., ND:], (0, ND + RD - VD))  # v to 192 columns: the flash path
        outs = []
        for p in range(P):
            r = slice(p * S, (p + 1) * S)
            qs, ks, vs = (t[r].transpose(0, 1).unsqueeze(0) for t in (qf, k, v))
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=0.1352)
            outs.append(o[0, :, :, :VD].transpose(0, 1))
        return x + F.linear(torch.cat(outs).reshape(T, NH * VD), attn.o)

    def mlp_fused(x, gu, d):
        g, u = F.linear(x, gu).chunk(2, dim=-1)
        return F.linear(F.silu(g) * u, d)

    def moe_block(x):
        h = rmsnorm(x, g_post)
        logits = F.linear(h.float(), router)  # HF's gate: f32
        scores = logits.sigmoid()
        sc = scores + bias
        grp = sc.view(T, 8, E // 8).topk(2, dim=-1)[0].sum(-1)
        keep = torch.zeros_like(grp).scatter_(1, grp.topk(4, dim=-1)[1], 1.0)
        sc = sc.masked_fill(keep.repeat_interleave(E // 8, dim=1) == 0, 0.0)
        ids = sc.topk(K, dim=-1)[1]
        wts = scores.gather(1, ids)
        wts = wts / (wts.sum(-1, keepdim=True) + 1e-20) * 2.5
        out = x + mlp_fused(h, sh_gu, sh_d)
        ye = torch.cat([mlp_fused(xe[g * M:(g + 1) * M], *experts[g]) for g in range(G)])
        state["ids"] = ids  # the routing is computed (and kept); the rows are the fixed slab's
        return out + torch.einsum("tk,tkh->th", wts.to(dt), ye[slots])

    a = timed(lambda: attention_block(x0), reps=10)
    x1 = attention_block(x0)
    m = timed(lambda: moe_block(x1), reps=10)
    layer = timed(lambda: moe_block(attention_block(x0)), reps=10)
    y = moe_block(attention_block(x0))
    return a, m, layer, bool(torch.isfinite(y).all())


def main_prefill():
    torch.manual_seed(0)
    name = torch.cuda.get_device_name()
    a, m, layer, finite = prefill_layer()
    print(f"PyTorch {torch.__version__} eager BF16 on {name}")
    print("prefill layer, EP32 rank: 16384 tokens (4 x 4096 causal, SDPA with v padded to 192), "
          "9 experts x 14564 rows + shared expert, gate|up fused, f32 router + noaux_tc gate")
    print(f"{'block':20s} {'ms':>9s}")
    print(f"{'attention block':20s} {a:9.2f}")
    print(f"{'MoE block':20s} {m:9.2f}")
    print(f"{'layer':20s} {layer:9.2f}")
    print(f"output finite: {finite}; peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main():
    torch.manual_seed(0)
    name = torch.cuda.get_device_name()
    attn = Attn()
    experts9 = [(w(EI, H), w(EI, H), w(H, EI)) for _ in range(9)]
    shared = (w(EI, H), w(EI, H), w(H, EI))
    rows = []
    # decode, EP72 rank
    B, T = 256, 2000
    x = torch.randn(B, H, device=dev, dtype=dt)
    cache = torch.randn(B, T, KL + RD, device=dev, dtype=dt) * 0.1
    a = timed(lambda: attn.decode(x, cache))
    xe = [torch.randn(512, H, device=dev, dtype=dt) for _ in range(4)]
    m = timed(lambda: moe(xe, experts9[:4], shared, x))
    rows.append(("decode EP72 rank: 256 req x ctx 2000", a, m))
    # prefill, EP32 rank
    S = 4 * 4096
    xp = torch.randn(S, H, device=dev, dtype=dt)
    a = timed(lambda: attn.prefill(xp, [4096] * 4), reps=10)
    xe = [torch.randn(14563, H, device=dev, dtype=dt) for _ in range(9)]
    m = timed(lambda: moe(xe, experts9, shared, xp), reps=10)
    rows.append(("prefill EP32 rank: 16384 tokens", a, m))
    print(f"PyTorch {torch.__version__} eager BF16 on {name}")
    print(f"{'work':40s} {'attention ms':>13s} {'MoE ms':>9s} {'total ms':>9s}")
    for what, a, m in rows:
        print(f"{what:40s} {a:13.2f} {m:9.2f} {a + m:9.2f}")


if __name__ == "__main__":
    main_prefill() if "--prefill" in sys.argv[1:] else main()
