#!/usr/bin/env python3
"""PyTorch eager baseline for one DeepSeek-V3 layer of one rank of the published deployments,
timed on the same GPU in the same run as pdserve's kernels (scripts/gpu/run_gpu_checks.sh).

Real shapes (hidden 7168, 128 heads, q_lora 1536, kv_lora 512 + rope 64, expert width 2048), BF16:
  decode  (EP72 rank): 256 requests at context 2000, absorbed MLA over a latent cache;
           4 local experts x 512 tokens + the shared expert for 256 tokens.
  prefill (EP32 rank): 16,384 tokens (4 prompts x 4,096, causal SDPA, expanded MLA);
           9 local experts x 14,563 tokens + the shared expert.
Prints a table in milliseconds (median of 20 after warm-up), and the device name.
"""
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
    main()
